"""Find a data set's images and labels: a folder of class folders, a MedMNIST-style .npz or a CSV manifest.

Discovery lists and content-hashes files (fast: no decoding); decoding happens once, later, when the
images are checked or loaded. Record sources are relative to the data set's root so split.json stays
valid when the data set moves.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from synthmed.config import DataConfig
from synthmed.data.npz import class_indices, class_names, load_npz, npz_arrays, npz_source, npz_split_keys
from synthmed.data.readers import (
    IMAGE_EXTENSIONS,
    dicom_frame_count,
    frame_source,
    is_dicom,
    is_image_file,
    split_frame,
    validate_array,
)
from synthmed.errors import SynthmedError
from synthmed.progress import track

SourceKind = Literal["folder", "npz", "csv"]
#: Split names used everywhere (records, split.json, loading).
SPLITS = ("train", "val", "holdout")
# Folders holding segmentations, never training images.
# 'conditions': the structure maps `synthmed generate` writes beside its images (edge maps are not images).
_MASK_DIRS = frozenset({"mask", "masks", "label", "labels", "segmentation", "segmentations", "conditions"})
# BUSI-style masks stored beside their image: 'benign (1)_mask.png', 'benign (1)_mask_1.png'.
_MASK_STEM = re.compile(r"_mask(_\d+)?$", re.IGNORECASE)
_CSV_SPLITS = {
    "": None,
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "holdout": "holdout",
    "test": "holdout",
}


@dataclass(frozen=True)
class Record:
    """One image: where it is (relative to the data set root), its class, content hash, split and normalised
    pixel hash (`synthmed.data.integrity.pixel_hash`, once decoded)."""

    source: str
    label: str
    sha256: str
    split: str | None = None
    phash: str | None = None
    channels: int = 1  # 1 grey (grey stored as RGB included), 3 colour RGB, or an array's N channels


@dataclass(frozen=True)
class Skipped:
    """A file left out of the data set, and why (with its class when known)."""

    source: str
    reason: str
    label: str | None = None


@dataclass
class Discovery:
    records: list[Record]
    class_names: list[str]
    skipped: list[Skipped] = field(default_factory=list)


def require_source(cfg: DataConfig) -> Path:
    if cfg.source is None:
        raise SynthmedError(
            "no data source given: set it to a folder of class folders, a .npz or a CSV manifest",
            field="data.source",
        )
    src = Path(cfg.source).expanduser()
    if not src.exists():
        raise SynthmedError("data source not found", path=src)
    return src


def source_kind(src: Path) -> SourceKind:
    if src.is_dir():
        return "folder"
    suffix = src.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise SynthmedError(
        "unsupported data source: give a folder of class folders, a MedMNIST-style .npz or a CSV "
        "manifest with 'path' and 'label' columns",
        path=src,
    )


def source_root(src: Path) -> Path:
    """The folder record sources are relative to."""
    return src if src.is_dir() else src.parent


def handle_failure(
    exc: SynthmedError, source: str, skipped: list[Skipped], on_error: str, label: str | None = None
) -> None:
    """Apply the on_error policy to one unreadable item: re-raise, or record it as skipped."""
    if on_error == "raise":
        raise exc
    skipped.append(Skipped(source, str(exc), label))


def hash_file(path: Path) -> str:
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise SynthmedError("file is empty (0 bytes)", path=path)
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError as exc:
        raise SynthmedError("file not found", path=path) from exc
    except OSError as exc:
        raise SynthmedError(f"cannot read file ({exc.strerror or exc})", path=path) from exc


def file_records(path: Path, rel: str, label: str, sha256: str, split: str | None = None) -> list[Record]:
    """The images of one file: each frame of a multi-frame DICOM (sharing the file's hash, so a cine lands
    in one split, never in training and holdout at once), or the file itself."""
    with path.open("rb") as f:
        dicom = is_dicom(path, f.read(132))
    frames = dicom_frame_count(path) if dicom else 1
    if frames == 1:
        return [Record(rel, label, sha256, split)]
    return [Record(frame_source(rel, k), label, sha256, split) for k in range(1, frames + 1)]


def hash_array(arr: np.ndarray) -> str:
    """Content hash of one in-memory image: dtype and shape, then the pixel bytes."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data)
    return h.hexdigest()


def discover(cfg: DataConfig) -> Discovery:
    """List the data set at ``cfg.source``: records (hashed, not decoded), class names, skipped files."""
    src = require_source(cfg)
    kind = source_kind(src)
    if cfg.label_names is not None and kind != "npz":
        raise SynthmedError(f"names the labels of an .npz, not of a {kind}", field="data.label_names")
    if kind == "folder":
        records, skipped, order = _discover_folder(src, cfg)
    elif kind == "npz":
        records, skipped, order = _discover_npz(src, cfg)
    else:
        records, skipped, order = _discover_csv(src, cfg)
    records, class_names = select_classes(records, order, cfg, src)
    return Discovery(records, class_names, skipped)


def select_classes(
    records: Sequence[Record], order: Sequence[str], cfg: DataConfig, where: Path
) -> tuple[list[Record], list[str]]:
    """Apply ``cfg.classes`` (restrict and order) and insist on two classes unless single-class is allowed."""
    present = {r.label for r in records}
    if not present:
        raise SynthmedError("no readable image files found", path=where)
    available = [c for c in order if c in present]
    class_names = available
    if cfg.classes is not None:
        if len(set(cfg.classes)) != len(cfg.classes):
            raise SynthmedError(f"lists a class twice: {cfg.classes}", field="data.classes")
        unknown = [c for c in cfg.classes if c not in present]
        if unknown:
            raise SynthmedError(
                f"class(es) {unknown} not found (or without readable images) in {where}; "
                f"available classes: {available}",
                field="data.classes",
            )
        class_names = list(cfg.classes)
        records = [r for r in records if r.label in set(class_names)]
    if len(class_names) < 2 and not cfg.allow_single_class:
        raise SynthmedError(
            f"only one class ({class_names[0]!r}) found in {where}; a class-conditional model needs at "
            "least two (one sub-folder or label per class). Add another class, or set "
            "data.allow_single_class: true to train an unconditional model",
            field="data.source",
        )
    return list(records), class_names


# --- folder of class folders -------------------------------------------------------------------


def refuse_links_leaving(root: Path) -> None:
    """Refuse symbolic links below ``root`` (outside hidden folders) that lead out of it: a link can pull a
    test image or a system file into a data set under an innocent name."""
    top = root.resolve()
    leaving = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            if not _hidden(name) and path.is_symlink() and not path.resolve().is_relative_to(top):
                leaving.append(f"{path.relative_to(root).as_posix()} -> {path.resolve()}")
    if leaving:
        shown = "; ".join(leaving[:10]) + (f"; and {len(leaving) - 10} more" if len(leaving) > 10 else "")
        raise SynthmedError(
            f"{len(leaving)} symbolic link(s) lead out of the folder: {shown}. Copy those files into the "
            "folder, or remove the links",
            path=root,
        )


def _discover_folder(root: Path, cfg: DataConfig) -> tuple[list[Record], list[Skipped], list[str]]:
    refuse_links_leaving(root)
    skipped: list[Skipped] = []
    class_dirs = []
    for entry in sorted(root.iterdir()):
        if _hidden(entry.name):
            continue
        if entry.is_dir():
            if entry.name.lower() not in _MASK_DIRS:
                class_dirs.append(entry)
        else:
            skipped.append(Skipped(entry.name, "outside any class sub-folder (expected <root>/<class>/...)"))
    if not class_dirs:
        raise SynthmedError("no class sub-folders found; expected <folder>/<class name>/<images>", path=root)
    found = [(f, d.name) for d in class_dirs for f in _class_files(d, cfg.pattern)]
    if not found:
        hint = f" matching data.pattern {cfg.pattern!r}" if cfg.pattern else ""
        raise SynthmedError(f"no image files found in the class sub-folders{hint}", path=root)
    if cfg.pattern is None:
        _reject_nested_split_layout(root, found)
    records = []
    for path, label in track(found, "Hashing files"):
        rel = path.relative_to(root).as_posix()
        if not is_image_file(path):
            skipped.append(Skipped(rel, f"not an image file ({_ext_hint(path)})", label))
            continue
        if split_frame(rel)[1] is not None:
            reason = "file name ends like a frame of a multi-frame file ('#frame=N')"
            skipped.append(Skipped(rel, reason, label))
            continue
        try:
            records += file_records(path, rel, label, hash_file(path))
        except SynthmedError as exc:
            handle_failure(exc, rel, skipped, cfg.on_error, label)
    if not records:
        raise SynthmedError(
            "no image files (PNG, JPEG, GIF, BMP, TIFF or DICOM) found in the class folders", path=root
        )
    labels = {r.label for r in records}
    # An empty class folder is reported rather than silently becoming "no such class".
    skipped += [
        Skipped(f"{d.name}/", "class folder without image files", d.name)
        for d in class_dirs
        if d.name not in labels
    ]
    return records, skipped, sorted(labels)


def _class_files(class_dir: Path, pattern: str | None) -> list[Path]:
    if pattern is not None:
        try:
            candidates: Iterator[Path] = class_dir.glob(pattern)
            files = [p for p in candidates if p.is_file() and not _hidden_below(p, class_dir)]
        except (ValueError, NotImplementedError) as exc:
            raise SynthmedError(f"invalid glob pattern {pattern!r} ({exc})", field="data.pattern") from exc
        return sorted(files)
    images = class_dir / "images"
    if images.is_dir():
        files = [p for p in images.iterdir() if p.is_file() and not _hidden(p.name)]
    else:
        files = list(_walk_files(class_dir))
    return sorted(p for p in files if not _MASK_STEM.search(p.stem))


def _walk_files(top: Path) -> Iterator[Path]:
    """Every non-hidden file below ``top``, outside mask/label folders (symlinked folders not followed)."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d) and d.lower() not in _MASK_DIRS)
        for name in filenames:
            if not _hidden(name):
                yield Path(dirpath, name)


def _reject_nested_split_layout(root: Path, found: list[tuple[Path, str]]) -> None:
    """Catch the classic mistake of pointing at e.g. cxr-kermany/ instead of cxr-kermany/train/.

    When every 'class' folder holds the same two or more sub-folders and no files of its own, the
    real classes are one level down and the top level is a split.
    """
    subdirs: dict[str, set[str]] = {}
    for path, label in found:
        parts = path.relative_to(root / label).parts
        subdirs.setdefault(label, set()).add(parts[0] if len(parts) > 1 else "")
    sets = list(subdirs.values())
    shared = sets[0]
    if len(sets) >= 2 and len(shared) >= 2 and "" not in shared and all(s == shared for s in sets):
        raise SynthmedError(
            f"every class folder ({sorted(subdirs)}) contains the same sub-folders {sorted(shared)}: "
            f"these look like the real classes. Point data.source at one of "
            f"{[str(root / c) for c in sorted(subdirs)]} (if they are not classes, e.g. per-year folders, "
            "set data.pattern: '**/*')",
            path=root,
        )


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _hidden_below(path: Path, top: Path) -> bool:
    return any(_hidden(part) for part in path.relative_to(top).parts)


def _ext_hint(path: Path) -> str:
    ext = path.suffix.lower() or "no extension"
    return f"{ext}, no DICOM marker; readable: {', '.join(sorted(IMAGE_EXTENSIONS))}"


# --- MedMNIST-style .npz (the format: data/npz.py) ------------------------------------------


def _discover_npz(path: Path, cfg: DataConfig) -> tuple[list[Record], list[Skipped], list[str]]:
    arrays = load_npz(path)
    names = class_names(arrays, path, cfg.label_names)
    records: list[Record] = []
    skipped: list[Skipped] = []
    used: set[int] = set()
    for key, split in npz_split_keys(arrays):
        images, raw_labels = npz_arrays(arrays, key, path)
        labels = class_indices(images, raw_labels, key, names, path)
        used.update(int(v) for v in np.unique(labels))
        for i in track(range(len(images)), f"Checking {path.name} {key}"):
            src = npz_source(path, key, i)
            label = names[labels[i]] if names else str(labels[i])
            try:
                validate_array(images[i], src)
            except SynthmedError as exc:
                handle_failure(exc, src, skipped, cfg.on_error, label)
                continue
            records.append(Record(src, label, hash_array(images[i]), split))
    order = names if names else [str(v) for v in sorted(used)]  # label order, not string order ('10' < '2')
    return records, skipped, order


# --- CSV manifest ------------------------------------------------------------------------------


def _discover_csv(path: Path, cfg: DataConfig) -> tuple[list[Record], list[Skipped], list[str]]:
    header, rows = _read_csv(path)
    col = {name: i for i, name in enumerate(header)}
    root = path.parent
    records: list[Record] = []
    skipped: list[Skipped] = []
    first_seen: dict[str, int] = {}
    for line, row in track(rows, f"Hashing files listed in {path.name}"):
        rel, label, split = _csv_fields(row, col, line, path)
        if rel in first_seen:
            skipped.append(
                Skipped(rel, f"listed again on line {line} (first on line {first_seen[rel]})", label)
            )
            continue
        first_seen[rel] = line
        file, frame = split_frame(rel)  # a manifest may list single frames of a multi-frame DICOM
        try:
            sha = _hash_listed(root / file, line, path)
            if frame is None:
                records += file_records(root / file, rel, label, sha, split)
            else:
                records.append(Record(rel, label, sha, split))
        except SynthmedError as exc:
            handle_failure(exc, rel, skipped, cfg.on_error, label)
    if not records:
        raise SynthmedError("the manifest lists no readable image files", path=path)
    return records, skipped, sorted({r.label for r in records})


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SynthmedError("manifest is not UTF-8 text", path=path) from exc
    except OSError as exc:
        raise SynthmedError(f"cannot read manifest ({exc.strerror or exc})", path=path) from exc
    if "\x00" in text:
        raise SynthmedError("manifest contains NUL bytes: a binary file, not a CSV", path=path)
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)  # Excel in many locales writes ';'
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        if "path" not in header or "label" not in header:
            raise SynthmedError(
                "manifest needs a header row with 'path' and 'label' columns (optional 'split'); "
                f"found {header}",
                path=path,
            )
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise SynthmedError(f"malformed CSV near line {reader.line_num} ({exc})", path=path) from exc
    return header, rows


def _csv_fields(row: list[str], col: dict[str, int], line: int, path: Path) -> tuple[str, str, str | None]:
    if len(row) <= max(col.values()):
        raise SynthmedError(f"line {line} has {len(row)} fields, too few for the header's columns", path=path)
    rel, label = row[col["path"]].strip(), row[col["label"]].strip()
    if not rel or not label:
        raise SynthmedError(f"line {line} has an empty path or label", path=path)
    raw_split = row[col["split"]].strip().lower() if "split" in col else ""
    if raw_split not in _CSV_SPLITS:
        raise SynthmedError(
            f"line {line}: unknown split {raw_split!r}; use train, val or holdout (or leave it empty)",
            path=path,
        )
    return rel, label, _CSV_SPLITS[raw_split]


def _hash_listed(path: Path, line: int, manifest: Path) -> str:
    where = f"(listed on line {line} of {manifest.name})"
    try:
        exists = path.is_file()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        exists = False
    if not exists:
        raise SynthmedError(f"file not found {where}", path=path)
    if not is_image_file(path):
        raise SynthmedError(f"not an image file {where} ({_ext_hint(path)})", path=path)
    return hash_file(path)
