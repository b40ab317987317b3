"""From records to tensors, `prepare` (discover, check, split and freeze a data set for one run), and
`load_real_split` (the real images of one split, for commands that compare with real images)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmed.artifacts.files import atomic_write
from synthmed.config import DataConfig
from synthmed.data.integrity import (
    check_class_sizes,
    content_groups,
    duplicates,
    pixel_hash,
    require_kept_classes,
    skip_summary,
    warn_channels,
    warn_cross_split,
)
from synthmed.data.npz import load_npz, npz_arrays, parse_npz_source
from synthmed.data.preprocess import preprocess
from synthmed.data.readers import Pixels, decode_pixels, read_bytes, split_frame, validate_pixels
from synthmed.data.sources import (
    SPLITS,
    Discovery,
    Record,
    Skipped,
    discover,
    handle_failure,
    require_source,
    select_classes,
    source_kind,
    source_root,
)
from synthmed.data.splits import assign_splits, read_split_file, write_split
from synthmed.errors import SynthmedError
from synthmed.progress import track

log = logging.getLogger(__name__)

#: Bump when preprocessing output changes, so stale caches are never reused.
PREPROCESS_VERSION = 2  # 2: images keep their channels (data.channels)
# Settings that decide the split; changing one while split.json exists would silently mean another split.
_SPLIT_SETTINGS = ("seed", "val_fraction", "holdout_fraction", "classes", "pattern")


class ItemReader:
    """Reads records of one data source as raw (H, W) arrays; an .npz is opened once, not per item, and the
    frames of a multi-frame DICOM (consecutive records) read and verify their file once."""

    def __init__(self, cfg: DataConfig) -> None:
        self.src = require_source(cfg)
        self.kind = source_kind(self.src)
        self.root = source_root(self.src)
        self._npz: dict[str, np.ndarray] | None = None
        self._last: tuple[Path, str, bytes] | None = None  # (path, sha256, bytes) of the last file read

    def read(self, record: Record) -> np.ndarray:
        return self.read_pixels(record).array

    def read_pixels(self, record: Record) -> Pixels:
        if self.kind == "npz":
            return self._read_npz_item(record)
        file, frame = split_frame(record.source)
        path = self.root / file
        if self._last is None or self._last[:2] != (path, record.sha256):
            data = read_bytes(path)
            if hashlib.sha256(data).hexdigest() != record.sha256:
                raise SynthmedError(
                    "file content changed since the split was made; restore it or start a new run directory",
                    path=path,
                )
            self._last = (path, record.sha256, data) if frame is not None else None
        else:
            data = self._last[2]
        return decode_pixels(data, path, frame)

    def _read_npz_item(self, record: Record) -> Pixels:
        if self._npz is None:
            self._npz = load_npz(self.src)
        key, index = parse_npz_source(record.source)
        try:
            images, _ = npz_arrays(self._npz, key, self.src)
            item = images[index]
        except (KeyError, IndexError) as exc:
            raise SynthmedError(f"no item {key}/{index} in the .npz", path=self.src) from exc
        return validate_pixels(item, record.source)


@dataclass
class Loaded:
    images: torch.Tensor  # (N, C, S, S) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64 indices into class_names
    records: list[Record]  # the N records loaded, in order, each with its pixel hash and channel count
    skipped: list[Skipped]
    colour: int = 0  # how many of them were colour images read as grey (C = 1)
    repeated: int = 0  # how many grey images were repeated to fill C > 1 channels


def image_channels(counts: Sequence[int]) -> int:
    """The channel count most images have (a tie goes to more channels): what ``data.channels`` resolves to
    when unset."""
    tally = Counter(counts)
    return max(tally, key=lambda c: (tally[c], c)) if tally else 1


def load_arrays(records: Sequence[Record], cfg: DataConfig, class_names: Sequence[str]) -> Loaded:
    """Read and preprocess ``records`` at ``cfg.channels`` (unset: what most of them have); unreadable ones
    are skipped or raised per ``cfg.on_error``."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({r.label for r in records} - index.keys())
    if unknown:
        raise SynthmedError(
            f"records carry labels {unknown} that are not among the classes {list(class_names)}"
        )
    reader = ItemReader(cfg)
    kept: list[Record] = []
    skipped: list[Skipped] = []
    grey: list[np.ndarray] = []  # (1, S, S) each
    multi: dict[int, np.ndarray] = {}  # (C, S, S) of the multi-channel images, by position in kept
    for record in track(records, "Loading images"):
        try:
            pixels = reader.read_pixels(record)
            image = preprocess(pixels.array, cfg)
            if pixels.channels is not None and cfg.channels != 1:
                multi[len(kept)] = preprocess(pixels.channels, cfg)
        except SynthmedError as exc:
            handle_failure(exc, record.source, skipped, cfg.on_error, record.label)
            continue
        grey.append(image)
        phash = record.phash or pixel_hash(pixels.array)
        kept.append(replace(record, phash=phash, channels=pixels.channel_count))
    channels = cfg.channels or image_channels([r.channels for r in kept])
    images = np.empty((len(kept), channels, cfg.image_size, cfg.image_size), dtype=np.float32)
    for i, record in enumerate(kept):
        images[i] = _fit_channels(grey[i], multi.get(i), channels, reader.root / record.source)
    labels = torch.tensor([index[r.label] for r in kept], dtype=torch.int64)
    colour = sum(r.channels > 1 for r in kept) if channels == 1 else 0
    repeated = sum(r.channels == 1 for r in kept) if channels > 1 else 0
    return Loaded(torch.from_numpy(images), labels, kept, skipped, colour, repeated)


def _fit_channels(grey: np.ndarray, multi: np.ndarray | None, channels: int, where: Path) -> np.ndarray:
    """One preprocessed image at ``channels``: grey (luminance of colour), its channels, or grey repeated."""
    if channels == 1:
        return grey
    if multi is None:
        return np.repeat(grey, channels, axis=0)
    if len(multi) != channels:
        raise SynthmedError(
            f"image has {len(multi)} channels, the data set {channels} (data.channels): convert it, or set "
            "data.channels: 1 to read every image as grey",
            path=where,
        )
    return multi


def cache_key(records: Sequence[Record], cfg: DataConfig, split: str, class_names: Sequence[str]) -> str:
    """Hash of everything the loaded tensors depend on: item contents, labels, order and preprocessing."""
    doc = {
        "v": PREPROCESS_VERSION,
        "split": split,
        "classes": list(class_names),
        "size": cfg.image_size,
        "resize": cfg.resize_mode,
        "clip": list(cfg.clip_percentiles),
        "items": [[r.sha256, r.label] for r in records],
    }
    if cfg.enhance is not None:  # only when set, so caches written before the option existed stay valid
        doc["enhance"] = cfg.enhance.model_dump()
    if cfg.channels is not None:
        doc["channels"] = cfg.channels
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def load_split_arrays(
    records: Sequence[Record],
    cfg: DataConfig,
    split: str,
    cache_dir: Path | None = None,
    *,
    class_names: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, S, S) float32 images and (N,) int64 class indices for one split, cached under ``cache_dir``.

    Skipped items are logged as warnings.
    """
    loaded = load_cached([r for r in records if r.split == split], cfg, split, cache_dir, class_names)
    for s in loaded.skipped:
        log.warning("skipped %s: %s", s.source, s.reason)
    if loaded.skipped:
        kept = [r.label for r in loaded.records]
        log.warning("%s split: %s", split, skip_summary(kept, loaded.skipped, class_names))
    return loaded.images, loaded.labels


def load_cached(
    records: Sequence[Record], cfg: DataConfig, name: str, cache_dir: Path | None, class_names: Sequence[str]
) -> Loaded:
    """`load_arrays`, cached under ``cache_dir`` as ``<name>-<key>.pt``.

    The cache is keyed by item hashes and preprocessing settings, so a resumed run loads instantly and
    any change to the data or the settings rebuilds it.
    """
    if cache_dir is None:
        return load_arrays(records, cfg, class_names)
    path = Path(cache_dir) / f"{name}-{cache_key(records, cfg, name, class_names)[:24]}.pt"
    cached = _read_cache(path, records)
    if cached is not None:
        return cached
    loaded = load_arrays(records, cfg, class_names)
    _write_cache(path, loaded)
    return loaded


def _read_cache(path: Path, records: Sequence[Record]) -> Loaded | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if "phash" not in blob:  # written before pixel hashes: rebuilt
            return None
        by_source = {r.source: r for r in records}
        kept = [replace(by_source[s], phash=h) for s, h in zip(blob["sources"], blob["phash"], strict=True)]
        skipped = [Skipped(*item) for item in blob.get("skipped", [])]
        if "channels" in blob:
            kept = [replace(r, channels=c) for r, c in zip(kept, blob["channels"], strict=True)]
        repeated = int(blob.get("repeated", 0))
        return Loaded(blob["images"], blob["labels"], kept, skipped, int(blob["colour"]), repeated)
    except Exception as exc:  # a damaged cache is rebuilt, never fatal
        log.warning("ignoring unreadable data cache %s (%s)", path, exc)
        return None


def _write_cache(path: Path, loaded: Loaded) -> None:
    blob = {
        "images": loaded.images,
        "labels": loaded.labels,
        "sources": [r.source for r in loaded.records],
        "phash": [r.phash for r in loaded.records],
        "skipped": [[s.source, s.reason, s.label] for s in loaded.skipped],
        "colour": loaded.colour,
        "repeated": loaded.repeated,
        "channels": [r.channels for r in loaded.records],
    }
    with atomic_write(path) as tmp:
        torch.save(blob, tmp)


def check_readable(discovery: Discovery, cfg: DataConfig) -> Discovery:
    """Decode every image once before the split is made: unreadable ones are skipped (or raised), the others
    get their pixel hash, and colour images are counted and reported once."""
    src = require_source(cfg)
    reader = ItemReader(cfg)
    kept: list[Record] = []
    skipped = list(discovery.skipped)
    for record in track(discovery.records, "Checking images"):
        try:
            pixels = reader.read_pixels(record)
        except SynthmedError as exc:
            handle_failure(exc, record.source, skipped, cfg.on_error, record.label)
            continue
        kept.append(replace(record, phash=pixel_hash(pixels.array), channels=pixels.channel_count))
    channels = cfg.channels or image_channels([r.channels for r in kept])
    warn_channels(kept, channels, src)
    labels = [r.label for r in kept]
    order = require_kept_classes(discovery.class_names, labels, cfg.skip_empty_classes, "image", src)
    kept, class_names = select_classes(kept, order, cfg, src)
    return Discovery(kept, class_names, skipped)


@dataclass
class Prepared:
    class_names: list[str]
    records: list[Record]  # every usable record, each with its split
    skipped: list[Skipped]


def split_settings(cfg: DataConfig, seed: int) -> dict[str, Any]:
    return {
        "source": str(cfg.source),
        "seed": seed,
        "val_fraction": cfg.val_fraction,
        "holdout_fraction": cfg.holdout_fraction,
        "classes": cfg.classes,
        "pattern": cfg.pattern,
        "on_error": cfg.on_error,
    }


def prepare(cfg: DataConfig, seed: int, split_path: Path) -> Prepared:
    """Discover, check and split the data set and write ``split_path``; or re-use an existing split file.

    A re-used split is verified against the data set (class names, file hashes: cheap, no decoding)
    and against the split settings, so a changed data set fails loudly instead of changing the split.
    """
    split_path = Path(split_path)
    if split_path.exists():
        return report_split(_reuse(cfg, seed, split_path), split_path)
    found = check_readable(discover(cfg), cfg)
    records = assign_splits(found.records, seed, cfg.val_fraction, cfg.holdout_fraction)
    copies = duplicates(records, content_groups(records))
    warn_cross_split(copies)
    prepared = report_split(Prepared(found.class_names, records, found.skipped), split_path)
    write_split(
        split_path, records, found.class_names, found.skipped, split_settings(cfg, seed), duplicates=copies
    )
    return prepared


def report_split(prepared: Prepared, where: Path) -> Prepared:
    """Refuse a class without training images; warn about small classes and count skipped files per class."""
    check_class_sizes(prepared.records, prepared.class_names, where)
    frames = [file for file, frame in (split_frame(r.source) for r in prepared.records) if frame]
    if frames:  # fewer independent samples than images: worth saying
        log.warning(
            "%d images are frames of %d multi-frame DICOM files; a file's frames stay in one split, so the "
            "splits are drawn by file",
            len(frames),
            len(set(frames)),
        )
    if prepared.skipped:
        kept = [r.label for r in prepared.records]
        log.warning(
            "%d files skipped (listed in %s): %s",
            len(prepared.skipped),
            where,
            skip_summary(kept, prepared.skipped, prepared.class_names),
        )
    return prepared


def _reuse(cfg: DataConfig, seed: int, split_path: Path) -> Prepared:
    saved = read_split_file(split_path)
    now = split_settings(cfg, seed)
    changed = [k for k in _SPLIT_SETTINGS if k in saved.settings and saved.settings[k] != now[k]]
    if changed:
        diffs = ", ".join(f"{k}: {saved.settings[k]!r} -> {now[k]!r}" for k in changed)
        raise SynthmedError(
            f"split settings differ from the existing split ({diffs}); restore them, or delete the file "
            "(or use a new run directory) to make a new split",
            path=split_path,
        )
    # Single-class is allowed here so that losing a class reads as "the data changed", not as advice.
    found = discover(cfg.model_copy(update={"allow_single_class": True}))
    if found.class_names != saved.class_names:
        raise SynthmedError(
            f"the data set's classes are now {found.class_names}, the split was made with "
            f"{saved.class_names}; use a new run directory for a changed data set",
            path=split_path,
        )
    _verify_items(found, saved.records, saved.skipped, split_path)
    return Prepared(saved.class_names, saved.records, saved.skipped)


def _verify_items(found: Discovery, saved: Sequence[Record], skipped: Sequence[Skipped], where: Path) -> None:
    saved_hash = {r.source: r.sha256 for r in saved}
    known = saved_hash.keys() | {s.source for s in skipped}
    current = {r.source: r.sha256 for r in found.records}
    changed = [s for s, h in current.items() if s in saved_hash and saved_hash[s] != h]
    added = [s for s in current if s not in known]
    missing = [s for s in saved_hash if s not in current]
    problems = [
        (n, items) for n, items in (("changed", changed), ("new", added), ("missing", missing)) if items
    ]
    if problems:
        summary = "; ".join(f"{len(items)} {name} (e.g. {items[0]!r})" for name, items in problems)
        raise SynthmedError(
            f"the data set differs from the one this split was made from: {summary}. Restore the data, or "
            "start a new run directory to make a new split",
            path=where,
        )


@dataclass
class RealSplit:
    """The real images of one split of a data source, preprocessed at one size."""

    source: Path
    root: Path  # record sources are relative to it
    class_names: list[str]
    loaded: Loaded  # images, labels, records with pixel hashes, skipped items, colour count
    skipped: list[Skipped]  # at discovery and at loading


def load_real_split(source: Path, split: str, cfg: DataConfig, cache_dir: Path | None = None) -> RealSplit:
    """The real images of ``split`` (train, val, holdout; 'test' is holdout) of an .npz or of a CSV manifest
    with splits, or every image of a folder of class folders (or of a manifest without splits): what a
    command taking real images accepts wherever it takes a folder. ``cfg`` gives the preprocessing."""
    split = "holdout" if split == "test" else split
    if split not in SPLITS:
        raise SynthmedError(f"unknown split {split!r}; choose train, val or holdout (test)")
    cfg = cfg.model_copy(update={"source": Path(source), "allow_single_class": True})
    found = discover(cfg)
    records = found.records
    if any(r.split for r in records):
        records = [r for r in records if r.split == split]
        if not records:
            present = sorted({str(r.split) for r in found.records})
            raise SynthmedError(f"has no {split} images (its splits: {present})", path=source)
    loaded = load_cached(records, cfg, f"real-{split}", cache_dir, found.class_names)
    if not len(loaded.images):
        raise SynthmedError(f"no readable {split} images", path=source)
    warn_channels(loaded.records, loaded.images.shape[1], source)
    skipped = found.skipped + loaded.skipped
    if skipped:
        kept = [r.label for r in loaded.records]
        log.warning("%s: %s", source, skip_summary(kept, skipped, found.class_names))
    return RealSplit(Path(source), source_root(Path(source)), found.class_names, loaded, skipped)
