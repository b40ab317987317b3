"""Deterministic DDIM on the nested timestep grids of progressive distillation (Salimans & Ho 2022), for
v-prediction models: the sampler of distilled students and the teacher steps they learn from; and the same for
rectified-flow models (the 3D recipe), whose deterministic sampler is Euler's method on the velocity.

Written here rather than with MONAI's DDIMScheduler because its grid starts at timestep 0 and ends at
``alphas_cumprod[0]`` (one step would start from almost clean latents); progressive distillation needs grids
that start at the last training timestep, end at the clean latent (alpha = 1) and nest: every second point
of the 2N-step grid is a point of the N-step grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from synthmed.diffusion.sampler import StepCallback

#: net(x, timesteps) -> v prediction, conditioning bound (label, guidance, ControlNet)
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def grid(steps: int, num_train_timesteps: int) -> torch.Tensor:
    """``steps`` + 1 timesteps from the last training timestep down to -1 (the clean latent), evenly spaced;
    the grid of 2N steps holds the grid of N at its even positions."""
    return torch.arange(steps, -1, -1) * num_train_timesteps // steps - 1


def alpha_sigma(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal and noise scales at timesteps ``t`` (-1: clean, alpha 1), shaped (N, 1, 1, ...) for 4D."""
    padded = torch.cat([torch.ones(1, dtype=alphas_cumprod.dtype), alphas_cumprod]).to(t.device)
    a = padded[t.long() + 1].float()
    return a.sqrt().view(-1, 1, 1, 1), (1 - a).sqrt().view(-1, 1, 1, 1)


def ddim_step(
    alphas_cumprod: torch.Tensor, v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """From ``x`` at ``t`` to ``s`` given the v prediction: (x at s, predicted clean latent)."""
    a_t, s_t = alpha_sigma(alphas_cumprod, t)
    a_s, s_s = alpha_sigma(alphas_cumprod, s)
    x0 = a_t * x - s_t * v
    eps = s_t * x + a_t * v
    return a_s * x0 + s_s * eps, x0


def two_step_target(
    alphas_cumprod: torch.Tensor, x_t: torch.Tensor, x_s: torch.Tensor, t: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """The clean latent whose one DDIM step from ``x_t`` at t lands on ``x_s`` at s (the teacher's two
    steps): Salimans & Ho's distillation target."""
    a_t, s_t = alpha_sigma(alphas_cumprod, t)
    a_s, s_s = alpha_sigma(alphas_cumprod, s)
    ratio = s_s / s_t
    return (x_s - ratio * x_t) / (a_s - ratio * a_t)


def guided_v(
    unet: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    guidance: torch.Tensor,
    null_label: int,
) -> torch.Tensor:
    """The classifier-free guided teacher with a guidance scale per item: conditional and unconditional
    halves in one batched pass (items without a label get the unconditional prediction)."""
    both = unet(
        torch.cat([x, x]),
        timesteps=torch.cat([t, t]),
        class_labels=torch.cat([labels, torch.full_like(labels, null_label)]),
    )
    cond, uncond = both.float().chunk(2)
    return uncond + guidance.view(-1, 1, 1, 1) * (cond - uncond)


def sample(
    net: Denoiser,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """``steps`` deterministic DDIM steps from ``noise`` (x at the last training timestep, as in the teacher's
    samplers) to a clean latent; ``callback(i, steps, predicted clean latent)`` after each."""
    points = grid(steps, len(alphas_cumprod)).to(noise.device)
    x = noise
    for i in range(steps):
        t, s = points[i].expand(len(x)), points[i + 1].expand(len(x))
        v = net(x, t).float()
        x, x0 = ddim_step(alphas_cumprod, v, x, t, s)
        if callback is not None:
            callback(i, steps, x0)
    return x


def flow_grid(steps: int, num_train_timesteps: int) -> torch.Tensor:
    """``steps`` + 1 rectified-flow timesteps from pure noise (``num_train_timesteps``) down to 0 (clean),
    evenly spaced as MONAI's RFlowScheduler spaces them; the grid of 2N steps holds the grid of N."""
    return torch.arange(steps, -1, -1, dtype=torch.float32) * num_train_timesteps / steps


def _per_item(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.float().view(-1, *([1] * (x.ndim - 1)))


def flow_step(
    v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, num_train_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler step of the velocity ``v`` from ``x`` at t to s (MONAI RFlowScheduler.step, with a timestep
    per item): (x at s, predicted clean latent)."""
    x_s = x + v * _per_item(t - s, x) / num_train_timesteps
    return x_s, x + v * _per_item(t, x) / num_train_timesteps


def flow_two_step_target(
    x_t: torch.Tensor, x_s: torch.Tensor, t: torch.Tensor, s: torch.Tensor, T: int
) -> torch.Tensor:
    """The velocity whose one Euler step from ``x_t`` at t lands on ``x_s`` at s (the teacher's two steps)."""
    return (x_s - x_t) * T / _per_item(t - s, x_t)


def sample_flow(
    net: Denoiser,
    noise: torch.Tensor,
    num_train_timesteps: int,
    steps: int,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """``steps`` Euler steps of a rectified-flow student from ``noise`` to a clean latent; ``callback`` as
    for :func:`sample`."""
    points = flow_grid(steps, num_train_timesteps).to(noise.device)
    x = noise
    for i in range(steps):
        t, s = points[i].expand(len(x)), points[i + 1].expand(len(x))
        x, x0 = flow_step(net(x, t).float(), x, t, s, num_train_timesteps)
        if callback is not None:
            callback(i, steps, x0)
    return x
