"""3D training data: check, split and load a folder of volumes with label maps for one run.

The split is made over content hashes of the image files and written to the run's ``split.json`` exactly like
the 2D one (`synthmed.data.splits`), so a resumed run trains on the same volumes and a changed data set fails
loudly. Every volume is read once at preparation: one that fails its checks (NaN, empty, label map off the
image grid, ...) or has another channel count than the data set (``data.channels``; unset: what most volumes
have) is listed as skipped with the reason and the rest of the data set is used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.files import file_sha256
from synthmed.config import DataConfig
from synthmed.data.integrity import content_groups, duplicates, warn_cross_split
from synthmed.data.loading import Prepared, report_split
from synthmed.data.sources import Record, Skipped
from synthmed.data.splits import assign_splits, read_split_file, write_split
from synthmed.data.volumes import (
    VolumePair,
    channel_mismatch,
    common_channels,
    discover_volumes,
    is_volume_set,
    load_volume_pair,
)
from synthmed.errors import SynthmedError
from synthmed.progress import track

CACHE_VERSION = 1


@dataclass
class VolumeSplit:
    """(N, C, X, Y, Z) images in [0, 1], (N, 1, X, Y, Z) int64 label maps, (N, 3) spacings in mm, the
    items' keys and their (N,) class indices."""

    images: torch.Tensor
    label_maps: torch.Tensor
    spacings: torch.Tensor
    keys: list[str]
    classes: torch.Tensor


def class_roots(cfg: DataConfig) -> dict[str, Path]:
    """Class name -> folder of volumes. A source holding volumes is one class (``data.classes[0]``, else the
    modality); a source of sub-folders that each hold volumes has one class per sub-folder (e.g. body region
    or diagnosis), filtered and ordered by ``data.classes`` when given."""
    assert cfg.volume is not None
    if cfg.source is None:
        raise SynthmedError(
            "no data source: set data.source (or --data) to a folder of volumes", field="data.source"
        )
    root = Path(cfg.source)
    if not root.is_dir():
        raise SynthmedError("not a folder of volumes", path=root)
    if is_volume_set(root):
        if cfg.classes and len(cfg.classes) > 1:
            raise SynthmedError(
                f"data.classes lists {len(cfg.classes)} classes but the source holds the volumes of one; "
                "put each class's volumes in its own sub-folder",
                path=root,
                field="data.classes",
            )
        return {cfg.classes[0] if cfg.classes else cfg.volume.modality: root}
    found = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and is_volume_set(d)}
    if not found:
        return {cfg.volume.modality: root}  # discovery explains what is missing
    if cfg.classes:
        unknown = [c for c in cfg.classes if c not in found]
        if unknown:
            raise SynthmedError(f"no class folder for {unknown}; found {sorted(found)}", field="data.classes")
        return {c: found[c] for c in cfg.classes}
    return found


def _content_hash(pair: VolumePair) -> str:
    """sha256 of a NIfTI file, or of a DICOM series folder's files in name order; several contrast files:
    of the hashes of each in channel order."""
    if pair.contrasts:
        joined = "".join(_content_hash(VolumePair(path, None, pair.key)) for path in pair.files)
        return hashlib.sha256(joined.encode()).hexdigest()
    path = pair.image
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()


def _pairs(cfg: DataConfig) -> tuple[dict[str, tuple[str, VolumePair]], list[Skipped], list[str] | None]:
    """Every image/label pair by its path relative to the source, with its class; the skipped files; the
    contrast (channel) names of a multi-contrast layout."""
    pairs: dict[str, tuple[str, VolumePair]] = {}
    skipped: list[Skipped] = []
    names: list[str] | None = None
    root = Path(str(cfg.source))
    for name, folder in class_roots(cfg).items():
        prefix = folder.relative_to(root)
        found = discover_volumes(folder, require_labels=True)
        pairs |= {(prefix / p.image.relative_to(folder)).as_posix(): (name, p) for p in found.pairs}
        skipped += [Skipped((prefix / s.source).as_posix(), s.reason, name) for s in found.skipped]
        names = names or found.channel_names
    return pairs, skipped, names


def channel_names(cfg: DataConfig) -> list[str] | None:
    """The contrast folder names (or nnU-Net channel names) of the source, None for other layouts."""
    return _pairs(cfg)[2]


def prepare_volumes(cfg: DataConfig, seed: int, split_path: Path) -> Prepared:
    """Check every image/label pair, split them (stratified by class) and write ``split_path``; or verify
    and re-use that file."""
    assert cfg.volume is not None
    pairs, skipped, _ = _pairs(cfg)
    hashes = {source: _content_hash(pair) for source, (_, pair) in pairs.items()}
    if split_path.exists():
        saved = read_split_file(split_path)
        changed = [r.source for r in saved.records if hashes.get(r.source) != r.sha256]
        if changed:
            raise SynthmedError(
                f"{len(changed)} volumes changed or went missing since the split was made "
                f"(e.g. {changed[0]}); restore them or use a new run directory",
                path=split_path,
            )
        return report_split(Prepared(saved.class_names, saved.records, saved.skipped), split_path)
    records = []
    for source, (name, pair) in track(sorted(pairs.items()), "Checking volumes"):
        try:
            image, _, meta = load_volume_pair(pair, cfg.volume.ingestion())
        except SynthmedError as exc:
            skipped.append(Skipped(source, str(exc), name))
            continue
        records.append(Record(source, name, hashes[source], phash=meta["phash"], channels=len(image)))
    records = _same_channels(records, skipped, cfg.channels)
    if not records:
        reason = skipped[-1].reason if skipped else "no image/label pairs"
        raise SynthmedError(f"no usable volume among {len(pairs)} pairs, e.g. {reason}", path=cfg.source)
    class_names = [c for c in class_roots(cfg) if any(r.label == c for r in records)]
    records = assign_splits(records, seed, cfg.val_fraction, cfg.holdout_fraction)
    copies = duplicates(records, content_groups(records))
    warn_cross_split(copies)
    prepared = report_split(Prepared(class_names, records, skipped), split_path)
    settings = {"source": str(cfg.source), "seed": seed, "val_fraction": cfg.val_fraction}
    settings["holdout_fraction"] = cfg.holdout_fraction
    write_split(split_path, records, class_names, skipped, settings, duplicates=copies)
    return prepared


def _same_channels(records: list[Record], skipped: list[Skipped], channels: int | None) -> list[Record]:
    """The records with ``channels`` channels (None: what most have); the others go to ``skipped``."""
    count = channels or common_channels([r.channels for r in records])
    skipped += [
        Skipped(r.source, channel_mismatch(r.channels, count), r.label)
        for r in records
        if r.channels != count
    ]
    return [r for r in records if r.channels == count]


def load_volume_split(
    cfg: DataConfig, prepared: Prepared, split: str, cache_dir: Path, *, augment: bool = False
) -> VolumeSplit:
    """The volumes of ``split``, at the configured spacing plus, with ``augment``, every training spacing.

    Cached under ``cache_dir`` by content hashes and settings, so a resumed run loads instantly."""
    assert cfg.volume is not None
    spacings = [cfg.volume.spacing] + (list(cfg.volume.train_spacings or []) if augment else [])
    records = [r for r in prepared.records if r.split == split]
    doc = {"v": CACHE_VERSION, "volume": cfg.volume.model_dump(mode="json"), "spacings": spacings}
    doc["items"] = [[r.sha256, r.label] for r in records]
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"volumes-{split}-{key}.pt"
    if path.exists():
        c = ckpt.load(path)
        return VolumeSplit(c["images"], c["label_maps"], c["spacings"], list(c["keys"]), c["classes"])
    pairs, _, _ = _pairs(cfg)
    images, maps, mm, keys = [], [], [], []
    for spacing in spacings:
        for r in track(records, f"Loading {split} volumes"):
            pair = pairs[r.source][1]
            image, label, meta = load_volume_pair(pair, cfg.volume.ingestion(spacing))
            assert label is not None  # discovered with require_labels
            images.append(image)
            maps.append(label)
            mm.append(meta["spacing"])
            keys.append(pair.key)
    classes = torch.tensor([prepared.class_names.index(r.label) for r in records] * len(spacings))
    if not images:
        return VolumeSplit(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, 3), [], classes)
    out = VolumeSplit(
        torch.stack(images), torch.stack(maps), torch.tensor(np.array(mm), dtype=torch.float32), keys, classes
    )
    ckpt.atomic_save(out.__dict__, path)
    return out
