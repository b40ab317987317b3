"""Everything ``synthmed generate`` and ``synthmed edit`` need."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from synthmed.config.base import Strict
from synthmed.config.train import Condition

#: full: the autoencoder's decoder; lite: the run's lightweight decoder (synthmed distill)
DecoderKind = Literal["full", "lite"]


class GenerateConfig(Strict):
    """Everything `synthmed generate` needs."""

    run_dir: Path
    out: Path
    label: str | None = None
    count: int = Field(16, gt=0)
    steps: int | None = Field(
        None,
        gt=0,
        le=1000,
        description="Denoising steps (default: 10 for ddpm, 30 for rflow, 4 for distilled, else 25).",
    )
    guidance: float | None = Field(
        None,
        ge=0.0,
        description="Classifier-free guidance (default 3; 1 for models trained without label dropout).",
    )
    seed: int = 0
    sampler: str | None = Field(
        None,
        description="Default: ddim for DDPM-trained models, rflow for rflow; distilled: the run's distilled "
        "students (synthmed distill).",
    )
    decoder: DecoderKind = Field(
        "full",
        description="full: the autoencoder's decoder; lite: the run's lightweight decoder (synthmed "
        "distill), a fraction of the cost for a little fidelity (2D).",
    )
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
    conditioning_scale: float | None = Field(
        None,
        ge=0.0,
        description="ControlNet strength (0 = none). Default: 1 for 2D structure maps, 2 for 3D label maps "
        "(chosen by benchmarks/label3d.py on validation label maps).",
    )
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
    max_label_loss: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="3D: a --size smaller than the label maps' extent crops their structures: each label's "
        "lost share is warned about, and above this share generation is refused (1: accept any crop).",
    )
    qc_strict: bool = Field(
        False,
        description="3D: a volume still failing the quality check after its retries is not kept (no file; "
        "its manifest row says why) and the command ends with an error naming the seeds.",
    )

    @property
    def scale(self) -> float:
        """``conditioning_scale`` once generation has filled in its default (2D or 3D)."""
        if self.conditioning_scale is None:
            raise ValueError("conditioning_scale is unset: generate_to_folder resolves it first")
        return self.conditioning_scale


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
