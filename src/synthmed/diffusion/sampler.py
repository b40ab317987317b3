"""The denoising loop shared by generation, editing and training previews.

Written here rather than taken from MONAI's ``DiffusionInferer.sample`` because that loop passes conditioning
only as cross-attention context (our UNet is conditioned through ``class_labels``), draws DDPM step noise
without a generator (so images could not be regenerated from their seed) and offers no per-step callback.
The schedulers are MONAI's (DDIM, PNDM, rectified flow) and diffusers' (DDPM, DPM-Solver++, UniPC; see
models/solvers.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler
from torch import nn

from synthmed.models.builders import Sampler
from synthmed.models.solvers import DiffusersSolver

# Called as callback(step_index, num_steps, predicted_clean_latent) after every step.
StepCallback = Callable[[int, int, torch.Tensor], None]


def initial_noise(seeds: list[int], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Per-image starting noise: image i depends on its own seed only, whatever batch it is drawn in."""
    out = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(out).to(device)


def step_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per image for the stochastic samplers' per-step noise (ancestral DDPM, inpainting).

    Each is seeded from its image's seed on a stream of its own (SeedSequence([seed, 1])), so the step noise
    is independent of the image's starting noise (:func:`initial_noise` uses the seed itself: sharing it made
    the first ancestral step re-add image 0's own starting noise) and of the other images in the batch.
    """
    return [
        torch.Generator(device).manual_seed(int(np.random.SeedSequence([s, 1]).generate_state(1)[0]))
        for s in seeds
    ]


def batch_randn(
    shape: torch.Size, generators: list[torch.Generator] | None, device: torch.device
) -> torch.Tensor:
    """Standard normal noise of ``shape``; item i comes from ``generators[i]`` alone (None: global RNG)."""
    if generators is None:
        return torch.randn(shape, device=device)
    return torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in generators])


def _predict(
    unet: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    null_label: int,
    guidance: float,
) -> torch.Tensor:
    timesteps = t.expand(x.shape[0]).to(x.device)
    unconditional = bool((labels == null_label).all())
    if unconditional or guidance == 1.0:
        return unet(x, timesteps=timesteps, class_labels=labels)
    # Conditional and unconditional predictions in one batched forward pass.
    both = unet(
        torch.cat([x, x]),
        timesteps=torch.cat([timesteps, timesteps]),
        class_labels=torch.cat([labels, torch.full_like(labels, null_label)]),
    )
    cond, uncond = both.float().chunk(2)
    return uncond + guidance * (cond - uncond)


@dataclass
class Known:
    """What an edit keeps of its input: the clean (scaled) latent, where to regenerate, and how much.

    ``strength`` < 1 is SDEdit: the input is noised to that fraction of the schedule and only the remaining
    steps run (0 returns the input's latent, 1 starts from pure noise and ignores it). A ``region`` makes it
    inpainting by latent blending: after every step the kept part is replaced by the input noised to the
    next timestep (Blended Latent Diffusion; RePaint's known-region update). ``resample`` > 1 adds RePaint's
    resampling: the blended clean estimate is noised back to the current timestep and the step repeated, so
    the generated region adapts to what surrounds it.
    """

    latent: torch.Tensor  # (B, C, *latent_spatial)
    region: torch.Tensor | None = None  # (B, 1, *latent_spatial): 1 = regenerate, 0 = keep
    strength: float = 1.0
    resample: int = 1


def denoise(
    unet: nn.Module,
    scheduler: Sampler,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    null_label: int,
    steps: int,
    guidance: float,
    generators: list[torch.Generator] | None = None,
    autocast: AbstractContextManager | None = None,
    callback: StepCallback | None = None,
    known: Known | None = None,
) -> torch.Tensor:
    """Run the reverse process from ``noise`` to a clean latent with classifier-free guidance; with ``known``
    an edit of its latent (SDEdit and/or inpainting). ``generators`` (one per image, see
    :func:`step_generators`) draw the per-step noise of stochastic samplers and of inpainting."""
    if isinstance(scheduler, RFlowScheduler):
        scheduler.set_timesteps(steps, input_img_size_numel=int(noise[0, 0].numel()))
    else:
        scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    x = noise
    if known is not None:
        timesteps = timesteps[steps - round(steps * known.strength) :]
        if len(timesteps) == 0:
            return known.latent
        if known.strength < 1:
            x = scheduler.add_noise(known.latent, noise, timesteps[:1].expand(len(noise)))
    next_timesteps = torch.cat([timesteps[1:], torch.zeros(1, dtype=timesteps.dtype)])
    for i, (t, t_next) in enumerate(zip(timesteps, next_timesteps, strict=True)):
        passes = known.resample if known is not None and known.region is not None else 1
        for n in range(passes):
            with autocast or nullcontext():
                out = _predict(unet, x, t.reshape(1), labels, null_label, guidance).float()
            x_next, x0 = _step(scheduler, out, t, t_next, x, generators)
            if known is not None and known.region is not None:
                last = i == len(timesteps) - 1
                x_next = _blend(scheduler, known, x_next, None if last else t_next, generators)
                if n < passes - 1:  # RePaint: back to t from the blended clean estimate, then again
                    x = _blend(scheduler, known, x0, t, generators, region_noised=True)
        x = x_next
        if callback is not None:
            callback(i, len(timesteps), x0)
    return x


def _step(
    scheduler: Sampler,
    out: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    x: torch.Tensor,
    generators: list[torch.Generator] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step: (x at t_next, predicted clean latent)."""
    if isinstance(scheduler, RFlowScheduler):
        return scheduler.step(out, t, x, t_next)  # type: ignore[arg-type]  # MONAI takes tensor timesteps
    if isinstance(scheduler, DDIMScheduler):
        return scheduler.step(out, t, x, eta=0.0)  # type: ignore[arg-type]  # deterministic: no step noise
    if isinstance(scheduler, DiffusersSolver):
        return scheduler.step(out, t, x, generators)
    return scheduler.step(out, t, x)  # type: ignore[arg-type]  # MONAI takes tensor timesteps


def _blend(
    scheduler: Sampler,
    known: Known,
    x: torch.Tensor,
    t: torch.Tensor | None,
    generators: list[torch.Generator] | None,
    region_noised: bool = False,
) -> torch.Tensor:
    """``x`` inside the region, the known latent outside, both noised to ``t`` (None: clean).

    ``region_noised``: ``x`` is a clean estimate, so the region is noised to ``t`` too (RePaint's jump)."""
    assert known.region is not None
    keep = known.latent
    if t is not None:
        fresh = batch_randn(x.shape, generators, x.device)
        timesteps = t.reshape(1).expand(len(x))
        keep = scheduler.add_noise(keep, fresh, timesteps)
        if region_noised:
            x = scheduler.add_noise(x, fresh, timesteps)
    return known.region * x + (1 - known.region) * keep
