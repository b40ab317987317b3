"""Pydantic config objects, one per command, loadable from YAML on top of a named preset.

Every model forbids unknown keys, so a typo in a YAML file is reported with its dotted field name
instead of being silently ignored.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from synthmed.errors import SynthmedError
from synthmed.models.presets import PRESETS

DEFAULT_PRESET = "small64"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class VolumeConfig(BaseModel):
    """How a 3D volume becomes a model input: RAS, resampled to ``spacing``, windowed to [0, 1], then
    centre-cropped or zero-padded to ``size`` voxels (x, y, z)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    size: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        description="Output voxels (x, y, z) after resampling: centred crop or zero pad."
    )
    spacing: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        None, description="Target voxel size in mm (x, y, z); None keeps each file's own spacing."
    )
    modality: Literal["mri", "ct"] = Field(
        "mri", description="ct: clip Hounsfield units to ct_window; mri: percentile normalisation."
    )
    ct_window: tuple[float, float] = Field((-1000.0, 1000.0), description="HU mapped to [0, 1] for CT.")
    clip_percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="Per-volume intensity percentiles mapped to [0, 1] for MRI."
    )

    @field_validator("size", "spacing", "ct_window", "clip_percentiles", mode="before")
    @classmethod
    def _lists_as_tuples(cls, value: Any) -> Any:
        # YAML and JSON give lists; strict mode only accepts tuples.
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check_ranges(self) -> Self:
        lo, hi = self.clip_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}"
            )
        if not self.ct_window[0] < self.ct_window[1]:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {self.ct_window}")
        return self


class VolumeData(VolumeConfig):
    """3D data of a training run: the ingestion settings plus spacing augmentation and the label count."""

    size: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (32, 48, 32), description="Voxels (x, y, z) after resampling: centred crop or zero pad."
    )
    train_spacings: list[tuple[PositiveFloat, PositiveFloat, PositiveFloat]] | None = Field(
        None,
        description="Spacing augmentation: each training volume is also resampled to each of these "
        "spacings, so the spacing-conditioned model learns what spacing means (MAISI trains on many).",
    )
    num_labels: int | None = Field(
        None, ge=2, description="Label values incl. background (default: highest value in the data + 1)."
    )

    @field_validator("train_spacings", mode="before")
    @classmethod
    def _inner_lists_as_tuples(cls, value: Any) -> Any:
        return [tuple(v) if isinstance(v, list) else v for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check_size(self) -> Self:
        if any(s < 4 or s > 1024 for s in self.size):
            raise ValueError(f"size must be 4..1024 voxels per axis, got {self.size}")
        return self

    def ingestion(self, spacing: tuple[float, float, float] | None = None) -> VolumeConfig:
        """The plain (hashable) ingestion settings, at ``spacing`` (default: this config's own)."""
        fields = self.model_dump(include=set(VolumeConfig.model_fields))
        return VolumeConfig(**fields | {"spacing": spacing if spacing is not None else self.spacing})


class EnhanceConfig(Strict):
    """Contrast enhancement applied during ingestion, after resizing, before padding/cropping (scikit-image).

    clahe: contrast-limited adaptive histogram equalisation; sharpen: unsharp mask; double_clahe: CLAHE twice;
    clahe_sharpen: CLAHE then unsharp mask.
    """

    method: Literal["clahe", "sharpen", "double_clahe", "clahe_sharpen"] = "clahe"
    clip_limit: float = Field(
        0.01, gt=0.0, le=1.0, description="CLAHE clip limit (fraction of a tile's pixels)."
    )
    kernel_size: int | None = Field(
        None, ge=2, description="CLAHE tile side in model pixels (default: 1/8 of the image side)."
    )
    nbins: int = Field(256, ge=16, le=65536, description="CLAHE histogram bins.")
    sharpen_radius: float = Field(1.0, gt=0.0, le=50.0, description="Unsharp mask Gaussian sigma in pixels.")
    sharpen_amount: float = Field(1.0, gt=0.0, le=10.0, description="Unsharp mask strength.")


class DataConfig(Strict):
    """Where the images are and how they become model inputs."""

    source: Path | None = Field(
        None, description="Folder of class sub-folders, MedMNIST-style .npz, or CSV manifest (path,label)."
    )
    image_size: int = Field(64, ge=8, le=2048, description="Square model input size in pixels.")
    resize_mode: Literal["pad", "crop", "stretch"] = Field(
        "pad",
        description="pad: keep aspect ratio, fit the long side and pad; crop: fit the short side and "
        "centre-crop; stretch: ignore aspect ratio.",
    )
    clip_percentiles: tuple[float, float] = Field(
        (0.0, 99.0), description="Intensity percentiles mapped to [0, 1]; values outside are clipped."
    )
    classes: list[str] | None = Field(
        None, description="Classes to use, in this order (default: all, sorted)."
    )
    pattern: str | None = Field(
        None,
        description="Glob for image files inside each class folder (default: <class>/images/* if that "
        "folder exists, else every file below the class folder outside mask/label folders).",
    )
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    on_error: Literal["skip", "raise"] = Field(
        "skip", description="skip: unreadable files are left out and listed in split.json; raise: stop."
    )
    enhance: EnhanceConfig | None = Field(
        None, description="Optional CLAHE / unsharp-mask enhancement of every 2D image (see EnhanceConfig)."
    )
    allow_single_class: bool = Field(
        False, description="Accept a data set with one class (unconditional use)."
    )
    label_names: list[str] | None = Field(
        None,
        min_length=1,
        description=".npz sources: class names of the integer labels 0, 1, ... in order (default: the npz's "
        "label_names array, else MedMNIST's 'label' info in <npz stem>.json beside it, else '0', '1', ...).",
    )
    skip_empty_classes: bool = Field(
        False,
        description="Leave out, with a warning, a class whose every image is skipped (unreadable, or without "
        "a mask for the mask ControlNet) instead of stopping with an error.",
    )
    volume: VolumeData | None = Field(
        None,
        description="Set for 3D: source is a folder of volumes (images/ + labels/, <key>_image/_label, or "
        "DICOM series folders), one class named by classes[0] (default: the modality), or a folder of such "
        "folders, one class each (region, diagnosis).",
    )

    @property
    def spatial_dims(self) -> int:
        return 2 if self.volume is None else 3

    @model_validator(mode="after")
    def _check(self) -> Self:
        lo, hi = self.clip_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}"
            )
        if self.val_fraction + self.holdout_fraction >= 0.9:
            raise ValueError("val_fraction + holdout_fraction must leave at least 10% for training")
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label_names lists a name twice: {self.label_names}")
        return self


class StageConfig(Strict):
    """Optimisation settings shared by every training stage."""

    steps: int = Field(1000, ge=1, description="Optimiser steps for this stage.")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="Periodic checkpoints kept besides last.pt.")
    preview_every: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1)


class NetworkArch(Strict):
    """Fields and checks shared by the MONAI autoencoder and UNet constructors."""

    channels: list[int]
    num_res_blocks: int = Field(1, ge=1)
    attention_levels: list[bool]
    norm_num_groups: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check_levels(self) -> Self:
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per channels entry")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(
                f"every channel count must be divisible by norm_num_groups={self.norm_num_groups}"
            )
        return self


class AutoencoderArch(NetworkArch):
    channels: list[int] = [32, 64, 64]
    attention_levels: list[bool] = [False, False, False]
    latent_channels: int = Field(3, ge=1)
    with_nonlocal_attn: bool = False

    @model_validator(mode="after")
    def _check_depth(self) -> Self:
        if len(self.channels) not in (3, 4):
            raise ValueError("channels needs 3 levels (4x compression) or 4 levels (8x compression)")
        return self

    @property
    def compression(self) -> int:
        return 2 ** (len(self.channels) - 1)


class AutoencoderConfig(StageConfig):
    arch: AutoencoderArch = AutoencoderArch()
    kl_weight: float = Field(1e-6, ge=0)
    adv_weight: float = Field(0.0, ge=0, description="PatchDiscriminator loss weight; 0 disables it.")
    adv_start: int = Field(0, ge=0, description="Step at which the adversarial loss switches on.")
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
        0.0, ge=0, description="MONAI JukeboxLoss on Fourier amplitudes: keeps texture; 0 disables it."
    )


class UNetArch(NetworkArch):
    channels: list[int] = [64, 128, 128]
    attention_levels: list[bool] = [False, True, True]
    num_head_channels: int = Field(32, ge=1)
    norm_num_groups: int = Field(32, ge=1)


class NoiseConfig(Strict):
    """The training noise process; generation builds its sampler from the same settings."""

    kind: Literal["ddpm", "rflow"] = "ddpm"
    num_train_timesteps: int = Field(1000, ge=10)
    schedule: Literal["linear_beta", "scaled_linear_beta", "cosine"] = "scaled_linear_beta"
    beta_start: float = Field(0.0015, gt=0)
    beta_end: float = Field(0.0195, gt=0)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"


class DiffusionConfig(StageConfig):
    arch: UNetArch = UNetArch()
    noise: NoiseConfig = NoiseConfig()
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Classifier-free guidance label dropout.")
    scale_factor_samples: int = Field(
        256, ge=8, description="Training images used to estimate the latent scale."
    )


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
        if 2**steps != self.autoencoder.arch.compression:
            raise ValueError(
                f"controlnet.embedding_channels has {steps} downsampling steps (2^{steps}) but the "
                f"autoencoder compresses {self.autoencoder.arch.compression}x; give it log2(compression) + 1 "
                "entries"
            )
        if self.data.volume is not None and self.controlnet.condition != "mask":
            raise ValueError("3D ControlNets follow the label maps: controlnet.condition must be 'mask'")
        return self

    @model_validator(mode="after")
    def _check_3d(self) -> Self:
        if self.data.volume is None:
            return self
        divisor = self.autoencoder.arch.compression * 2 ** (len(self.diffusion.arch.channels) - 1)
        if any(s % divisor for s in self.data.volume.size):
            raise ValueError(f"data.volume.size must be divisible by {divisor} (VAE x UNet downsampling)")
        if self.autoencoder.perceptual_weights is not None:
            raise ValueError("autoencoder.perceptual_weights takes a 2D network; leave it unset for 3D")
        return self


class GenerateConfig(Strict):
    """Everything `synthmed generate` needs."""

    run_dir: Path
    out: Path
    label: str | None = None
    count: int = Field(16, gt=0)
    steps: int | None = Field(
        None, gt=0, le=1000, description="Denoising steps (default: 10 for ddpm, 30 for rflow, else 25)."
    )
    guidance: float | None = Field(
        None,
        ge=0.0,
        description="Classifier-free guidance (default 3; 1 for models trained without label dropout).",
    )
    seed: int = 0
    sampler: str | None = Field(None, description="Default: ddpm for DDPM-trained models, rflow for rflow.")
    batch_size: int = Field(16, gt=0)
    bit_depth: Literal[8, 16] = 8
    checkpoint: Literal["ema", "raw"] = "ema"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    compile: bool = Field(False, description="torch.compile the UNet (minutes of compiling first).")
    privacy_filter: bool = Field(
        False, description="Drop (and replace) images closer to a training image than holdout images are."
    )
    copy_percentile: float = Field(
        99.0, gt=50.0, lt=100.0, description="Privacy filter: closer than this % of holdout images = a copy."
    )
    # 3D only
    size: tuple[int, int, int] | None = Field(None, description="3D: output voxels (default: training size).")
    spacing: tuple[float, float, float] | None = Field(
        None, description="3D: output voxel size in mm, also the model's spacing input (default: training)."
    )
    label_map: Path | None = Field(
        None,
        description="3D: NIfTI label map to generate the image for (default: one sampled per seed from the "
        "training label maps).",
    )
    augment_label_maps: bool = Field(
        True, description="3D: deform label maps sampled from the training set (random affine, nearest)."
    )
    conditioning_scale: float = Field(1.0, ge=0.0, description="ControlNet strength (0 = none).")
    # 2D structure conditioning
    condition_file: Path | None = Field(
        None,
        description="2D: structure map to generate for, any size (resized like training masks): a binary "
        "mask for the mask ControlNet; for edges/sobel an image whose structure map is computed (a binary "
        "file is used as the edge map itself). Written beside each image as its annotation.",
    )
    condition: Condition | None = Field(
        None, description="2D: which trained ControlNet follows condition_file (default: mask)."
    )
    tile_size: int | None = Field(
        32, ge=2, description="3D: VAE decoding tile in latent voxels (None: whole volume at once)."
    )
    tile_overlap: float = Field(0.25, ge=0.0, lt=1.0, description="3D: fractional overlap of decoding tiles.")
    qc_retries: int = Field(
        3, ge=0, description="3D: new seeds tried when a volume fails the intensity quality check."
    )


class EditConfig(Strict):
    """Everything `synthmed edit` needs: one real 2D image, what to do to it, where to write the result."""

    operation: Literal["insert", "remove", "harmonize"] = Field(
        description="insert: a lesion of class label into region; remove: fill region with plausible "
        "anatomy; harmonize: SDEdit the image towards label (a site, scanner or class)."
    )
    run_dir: Path
    image: Path = Field(description="The image to edit (PNG, JPEG, TIFF, DICOM).")
    region: Path | None = Field(
        None,
        description="Binary mask at the image's size: where to insert (insert) or what to remove (remove); "
        "optional for harmonize (only that region is harmonised).",
    )
    out: Path = Field(description="Output image (.png keeps the input's 8/16-bit values, .tif float32).")
    label: str | None = Field(None, description="Class to generate (insert: required; others: default none).")
    strength: float | None = Field(
        None, ge=0.0, le=1.0, description="Fraction of the noise schedule redone (default 1; harmonize 0.5)."
    )
    steps: int = Field(50, gt=0, le=1000)
    resample: int = Field(2, ge=1, le=20, description="RePaint passes per step inside the region.")
    guidance: float | None = Field(
        None, ge=0.0, description="Classifier-free guidance (default as generate)."
    )
    conditioning_scale: float = Field(
        1.0, ge=0.0, description="Mask ControlNet strength, if the run has one (0 = not used)."
    )
    seed: int = 0
    sampler: str | None = None
    checkpoint: Literal["ema", "raw"] = "ema"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"


class EvaluateConfig(Strict):
    """Everything `synthmed evaluate` needs: three image folders and the metric settings."""

    real: Path | None = Field(
        None,
        description="Real training images the generator was trained on (class folders or flat); default: the "
        "training split of the run named by the synthetic folder's manifest.",
    )
    holdout: Path | None = Field(
        None,
        description="Real images the generator never saw: the real-vs-real reference; default: the holdout "
        "split of that run (same distribution). Given beside a run, it is reported as a second floor and "
        "checked for a shift.",
    )
    synthetic: Path = Field(description="Synthetic images, e.g. the output folder of `synthmed generate`.")
    run_dir: Path | None = Field(
        None, description="Run whose split gives the real sets (default: the one the manifest names)."
    )
    out: Path = Field(description="Report folder: report.json, report.html and its images.")
    masks: bool = Field(
        False,
        description="Evaluate condition fidelity: masks <stem>_mask*.png beside images or in a mask/ folder.",
    )
    image_size: int = Field(64, ge=16, le=1024, description="Every set is resized to this square size.")
    resize_mode: Literal["pad", "crop", "stretch"] = "pad"
    clip_percentiles: tuple[float, float] = (0.0, 99.0)
    max_images: int | None = Field(None, ge=10, description="Seeded random subset per set (default: all).")
    extractor: Path | None = Field(
        None,
        description="Local .pt2/TorchScript feature network instead of the in-house one (never downloaded).",
    )
    extractor_size: int = Field(224, ge=16, description="Input size the local feature network expects.")
    extractor_steps: int = Field(600, ge=1, description="Training steps of the in-house extractor.")
    segmenter_steps: int = Field(400, ge=1, description="Training steps of the condition-fidelity segmenter.")
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples for the 95% intervals (0: none).")
    prdc_k: int = Field(5, ge=1, description="Neighbours for precision/recall/density/coverage.")
    copy_percentile: float = Field(
        99.0,
        gt=50.0,
        lt=100.0,
        description="Flag a synthetic image closer to training than this % of holdout.",
    )
    msssim_pairs: int = Field(300, ge=2, description="Random pairs per set for the MS-SSIM diversity.")
    c2st_folds: int = Field(5, ge=2, le=20, description="C2ST: cross-validation folds.")
    c2st_steps: int = Field(
        100, ge=1, description="C2ST: training steps of each fold's CNN (calibrated: real-vs-real and blur)."
    )
    c2st_permutations: int = Field(200, ge=10, description="C2ST linear probe: permutations for its p-value.")
    slice_fraction: float = Field(0.5, gt=0.0, le=1.0, description="3D: central fraction of slices per view.")
    volume_size: tuple[int, int, int] = Field(
        (64, 64, 64), description="3D: voxels (x, y, z) after resampling."
    )
    volume_spacing: tuple[float, float, float] | None = Field(None, description="3D: target spacing in mm.")
    modality: Literal["mri", "ct"] = Field(
        "mri", description="3D intensity handling: MRI percentiles, CT window."
    )
    cache_dir: Path | None = Field(
        None, description="Cache for data and extractors (default ~/.cache/synthmed)."
    )
    seed: int = 0


class AugmentationConfig(Strict):
    """Everything `synthmed benchmark-augmentation` needs: does synthetic data help a downstream model?"""

    task: Literal["classify", "segment"] = Field(
        "classify", description="classify: ResNet classifier; segment: UNet on <stem>_mask* masks."
    )
    real_train: Path = Field(
        description="Real training images (class folders); the validation split comes from here."
    )
    real_test: Path = Field(description="Real test images the generator never saw (class folders).")
    synthetic: Path = Field(
        description="Synthetic images as `synthmed generate` writes them: <label>/*.png and manifest.jsonl."
    )
    out: Path = Field(description="Output folder: results.json, results.csv and report.html.")
    image_size: int = Field(64, ge=16, le=1024, description="Every set is resized to this square size.")
    resize_mode: Literal["pad", "crop", "stretch"] = "pad"
    volume_size: tuple[int, int, int] = Field(
        (64, 64, 64), description="3D (segment on NIfTI folders): voxels (x, y, z) after crop/pad."
    )
    arms: list[Literal["real", "real+synthetic", "synthetic", "pretrain"]] | None = Field(
        None,
        description="Training arms (default: all four for classify; pretrain is classify-only).",
    )
    ratios: list[float] = Field(
        [0.5, 1.0, 2.0], description="Synthetic:real ratios of the real+synthetic arm."
    )
    real_fractions: list[float] = Field(
        [1.0], description="Fractions of the real training images used (scarcity sweep), stratified."
    )
    minority_class: str | None = Field(None, description="Class subsampled to minority_fraction prevalence.")
    minority_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="Prevalence of minority_class in the real training images."
    )
    fill_class: str | None = Field(
        None,
        description="real+synthetic arms add synthetic images of this class only (fill a minority gap); "
        "the synthetic and pretrain arms still use every synthetic image.",
    )
    seeds: list[int] = Field([0, 1], min_length=1, description="One training run per seed and arm.")
    steps: int = Field(
        400, ge=1, description="Optimiser steps per arm (pretrain: this on synthetic, then on real)."
    )
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0, description="Peak learning rate of the classifier's one-cycle schedule.")
    val_fraction: float = Field(
        0.15,
        gt=0.0,
        lt=0.9,
        description="Stratified real validation split (early stopping), from real_train.",
    )
    eval_every: int = Field(
        25, ge=1, description="Validation every this many steps; the best weights are kept."
    )
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples of the test images for the 95% CIs.")
    cache_dir: Path | None = Field(None, description="Cache for loaded images (default ~/.cache/synthmed).")
    seed: int = Field(0, description="Seed of the validation split and the bootstrap resamples.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.minority_class is None) != (self.minority_fraction is None):
            raise ValueError("minority_class and minority_fraction must be given together")
        if any(r <= 0 for r in self.ratios) or any(not 0 < f <= 1 for f in self.real_fractions):
            raise ValueError("ratios must be > 0 and real_fractions in (0, 1]")
        if self.arms is not None and not self.arms:
            raise ValueError("arms must name at least one arm")
        return self


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"field '{loc}': {e['msg']}")
    return f"invalid config {source}: " + "; ".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise SynthmedError("config file not found", path=path) from exc
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise SynthmedError(f"not a readable YAML file ({exc})", path=path) from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SynthmedError("the YAML top level must be a mapping of fields", path=path)
    return raw


def build_train_config(values: dict[str, Any], source: str = "(arguments)") -> TrainConfig:
    """Apply ``values`` on top of their preset's defaults and validate."""
    preset = values.get("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        raise SynthmedError(f"unknown preset '{preset}'; choose one of {sorted(PRESETS)}", field="preset")
    merged = _deep_merge(PRESETS[preset], values)
    merged["preset"] = preset
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        raise SynthmedError(format_validation_error(err, source)) from err


def load_train_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or none), apply dotted-free nested ``overrides`` and validate on the preset."""
    values = read_yaml(path) if path is not None else {}
    if overrides:
        values = _deep_merge(values, overrides)
    return build_train_config(values, source=str(path) if path else "(arguments)")


def save_yaml(model: BaseModel, path: Path) -> None:
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)


# --- review web app ------------------------------------------------------------------------------

USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class UserConfig(Strict):
    """`synthmed users add`: a login of the review web app (the password never goes through a config)."""

    username: str = Field(pattern=USERNAME_PATTERN, description="Letters, digits and _ . @ - (1-64).")
    role: Literal["admin", "reader"] = Field("reader", description="admin: studies, review; reader: studies.")
    database: str | None = Field(None, description="Catalogue URL (default: $SYNTHMED_DATABASE_URL).")


class ServeConfig(Strict):
    """`synthmed serve`: the review web app."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    database: str | None = Field(None, description="Catalogue URL (default: $SYNTHMED_DATABASE_URL).")
    secure_cookies: bool = Field(
        True, description="Session cookie only over HTTPS; off only for plain http on a loopback host."
    )
    cache_dir: Path | None = Field(
        None, description="Blinded study images (default: beside a SQLite file, else ./synthmed-review-cache)"
    )
    max_failed_logins: int = Field(5, ge=1, description="Failed logins before a user name is locked.")
    max_failed_per_address: int = Field(
        20, ge=1, description="Failed logins before a client address is locked."
    )
    lockout_minutes: float = Field(15.0, gt=0, description="How long a lock lasts.")
    session_hours: float = Field(8.0, gt=0, description="A login expires after this many hours.")
    worker: bool = Field(True, description="Run queued jobs in the server process (off: synthmed worker).")
    jobs_dir: Path | None = Field(
        None, description="Job previews (default: beside a SQLite file, else ./synthmed-jobs)."
    )
    outputs_dir: Path | None = Field(
        None, description="Generation jobs' outputs (default: beside a SQLite file, else ./synthmed-outputs)."
    )
    runs_dir: Path | None = Field(None, description="Trained runs offered besides the catalogue's models.")

    @model_validator(mode="after")
    def _cookies_need_tls(self) -> Self:
        if not self.secure_cookies and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"insecure cookies are only allowed on a loopback host ({', '.join(LOOPBACK_HOSTS)}), not "
                f"{self.host!r}: serve behind HTTPS instead"
            )
        return self


class StudyConfig(Strict):
    """A reader study: a seeded mix of real and synthetic samples shown to readers (admin form or YAML)."""

    name: str = Field(min_length=1, max_length=200)
    real_dataset: str = Field(min_length=1, description="Name of a catalogue data set of origin real.")
    synthetic_dataset: str = Field(min_length=1, description="Name of a data set of origin synthetic.")
    n_real: int = Field(gt=0, le=100_000, description="Real samples drawn with the seed.")
    n_synthetic: int = Field(gt=0, le=100_000, description="Synthetic samples drawn with the seed.")
    readers: list[str] = Field(min_length=1, description="User names of the readers (role reader).")
    kind: Literal["turing", "rating"] = Field(
        "turing", description="turing: forced choice real/synthetic + confidence; rating: Likert scales only."
    )
    likert: bool = Field(True, description="Ask realism, anatomy (and 3D slice consistency) with each item.")
    repeat_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="Fraction of items shown a second time (intra-reader consistency)."
    )
    image_size: int = Field(512, ge=64, le=2048, description="Every served image: this square, in pixels.")
    seed: int = Field(0, ge=0, description="Seed of the sample draw and of every reader's order.")

    @model_validator(mode="after")
    def _rating_needs_likert(self) -> Self:
        if self.kind == "rating" and not self.likert:
            raise ValueError("a rating study asks the Likert scales: set likert to true or kind to turing")
        if len(set(self.readers)) != len(self.readers):
            raise ValueError("readers: a user name is listed twice")
        return self


# --- catalogue -----------------------------------------------------------------------------------


class DatabaseConfig(Strict):
    """`synthmed db upgrade|current`, `synthmed catalogue list`: which catalogue database."""

    database: str | None = Field(None, description="Catalogue URL (default: $SYNTHMED_DATABASE_URL).")


class CatalogueImportConfig(DatabaseConfig):
    """`synthmed catalogue import`: a `synthmed generate` output folder as a synthetic data set."""

    out_dir: Path = Field(description="The output folder (with manifest.jsonl).")
    name: str | None = Field(
        None, min_length=1, max_length=200, description="Data set name (default: the folder's name)."
    )


class CatalogueImportRealConfig(DatabaseConfig):
    """`synthmed catalogue import-real`: a folder of real images as a real data set."""

    folder: Path = Field(description="Class folders of 2D images, or NIfTI volumes (3D).")
    name: str = Field(min_length=1, max_length=200, description="Data set name.")
    spatial_dims: Literal[2, 3] | None = Field(None, description="Default: 3 when the folder holds NIfTI.")


class FromRequestsConfig(DatabaseConfig):
    """`synthmed generate --from-requests`: fulfil the catalogue's open regeneration requests."""

    device: Literal["auto", "cpu", "cuda"] = "auto"


# --- export --------------------------------------------------------------------------------------


class ExportConfig(DatabaseConfig):
    """`synthmed export`: the approved synthetic samples as an nnU-Net / Decathlon style training corpus."""

    format: Literal["png", "nifti", "dicom"] = Field(
        description="png (2D, source bit depth), nifti (.nii.gz) or dicom (Secondary Capture + SEG, "
        "marked synthetic)."
    )
    out: Path = Field(description="Output folder: imagesTr/, labelsTr/, dataset.json, manifest.csv.")
    dataset: str | None = Field(
        None, min_length=1, description="Export only this synthetic data set (default: all approved samples)."
    )
    overwrite: bool = Field(False, description="Replace a previous export in out; other files there stay.")


# --- jobs ----------------------------------------------------------------------------------------


class WorkerConfig(DatabaseConfig):
    """`synthmed worker`: runs the catalogue's queued generation, evaluation and training jobs."""

    jobs_dir: Path | None = Field(
        None, description="Job previews (default: beside a SQLite file, else ./synthmed-jobs)."
    )
    poll_s: float = Field(2.0, gt=0, le=3600, description="Seconds between looks at an empty queue.")
    heartbeat_s: float = Field(5.0, gt=0, le=600, description="Seconds between a running job's heartbeats.")
    stale_after_s: float = Field(
        60.0, gt=0, description="A running job without a heartbeat for this long has lost its worker."
    )
    max_attempts: int = Field(3, ge=1, le=100, description="Starts of a job whose worker keeps dying.")
    progress_every_s: float = Field(0.25, ge=0, description="Least seconds between progress updates.")
    preview_every_s: float = Field(
        0.5, ge=0, description="Least seconds between live-view previews (more when decoding them is slow)."
    )
    once: bool = Field(False, description="Run the jobs queued now, then exit instead of waiting for more.")

    @model_validator(mode="after")
    def _heartbeat_before_stale(self) -> Self:
        if self.stale_after_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s:g}) must be at least twice heartbeat_s "
                f"({self.heartbeat_s:g}), or live jobs would be taken for dead ones"
            )
        return self
