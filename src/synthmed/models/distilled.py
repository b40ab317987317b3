"""The distilled student: the teacher's UNet taking the classifier-free guidance scale as an input; and the
lightweight decoder that stands in for the autoencoder's decoder.

The guidance scale enters as an embedding added to the class embedding, which MONAI's DiffusionModelUNet adds
to the time embedding of every block (Meng et al. 2023, "On distillation of guided diffusion models", add it
to the time embedding the same way). The UNet itself stays MONAI's: its ``class_embedding`` is replaced by
:class:`GuidedClassEmbedding`, which reads (label, guidance) pairs, and :class:`GuidedUNet` packs them, so
the teacher's weights, ControlNet residuals and forward pass are used unchanged. The guidance branch's last
layer starts at zero: a new student predicts exactly what the teacher predicts for the label alone.

The lightweight decoder is TAESD's idea (a small decoder distilled from Stable Diffusion's) with MONAI's
AutoencoderKL decoder as the network: the autoencoder's levels at a fraction of its channels, one residual
block per level, no attention. It maps the same latents to the same images at a fraction of the cost.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from monai.networks.nets.autoencoderkl import Decoder
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.run import RunMetadata
from synthmed.config import TrainConfig
from synthmed.config.model import AutoencoderArch
from synthmed.models.builders import build_unet

LITE_GROUPS = 8  # GroupNorm groups of the lightweight decoder: its channels are multiples of this
GUIDANCE_SCALE = 100.0  # the sinusoidal embedding resolves steps of about 1 / GUIDANCE_SCALE in guidance


class GuidedClassEmbedding(nn.Module):
    """Class embedding plus a guidance embedding, from (N, 2) float rows of (class index, guidance)."""

    def __init__(self, classes: nn.Embedding) -> None:
        super().__init__()
        self.classes = classes
        dim = classes.embedding_dim
        self.frequencies = dim // 4
        first, last = nn.Linear(self.frequencies, dim), nn.Linear(dim, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.guidance = nn.Sequential(first, nn.SiLU(), last)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        labels, guidance = packed[:, 0].round().long(), packed[:, 1].float()
        g = get_timestep_embedding(guidance * GUIDANCE_SCALE, self.frequencies)  # float32, as the weights
        return self.classes(labels) + self.guidance(g)


class GuidedUNet(nn.Module):
    """``unet`` (a MONAI DiffusionModelUNet) called with a guidance scale per item beside its class label."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        embedding = unet.class_embedding
        if not isinstance(embedding, nn.Embedding):
            raise TypeError("the student needs a class-conditional UNet (num_class_embeds)")
        unet.class_embedding = GuidedClassEmbedding(embedding)
        self.unet = unet

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        class_labels: torch.Tensor,
        guidance: torch.Tensor,
        **residuals: object,
    ) -> torch.Tensor:
        """``guidance``: (N,) scales; ``residuals``: a ControlNet's down/mid residuals, passed through."""
        packed = torch.stack([class_labels.float(), guidance.float().expand(len(x))], dim=1)
        return self.unet(x, timesteps=timesteps, class_labels=packed, **residuals)


class BoundGuidance(nn.Module):
    """A student with its guidance scale bound, called like any denoiser: ``net(x, timesteps=,
    class_labels=, **residuals)``, so ConditionedUNet can put a ControlNet in front of it."""

    def __init__(self, student: nn.Module, guidance: float | torch.Tensor) -> None:
        super().__init__()
        self.student = student
        self.scale = torch.as_tensor(guidance, dtype=torch.float32).reshape(-1)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor, **residuals: object
    ) -> torch.Tensor:
        scale = self.scale.to(x.device)
        if len(scale) not in (1, len(x)):  # a guided batch doubled by cat([x, x])
            scale = scale.repeat(len(x) // len(scale))
        return self.student(x, timesteps, class_labels, scale, **residuals)


def student_from_teacher(teacher: nn.Module) -> GuidedUNet:
    """A new student: a copy of the teacher's weights with a zero guidance branch."""
    return GuidedUNet(copy.deepcopy(teacher))


def load_student(
    cfg: TrainConfig, meta: RunMetadata, path: Path, device: torch.device, which: str = "ema"
) -> tuple[nn.Module, dict]:
    """A distilled student from its exported ``model.pt``, and the file's ``extra`` entry: a GuidedUNet, or
    for a rectified-flow teacher (distilled without guidance) the teacher's UNet architecture itself."""
    unet = build_unet(cfg.diffusion.arch, cfg.latent_channels, len(meta.class_names), cfg.data.spatial_dims)
    student = (unet if cfg.diffusion.noise.kind == "rflow" else GuidedUNet(unet)).to(device)
    state = ckpt.load_exported(student, path, which)
    return student.eval(), state["extra"]


def build_lite_decoder(
    arch: AutoencoderArch,
    width: float,
    out_channels: int,
    latent_channels: int,
    spatial_dims: int = 2,
    patch: int = 1,
) -> nn.Module:
    """A lightweight decoder for ``latent_channels`` latents of an autoencoder of ``arch`` (more than its own
    for a channel-wise run: it decodes every channel's latents together): same levels (so the same
    compression), ``width`` times its channels (multiples of 8), one residual block per level, no
    attention. Latents folded ``patch`` x ``patch`` into channels (``diffusion.latent_patch``) are unfolded
    first, as the autoencoder's own decoding does."""
    channels = tuple(max(LITE_GROUPS, round(c * width / LITE_GROUPS) * LITE_GROUPS) for c in arch.channels)
    decoder = Decoder(
        spatial_dims=spatial_dims,
        channels=channels,
        in_channels=latent_channels // patch**2,
        out_channels=out_channels,
        num_res_blocks=(1,) * len(channels),
        norm_num_groups=LITE_GROUPS,
        norm_eps=1e-6,
        attention_levels=(False,) * len(channels),
        with_nonlocal_attn=False,
    )
    return nn.Sequential(nn.PixelShuffle(patch), decoder) if patch > 1 else decoder


def load_lite_decoder(
    cfg: TrainConfig, path: Path, device: torch.device, which: str = "ema"
) -> tuple[nn.Module, dict]:
    """The run's lightweight decoder from its exported ``model.pt`` (its width and output channels are in the
    file's ``extra``), and that ``extra``."""
    state = ckpt.load(path)
    extra = state["extra"]
    decoder = build_lite_decoder(
        cfg.autoencoder.arch,
        float(extra["width"]),
        int(extra["out_channels"]),
        cfg.latent_channels,
        cfg.data.spatial_dims,
        cfg.diffusion.latent_patch,
    )
    ckpt.load_exported(decoder, path, which, state)
    return decoder.to(device).eval(), extra
