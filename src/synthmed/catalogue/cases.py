"""An approved sample read for export: its pixels as stored, its geometry (3D), its mask or label map, and
the model that generated it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.valuerep import format_number_as_ds
from sqlalchemy.orm import Session

from synthmed.catalogue.models import GenerationRun, Sample
from synthmed.catalogue.provenance import inside_folder
from synthmed.data.readers import is_colour, is_dicom, read_bytes, validate_array
from synthmed.data.volumes import open_volume
from synthmed.errors import SynthmedError

_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
_UINT16_TOP = 65535


@dataclass
class Case:
    """One approved sample, read: pixel values, its geometry (3D) and its mask or label map."""

    case_id: str
    sample: Sample
    model: dict[str, Any]
    image: np.ndarray  # 2D (rows, columns) uint8/uint16 or colour (rows, columns, 3) uint8; 3D (x, y, z)
    # or, several channels (contrasts), (x, y, z, c)
    affine: np.ndarray | None  # 3D voxel -> RAS mm
    mask: np.ndarray | None  # 2D 0/1 uint8; 3D integer label map on the image's grid


def read_case(session: Session, sample: Sample, dims: int) -> Case:
    root = Path(sample.dataset.root)
    path = inside_folder(root, sample.path)
    mask_path = inside_folder(root, sample.mask_path) if sample.mask_path else None
    case_id = f"synthmed_{sample.id:06d}"
    model = _model(session, sample)
    if dims == 2:
        image = _read_2d(path)
        mask = None
        if mask_path is not None:
            mask = (_read_2d(mask_path, colour=False) > 0).astype(np.uint8)
            _same_shape(mask.shape, image.shape[:2], mask_path)
        return Case(case_id, sample, model, image, None, mask)
    image, affine = _read_volume(path, channels=True)
    label = None
    if mask_path is not None:
        label, label_affine = _read_volume(mask_path)
        _same_shape(label.shape, image.shape[:3], mask_path)
        if not np.allclose(label_affine, affine, atol=1e-3):
            raise SynthmedError(
                "the label map's affine differs from its image's; they must share a grid", path=mask_path
            )
        label = _label_values(label, mask_path)
    return Case(case_id, sample, model, image, affine, label)


def _same_shape(mask: tuple[int, ...], image: tuple[int, ...], path: Path) -> None:
    if mask != image:
        raise SynthmedError(f"mask has shape {mask} but its image has {image}; they must match", path=path)


def _read_2d(path: Path, colour: bool = True) -> np.ndarray:
    """A 2D image as uint8 or uint16 greyscale, values as stored (DICOM: stored values, no LUTs), or as
    (rows, columns, 3) uint8 when it holds colour (and ``colour``)."""
    data = read_bytes(path)
    try:
        dicom = is_dicom(path, data)
        arr = _dicom_pixels(data, path) if dicom else _pil_pixels(data, colour)
    except SynthmedError:
        raise
    except Exception as exc:  # any decoder failure on a damaged file becomes our one error type
        raise SynthmedError(f"cannot read the image ({type(exc).__name__}: {exc})", path=path) from exc
    return unsigned(arr, path)[0]


def _pil_pixels(data: bytes, colour: bool) -> np.ndarray:
    with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
        if im.mode in ("L", "I", "F") or im.mode.startswith("I;16"):
            return np.asarray(im)
        rgb = np.asarray(im.convert("RGB"))
        if colour and is_colour(rgb):
            return rgb  # alpha dropped: it is not anatomy
        return np.asarray(im.convert("L"))  # grey stored as colour, palette: luminance


def _dicom_pixels(data: bytes, path: Path) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise SynthmedError("multi-frame DICOM; a 2D sample must be a single image", path=path)
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "MONOCHROME1":  # low values bright: flip, since the export is MONOCHROME2
        arr = int(arr.max()) + int(arr.min()) - arr.astype(np.int64)
    return arr if arr.ndim == 2 else validate_array(arr, str(path))  # colour: luminance


def unsigned(arr: np.ndarray, path: Path) -> tuple[np.ndarray, float, float]:
    """``arr`` as uint8/uint16 with (slope, intercept) such that source = stored * slope + intercept.

    PNG and Secondary Capture DICOM hold unsigned 8- or 16-bit pixels: those are kept exactly, other
    integers are shifted, and anything else is scaled linearly onto 0..65535.
    """
    if arr.ndim < 2 or arr.size == 0:
        raise SynthmedError(f"image has no pixels or too few dimensions (shape {arr.shape})", path=path)
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        return arr.astype(np.uint16 if arr.dtype.itemsize == 2 else np.uint8), 1.0, 0.0
    if arr.dtype.kind not in "uif" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise SynthmedError(
            f"pixel values must be finite numbers (found {arr.dtype}, NaN or infinity)", path=path
        )
    lo, hi = float(arr.min()), float(arr.max())
    if arr.dtype.kind in "ui" and hi - lo <= _UINT16_TOP:
        shift = 0.0 if lo >= 0 and hi <= _UINT16_TOP else lo
        return (arr.astype(np.int64) - int(shift)).astype(np.uint16), 1.0, shift
    # Slope and intercept as DICOM writes them (decimal strings of 16 characters at most).
    slope, lo = float(format_number_as_ds((hi - lo) / _UINT16_TOP)) or 1.0, float(format_number_as_ds(lo))
    stored = np.clip(np.round((arr.astype(np.float64) - lo) / slope), 0, _UINT16_TOP)
    return stored.astype(np.uint16), slope, lo


def _read_volume(path: Path, channels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (x, y, z) as stored, or with ``channels`` also (x, y, z, c) for several, and the affine."""
    try:
        img = open_volume(path)
        arr = np.asanyarray(img.dataobj)
    except FileNotFoundError as exc:
        raise SynthmedError("file not found", path=path) from exc
    except Exception as exc:  # nibabel raises many types for damaged files
        raise SynthmedError(f"not a readable NIfTI volume ({type(exc).__name__}: {exc})", path=path) from exc
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 3 or (channels and arr.ndim == 4)) or arr.size == 0:
        expected = "a 3D volume or channels on a 4th axis" if channels else "a 3D volume"
        raise SynthmedError(f"expected {expected}, got shape {arr.shape}", path=path)
    return arr, np.asarray(img.affine, dtype=np.float64)


def _label_values(label: np.ndarray, path: Path) -> np.ndarray:
    if (
        not (np.isfinite(label).all() and np.array_equal(label, np.round(label)))
        or not 0 <= label.min() <= label.max() < 2**16
    ):
        raise SynthmedError("a label map must hold integer labels 0..65535", path=path)
    return label.astype(np.uint8 if label.max() < 256 else np.uint16)


def _model(session: Session, sample: Sample) -> dict[str, Any]:
    """The model that generated the sample: its generation run's, else its manifest row's record."""
    prov = sample.provenance or {}
    run = session.get(GenerationRun, sample.generation_run_id) if sample.generation_run_id else None
    if run is not None:
        model = run.model
        data = (model.config or {}).get("data", {})
        volume = data.get("volume") or {}
        return {
            "run_dir": model.run_dir,
            "autoencoder_sha256": model.autoencoder_sha256,
            "diffusion_sha256": model.diffusion_sha256,
            "modality": volume.get("modality"),
            "channel_names": data.get("channel_names") or prov.get("channel_names"),
            "settings": run.settings or {},
        }
    keys = ("run_dir", "autoencoder_sha256", "diffusion_sha256")
    known: dict[str, Any] = {"modality": None, "channel_names": prov.get("channel_names"), "settings": {}}
    return {key: prov.get(key) for key in keys} | known
