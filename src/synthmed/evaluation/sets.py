"""The image sets an evaluation compares: real training, real holdout and synthetic, at one common size.

A set is a folder of class folders (as `synthmed generate` writes them, or as data sets come) or a flat
folder of images (one unlabelled class). Every set goes through the same ingestion code as training,
so real and synthetic images are windowed and resized identically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synthmed.config import DataConfig
from synthmed.data import Record, Skipped, discover
from synthmed.data.loading import load_cached
from synthmed.data.readers import is_image_file
from synthmed.data.sources import hash_file
from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)

UNLABELLED = "(unlabelled)"


@dataclass
class ImageSet:
    """(N, 1, S, S) images in [0, 1], class indices into ``class_names`` (None when unlabelled)."""

    name: str
    root: Path
    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str]
    sources: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    sha256: list[str] | None = None  # content hash per image, from discovery (None for 3D volumes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def of_class(self, name: str) -> torch.Tensor:
        """Indices of the images of class ``name`` (empty when the set has none)."""
        if self.labels is None or name not in self.class_names:
            return torch.empty(0, dtype=torch.int64)
        return torch.nonzero(self.labels == self.class_names.index(name)).flatten()


def _flat_records(root: Path) -> list[Record]:
    files = sorted(
        p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_file(p)
    )
    return [Record(p.name, UNLABELLED, hash_file(p), "train") for p in files]


def _records(cfg: DataConfig) -> tuple[list[Record], list[str], list[Skipped]]:
    root = Path(cfg.source)
    if not root.is_dir():
        raise SynthmedError("not a folder of images", path=root)
    has_subdirs = any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    if not has_subdirs:
        records = _flat_records(root)
        if not records:
            raise SynthmedError("no image files (PNG, JPEG, BMP, TIFF or DICOM) found", path=root)
        return records, [UNLABELLED], []
    found = discover(cfg)
    return (
        [Record(r.source, r.label, r.sha256, "train") for r in found.records],
        found.class_names,
        found.skipped,
    )


def load_set(
    name: str,
    root: Path,
    *,
    image_size: int,
    resize_mode: str = "pad",
    clip_percentiles: tuple[float, float] = (0.0, 100.0),
    cache_dir: Path | None = None,
    max_images: int | None = None,
    seed: int = 0,
) -> ImageSet:
    """Read one set; unreadable files are skipped and listed. ``max_images`` keeps a seeded random subset."""
    cfg = DataConfig(
        source=root,
        image_size=image_size,
        resize_mode=resize_mode,
        clip_percentiles=clip_percentiles,
        allow_single_class=True,
        val_fraction=0.0,
        holdout_fraction=0.0,
    )
    records, class_names, skipped = _records(cfg)
    if max_images is not None and len(records) > max_images:
        keep = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))[:max_images]
        records = [records[i] for i in sorted(keep.tolist())]
    loaded = load_cached(records, cfg, f"eval-{name}", cache_dir, class_names)
    if len(loaded.images) == 0:
        raise SynthmedError(f"no readable images in the {name} set", path=root)
    unlabelled = class_names == [UNLABELLED]
    return ImageSet(
        name=name,
        root=Path(root),
        images=loaded.images,
        labels=None if unlabelled else loaded.labels,
        class_names=[] if unlabelled else class_names,
        sources=[r.source for r in loaded.records],
        skipped=skipped + loaded.skipped,
        sha256=[r.sha256 for r in loaded.records],
    )
