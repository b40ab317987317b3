"""Blinded re-encoding of study images: every served image, real or synthetic, 2D or a 3D slice, is decoded,
windowed, resized and written the same way, so nothing but its pixels can tell where it came from.

- windowing: the 0.5th-99.5th intensity percentiles of the whole image (3D: the whole volume) -> [0, 255];
- resolution: every image is first brought to the study's common native resolution (its longest side, 3D:
  in-plane voxels), by default the lowest native resolution among the study's images, with one filter
  (area averaging) for real and synthetic alike; otherwise a 224 px real image beside a 64 px synthetic
  one, both enlarged to the screen, is told apart by its sharpness alone;
- geometry: the study's square ``size``, aspect ratio kept (3D: from the voxel spacing), zero padding;
  3D volumes are reoriented to RAS and resampled to the study's common number of axial slices; a
  multi-contrast volume (a 4D NIfTI, or one 3D file per contrast on one grid) shows its contrasts side by
  side, each windowed on its own, and every volume of its study must have as many;
- colour: a 2D study holding any colour image is rendered in RGB throughout (grey images as three equal
  channels), with the window off (8-bit values as stored, 16-bit ones scaled by their range), so a colour
  photograph is shown as taken and real and synthetic items look alike in everything but their pixels;
- encoding: 8-bit greyscale (or RGB) PNG, no ancillary chunks (no text, time, gamma, resolution), zlib
  level 0 (stored blocks), so every image of a study has exactly the same byte length.

Images are rendered once, when the study is created, into a cache folder keyed by study and item; the web
app serves those bytes, so serving time depends neither on the origin nor on the source file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Resize, SpatialPad
from PIL import Image

from synthmed.catalogue.db import database_url
from synthmed.data.preprocess import FitResize, PercentileScale
from synthmed.data.readers import (
    decode_pixels,
    is_dicom,
    read_bytes,
    read_channels,
    read_image,
)
from synthmed.errors import SynthmedError

WINDOW = (0.5, 99.5)
#: Largest volume rendered (voxels): far above any CT or MRI series, far below what exhausts memory.
MAX_VOXELS = 1 << 28
VOLUME_SUFFIXES = (".nii", ".nii.gz")
#: Most contrasts (4th NIfTI axis) a study volume may hold: each is shown side by side at the study's size.
MAX_CONTRASTS = 4
STUDY_INFO = "study.json"  # beside the items' folders: how the study was rendered
# Bits per sample of Pillow's image modes; every other mode (L, P, RGB, RGBA, LA...) has 8 per channel.
PIL_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}
HEADER_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF")
#: What an item is rendered from: one image or NIfTI file, or a volume's files in contrast order (a
#: multi-contrast case stored as one 3D file per contrast).
Source = Path | Sequence[Path]


def volume_files(source: Source) -> tuple[Path, ...]:
    """The files of a volume source, in contrast order."""
    return (source,) if isinstance(source, Path) else tuple(source)


def image_file(source: Source) -> Path:
    """The one file of a 2D image source."""
    files = volume_files(source)
    if len(files) != 1:
        raise SynthmedError(f"a 2D image is one file, not {len(files)}", path=files[0] if files else None)
    return files[0]


@dataclass(frozen=True)
class Native:
    """An image's stored resolution, from its header: rows and columns (3D: in-plane voxels) and bits per
    sample."""

    height: int
    width: int
    bits: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)


def default_cache_dir(
    url: str | None = None, suffix: str = "review", fallback: str = "synthmed-review-cache"
) -> Path:
    """Beside a SQLite file (``synthmed.db`` -> ``synthmed.db-review``), else ``fallback`` in the working
    folder; ``suffix`` and ``fallback`` name other folders kept with the database (e.g. the jobs')."""
    url = database_url(url)
    prefix = "sqlite:///"
    if url.startswith(prefix) and url[len(prefix) :] not in ("", ":memory:"):
        db_file = Path(url[len(prefix) :])
        return db_file.with_name(f"{db_file.name}-{suffix}")
    return Path(fallback)


def study_dir(cache: Path, study_id: int) -> Path:
    return Path(cache) / f"study_{study_id}"


def slice_path(cache: Path, study_id: int, item_id: int, index: int) -> Path:
    return study_dir(cache, study_id) / str(item_id) / f"{index}.png"


def encode_png(plane: np.ndarray) -> bytes:
    """8-bit greyscale (H, W) or RGB (H, W, 3) PNG with only IHDR, IDAT and IEND; stored (uncompressed)
    blocks: its length depends on the image size alone."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(plane, dtype=np.uint8), mode="L" if plane.ndim == 2 else "RGB").save(
        buf, format="PNG", compress_level=0
    )
    return buf.getvalue()


def is_colour_image(path: Path) -> bool:
    """Whether a 2D image file holds colour (grey stored as RGB does not)."""
    return decode_pixels(read_bytes(path), path).colour


def _window(arr: np.ndarray) -> torch.Tensor:
    lo, hi = WINDOW
    return torch.as_tensor(PercentileScale(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)(arr))


def _to_uint8(arr: torch.Tensor) -> np.ndarray:
    return np.round(np.clip(np.asarray(arr, dtype=np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def native_geometry(path: Source, spatial_dims: int) -> Native:
    """The stored resolution of an image or volume, read from its header only (fast on large files)."""
    if spatial_dims == 3:
        img = _open_volume(volume_files(path)[0])  # a volume's contrasts share one grid
        return Native(
            height=int(img.shape[1]), width=int(img.shape[0]), bits=img.get_data_dtype().itemsize * 8
        )
    path = image_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if is_dicom(path, head):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return Native(int(ds.Rows), int(ds.Columns), int(ds.get("BitsStored", ds.BitsAllocated)))
        with Image.open(path, formats=HEADER_FORMATS) as im:
            return Native(im.height, im.width, PIL_BITS.get(im.mode, 8))
    except Exception as exc:  # OS, Pillow and pydicom errors on missing or damaged files
        raise SynthmedError(f"cannot read the image header ({type(exc).__name__}: {exc})", path=path) from exc


def render_image(path: Path, size: int, native: int | None = None, colour: bool = False) -> np.ndarray:
    """A 2D image file (PNG, JPEG, DICOM...) as one (size, size) uint8 plane, or (size, size, 3) with
    ``colour``, first brought down to a longest side of ``native`` pixels when it is larger."""
    if colour:  # the window off: as stored
        rgb = read_channels(path, 3)
        scale = 255.0 if rgb.max(initial=0.0) <= 255 else 65535.0
        windowed = torch.from_numpy(np.clip(rgb / scale, 0.0, 1.0).transpose(2, 0, 1).astype(np.float32))
    else:
        windowed = _window(read_image(path))[None]  # (1, H, W)
    # MONAI's MetaTensor switch is process-wide: web request threads must not turn it off (a job's volume
    # loading in another thread needs it), so these few transforms keep their bookkeeping.
    if native is not None and max(windowed.shape[-2:]) > native:
        windowed = FitResize(native, "longest")(windowed)  # area averaging, as training data are resized
    fitted = SpatialPad((size, size), mode="constant", value=0.0)(FitResize(size, "longest")(windowed))
    planes = _to_uint8(torch.as_tensor(fitted))
    return planes.transpose(1, 2, 0) if colour else planes[0]


def _open_volume(path: Path):  # -> nibabel image, RAS
    import nibabel as nib

    if not str(path).lower().endswith(VOLUME_SUFFIXES):
        raise SynthmedError("a 3D study sample must be a NIfTI file (.nii or .nii.gz)", path=path)
    try:
        img = nib.as_closest_canonical(nib.load(path))
    except Exception as exc:  # nibabel, gzip and OS errors on damaged or missing files
        raise SynthmedError(f"cannot read this NIfTI file ({type(exc).__name__}: {exc})", path=path) from exc
    shape = img.shape
    if len(shape) not in (3, 4) or min(shape) < 1 or (len(shape) == 4 and shape[3] > MAX_CONTRASTS):
        raise SynthmedError(
            f"expected one 3D volume (or a 4D NIfTI of up to {MAX_CONTRASTS} contrasts), got shape {shape}",
            path=path,
        )
    if int(np.prod(shape)) > MAX_VOXELS:
        raise SynthmedError(f"volume of {shape} voxels is above the {MAX_VOXELS:,}-voxel limit", path=path)
    return img


def axial_slices(path: Source) -> int:
    """Axial slices of a NIfTI volume in RAS orientation (header only)."""
    return int(_open_volume(volume_files(path)[0]).shape[2])


def volume_contrasts(path: Source) -> int:
    """Contrasts (channels) of a volume: a 4D NIfTI's 4th axis, 1 per 3D file (headers only)."""
    shapes = [_open_volume(f).shape for f in volume_files(path)]
    return sum(int(shape[3]) if len(shape) == 4 else 1 for shape in shapes)


def render_volume(path: Source, size: int, slices: int, native: int | None = None) -> np.ndarray:
    """A NIfTI volume as (slices, size, size) uint8 axial planes, radiological display (patient's right on
    the viewer's left, anterior up), in-plane aspect ratio from the voxel spacing; first brought down to
    ``native`` voxels along the longest in-plane side when it is larger. C contrasts (a 4D volume, or one
    file each) give (slices, size, C x size): side by side, each windowed on its own."""
    files = volume_files(path)
    if volume_contrasts(files) > MAX_CONTRASTS:
        raise SynthmedError(f"a study volume may hold up to {MAX_CONTRASTS} contrasts", path=files[0])
    panels = [panel for f in files for panel in _contrast_panels(f, size, slices, native, files[0])]
    return np.concatenate(panels, axis=2)


def _contrast_panels(path: Path, size: int, slices: int, native: int | None, first: Path) -> list[np.ndarray]:
    """One file's contrasts as (slices, size, size) planes each; a file off ``first``'s grid is refused."""
    img = _open_volume(path)
    reference = _open_volume(first)
    if img.shape[:3] != reference.shape[:3] or not np.allclose(img.affine, reference.affine, atol=1e-3):
        raise SynthmedError(f"a contrast on another grid than {first.name}'s", path=path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise SynthmedError(f"cannot read the voxels ({type(exc).__name__}: {exc})", path=path) from exc
    if not np.isfinite(data).all():
        raise SynthmedError("volume holds NaN or infinite values", path=path)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    contrasts = data[..., None] if data.ndim == 3 else data
    return [_axial_planes(c, zooms, size, slices, native) for c in np.moveaxis(contrasts, 3, 0)]


def _axial_planes(
    data: np.ndarray, zooms: list[float], size: int, slices: int, native: int | None
) -> np.ndarray:
    # RAS (x, y, z) -> (z, rows = y flipped, columns = x flipped): axial planes for display.
    planes = np.ascontiguousarray(np.transpose(data, (2, 1, 0))[:, ::-1, ::-1])
    height, width = planes.shape[1] * zooms[1], planes.shape[2] * zooms[0]
    scale = size / max(height, width)
    target = (slices, max(1, round(height * scale)), max(1, round(width * scale)))
    windowed = _window(planes)[None]
    if native is not None and max(planes.shape[1:]) > native:
        ratio = native / max(planes.shape[1:])
        shape = (planes.shape[0], *(max(1, round(n * ratio)) for n in planes.shape[1:]))
        windowed = Resize(shape, mode="area")(windowed)  # in-plane only, the same filter for every volume
    resized = Resize(target, mode="trilinear", anti_aliasing=True)(windowed)
    padded = SpatialPad((slices, size, size), mode="constant", value=0.0)(resized)
    return _to_uint8(torch.as_tensor(padded))[0]


def render_study(
    cache: Path,
    study_id: int,
    items: Iterable[tuple[int, Source]],
    spatial_dims: int,
    size: int,
    native: int | None = None,
    info: dict | None = None,
) -> int:
    """Render every (item id, file) of a study into the cache, each brought to the common ``native``
    resolution first; returns the slices per item (1 for 2D). ``info`` (how the study was rendered, for
    its admin page) is kept beside the items, never served to readers.

    Written to a temporary folder first and moved into place at the end, so a failure (a damaged file,
    named in the error) leaves no half-rendered study behind.
    """
    items = list(items)
    slices = 1
    if spatial_dims == 3:
        slices = min(max(axial_slices(path) for _, path in items), size)  # one count for every item
        _check_contrasts(items)
    colour = spatial_dims == 2 and any(is_colour_image(image_file(path)) for _, path in items)  # one look
    final = study_dir(cache, study_id)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for item_id, path in items:
            planes = (
                render_volume(path, size, slices, native)
                if spatial_dims == 3
                else render_image(image_file(path), size, native, colour)[None]
            )
            folder = tmp / str(item_id)
            folder.mkdir(parents=True)
            for index, plane in enumerate(planes):
                (folder / f"{index}.png").write_bytes(encode_png(plane))
        (tmp / STUDY_INFO).write_text(json.dumps((info or {}) | ({"colour": True} if colour else {})))
        shutil.rmtree(final, ignore_errors=True)  # a stale folder of a rolled-back study with this id
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return slices


def _check_contrasts(items: list[tuple[int, Source]]) -> None:
    """One number of contrasts per 3D study: a wider image would tell its volume apart at a glance."""
    counts = {volume_files(path)[0]: volume_contrasts(path) for _, path in items}
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{path.name}: {n}" for path, n in list(counts.items())[:4])
        raise SynthmedError(
            f"a study's volumes must all have the same number of contrasts (found {found}); a volume shown "
            "with more contrasts side by side would unblind it: make one study per contrast count"
        )


def study_info(cache: Path, study_id: int) -> dict:
    """What render_study kept about a study's rendering ({} for a study rendered before it kept any)."""
    path = study_dir(cache, study_id) / STUDY_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def slice_count(cache: Path, study_id: int, item_id: int) -> int:
    """Slices rendered for an item (the same for every item of a study)."""
    folder = study_dir(cache, study_id) / str(item_id)
    return sum(1 for p in folder.glob("*.png")) if folder.is_dir() else 0


def preview_png(path: Source, spatial_dims: int, size: int = 256) -> bytes:
    """An admin's gallery thumbnail: the image, or a volume's middle axial slice (not blinded)."""
    if spatial_dims == 3:
        planes = render_volume(path, size, axial_slices(path))
        return encode_png(planes[len(planes) // 2])
    image = image_file(path)
    return encode_png(render_image(image, size, colour=is_colour_image(image)))
