"""Everything ``synthmed train`` needs, on top of a named preset (presets.yaml beside this file)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import Field, ValidationError, model_validator

from synthmed.artifacts.run import RunDir
from synthmed.config.base import Strict, deep_merge, format_validation_error, read_yaml
from synthmed.config.data import DataConfig
from synthmed.config.model import AutoencoderArch, NoiseConfig, UNetArch
from synthmed.errors import SynthmedError

DEFAULT_PRESET = "small64"
#: Named architecture and training presets, in the order ``synthmed presets`` lists them.
PRESETS: dict[str, dict[str, Any]] = yaml.safe_load(
    resources.files("synthmed.config").joinpath("presets.yaml").read_text()
)


class StageConfig(Strict):
    """Optimisation settings shared by every training stage."""

    steps: int = Field(1000, ge=1, description="Optimiser steps for this stage.")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_decay: Literal["none", "cosine"] = Field(
        "none", description="After warm-up: constant lr (none), or cosine decay to lr_final x lr at the end."
    )
    lr_final: float = Field(0.1, ge=0.0, le=1.0, description="Cosine decay's final lr, as a share of lr.")
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="Periodic checkpoints kept besides last.pt.")
    preview_every: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1)


class AutoencoderConfig(StageConfig):
    source: Literal["train", "foundation"] = Field(
        "train",
        description="foundation: use the autoencoder shipped with synthmed (2D greyscale; trained once on "
        "chest X-ray, ultrasound and MRI slices; its arch is the small64 preset's), so a run trains only the "
        "diffusion UNet; for volumes it encodes each axial slice and the 3D UNet learns the stacked latents "
        "(preset small3d); train: train this run's own autoencoder (unusual data; preset vae3d for volumes).",
    )
    weights: Path | None = Field(
        None,
        description="source foundation: a local safetensors file of another pretrained AutoencoderKL with "
        "this arch instead of the shipped one (nothing is downloaded).",
    )
    arch: AutoencoderArch = AutoencoderArch()
    kl_weight: float = Field(1e-6, ge=0)
    adv_weight: float = Field(0.0, ge=0, description="PatchDiscriminator loss weight; 0 disables it.")
    adv_start: int = Field(0, ge=0, description="Step at which the adversarial loss switches on.")
    disc_warmup: int = Field(
        0,
        ge=0,
        description="Steps before adv_start in which the discriminator alone learns, against the "
        "reconstructions, so that it tells detail from blur when its loss reaches the decoder.",
    )
    adv_adaptive: bool = Field(
        False,
        description="Scale the adversarial loss each step so its gradient at the decoder's last layer is "
        "adv_weight x the reconstruction loss's (the adaptive weight of VQGAN and latent diffusion).",
    )
    decode_mean: bool = Field(
        False,
        description="Train the decoder on the posterior mean instead of posterior samples: for a decoder "
        "phase under a diffusion model that learns posterior means (diffusion.latents: mean).",
    )
    disc_lr_factor: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Discriminator lr as a multiple of lr (two time-scale update rule, Heusel et al. 2017): "
        "a faster discriminator keeps up with the decoder it judges.",
    )
    disc_channels: int = Field(32, ge=4)
    disc_layers: int = Field(2, ge=1)
    perceptual_weights: Path | None = Field(
        None,
        description="Local feature network (torch.export .pt2 or TorchScript) for a perceptual loss; "
        "nothing is downloaded.",
    )
    perceptual_weight: float = Field(0.3, ge=0)
    grad_weight: float = Field(
        0.0, ge=0, description="L1 loss on image gradients (finite differences): keeps edges; 0 disables it."
    )
    spectral_weight: float = Field(
        0.0,
        ge=0,
        description="MSE of Fourier amplitudes (as MONAI JukeboxLoss): keeps texture; 0 disables it.",
    )

    @model_validator(mode="after")
    def _check_weights(self) -> Self:
        if self.weights is not None and self.source != "foundation":
            raise ValueError("autoencoder.weights replaces the foundation network; set source: foundation")
        return self


class GeometricAugment(Strict):
    """Light geometric augmentation of a 2D diffusion stage: seeded randomly rotated, scaled and shifted
    copies of every training image, encoded once beside the originals. Left-right flips are not offered:
    they put a chest X-ray's heart on the wrong side."""

    copies: int = Field(0, ge=0, le=8, description="Augmented copies per training image; 0 disables it.")
    rotate_deg: float = Field(5.0, ge=0.0, le=30.0, description="Rotation drawn from +-this many degrees.")
    scale: float = Field(0.05, ge=0.0, le=0.3, description="Zoom drawn from 1 +- this.")
    translate: float = Field(0.03, ge=0.0, le=0.2, description="Shift drawn from +- this share of the size.")


class DiffusionConfig(StageConfig):
    arch: UNetArch = UNetArch()
    augment: GeometricAugment = GeometricAugment()
    latents: Literal["sample", "mean"] = Field(
        "sample",
        description="What the UNet learns: latents sampled from the encoder's posterior each step (LDM, "
        "MONAI), or the posterior mean (one fixed latent per image).",
    )
    noise: NoiseConfig = NoiseConfig()
    latent_patch: Literal[1, 2, 4] = Field(
        1,
        description="2D: fold each p x p block of latent cells into channels before the UNet (space to "
        "depth, as DiT's patch size), so 128 px images on the 4x foundation autoencoder (32x32x4 latents) "
        "train a 16x16x16 UNet at small64's cost (presets small128, small256); 1: latents as they are.",
    )
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Classifier-free guidance label dropout.")
    scale_factor_samples: int = Field(
        256, ge=8, description="Training images used to estimate the latent scale."
    )
    snr_gamma: float | None = Field(
        None,
        gt=0,
        description="Min-SNR-gamma loss weighting (Hang et al., ICCV 2023; 5 in the paper): down-weights the "
        "easy low-noise timesteps; unset: plain MSE. DDPM noise only.",
    )

    @model_validator(mode="after")
    def _check_snr(self) -> Self:
        if self.snr_gamma is not None and self.noise.kind != "ddpm":
            raise ValueError("diffusion.snr_gamma weights DDPM timesteps; unset it for rflow")
        return self


Condition = Literal["mask", "edges", "sobel"]


class ControlNetConfig(StageConfig):
    """A ControlNet: a trainable copy of the frozen diffusion UNet's encoder that follows a structure map
    (2D: masks, Canny edges or Sobel gradients; 3D: label maps, MAISI style)."""

    condition: Condition = Field(
        "mask",
        description="2D: what the ControlNet follows: mask (the <stem>_mask*.png files, merged), edges "
        "(Canny edges of the image, computed on the fly) or sobel (gradient magnitude). 3D: the label maps. "
        "Each condition trains its own ControlNet in the run (controlnet/, controlnet-edges/, ...).",
    )
    edge_sigma: float = Field(1.5, gt=0.0, le=10.0, description="Canny Gaussian sigma in model pixels.")
    empty_mask_classes: list[str] = Field(
        [],
        description="2D mask condition: classes whose images have no mask file because they show no lesion "
        "(BUSI 'normal'); their mask is empty. Images of other classes without a mask file are skipped.",
    )

    encoding: Literal["onehot", "bits"] = Field(
        "onehot",
        description="Label map channels: onehot (one per foreground label) or bits (MAISI's binary code, "
        "ceil(log2(labels)) channels, for hundreds of labels).",
    )
    embedding_channels: list[int] = Field(
        [8, 16, 32],
        description="Conditioning encoder widths; len - 1 stride-2 steps must equal the VAE compression.",
    )


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU."
    )
    num_threads: int | None = Field(None, ge=1, description="CPU threads (default: torch's choice).")
    tensorboard: bool = False


class TrainConfig(Strict):
    """Everything `synthmed train` needs; written resolved into the run directory."""

    run_dir: Path = Path("runs/default")
    seed: int = 0
    preset: str = DEFAULT_PRESET
    data: DataConfig = DataConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    controlnet: ControlNetConfig = ControlNetConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _check_controlnet(self) -> Self:
        steps = len(self.controlnet.embedding_channels) - 1
        factor = self.latent_factors[0]
        if 2**steps != factor:
            raise ValueError(
                f"controlnet.embedding_channels has {steps} downsampling steps (2^{steps}) but the UNet's "
                f"latents are {factor}x smaller than the images (autoencoder compression x "
                f"diffusion.latent_patch); give it log2({factor}) + 1 entries"
            )
        if self.data.volume is not None and self.controlnet.condition != "mask":
            raise ValueError("3D ControlNets follow the label maps: controlnet.condition must be 'mask'")
        return self

    @model_validator(mode="after")
    def _check_2d_size(self) -> Self:
        if self.data.volume is not None:
            return self
        divisor = self.latent_factors[0] * 2 ** (len(self.diffusion.arch.channels) - 1)
        if self.data.image_size % divisor:
            nearest = max(divisor, round(self.data.image_size / divisor) * divisor)
            raise ValueError(
                f"data.image_size {self.data.image_size} must be divisible by {divisor} (autoencoder x "
                f"latent patch x UNet downsampling); use {nearest}"
            )
        return self

    @model_validator(mode="after")
    def _check_3d(self) -> Self:
        if self.data.volume is None:
            return self
        if self.diffusion.augment.copies:
            raise ValueError(
                "diffusion.augment is for 2D images; 3D runs augment with data.volume.train_spacings"
            )
        if self.diffusion.latent_patch != 1:
            raise ValueError("diffusion.latent_patch folds 2D latents; leave it at 1 for 3D")
        unet = 2 ** (len(self.diffusion.arch.channels) - 1)
        divisors = [f * unet for f in self.latent_factors]
        if any(s % d for s, d in zip(self.data.volume.size, divisors, strict=True)):
            raise ValueError(
                f"data.volume.size must be divisible by {tuple(divisors)} per axis (VAE x UNet downsampling)"
            )
        if self.autoencoder.perceptual_weights is not None:
            raise ValueError("autoencoder.perceptual_weights takes a 2D network; leave it unset for 3D")
        return self

    @property
    def image_channels(self) -> int:
        """Channels of the run's images (``data.channels`` as resolved from the data when training)."""
        return self.data.channels or 1

    @property
    def channelwise(self) -> bool:
        """Multi-channel 2D on the grey foundation autoencoder: each channel is encoded on its own."""
        return self.image_channels > 1 and self.autoencoder.source == "foundation"

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the UNet sees: the autoencoder's, times the image channels when each
        channel is encoded on its own (synthmed.models.channelwise), times latent_patch squared when latent
        cells are folded into channels (synthmed.models.patched)."""
        per_image = self.autoencoder.arch.latent_channels * (self.image_channels if self.channelwise else 1)
        return per_image * self.diffusion.latent_patch**2

    @property
    def slicewise(self) -> bool:
        """3D on the 2D foundation autoencoder: volumes are encoded axial slice by axial slice."""
        return self.data.volume is not None and self.autoencoder.source == "foundation"

    @property
    def latent_factors(self) -> tuple[int, ...]:
        """How many pixels (voxels) per UNet latent cell along each spatial axis: the autoencoder's
        compression (2D: times diffusion.latent_patch), but 1 along Z when volumes are encoded slice by slice
        (synthmed.models.slicewise)."""
        f = self.autoencoder.arch.compression
        if self.data.volume is None:
            return (f * self.diffusion.latent_patch,) * 2
        return (f, f, 1) if self.slicewise else (f, f, f)

    @property
    def control_stretch(self) -> int:
        """Slice-wise latents keep every slice while the ControlNet's embedding downsamples every axis by the
        compression: its label maps are repeated this many times along Z (1 otherwise)."""
        return self.autoencoder.arch.compression if self.slicewise else 1


def build_train_config(values: dict[str, Any], source: str = "(arguments)") -> TrainConfig:
    """Apply ``values`` on top of their preset's defaults and validate."""
    preset = values.get("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        raise SynthmedError(f"unknown preset '{preset}'; choose one of {sorted(PRESETS)}", field="preset")
    merged = deep_merge(PRESETS[preset], values)
    merged["preset"] = preset
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        raise SynthmedError(format_validation_error(err, source)) from err


def load_train_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or none), apply dotted-free nested ``overrides`` and validate on the preset."""
    values = read_yaml(path) if path is not None else {}
    if overrides:
        values = deep_merge(values, overrides)
    return build_train_config(values, source=str(path) if path else "(arguments)")


def read_run_config(run_dir: Path) -> TrainConfig:
    """A trained run's config.yaml, validated on its preset, with ``run_dir`` where the run lies now."""
    path = RunDir(Path(run_dir)).config
    cfg = build_train_config(read_yaml(path), source=str(path))
    return cfg.model_copy(update={"run_dir": Path(run_dir)})
