"""3D training data: check, split and load a folder of volumes with label maps for one run.

The split is made over content hashes of the image files and written to the run's ``split.json`` exactly like
the 2D one (`synthmed.data.splits`), so a resumed run trains on the same volumes and a changed data set fails
loudly. Every volume is read once at preparation: one that fails its checks (NaN, empty, label map off the
image grid, ...) is listed as skipped with the reason and the rest of the data set is used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthmed.config import DataConfig, VolumeData
from synthmed.data.loading import Prepared
from synthmed.data.progress import track
from synthmed.data.sources import Record, Skipped
from synthmed.data.splits import assign_splits, read_split_file, write_split
from synthmed.data.volumes import VolumeConfig, VolumePair, discover_volumes, load_volume_pair
from synthmed.errors import SynthmedError
from synthmed.training import checkpoint as ckpt

CACHE_VERSION = 1


@dataclass
class VolumeSplit:
    """(N, 1, X, Y, Z) images in [0, 1], int64 label maps, (N, 3) spacings in mm, and the items' keys."""

    images: torch.Tensor
    label_maps: torch.Tensor
    spacings: torch.Tensor
    keys: list[str]


def volume_config(vol: VolumeData, spacing: tuple[float, float, float] | None = None) -> VolumeConfig:
    """The ingestion settings for one target spacing (default: the data config's own)."""
    return VolumeConfig(
        size=vol.size,
        spacing=spacing if spacing is not None else vol.spacing,
        modality=vol.modality,
        ct_window=vol.ct_window,
        clip_percentiles=vol.clip_percentiles,
    )


def class_name(cfg: DataConfig, vol: VolumeData) -> str:
    if cfg.classes and len(cfg.classes) > 1:
        raise SynthmedError(
            "3D data sets have one class; give data.classes one name (e.g. the body region)",
            field="data.classes",
        )
    return cfg.classes[0] if cfg.classes else vol.modality


def _content_hash(path: Path) -> str:
    """sha256 of a NIfTI file, or of a DICOM series folder's files in name order."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(ckpt.file_sha256(f).encode())
    return digest.hexdigest()


def _pairs(cfg: DataConfig) -> tuple[Path, dict[str, VolumePair], list[Skipped]]:
    if cfg.source is None:
        raise SynthmedError(
            "no data source: set data.source (or --data) to a folder of volumes", field="data.source"
        )
    root = Path(cfg.source)
    found = discover_volumes(root, require_labels=True)
    return root, {p.image.relative_to(root).as_posix(): p for p in found.pairs}, list(found.skipped)


def prepare_volumes(cfg: DataConfig, seed: int, split_path: Path) -> Prepared:
    """Check every image/label pair, split them and write ``split_path``; or verify and re-use that file."""
    assert cfg.volume is not None
    root, pairs, skipped = _pairs(cfg)
    name = class_name(cfg, cfg.volume)
    hashes = {source: _content_hash(pair.image) for source, pair in pairs.items()}
    if split_path.exists():
        saved = read_split_file(split_path)
        now = {source: hashes.get(source) for source in (r.source for r in saved.records)}
        changed = [r.source for r in saved.records if now[r.source] != r.sha256]
        if changed:
            raise SynthmedError(
                f"{len(changed)} volumes changed or went missing since the split was made "
                f"(e.g. {changed[0]}); restore them or use a new run directory",
                path=split_path,
            )
        return Prepared(saved.class_names, saved.records, saved.skipped)
    records = []
    for source, pair in track(sorted(pairs.items()), "Checking volumes"):
        try:
            load_volume_pair(pair, volume_config(cfg.volume))
        except SynthmedError as exc:
            skipped.append(Skipped(source, str(exc)))
            continue
        records.append(Record(source, name, hashes[source]))
    if not records:
        raise SynthmedError(
            f"no usable volume among {len(pairs)} pairs, e.g. {skipped[-1].reason}", path=root
        )
    records = assign_splits(records, seed, cfg.val_fraction, cfg.holdout_fraction)
    settings = {"source": str(cfg.source), "seed": seed, "val_fraction": cfg.val_fraction}
    write_split(split_path, records, [name], skipped, settings | {"holdout_fraction": cfg.holdout_fraction})
    return Prepared([name], records, skipped)


def load_volume_split(
    cfg: DataConfig, prepared: Prepared, split: str, cache_dir: Path, *, augment: bool = False
) -> VolumeSplit:
    """The volumes of ``split``, at the configured spacing plus, with ``augment``, every training spacing.

    Cached under ``cache_dir`` by content hashes and settings, so a resumed run loads instantly."""
    assert cfg.volume is not None
    spacings = [cfg.volume.spacing] + (list(cfg.volume.train_spacings or []) if augment else [])
    records = [r for r in prepared.records if r.split == split]
    doc = {"v": CACHE_VERSION, "volume": cfg.volume.model_dump(mode="json"), "spacings": spacings}
    doc["items"] = [r.sha256 for r in records]
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"volumes-{split}-{key}.pt"
    if path.exists():
        c = ckpt.load(path)
        return VolumeSplit(c["images"], c["label_maps"], c["spacings"], list(c["keys"]))
    _, pairs, _ = _pairs(cfg)
    images, maps, mm, keys = [], [], [], []
    for spacing in spacings:
        for r in track(records, f"Loading {split} volumes"):
            image, label, meta = load_volume_pair(pairs[r.source], volume_config(cfg.volume, spacing))
            images.append(image)
            maps.append(label)
            mm.append(meta["spacing"])
            keys.append(pairs[r.source].key)
    if not images:
        return VolumeSplit(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, 3), [])
    out = VolumeSplit(
        torch.stack(images), torch.stack(maps), torch.tensor(np.array(mm), dtype=torch.float32), keys
    )
    ckpt.atomic_save(
        {"images": out.images, "label_maps": out.label_maps, "spacings": out.spacings, "keys": out.keys}, path
    )
    return out
