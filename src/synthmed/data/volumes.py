"""3D ingestion: find NIfTI volumes and DICOM series with their label maps, check them, and turn them into
RAS-oriented, resampled, intensity-windowed tensors of one size with MONAI dictionary transforms.

Layouts found by `discover_volumes`:

- MSD style: ``images/`` (or ``imagesTr/``) and ``labels/`` (or ``labelsTr/``), paired by file name;
- flat: ``<key>_image.nii.gz`` beside ``<key>_label.nii.gz`` (synthmed's own 3D output), or plain
  ``*.nii[.gz]`` images without labels;
- DICOM: each sub-folder holding DICOM files is one series (one image), in either layout above; its
  label map, if any, is a NIfTI file named after the folder.

A bad file (unpaired, unreadable, NaN, empty, label map off the image grid, non-integer labels) is a
SynthmedError naming it; `load_volumes` turns those into `Skipped` entries and loads everything else.

For 3D generation, `load_label_map` reads a label map on its own (the condition) through the same checks
and transforms, and `save_nifti` writes generated volumes and label maps.
"""

from __future__ import annotations

import functools
import logging
import warnings
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


@dataclass(frozen=True)
class VolumePair:
    """One image (NIfTI file or DICOM series folder), its label map if any, and the name pairing them."""

    image: Path
    label: Path | None
    key: str


@dataclass
class VolumeDiscovery:
    pairs: list[VolumePair]
    skipped: list[Skipped] = field(default_factory=list)


class VolumeMeta(TypedDict):
    affine: np.ndarray  # 4 x 4 voxel -> RAS mm of the returned tensors
    spacing: tuple[float, float, float]  # mm, of the returned tensors
    original_shape: tuple[int, int, int]  # voxels as stored in the file
    original_affine: np.ndarray  # as stored (RAS)
    phash: str  # normalised pixel hash of the image as stored (synthmed.data.integrity)


@dataclass
class LoadedVolumes:
    """(N, 1, X, Y, Z) images in [0, 1]; int64 label maps, or None unless every loaded image has one."""

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
    if image_dir is None:
        images, labels, skipped = _scan(root, root, None)
        image_name, label_name = "{}_image.nii.gz", "{}_label.nii.gz"
    else:
        images, _, skipped = _scan(image_dir, root, "image")
        _, labels, more = _scan(label_dir, root, "label") if label_dir else ({}, {}, [])
        skipped += more
        image_name = f"{image_dir.name}/{{}}.nii.gz"
        label_name = f"{label_dir.name if label_dir else _LABEL_DIRS[0]}/{{}}.nii.gz"
    skipped += [
        Skipped(_rel(path, root), f"label map without an image (expected {image_name.format(key)})")
        for key, path in sorted(labels.items())
        if key not in images
    ]
    pairs = [VolumePair(path, labels.get(key), key) for key, path in sorted(images.items())]
    if require_labels:
        skipped += [
            Skipped(_rel(p.image, root), f"image without a label map (expected {label_name.format(p.key)})")
            for p in pairs
            if p.label is None
        ]
        pairs = [p for p in pairs if p.label is not None]
    if not pairs:
        raise SynthmedError(_nothing_usable(len(images), skipped), path=root)
    return VolumeDiscovery(pairs, skipped)


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
    """Read, check and transform one pair: image (1, X, Y, Z) float32 in [0, 1], label (1, X, Y, Z) int64.

    The checks run on the data as read, before any resampling, so a mismatch is reported in the file's
    own terms; every failure is a SynthmedError naming the file at fault.
    """
    image = _read(pair.image, "image")
    voxels = _check_volume(image, pair.image, "image")
    _check_not_empty(voxels, pair.image)
    data: dict[Role, MetaTensor] = {"image": image}
    if pair.label is not None:
        label = _read(pair.label, "label")
        _check_label_values(_check_volume(label, pair.label, "label map"), pair.label)
        _check_same_grid(image, label, pair)
        data["label"] = label
    out = _pipeline(cfg, tuple(data))(data)
    labels = out["label"].as_tensor().long() if pair.label is not None else None  # nearest: exact integers
    return out["image"].as_tensor(), labels, _meta(image, out["image"], pixel_hash(voxels))


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


def load_volumes(root: Path, cfg: VolumeConfig, *, require_labels: bool = False) -> LoadedVolumes:
    """Discover and load every volume under ``root``; a file that fails is skipped (and logged), not fatal."""
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


def _check_volume(vol: MetaTensor, path: Path, what: str) -> np.ndarray:
    """Shape and finiteness of a volume as read; returns its voxels (numpy: torch's threaded element-wise
    ops on small volumes crawl when other processes keep the cores busy)."""
    if vol.ndim != 4 or vol.shape[0] != 1:
        raise SynthmedError(
            f"{what} has shape {tuple(vol.shape[1:])} with {vol.shape[0]} channel(s); expected one 3-D "
            "volume (x, y, z) per file",
            path=path,
        )
    arr = vol.as_tensor().numpy()
    if arr.size == 0:
        raise SynthmedError(f"empty volume: {what} has no voxels (shape {arr.shape[1:]})", path=path)
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise SynthmedError(f"{what} has {bad} NaN or infinite voxels (of {arr.size})", path=path)
    return arr


def _check_not_empty(arr: np.ndarray, path: Path) -> None:
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise SynthmedError(f"empty volume: every voxel is {lo:g}, there is no image content", path=path)


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


def _check_same_grid(image: MetaTensor, label: MetaTensor, pair: VolumePair) -> None:
    """A label map must lie voxel for voxel on its image's grid; resampling silently would hide errors."""
    ishape, lshape = tuple(image.shape[1:]), tuple(label.shape[1:])
    fix = "resample the label map onto the image grid (nearest neighbour) or pair it with the right image"
    if ishape != lshape:
        raise SynthmedError(
            f"label map shape {lshape} differs from its image's {ishape} ({pair.image.name}); {fix}",
            path=pair.label,
        )
    iaff, laff = image.affine.numpy(), label.affine.numpy()
    gap = float(np.abs(iaff - laff).max())
    if gap > AFFINE_TOLERANCE:
        raise SynthmedError(
            f"label map affine {_fmt(laff)} differs from its image's {_fmt(iaff)} ({pair.image.name}) "
            f"by up to {gap:g} mm (tolerance {AFFINE_TOLERANCE:g}); {fix}",
            path=pair.label,
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
    lo, hi = cfg.clip_percentiles
    return Lambdad("image", PercentileScale(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True))


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
    """Write a (X, Y, Z) or (1, X, Y, Z) volume as NIfTI (``.nii.gz`` compresses) with its voxel -> RAS mm
    affine, atomically: an interrupted run never leaves a half-written file under the final name.

    Both qform and sform carry the affine with code 1 (scanner), as viewers and nibabel expect; an
    integer ``dtype`` (label maps) must hold every value exactly.
    """
    path = Path(path)
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    arr = arr[0] if arr.ndim == 4 and arr.shape[0] == 1 else arr
    if arr.ndim != 3:
        raise SynthmedError(f"expected a (X, Y, Z) or (1, X, Y, Z) volume, got {arr.shape}", path=path)
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
