"""The trained networks of a run folder, built from its config and metadata and loaded with their exported
weights: the one place that reads them, for training's later stages and for generation alike."""

from __future__ import annotations

import torch
from torch import nn

from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.run import RunDir, RunMetadata
from synthmed.config import TrainConfig
from synthmed.models.builders import build_controlnet, build_unet
from synthmed.models.conditioning import encoding_channels
from synthmed.models.slicewise import Autoencoder, build_run_autoencoder, inner_autoencoder


def load_autoencoder(cfg: TrainConfig, device: torch.device, which: str = "ema") -> Autoencoder:
    """The run's autoencoder; on the foundation autoencoder, the 2D grey network slice by slice (3D) or
    channel by channel (multi-channel 2D)."""
    model = build_run_autoencoder(cfg).to(device)
    ckpt.load_exported(inner_autoencoder(model), RunDir(cfg.run_dir).weights("autoencoder"), which)
    return model.eval()


def load_unet(cfg: TrainConfig, meta: RunMetadata, device: torch.device, which: str = "ema") -> nn.Module:
    unet = build_unet(
        cfg.diffusion.arch, cfg.latent_channels, len(meta.class_names), cfg.data.spatial_dims
    ).to(device)
    ckpt.load_exported(unet, RunDir(cfg.run_dir).weights("diffusion"), which)
    return unet.eval()


def load_controlnet(
    cfg: TrainConfig, meta: RunMetadata, condition: str, device: torch.device, which: str = "ema"
) -> nn.Module:
    """The ControlNet following ``condition``: 2D on one structure-map channel, 3D on encoded label maps."""
    cn = meta.controlnets[condition]
    channels = 1 if cfg.data.volume is None else encoding_channels(cn.num_labels, cn.encoding)
    model = build_controlnet(
        cfg.diffusion.arch,
        cfg.controlnet,
        cfg.latent_channels,
        len(meta.class_names),
        channels,
        cfg.data.spatial_dims,
    ).to(device)
    ckpt.load_exported(model, RunDir(cfg.run_dir).controlnet(condition) / "model.pt", which)
    return model.eval()
