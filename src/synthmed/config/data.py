"""How images and volumes are read and become model inputs (the ``data`` section of a training config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from synthmed.config.base import Strict


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
    channels: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Image channels the model sees: 1 (grey: colour becomes luminance), 3 (RGB: grey images "
        "are repeated), or N (.npz images with N channels; volumes: N contrasts). Default: what most of the "
        "data set's images have; every image converted to fit is counted and reported (a volume with "
        "another count is skipped).",
    )
    channel_names: list[str] | None = Field(
        None,
        min_length=1,
        description="Volumes: the name of each channel, resolved from the data at training (the contrast "
        "folders images/<name>/, or nnU-Net's dataset.json channel_names; else '0', '1', ...); the export's "
        "nnU-Net channel_names.",
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
        if (
            self.channel_names is not None
            and self.channels is not None
            and len(self.channel_names) != self.channels
        ):
            raise ValueError(
                f"channel_names names {len(self.channel_names)} channels but channels is {self.channels}"
            )
        if self.val_fraction + self.holdout_fraction >= 0.9:
            raise ValueError("val_fraction + holdout_fraction must leave at least 10% for training")
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label_names lists a name twice: {self.label_names}")
        return self
