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

from synthmed.artifacts.manifest import MANIFEST, read_manifest
from synthmed.artifacts.run import RunDir
from synthmed.config import DataConfig, read_run_config
from synthmed.data import Record, Skipped, discover
from synthmed.data.loading import Loaded, load_cached, load_real_split
from synthmed.data.readers import is_image_file
from synthmed.data.sources import hash_file, require_source, source_root
from synthmed.data.splits import read_split_file
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
    root = require_source(cfg)
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
    channels: int | None = None,
) -> ImageSet:
    """Read one set; unreadable files are skipped and listed. ``max_images`` keeps a seeded random subset;
    ``channels`` (default: what most of its images have) converts every image to that many channels.

    A real set may also be an .npz (or a CSV manifest with splits): its train split for ``train``, its
    holdout (test) split for a holdout."""
    if Path(root).is_file() and name != "synthetic":
        dcfg = DataConfig(
            image_size=image_size,
            resize_mode=resize_mode,
            clip_percentiles=clip_percentiles,
            channels=channels,
        )
        real = load_real_split(Path(root), "train" if name == "train" else "holdout", dcfg, cache_dir)
        return _image_set(name, real.root, real.loaded, real.class_names, real.skipped)
    cfg = DataConfig(
        source=root,
        image_size=image_size,
        resize_mode=resize_mode,
        clip_percentiles=clip_percentiles,
        channels=channels,
        allow_single_class=True,
        val_fraction=0.0,
        holdout_fraction=0.0,
    )
    records, class_names, skipped = _records(cfg)
    loaded = load_cached(_subset(records, max_images, seed), cfg, f"eval-{name}", cache_dir, class_names)
    return _image_set(name, Path(root), loaded, class_names, skipped)


def _subset(records: list[Record], max_images: int | None, seed: int) -> list[Record]:
    if max_images is None or len(records) <= max_images:
        return records
    keep = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))[:max_images]
    return [records[i] for i in sorted(keep.tolist())]


def _image_set(
    name: str, root: Path, loaded: Loaded, class_names: list[str], skipped: list[Skipped]
) -> ImageSet:
    if len(loaded.images) == 0:
        raise SynthmedError(f"no readable images in the {name} set", path=root)
    unlabelled = class_names == [UNLABELLED]
    return ImageSet(
        name=name,
        root=root,
        images=loaded.images,
        labels=None if unlabelled else loaded.labels,
        class_names=[] if unlabelled else class_names,
        sources=[r.source for r in loaded.records],
        skipped=skipped + loaded.skipped,
        sha256=[r.sha256 for r in loaded.records],
    )


def manifest_run(synthetic: Path) -> Path | None:
    """The run directory a generated folder's manifest names, when there is exactly one and it still holds
    its split.json; None for folders without a manifest (e.g. images from another tool)."""
    runs = {str(row["run_dir"]) for row in read_manifest(Path(synthetic) / MANIFEST) if row.get("run_dir")}
    if len(runs) > 1:
        raise SynthmedError(
            f"the manifest names {len(runs)} runs ({sorted(runs)}); evaluate one run's images at a time or "
            "give --run-dir",
            path=Path(synthetic) / MANIFEST,
        )
    run = Path(runs.pop()) if runs else None
    return run if run is not None and RunDir(run).split.is_file() else None


def load_run_split(
    name: str,
    run_dir: Path,
    split: str,
    *,
    image_size: int,
    resize_mode: str,
    clip_percentiles: tuple[float, float],
    cache_dir: Path | None = None,
    max_images: int | None = None,
    seed: int = 0,
    channels: int | None = None,
) -> ImageSet:
    """The images of one split of a run's own data set (train or holdout), preprocessed like every other
    evaluation set (the run's contrast enhancement, if any, included: the generator learned it)."""
    split_file = read_split_file(RunDir(run_dir).split)
    run_cfg = read_run_config(run_dir)
    if run_cfg.data.source is None or run_cfg.data.volume is not None:
        raise SynthmedError("only 2D runs with a data source give evaluation sets", path=run_dir)
    cfg = run_cfg.data.model_copy(
        update={"image_size": image_size, "resize_mode": resize_mode, "clip_percentiles": clip_percentiles}
        | ({"channels": channels} if channels else {})
    )
    records = [r for r in split_file.records if r.split == split]
    if not records:
        raise SynthmedError(f"the run's {split} split is empty; give --real and --holdout", path=run_dir)
    loaded = load_cached(
        _subset(records, max_images, seed), cfg, f"eval-{name}", cache_dir, split_file.class_names
    )
    return _image_set(name, source_root(Path(run_cfg.data.source)), loaded, split_file.class_names, [])
