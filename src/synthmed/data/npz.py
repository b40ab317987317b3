"""MedMNIST-style .npz sources: the arrays synthmed reads (never pickles), the item names of their images,
and the class names and indices of their labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from synthmed.errors import SynthmedError

_NPZ_SPLITS = (("train", "train"), ("val", "val"), ("test", "holdout"))


def npz_source(npz: Path, split_key: str, index: int) -> str:
    return f"{npz.name}#{split_key}/{index}"


def parse_npz_source(source: str) -> tuple[str, int]:
    """'<file>#train/17' -> ('train', 17)."""
    try:
        _, _, item = source.rpartition("#")
        key, _, index = item.partition("/")
        return key, int(index)
    except ValueError as exc:
        raise SynthmedError("not an .npz item name '<file>#<split>/<index>'", path=source) from exc


def npz_split_keys(arrays: dict[str, np.ndarray]) -> list[tuple[str, str | None]]:
    """(array prefix, split) pairs present: MedMNIST's train/val/test, or one unsplit 'images' array."""
    pairs: list[tuple[str, str | None]] = [(k, s) for k, s in _NPZ_SPLITS if f"{k}_images" in arrays]
    if not pairs and "images" in arrays:
        pairs = [("all", None)]
    return pairs


def npz_arrays(arrays: dict[str, np.ndarray], key: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    image_key, label_key = ("images", "labels") if key == "all" else (f"{key}_images", f"{key}_labels")
    if label_key not in arrays:
        raise SynthmedError(f"has '{image_key}' but no '{label_key}' array", path=path)
    return arrays[image_key], arrays[label_key]


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a MedMNIST-style .npz that synthmed uses; pickled content is refused."""
    wanted = {f"{k}_{part}" for k, _ in _NPZ_SPLITS for part in ("images", "labels")}
    wanted |= {"images", "labels", "label_names", "class_names"}
    try:
        # Our own handle: numpy leaks the one it opens when the archive turns out to be damaged.
        with path.open("rb") as f:
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise SynthmedError("is a single .npy array, not an .npz archive", path=path)
            with npz:
                arrays = {k: npz[k] for k in npz.files if k in wanted}
    except SynthmedError:
        raise
    except Exception as exc:  # zip/zlib/format/pickle errors on damaged or hostile archives
        raise SynthmedError(f"not a readable .npz archive ({type(exc).__name__}: {exc})", path=path) from exc
    if not npz_split_keys(arrays):
        raise SynthmedError(
            "no image arrays: expected MedMNIST-style train_images/train_labels (and val_, test_) "
            "or images/labels",
            path=path,
        )
    return arrays


def class_names(arrays: dict[str, np.ndarray], path: Path, given: list[str] | None) -> list[str] | None:
    """The class names of the integer labels: ``given`` (data.label_names), else the archive's label_names
    array, else MedMNIST's info file beside it; None: the labels' own numbers."""
    return given or _label_names_array(arrays, path) or _medmnist_label_names(path)


def _label_names_array(arrays: dict[str, np.ndarray], path: Path) -> list[str] | None:
    key = "label_names" if "label_names" in arrays else "class_names" if "class_names" in arrays else None
    if key is None:
        return None
    raw = arrays[key]
    if raw.ndim != 1 or raw.dtype.kind not in "USiu" or raw.size == 0:
        raise SynthmedError(f"'{key}' must be a 1-D array of strings, got {raw.dtype} {raw.shape}", path=path)
    names = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in raw.tolist()]
    if len(set(names)) != len(names):
        raise SynthmedError(f"'{key}' lists a class name twice: {names}", path=path)
    return names


def _medmnist_label_names(npz: Path) -> list[str] | None:
    """Class names from ``<stem>.json`` beside the .npz: MedMNIST's INFO entry of the data set (its
    ``label`` maps "0", "1", ... to names), or the whole INFO, keyed by the data set's flag (the stem)."""
    path = npz.with_suffix(".json")
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        info = info.get(npz.stem, info)
        label = info["label"]
        return [str(label[str(i)]) for i in range(len(label))]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise SynthmedError(
            'not a MedMNIST info file: expected a JSON object whose \'label\' maps "0", "1", ... to the '
            f"class names ({type(exc).__name__}: {exc}); fix it, or set data.label_names instead",
            path=path,
        ) from exc


def class_indices(
    images: np.ndarray, labels: np.ndarray, key: str, names: list[str] | None, path: Path
) -> np.ndarray:
    if images.ndim not in (3, 4):
        raise SynthmedError(
            f"'{key}_images' must be (N, H, W) or (N, H, W, C), got {images.shape}", path=path
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise SynthmedError(
            f"'{key}_labels' must hold one integer class per image ({images.shape[0]},), got {labels.shape} "
            "(multi-label / one-hot labels are not supported)",
            path=path,
        )
    if labels.dtype.kind not in "iuf":
        raise SynthmedError(f"'{key}_labels' must be integers, got {labels.dtype}", path=path)
    with np.errstate(invalid="ignore"):
        ints = labels.astype(np.int64) if labels.dtype.kind == "f" else labels.astype(np.int64, copy=False)
    if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and np.array_equal(ints, labels)):
        raise SynthmedError(f"'{key}_labels' must be whole numbers", path=path)
    if ints.size and (ints.min() < 0 or (names is not None and ints.max() >= len(names))):
        limit = f"0..{len(names) - 1}" if names else ">= 0"
        raise SynthmedError(f"'{key}_labels' must be in {limit}, got {ints.min()}..{ints.max()}", path=path)
    return ints
