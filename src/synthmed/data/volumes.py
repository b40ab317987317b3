"""3D ingestion: find NIfTI volumes and DICOM series with their label maps, check them, and turn them into
RAS-oriented, resampled, intensity-windowed tensors of one size with MONAI dictionary transforms.

Layouts found by `discover_volumes`:

- MSD style: ``images/`` (or ``imagesTr/``) and ``labels/`` (or ``labelsTr/``), paired by file name;
- multi-contrast (several channels per case): one folder per contrast under ``images/``
  (``images/t1/<key>.nii.gz``, ``images/t2/<key>.nii.gz``; channels in folder-name order), or nnU-Net's
  ``images/<key>_0000.nii.gz``, ``<key>_0001.nii.gz`` (synthmed's own export); a 4D NIfTI image (channels
  on the 4th axis) is multi-channel in any layout;
- flat: ``<key>_image.nii.gz`` beside ``<key>_label.nii.gz`` (synthmed's own 3D output), or plain
  ``*.nii[.gz]`` images without labels;
- DICOM: each sub-folder holding DICOM files is one series (one image), in either layout above; its
  label map, if any, is a NIfTI file named after the folder.

A bad file (unpaired, unreadable, NaN, empty, label map or contrast off the image grid, a case missing a
contrast, non-integer labels) is a SynthmedError naming it; `load_volumes` turns those into `Skipped`
entries and loads everything else.

For 3D generation, `load_label_map` reads a label map on its own (the condition) through the same checks
and transforms, and `save_nifti` writes generated volumes and label maps.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict, cast

import nibabel as nib
import numpy as np
import numpy.typing as npt
import torch
from monai.data import MetaTensor, NibabelReader, PydicomReader
from monai.transforms import (
    Compose,
    Lambdad,
    LoadImaged,
    MapTransform,
    Orientationd,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
)
from nibabel.spatialimages import SpatialImage

from synthmed.artifacts.files import atomic_write
from synthmed.config import VolumeConfig
from synthmed.data.integrity import pixel_hash
from synthmed.data.preprocess import PercentileScale
from synthmed.data.readers import DICOM_EXTENSIONS, has_dicom_magic
from synthmed.data.sources import Skipped
from synthmed.errors import SynthmedError
from synthmed.progress import track

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Largest disagreement (mm, per affine entry) between an image's and its label map's voxel-to-world map.
AFFINE_TOLERANCE = 1e-3
_IMAGE_DIRS = ("images", "imagesTr")
_LABEL_DIRS = ("labels", "labelsTr")
_LAYOUT_HINT = (
    "expected images/ + labels/ (MSD style), <key>_image.nii.gz + <key>_label.nii.gz, "
    "plain .nii/.nii.gz images, or one folder of DICOM files per series"
)
Role = Literal["image", "label"]
# Skipped silently: archive debris, and the sidecars of `synthmed generate`'s 3D output folders.
_NOT_DATA = {"__MACOSX", "manifest.jsonl", "previews"}
#: nnU-Net's channel files: <case>_0000.nii.gz, <case>_0001.nii.gz, ...
_CHANNEL_FILE = re.compile(r"^(.+)_(\d{4})$")
#: Most channels (contrasts) one image may have (``data.channels``).
MAX_CHANNELS = 16


@dataclass(frozen=True)
class VolumePair:
    """One image (NIfTI file or DICOM series folder), its label map if any, and the name pairing them;
    ``contrasts``: the files of its further channels (multi-contrast layouts), on the image's grid."""

    image: Path
    label: Path | None
    key: str
    contrasts: tuple[Path, ...] = ()

    @property
    def files(self) -> tuple[Path, ...]:
        """Every image file of the case, one per channel (a 4D NIfTI holds all its channels in one)."""
        return (self.image, *self.contrasts)


@dataclass
class VolumeDiscovery:
    pairs: list[VolumePair]
    skipped: list[Skipped] = field(default_factory=list)
    channel_names: list[str] | None = None  # multi-contrast layouts: the contrast folders (or nnU-Net names)


class VolumeMeta(TypedDict):
    affine: np.ndarray  # 4 x 4 voxel -> RAS mm of the returned tensors
    spacing: tuple[float, float, float]  # mm, of the returned tensors
    original_shape: tuple[int, int, int]  # voxels as stored in the file
    original_affine: np.ndarray  # as stored (RAS)
    phash: str  # normalised pixel hash of the image as stored (synthmed.data.integrity)


@dataclass
class LoadedVolumes:
    """(N, C, X, Y, Z) images in [0, 1]; int64 label maps (N, 1, X, Y, Z), or None unless every loaded
    image has one."""

    images: torch.Tensor
    labels: torch.Tensor | None
    keys: list[str]
    affines: np.ndarray  # (N, 4, 4) voxel -> RAS mm
    skipped: list[Skipped] = field(default_factory=list)
    phash: list[str] = field(default_factory=list)  # per image, as stored

    def __len__(self) -> int:
        return self.images.shape[0]


# --- discovery ---------------------------------------------------------------------------------


def discover_volumes(root: Path, *, require_labels: bool = False) -> VolumeDiscovery:
    """Pair the images and label maps under ``root`` (no decoding); unpaired files are reported as skipped.

    Label maps without an image are always skipped; images without a label map are skipped only when
    ``require_labels`` is set, otherwise they come back with ``label=None``.
    """
    root = Path(root)
    if not root.is_dir():
        raise SynthmedError(f"not a folder of volumes; {_LAYOUT_HINT}", path=root)
    image_dir, label_dir = _first_dir(root, _IMAGE_DIRS), _first_dir(root, _LABEL_DIRS)
    contrasts: dict[str, tuple[Path, ...]] = {}
    names: list[str] | None = None
    if image_dir is None:
        images, labels, skipped = _scan(root, root, None)
        image_name, label_name = "{}_image.nii.gz", "{}_label.nii.gz"
    else:
        _, labels, skipped = _scan(label_dir, root, "label") if label_dir else ({}, {}, [])
        images, contrasts, more, names = _scan_images(image_dir, root, labels)
        labels = {k: v for k, v in labels.items() if k in images or not _reported(k, more)}
        skipped += more
        image_name = f"{image_dir.name}/{{}}.nii.gz"
        label_name = f"{label_dir.name if label_dir else _LABEL_DIRS[0]}/{{}}.nii.gz"
    skipped += [
        Skipped(_rel(path, root), f"label map without an image (expected {image_name.format(key)})")
        for key, path in sorted(labels.items())
        if key not in images
    ]
    pairs = [
        VolumePair(path, labels.get(key), key, contrasts.get(key, ())) for key, path in sorted(images.items())
    ]
    if require_labels:
        skipped += [
            Skipped(_rel(p.image, root), f"image without a label map (expected {label_name.format(p.key)})")
            for p in pairs
            if p.label is None
        ]
        pairs = [p for p in pairs if p.label is not None]
    if not pairs:
        raise SynthmedError(_nothing_usable(len(images), skipped), path=root)
    return VolumeDiscovery(pairs, skipped, names)


def _nothing_usable(n_images: int, skipped: list[Skipped]) -> str:
    if n_images:  # all of them dropped for want of a label map
        return (
            f"none of the {n_images} images has a label map ({skipped[-1].reason}); add the label maps "
            "or use the images without labels"
        )
    examples = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:3])
    return f"no usable volumes found ({_LAYOUT_HINT})" + (f"; skipped {examples}" if examples else "")


def is_volume_set(folder: Path) -> bool:
    """Whether ``folder`` itself holds volumes in one of the layouts (rather than class folders of them)."""
    if _first_dir(folder, _IMAGE_DIRS) is not None:
        return True
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    nifti = any(e.is_file() and e.name.lower().endswith(NIFTI_SUFFIXES) for e in entries)
    return nifti or any(e.is_dir() and _is_dicom_series(e) for e in entries)


def _scan_images(
    image_dir: Path, root: Path, labels: dict[str, Path]
) -> tuple[dict[str, Path], dict[str, tuple[Path, ...]], list[Skipped], list[str] | None]:
    """The images by key, each key's further contrast files, what was skipped, and the channel names of a
    multi-contrast layout (None for one file per case)."""
    folders = _contrast_dirs(image_dir)
    if folders:
        return _scan_contrasts(folders, root)
    images, _, skipped = _scan(image_dir, root, "image")
    matches = {key: _CHANNEL_FILE.match(key) for key in images}
    # nnU-Net's <case>_0000: only when every image is named so and the label maps are named by case.
    if not images or not all(matches.values()) or any(key in labels for key in images):
        return images, {}, skipped, None
    by_case: dict[str, dict[int, Path]] = {}
    for key, m in matches.items():
        assert m is not None
        by_case.setdefault(m[1], {})[int(m[2])] = images[key]
    count = max(max(channels) for channels in by_case.values()) + 1
    found = {case: [files.get(c) for c in range(count)] for case, files in sorted(by_case.items())}
    pattern = f"{image_dir.name}/{{key}}{{name}}.nii.gz"
    images, contrasts = _complete(found, [f"_{c:04d}" for c in range(count)], pattern, root, skipped)
    return images, contrasts, skipped, _nnunet_names(root, count) if count > 1 else None


def _reported(key: str, skipped: list[Skipped]) -> bool:
    """Whether the case ``key`` was skipped for a missing contrast (its label map is not reported again)."""
    return any(s.reason.startswith(_lacks(key)) for s in skipped)


def _lacks(key: str) -> str:
    return f"case {key!r} lacks contrast(s)"


def _contrast_dirs(image_dir: Path) -> list[Path]:
    """The contrast folders of ``images/`` (sub-folders of NIfTI files, in name order), when ``images/``
    holds no NIfTI file itself; else none."""
    entries = [
        e for e in sorted(image_dir.iterdir()) if not e.name.startswith(".") and e.name not in _NOT_DATA
    ]
    if any(e.is_file() and e.name.lower().endswith(NIFTI_SUFFIXES) for e in entries):
        return []
    return [
        e for e in entries if e.is_dir() and any(p.name.lower().endswith(NIFTI_SUFFIXES) for p in e.iterdir())
    ]


def _scan_contrasts(
    folders: list[Path], root: Path
) -> tuple[dict[str, Path], dict[str, tuple[Path, ...]], list[Skipped], list[str]]:
    skipped: list[Skipped] = []
    per_folder: dict[str, dict[str, Path]] = {}
    for folder in folders:
        per_folder[folder.name], _, more = _scan(folder, root, "image")
        skipped += more
    keys = sorted(set().union(*per_folder.values()))
    found = {key: [files.get(key) for files in per_folder.values()] for key in keys}
    pattern = f"{folders[0].parent.name}/{{name}}/{{key}}.nii.gz"
    images, contrasts = _complete(found, list(per_folder), pattern, root, skipped)
    return images, contrasts, skipped, list(per_folder)


def _complete(
    found: dict[str, list[Path | None]], names: list[str], pattern: str, root: Path, skipped: list[Skipped]
) -> tuple[dict[str, Path], dict[str, tuple[Path, ...]]]:
    """Cases with a file for every channel (first file, further files); the others go to ``skipped``."""
    images, contrasts = {}, {}
    for key, files in found.items():
        missing = [name for name, f in zip(names, files, strict=True) if f is None]
        present = [f for f in files if f is not None]
        if missing:
            expected = ", ".join(pattern.format(key=key, name=name) for name in missing)
            reason = (
                f"{_lacks(key)} {missing} (expected {expected}); add the missing files or "
                "remove the case's other contrasts"
            )
            skipped.append(Skipped(_rel(present[0], root), reason))
            continue
        images[key], contrasts[key] = present[0], tuple(present[1:])
    return images, contrasts


def _nnunet_names(root: Path, count: int) -> list[str]:
    """nnU-Net's ``dataset.json`` channel_names beside ``images/`` when it names every channel, else
    "0", "1", ..."""
    try:
        named = json.loads((root / "dataset.json").read_text())["channel_names"]
        names = [str(named[str(c)]) for c in range(count)]
    except (OSError, ValueError, KeyError, TypeError):
        names = []
    return names if len(set(names)) == count else [str(c) for c in range(count)]


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _scan(
    folder: Path, root: Path, role: Role | None
) -> tuple[dict[str, Path], dict[str, Path], list[Skipped]]:
    """Images and label maps in ``folder`` by key; ``role`` None means decided by the name (flat layout)."""
    found: dict[Role, dict[str, Path]] = {"image": {}, "label": {}}
    skipped: list[Skipped] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name in _NOT_DATA:
            continue
        try:
            kind, key = _classify(entry, role)
        except SynthmedError as exc:
            skipped.append(Skipped(_rel(entry, root), str(exc)))
            continue
        first = found[kind].setdefault(key, entry)
        if first != entry:
            reason = f"same name {key!r} as {_rel(first, root)}; rename one of them"
            skipped.append(Skipped(_rel(entry, root), reason))
    return found["image"], found["label"], skipped


def _classify(entry: Path, role: Role | None) -> tuple[Role, str]:
    """(role, pairing key) of one folder entry; SynthmedError (the reason alone) when it is no volume."""
    if entry.is_dir():
        if role == "label":
            raise SynthmedError("a folder among the label maps; label maps must be NIfTI files")
        if not _is_dicom_series(entry):
            raise SynthmedError("folder without DICOM files (expected one folder per DICOM series)")
        return "image", _strip(entry.name, "_image")
    suffix = next((s for s in NIFTI_SUFFIXES if entry.name.lower().endswith(s)), None)
    if suffix is None:
        if _is_dicom_file(entry):
            raise SynthmedError("DICOM file outside a series folder; put each series in its own folder")
        raise SynthmedError("not a NIfTI file (.nii, .nii.gz) or a DICOM series folder")
    stem = entry.name[: -len(suffix)]
    if role is None:
        role = "label" if stem.endswith("_label") else "image"
    return role, _strip(stem, f"_{role}")


def _strip(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name


def _is_dicom_series(folder: Path) -> bool:
    return any(p.is_file() and _is_dicom_file(p) for p in folder.iterdir() if not p.name.startswith("."))


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with path.open("rb") as f:
            return has_dicom_magic(f.read(132))
    except OSError:
        return False


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# --- loading -----------------------------------------------------------------------------------


def load_volume_pair(
    pair: VolumePair, cfg: VolumeConfig
) -> tuple[torch.Tensor, torch.Tensor | None, VolumeMeta]:
    """Read, check and transform one pair: image (C, X, Y, Z) float32 in [0, 1] (each channel scaled on its
    own: contrasts have different units), label (1, X, Y, Z) int64.

    The checks run on the data as read, before any resampling, so a mismatch is reported in the file's
    own terms; every failure is a SynthmedError naming the file at fault.
    """
    image, voxels = _read_image(pair)
    data: dict[Role, MetaTensor] = {"image": image}
    if pair.label is not None:
        label = _read(pair.label, "label")
        _check_label_values(_check_volume(label, pair.label, "label map"), pair.label)
        _check_same_grid(image, label, pair.image, pair.label, "label map", _LABEL_FIX)
        data["label"] = label
    out = _pipeline(cfg, tuple(data))(data)
    labels = out["label"].as_tensor().long() if pair.label is not None else None  # nearest: exact integers
    grey = voxels if len(voxels) == 1 else voxels.mean(0)  # several contrasts: one hash of their mean
    return out["image"].as_tensor(), labels, _meta(image, out["image"], pixel_hash(grey))


def _read_image(pair: VolumePair) -> tuple[MetaTensor, np.ndarray]:
    """The case's image as read, (C, X, Y, Z) (its contrast files stacked in order), and its voxels; every
    channel checked, a contrast file off the first one's grid refused."""
    image = _read(pair.image, "image")
    if not pair.contrasts:
        voxels = _check_volume(image, pair.image, "image", MAX_CHANNELS)
        for c, channel in enumerate(voxels):
            _check_not_empty(channel, pair.image, f"channel {c} of the image" if len(voxels) > 1 else "")
        return image, voxels
    parts = []
    for path in pair.files:
        contrast = image if path == pair.image else _read(path, "image")
        parts.append(_check_volume(contrast, path, "contrast image"))
        _check_not_empty(parts[-1], path)
        _check_same_grid(image, contrast, pair.image, path, "contrast", _CONTRAST_FIX)
    voxels = np.concatenate(parts)
    stacked = MetaTensor(torch.from_numpy(voxels), meta=image.meta)  # the meta holds the affine
    return stacked, voxels


def _meta(original: MetaTensor, result: MetaTensor, phash: str) -> VolumeMeta:
    sx, sy, sz = (float(s) for s in result.pixdim)
    x, y, z = (int(n) for n in original.shape[1:])
    return {
        "affine": result.affine.numpy(),
        "spacing": (sx, sy, sz),
        "original_shape": (x, y, z),
        "original_affine": original.affine.numpy(),
        "phash": phash,
    }


def load_volumes(
    root: Path, cfg: VolumeConfig, *, require_labels: bool = False, channels: int | None = None
) -> LoadedVolumes:
    """Discover and load every volume under ``root``; a file that fails is skipped (and logged), not fatal,
    and so is a volume with another channel count than ``channels`` (None: what most volumes have)."""
    root = Path(root)
    found = discover_volumes(root, require_labels=require_labels)
    skipped = list(found.skipped)
    loaded: list[tuple[str, torch.Tensor, torch.Tensor | None, VolumeMeta]] = []
    for pair in track(found.pairs, "Loading volumes"):
        try:
            image, label, meta = load_volume_pair(pair, cfg)
        except SynthmedError as exc:
            skipped.append(Skipped(_rel(pair.image, root), str(exc)))
            continue
        loaded.append((pair.key, image, label, meta))
    count = channels or common_channels([image.shape[0] for _, image, _, _ in loaded])
    odd = {key for key, image, _, _ in loaded if image.shape[0] != count}
    skipped += [
        Skipped(_rel(p.image, root), channel_mismatch(_channel_count(loaded, p.key), count))
        for p in found.pairs
        if p.key in odd
    ]
    loaded = [item for item in loaded if item[0] not in odd]
    for s in skipped:
        log.warning("skipped %s: %s", s.source, s.reason)
    if not loaded:
        raise SynthmedError(
            f"none of the {len(found.pairs)} volumes could be loaded, e.g. {skipped[-1].reason}", path=root
        )
    return LoadedVolumes(
        images=torch.stack([image for _, image, _, _ in loaded]),
        labels=_stack_labels([label for _, _, label, _ in loaded]),
        keys=[key for key, _, _, _ in loaded],
        affines=np.stack([meta["affine"] for _, _, _, meta in loaded]),
        skipped=skipped,
        phash=[meta["phash"] for _, _, _, meta in loaded],
    )


def common_channels(counts: Sequence[int]) -> int:
    """The channel count most volumes have (a tie goes to more channels); 1 for none."""
    tally = Counter(counts)
    return max(tally, key=lambda c: (tally[c], c)) if tally else 1


def channel_mismatch(found: int, expected: int) -> str:
    """Why a volume of ``found`` channels is left out of a data set of ``expected``."""
    return (
        f"has {found} channel(s) but the data set {expected} (data.channels): give every case the same "
        "contrasts, or set data.channels to the count to keep"
    )


def _channel_count(loaded: list[tuple[str, torch.Tensor, torch.Tensor | None, VolumeMeta]], key: str) -> int:
    return next(image.shape[0] for k, image, _, _ in loaded if k == key)


def _stack_labels(labels: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [lab for lab in labels if lab is not None]
    if len(present) == len(labels):
        return torch.stack(present)
    if present:
        log.warning(
            "%d of %d volumes have no label map, so no labels are returned; "
            "pass require_labels=True to load only the labelled pairs",
            len(labels) - len(present),
            len(labels),
        )
    return None


@functools.lru_cache(maxsize=2)
def _loader(key: str) -> LoadImaged:
    # MONAI registers its optional GPU DICOM reader here and says, once as a warning and once as a log line
    # ("nvImageCodec is not available"), that this machine lacks it: true of every CPU machine, so silenced.
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            return LoadImaged(key, image_only=True, ensure_channel_first=True)
    finally:
        plugin_log.setLevel(level)


def _read(path: Path, key: str) -> MetaTensor:
    """One NIfTI file or DICOM series folder as a channel-first MetaTensor (float32, RAS affine)."""
    series = path.is_dir()
    # Passed per call, the reader is the only one tried: a damaged file is not handed on to MONAI's
    # PIL, numpy and single-file DICOM readers. Without ITK, PydicomReader reads series folders
    # (fname_regex=None: the files carrying the DICOM magic, ordered by InstanceNumber).
    reader = PydicomReader(fname_regex=None) if series else NibabelReader()  # type: ignore[arg-type]
    try:
        return _loader(key)({key: str(path)}, reader=reader)[key]
    except Exception as exc:  # nibabel, gzip, zlib and pydicom errors on damaged files
        what = "DICOM series" if series else "NIfTI file"
        raise SynthmedError(
            f"cannot read this {what}: damaged, truncated or not a volume ({type(exc).__name__}: {exc})",
            path=path,
        ) from exc


def _check_volume(vol: MetaTensor, path: Path, what: str, channels: int = 1) -> np.ndarray:
    """Shape and finiteness of a volume as read (at most ``channels`` channels); returns its voxels (numpy:
    torch's threaded element-wise ops on small volumes crawl when other processes keep the cores busy)."""
    if vol.ndim != 4 or not 1 <= vol.shape[0] <= channels:
        expected = (
            "one 3-D volume (x, y, z) per file"
            if channels == 1
            else f"a 3-D volume (x, y, z) or up to {channels} channels on a 4th axis (x, y, z, c)"
        )
        raise SynthmedError(
            f"{what} has shape {tuple(vol.shape[1:])} with {vol.shape[0]} channel(s); expected {expected}",
            path=path,
        )
    arr = vol.as_tensor().numpy()
    if arr.size == 0:
        raise SynthmedError(f"empty volume: {what} has no voxels (shape {arr.shape[1:]})", path=path)
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise SynthmedError(f"{what} has {bad} NaN or infinite voxels (of {arr.size})", path=path)
    return arr


def _check_not_empty(arr: np.ndarray, path: Path, what: str = "") -> None:
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        where = f" of {what}" if what else ""
        raise SynthmedError(
            f"empty volume: every voxel{where} is {lo:g}, there is no image content", path=path
        )


def _check_label_values(arr: np.ndarray, path: Path) -> None:
    fractional = arr[arr != np.round(arr)]
    if fractional.size:
        raise SynthmedError(
            f"label map has {fractional.size} non-integer values (e.g. {fractional[0]:g}); expected "
            "integer classes 0 (background), 1, 2, ...: was an image saved as the label map, or the "
            "label map resampled with linear interpolation?",
            path=path,
        )
    if arr.min() < 0:
        raise SynthmedError(f"label map has negative values (min {arr.min():g})", path=path)


_LABEL_FIX = "resample the label map onto the image grid (nearest neighbour) or pair it with the right image"
_CONTRAST_FIX = (
    "resample every contrast of a case onto one grid (the first contrast's) or pair the right files"
)


def _check_same_grid(
    image: MetaTensor, other: MetaTensor, image_path: Path, path: Path, what: str, fix: str
) -> None:
    """A label map (or a further contrast) must lie voxel for voxel on its image's grid; resampling silently
    would hide errors."""
    ishape, lshape = tuple(image.shape[1:]), tuple(other.shape[1:])
    if ishape != lshape:
        raise SynthmedError(
            f"{what} shape {lshape} differs from its image's {ishape} ({image_path.name}); {fix}",
            path=path,
        )
    iaff, laff = image.affine.numpy(), other.affine.numpy()
    gap = float(np.abs(iaff - laff).max())
    if gap > AFFINE_TOLERANCE:
        raise SynthmedError(
            f"{what} affine {_fmt(laff)} differs from its image's {_fmt(iaff)} ({image_path.name}) "
            f"by up to {gap:g} mm (tolerance {AFFINE_TOLERANCE:g}); {fix}",
            path=path,
        )


def _fmt(affine: np.ndarray) -> str:
    return str(np.round(affine[:3], 3).tolist())


@functools.lru_cache(maxsize=8)
def _pipeline(cfg: VolumeConfig, keys: tuple[Role, ...], *, crop: bool = True) -> Compose:
    """RAS -> target spacing (bilinear image, nearest label) -> intensities in [0, 1] -> crop/pad to size."""
    names = list(keys)
    steps: list[MapTransform] = [Orientationd(names, axcodes="RAS", labels=None)]
    if cfg.spacing is not None:
        modes = ["nearest" if key == "label" else "bilinear" for key in keys]
        steps.append(Spacingd(names, pixdim=cfg.spacing, mode=modes))
    if "image" in keys:
        steps.append(_intensity_step(cfg))
    # Scaled first, so the zero padding is the darkest value (air for CT, background for MRI).
    if crop:
        steps.append(ResizeWithPadOrCropd(names, spatial_size=cfg.size, mode="constant", value=0.0))
    return Compose(steps)


def _intensity_step(cfg: VolumeConfig) -> MapTransform:
    if cfg.modality == "ct":
        lo, hi = cfg.ct_window
        return ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    # The project's numpy PercentileScale: MONAI's torch.quantile version is several times slower on
    # busy cores, and leaves [0, 1] for a near-constant volume; same interpolation otherwise.
    # Channel-wise: each contrast has its own units (one channel: the same numbers as the whole volume).
    lo, hi = cfg.clip_percentiles
    scale = PercentileScale(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True, channel_wise=True)
    return Lambdad("image", scale)


# --- label maps alone and NIfTI output (3D generation) ------------------------------------------


def open_volume(path: Path) -> SpatialImage:
    """nibabel's image of a NIfTI (or other volume) file, read lazily, typed as the spatial image each is."""
    return cast(SpatialImage, nib.load(path))


def load_label_map(path: Path, cfg: VolumeConfig, *, crop: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """A user's label map on its own (the condition for 3D generation): (1, X, Y, Z) int64 and the 4 x 4
    voxel -> RAS mm affine of that result.

    Same checks as a label map paired with an image, plus "not all background"; then RAS, nearest
    neighbour resampling to ``cfg.spacing`` (if set) and centred crop or zero pad to ``cfg.size`` (unless
    ``crop`` is False: then the whole resampled map, to measure what the crop loses).
    """
    path = Path(path)
    label = _read(path, "label")
    arr = _check_volume(label, path, "label map")
    _check_label_values(arr, path)
    if not arr.any():
        raise SynthmedError(
            "empty label map: every voxel is background (0); a generated volume needs labelled structures",
            path=path,
        )
    out = _pipeline(cfg, ("label",), crop=crop)({"label": label})["label"]
    return out.as_tensor().long(), out.affine.numpy()


def save_nifti(
    volume: torch.Tensor | np.ndarray, affine: np.ndarray, path: Path, *, dtype: npt.DTypeLike
) -> None:
    """Write a (X, Y, Z) or (C, X, Y, Z) volume as NIfTI (``.nii.gz`` compresses) with its voxel -> RAS mm
    affine, atomically: an interrupted run never leaves a half-written file under the final name. Several
    channels (contrasts) go on the 4th axis, (X, Y, Z, C), as a 4D NIfTI image holds them.

    Both qform and sform carry the affine with code 1 (scanner), as viewers and nibabel expect; an
    integer ``dtype`` (label maps) must hold every value exactly.
    """
    path = Path(path)
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if arr.ndim == 4:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if arr.ndim not in (3, 4):
        raise SynthmedError(f"expected a (X, Y, Z) or (C, X, Y, Z) volume, got {arr.shape}", path=path)
    suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
    if suffix is None:
        raise SynthmedError("a NIfTI output needs a .nii.gz or .nii file name", path=path)
    img = nib.Nifti1Image(_cast(arr, np.dtype(dtype), path), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    with atomic_write(path, suffix) as tmp:  # the suffix tells nibabel whether to compress
        nib.save(img, tmp)


def _cast(arr: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    """``arr`` as ``dtype``, refusing to round or wrap values into an integer type (label 300 as uint8)."""
    if np.issubdtype(dtype, np.integer) and arr.size:
        info = np.iinfo(dtype)
        if not (np.array_equal(arr, np.round(arr)) and info.min <= arr.min() and arr.max() <= info.max):
            raise SynthmedError(
                f"values {arr.min():g}..{arr.max():g} do not fit {dtype} exactly; use a wider integer type",
                path=path,
            )
    return arr.astype(dtype)
