"""The denoising loop shared by generation, training previews and (later) editing.

Written here rather than taken from MONAI's ``DiffusionInferer.sample`` because that loop passes conditioning
only as cross-attention context (our UNet is conditioned through ``class_labels``), draws DDPM step noise
without a generator (so images could not be regenerated from their seed) and offers no per-step callback.
The schedulers themselves are MONAI's.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler, Scheduler

# Called as callback(step_index, num_steps, predicted_clean_latent) after every step.
StepCallback = Callable[[int, int, torch.Tensor], None]


def initial_noise(seeds: list[int], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Per-image starting noise: image i depends on its own seed only, whatever batch it is drawn in."""
    out = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(out).to(device)


def _predict(
    unet: DiffusionModelUNet,
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


def denoise(
    unet: DiffusionModelUNet,
    scheduler: Scheduler,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    null_label: int,
    steps: int,
    guidance: float,
    generator: torch.Generator | None = None,
    autocast: AbstractContextManager | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run the reverse process from ``noise`` to a clean latent with classifier-free guidance."""
    if isinstance(scheduler, RFlowScheduler):
        scheduler.set_timesteps(steps, input_img_size_numel=int(noise[0, 0].numel()))
    else:
        scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    next_timesteps = torch.cat([timesteps[1:], torch.zeros(1, dtype=timesteps.dtype)])
    x = noise
    for i, (t, t_next) in enumerate(zip(timesteps, next_timesteps, strict=True)):
        with autocast or nullcontext():
            out = _predict(unet, x, t.reshape(1), labels, null_label, guidance)
        out = out.float()
        if isinstance(scheduler, RFlowScheduler):
            x, x0 = scheduler.step(out, t, x, t_next)
        elif isinstance(scheduler, DDPMScheduler):
            x, x0 = scheduler.step(out, t, x, generator=generator)
        elif isinstance(scheduler, DDIMScheduler):
            x, x0 = scheduler.step(out, t, x, eta=0.0, generator=generator)
        else:
            x, x0 = scheduler.step(out, t, x)
        if callback is not None:
            callback(i, len(timesteps), x0)
    return x
