"""How long a whole `synthmed train` will take, said before its first stage starts.

Each stage still to train is timed over a few optimiser steps with its real networks, optimiser, batch
size, precision and device, on stand-in inputs of the real shapes: the autoencoder on the training images
(volumes), the diffusion UNet and the ControlNet on random latents, since the trained autoencoder that
would encode the data does not exist yet. Step time depends on shapes, not values, so the figure holds.
Previews, validation and checkpoints are not included. (training.duration says the same per stage from
the real steps once each stage runs.)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from synthmed.artifacts import checkpoint as ckpt
from synthmed.config import TrainConfig
from synthmed.models.builders import build_autoencoder, build_unet
from synthmed.models.slicewise import build_run_autoencoder
from synthmed.runtime import resolve_precision
from synthmed.training.duration import format_duration
from synthmed.training.run import TrainingData, stage_dir
from synthmed.training.tasks import AutoencoderTask, ControlNetTask, DiffusionTask, LatentSet
from synthmed.training.trainer import Trainer

#: Steps timed per stage, after one untimed step (allocation and warm-up).
PROBE_STEPS = 3


def stages_to_train(cfg: TrainConfig, stages: Sequence[str]) -> dict[str, int]:
    """The optimiser steps each requested stage still has to take (resumed stages: from their last step)."""
    todo = {}
    for stage in stages:
        if stage == "autoencoder" and cfg.autoencoder.source == "foundation":
            continue
        last = stage_dir(cfg, stage) / "last.pt"
        done = int(ckpt.load(last)["step"]) if last.exists() else 0
        if getattr(cfg, stage).steps > done:
            todo[stage] = getattr(cfg, stage).steps - done
    return todo


def estimate_stages(
    cfg: TrainConfig, stages: Sequence[str], data: TrainingData, device: torch.device
) -> dict[str, float]:
    """Seconds each stage still to train will take on ``device`` (see the module docstring)."""
    seconds = {}
    for stage, steps in stages_to_train(cfg, stages).items():
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(
                _probe_task(cfg, stage, data, device),
                getattr(cfg, stage),
                Path(tmp),
                seed=cfg.seed,
                device=device,
                dtype=resolve_precision(cfg.runtime.precision, device),
                progress=False,
            )
            trainer.train_step()  # untimed: allocation, first-call overheads
            start = time.perf_counter()
            for _ in range(PROBE_STEPS):
                trainer.train_step()
            seconds[stage] = steps * (time.perf_counter() - start) / PROBE_STEPS
    return seconds


def describe(seconds: dict[str, float], cfg: TrainConfig) -> str:
    """One line: each stage's steps and expected time, and the total."""
    parts = [
        f"{stage} {getattr(cfg, stage).steps} steps ~{format_duration(s)}" for stage, s in seconds.items()
    ]
    return (
        f"expected training time on this machine: {', '.join(parts)}; total ~"
        f"{format_duration(sum(seconds.values()))} (timed over {PROBE_STEPS} steps of each stage on stand-in "
        "inputs; previews and checkpoints not included)"
    )


def _probe_task(
    cfg: TrainConfig, stage: str, data: TrainingData, device: torch.device
) -> AutoencoderTask | DiffusionTask:
    """The stage's task on the real shapes; latents are random (see the module docstring)."""
    batch = min(getattr(cfg, stage).batch_size, len(data.train_images))
    images = data.train_images[:batch]
    if stage == "autoencoder":
        model = build_autoencoder(cfg.autoencoder.arch, cfg.data.spatial_dims, cfg.image_channels).to(device)
        return AutoencoderTask(model, cfg.autoencoder, images, images)
    autoencoder = build_run_autoencoder(cfg).to(device)
    latent = [s // f for s, f in zip(images.shape[2:], cfg.latent_factors, strict=True)]
    stats = torch.randn(batch, 2, cfg.latent_channels, *latent, device=device)
    stats[:, 1] = 0.1  # sigma
    maps = data.train_maps[:batch] if data.train_maps is not None else None
    spacings = data.train_spacings[:batch] if data.train_spacings is not None else None
    controls = torch.zeros_like(images[:, :1]) if stage == "controlnet" and maps is None else None
    latents = LatentSet(stats, data.train_labels[:batch], spacings, maps, controls)
    if stage == "diffusion":
        return DiffusionTask(cfg.diffusion, autoencoder, latents, latents, data.class_names, 1.0)
    dims, channels = cfg.data.spatial_dims, cfg.latent_channels
    unet = build_unet(cfg.diffusion.arch, channels, len(data.class_names), dims).to(device)
    extra = {"num_labels": data.num_labels or 2}
    return ControlNetTask(
        cfg.controlnet,
        cfg.diffusion,
        autoencoder,
        unet,
        latents,
        latents,
        data.class_names,
        1.0,
        extra,
        cfg.control_stretch,
    )
