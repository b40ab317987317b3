"""Decode one 2D image file (PNG, JPEG, GIF, BMP, TIFF or DICOM) into a finite float32 (H, W) array.

`read_image` gives luminance; `decode_pixels` also says whether the file held colour and keeps its RGB
channels, so callers can train on colour (``data.channels``) or report the conversion.

A multi-frame DICOM (an ultrasound or endoscopy cine, colour or grey) is a set of 2D images: a data set
reads each frame as its own item, named ``<file>#frame=<n>`` (1-based, as DICOM numbers frames), and only
that frame is decoded. Where one image is expected (an editing source, a mask), such a file is refused.

Every failure, whatever library raised it, leaves as a SynthmedError naming the file: readers face
files from the wild, and one damaged scan must be reported (or skipped), never crash a long run.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from synthmed.errors import SynthmedError

#: Extensions read as images; anything else is only read when it carries the DICOM magic.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
#: Lossy formats: a mask saved in one has grey levels along its edges.
LOSSY_EXTENSIONS = frozenset({".jpg", ".jpeg"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
#: Most frames one multi-frame DICOM may claim (over five minutes of a 30 fps cine): a hostile header claiming
#: a billion frames must not become a billion records.
MAX_FRAMES = 10_000
_FRAME = re.compile(r"^(?P<file>.+)#frame=(?P<n>[1-9][0-9]*)$")
#: Largest image accepted (64 megapixels, e.g. 8000 x 8000): far above any radiograph or mammogram,
#: far below what exhausts memory, so a hostile header claiming 100k x 100k fails fast.
MAX_PIXELS = 64_000_000
#: Most channels an image may have (multi-contrast stacks; RGB(A) has 3 or 4).
MAX_CHANNELS = 16
#: Largest file read into memory.
MAX_FILE_BYTES = 1 << 30
# Pillow only tries these decoders, so fewer parsers face untrusted bytes (JPEG includes camera MPO).
_PIL_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF")
# Modes whose integer/float range is meaningful and must not be squeezed into 8 bits.
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights Pillow's convert("L") uses
# Colour: channels differ by more than this fraction of the value range on average (grey images stored as
# RGB, e.g. Kermany's, have equal channels, or nearly so after lossy compression).
_COLOUR_SPREAD = 0.01
_DICM_OFFSET = 128


def has_dicom_magic(head: bytes) -> bool:
    """True when ``head`` (the first 132+ bytes of a file) carries the DICOM Part 10 'DICM' marker."""
    return head[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM"


def is_image_file(path: Path) -> bool:
    """Cheap check used by discovery: a known image extension, or the DICOM magic for any other name."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with path.open("rb") as f:
            return has_dicom_magic(f.read(_DICM_OFFSET + 4))
    except OSError:
        return False


def frame_source(source: str, frame: int) -> str:
    """The item name of frame ``frame`` (1-based) of the multi-frame file ``source``."""
    return f"{source}#frame={frame}"


def split_frame(source: str) -> tuple[str, int | None]:
    """``(file, frame)`` of an item name: the frame of a multi-frame DICOM, or ``(source, None)``."""
    match = _FRAME.match(source)
    return (match["file"], int(match["n"])) if match else (source, None)


def is_dicom(path: Path, head: bytes) -> bool:
    """A DICOM extension, or the DICOM magic in ``head`` (the file's first bytes)."""
    return path.suffix.lower() in DICOM_EXTENSIONS or has_dicom_magic(head)


def dicom_frame_count(path: Path) -> int:
    """Frames of a DICOM file from its header alone (pixels not read): 1 for a single image; a header that
    claims more than MAX_FRAMES is refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # real archives are full of slightly non-conformant tags
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except Exception as exc:
            raise SynthmedError(
                f"not a readable DICOM file ({type(exc).__name__}: {exc})", path=path
            ) from exc
    if not 1 <= frames <= MAX_FRAMES:
        raise SynthmedError(f"DICOM header claims {frames} frames (limit {MAX_FRAMES:,})", path=path)
    return frames


def read_bytes(path: Path) -> bytes:
    """The whole file, or a SynthmedError saying why it cannot be read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise SynthmedError("is a folder, not an image file", path=path)
        if size == 0:
            raise SynthmedError("file is empty (0 bytes)", path=path)
        if size > MAX_FILE_BYTES:
            raise SynthmedError(
                f"file is {size / 2**30:.1f} GiB, above the 1 GiB limit for one image", path=path
            )
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise SynthmedError("file not found", path=path) from exc
    except OSError as exc:
        raise SynthmedError(f"cannot read file ({exc.strerror or exc})", path=path) from exc


@dataclass(frozen=True)
class Pixels:
    """A decoded image as finite float32 (H, W) grey, whether it was colour (which the grey array hides), and
    its channels as float32 (H, W, C) when it has several that differ: RGB colour (alpha dropped) or an
    array's C >= 2 channels; None for grey (grey stored as RGB included)."""

    array: np.ndarray
    colour: bool
    channels: np.ndarray | None = None

    @property
    def channel_count(self) -> int:
        return 1 if self.channels is None else self.channels.shape[-1]


def read_image(path: Path) -> np.ndarray:
    """Read one 2D image as finite float32 (H, W); colour becomes luminance, DICOM gets its LUTs."""
    path = Path(path)
    return decode_image(read_bytes(path), path)


def read_channels(path: Path, channels: int) -> np.ndarray:
    """One file as (H, W) grey (``channels`` 1: colour becomes luminance) or (H, W, C): its own C channels,
    or a grey image repeated into each; a file with another channel count is named."""
    path = Path(path)
    pixels = decode_pixels(read_bytes(path), path)
    if channels == 1:
        return pixels.array
    if pixels.channels is None:
        return np.repeat(pixels.array[..., None], channels, axis=-1)
    if pixels.channel_count != channels:
        raise SynthmedError(
            f"image has {pixels.channel_count} channels, the run's images {channels}", path=path
        )
    return pixels.channels


def decode_image(data: bytes, path: Path) -> np.ndarray:
    """Decode bytes already read from ``path`` (named in errors and used to pick the decoder)."""
    return decode_pixels(data, path).array


def decode_pixels(data: bytes, path: Path, frame: int | None = None) -> Pixels:
    """`decode_image`, saying whether the image was colour; ``frame`` (1-based) picks one frame of a
    multi-frame DICOM."""
    path = Path(path)
    if not data:
        raise SynthmedError("file is empty (0 bytes)", path=path)
    dicom = is_dicom(path, data)
    if frame is not None and not dicom:
        raise SynthmedError(f"frame {frame} asked of a file that is not DICOM", path=path)
    try:
        if dicom:
            return validate_pixels(_decode_dicom(data, path, frame), str(path))
        grey, rgb = _decode_pil(data, path)
        pixels = validate_pixels(rgb if rgb is not None else grey, str(path))
        # Pillow's own rounded luminance, as always: pixel hashes of split files stay valid
        return replace(pixels, array=validate_array(grey, str(path)))
    except SynthmedError:
        raise
    except Exception as exc:  # any decoder failure on hostile bytes becomes our one error type
        kind = "DICOM" if dicom else "image"
        raise SynthmedError(
            f"damaged or unsupported {kind} file ({type(exc).__name__}: {exc})", path=path
        ) from exc


def _decode_pil(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    Image.init()  # registers the TIFF plugin that `formats=` needs (no-op once done)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
        except UnidentifiedImageError as exc:
            raise SynthmedError(
                "not a PNG, JPEG, GIF, BMP, TIFF or DICOM image (content not recognised)", path=path
            ) from exc
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            # Pillow's own guard (turned into an error above) fires first for the largest claims.
            raise SynthmedError(f"image header claims too many pixels ({exc})", path=path) from exc
        with im:
            _check_size(im.width, im.height, path)
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise SynthmedError(
                    f"multi-frame image with {frames} frames; save one 2D image per file", path=path
                )
            # phone/camera JPEGs store rotation in EXIF
            return _pil_to_array(ImageOps.exif_transpose(im))


def _pil_to_array(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W) grey pixels, and (H, W, 3) RGB for the modes that can hold colour (P, RGB(A), CMYK, YCbCr...);
    alpha is dropped because it is not anatomy."""
    if im.mode in _WIDE_MODES or im.mode == "L":
        return np.asarray(im), None
    rgb = None if im.mode in ("1", "LA") else np.asarray(im.convert("RGB"))
    return np.asarray(im.convert("L")), rgb


def is_colour(arr: np.ndarray) -> bool:
    """True for an (H, W, 3 or 4) array whose colour channels differ (not grey stored as RGB)."""
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        return False
    rgb = arr[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        rgb = rgb.astype(np.float64)
        spread = np.abs(np.diff(rgb, axis=-1)).mean()
        return bool(spread > _COLOUR_SPREAD * np.ptp(rgb))


def _check_size(width: int, height: int, path: Path) -> None:
    if width <= 0 or height <= 0:
        raise SynthmedError(f"image has no pixels ({width} x {height})", path=path)
    if width * height > MAX_PIXELS:
        raise SynthmedError(
            f"image is {width} x {height} pixels, above the {MAX_PIXELS:,}-pixel safety limit "
            "(a corrupt or hostile header, or an image far larger than any training input)",
            path=path,
        )


def _decode_dicom(data: bytes, path: Path, frame: int | None) -> np.ndarray:
    with warnings.catch_warnings():
        # pydicom warns on every slightly non-conformant tag; real archives are full of them.
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:
            raise SynthmedError(
                f"not a readable DICOM file ({type(exc).__name__}: {exc})", path=path
            ) from exc
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise SynthmedError(
                "DICOM file has no pixel data (a report, structured document or DICOMDIR?)", path=path
            )
        frames = _check_dicom_shape(ds, path, frame)
        try:
            # only the frame asked for is decoded: a long cine never sits in memory whole
            arr = pixel_array(ds, index=frame - 1) if frame is not None and frames > 1 else ds.pixel_array
        except Exception as exc:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", "unknown transfer syntax")
            raise SynthmedError(
                f"cannot decode DICOM pixel data ({name}): {exc}. Compressed DICOM may need "
                "'pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg'",
                path=path,
            ) from exc
        return _dicom_to_grey(arr, ds, path)


def _check_dicom_shape(ds: pydicom.Dataset, path: Path, frame: int | None) -> int:
    """The file's frame count, after checking the frame asked for and the image size."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise SynthmedError(
            f"multi-frame DICOM with {frames} frames: a data set reads each frame as its own image, but "
            "here one image is expected, so export the frame wanted as its own file",
            path=path,
        )
    if frame is not None and not 1 <= frame <= frames:
        raise SynthmedError(f"frame {frame} asked of a DICOM file with {frames} frame(s)", path=path)
    _check_size(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), path)
    return frames


def _dicom_to_grey(arr: np.ndarray, ds: pydicom.Dataset, path: Path) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if arr.ndim == 3 and samples == 1:
        raise SynthmedError(f"DICOM pixel data holds {arr.shape[0]} frames; export one per file", path=path)
    if photometric == "PALETTE COLOR":
        return apply_color_lut(arr, ds)  # RGB; validate_array turns it into luminance
    if arr.ndim != 2:
        return arr  # RGB/YBR: pydicom already converted YBR to RGB
    # Stored values -> physical units (e.g. Hounsfield) -> the display window the modality chose.
    arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    arr = np.asarray(arr, dtype=np.float64)
    if photometric == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr  # MONOCHROME1 shows low values bright; flip to the usual sense
    return arr


def validate_pixels(arr: object, source: str) -> Pixels:
    """`validate_array`, saying whether the array was colour and keeping its channels when they differ."""
    grey = validate_array(arr, source)
    a = np.asarray(arr)
    colour = is_colour(a)
    if a.ndim != 3 or a.shape[-1] == 1 or (a.shape[-1] in (3, 4) and not colour):
        return Pixels(grey, colour)
    channels = a[..., :3] if a.shape[-1] in (3, 4) else a  # RGBA: alpha is not anatomy
    with np.errstate(over="ignore", invalid="ignore"):
        kept = np.ascontiguousarray(channels, dtype=np.float32)
    return Pixels(grey, colour, kept)  # finite: grey (their mean or luminance) was checked


def validate_array(arr: object, source: str) -> np.ndarray:
    """Check one image array and return it as contiguous float32 (H, W).

    Accepts (H, W) and (H, W, C) with C in 1 (squeezed), 3 or 4 (luminance of RGB; alpha ignored).
    Rejects non-numeric dtypes (bool, complex, object, strings), other shapes, empty and non-finite data.
    """
    try:
        a = np.asarray(arr)
    except Exception as exc:
        raise SynthmedError(f"not an array ({type(exc).__name__}: {exc})", path=source) from exc
    if a.dtype.kind not in "uif":
        raise SynthmedError(
            f"pixel type {a.dtype} is not a real number type (expected unsigned/signed integers or floats)",
            path=source,
        )
    a = _to_2d(a, source)
    if a.size == 0:
        raise SynthmedError(f"image has no pixels (shape {a.shape})", path=source)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(a, dtype=np.float32)  # float64 beyond float32 range becomes inf: caught
    bad = out.size - int(np.count_nonzero(np.isfinite(out)))
    if bad:
        raise SynthmedError(
            f"{bad} of {out.size} pixels are NaN or infinite (or exceed float32)", path=source
        )
    return out


def _to_2d(a: np.ndarray, source: str) -> np.ndarray:
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[-1] == 1:
        return a[..., 0]
    if a.ndim == 3 and a.size == 0:
        return a[..., 0]
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        with np.errstate(over="ignore", invalid="ignore"):
            return a[..., :3].astype(np.float64) @ np.array(LUMA)
    if a.ndim == 3 and 2 <= a.shape[-1] <= MAX_CHANNELS:  # multi-contrast: no luminance, the mean
        with np.errstate(over="ignore", invalid="ignore"):
            return a.astype(np.float64).mean(-1)
    raise SynthmedError(
        f"expected a 2-D image (H, W) or (H, W, C) with C from 1 to {MAX_CHANNELS}; got shape {a.shape}",
        path=source,
    )
