"""read_image / validate_array on real JPEG, PNG and DICOM files, synthetic PIL modes and bad input."""

from __future__ import annotations

import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut

from synthmed.data import read_image, validate_array
from synthmed.errors import SynthmedError


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


# --- real files ---------------------------------------------------------------------------------


def test_kermany_jpeg_is_grey_float32(kermany: Path) -> None:
    path = _first(kermany / "train" / "NORMAL", "*.jpeg")
    img = read_image(path)
    assert img.shape == (224, 224) and img.dtype == np.float32
    rgb = np.asarray(Image.open(path).convert("RGB"))
    # The channels are identical, so luminance must equal any one of them.
    assert np.abs(img - rgb[..., 0]).max() <= 1.0


def test_busi_png_with_spaces_and_parentheses(busi: Path, tmp_path: Path) -> None:
    src = busi / "benign" / "images" / "benign (1).png"
    odd = tmp_path / "benign (1) copy [v2], final.png"
    shutil.copy(src, odd)
    img = read_image(odd)
    assert img.ndim == 2 and max(img.shape) == 256 and np.isfinite(img).all()
    np.testing.assert_array_equal(img, read_image(src))


def test_radiograph_monochrome1_is_inverted(dicom_file) -> None:
    path = dicom_file("RG1_UNCI.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    img = read_image(path)
    assert img.shape == raw.shape and img.dtype == np.float32
    # MONOCHROME1 shows high values dark: after reading, bright must mean high again.
    assert np.corrcoef(img.ravel()[::97], raw.ravel()[::97])[0, 1] < -0.9


def test_ct_gets_modality_lut_in_hounsfield(dicom_file) -> None:
    path = dicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path)
    np.testing.assert_allclose(img, apply_modality_lut(ds.pixel_array, ds), atol=1e-3)
    assert img.min() < 0  # air is negative HU, impossible in the stored unsigned values


def test_window_is_applied(dicom_file) -> None:
    path = dicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path)
    assert "WindowCenter" in ds
    assert not np.allclose(img, ds.pixel_array)  # windowed, not raw stored values


def test_extensionless_dicom_found_by_magic(dicom_file, tmp_path: Path) -> None:
    copy = tmp_path / "IM000001"
    shutil.copy(dicom_file("CT_small.dcm"), copy)
    np.testing.assert_array_equal(read_image(copy), read_image(dicom_file("CT_small.dcm")))


@pytest.mark.parametrize("name", ["US1_UNCI.dcm", "SC_ybr_full_uncompressed.dcm", "OBXXXX1A.dcm"])
def test_colour_dicom_becomes_grey(dicom_file, name: str) -> None:
    ds = pydicom.dcmread(dicom_file(name))
    img = read_image(dicom_file(name))
    assert img.shape == (ds.Rows, ds.Columns) and np.isfinite(img).all()


def test_multiframe_dicom_names_file_and_frames(dicom_file) -> None:
    path = dicom_file("emri_small.dcm")
    with pytest.raises(SynthmedError, match="10 frames") as err:
        read_image(path)
    assert err.value.path == str(path) and "emri_small.dcm" in str(err.value)


def test_dicom_without_pixels(dicom_file) -> None:
    with pytest.raises(SynthmedError, match="no pixel data"):
        read_image(dicom_file("rtplan.dcm"))


# --- PIL modes --------------------------------------------------------------------------------------


def test_16bit_png_keeps_its_range(tmp_path: Path) -> None:
    arr = np.linspace(0, 60000, 48 * 32).reshape(48, 32).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png")
    assert img.max() == 60000 and img.shape == (48, 32)


@pytest.mark.parametrize(
    ("mode", "ext"),
    [
        ("RGBA", ".png"),
        ("LA", ".png"),
        ("P", ".png"),
        ("1", ".png"),
        ("RGB", ".bmp"),
        ("F", ".tif"),
        ("I", ".tiff"),
    ],
)
def test_pil_modes_become_2d(tmp_path: Path, mode: str, ext: str) -> None:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    im = (
        rgb.convert(mode)
        if mode not in ("F", "I")
        else Image.fromarray(rng.random((20, 30)).astype("f4") * 1e4)
    )
    if mode == "I":
        im = im.convert("I")
    im.save(tmp_path / f"x{ext}")
    img = read_image(tmp_path / f"x{ext}")
    assert img.shape == (20, 30) and img.dtype == np.float32 and np.isfinite(img).all()
    if mode == "RGBA":
        np.testing.assert_array_equal(img, np.asarray(im.convert("L")))  # alpha ignored


# --- bad files --------------------------------------------------------------------------------------


def _bad_files(tmp: Path, kermany: Path, busi: Path, dicom: Path) -> dict[str, Path]:
    jpeg = _first(kermany / "train" / "NORMAL", "*.jpeg").read_bytes()
    png = (busi / "benign" / "images" / "benign (1).png").read_bytes()
    files = {
        "truncated (1).jpeg": jpeg[: len(jpeg) // 2],
        "truncated png.png": png[: len(png) // 3],
        "truncated.dcm": dicom.read_bytes()[:5000],
        "header-only.dcm": dicom.read_bytes()[:132],
        "random.png": np.random.default_rng(1).bytes(3000),
        "empty.jpg": b"",
        "text.png": b"not an image at all\n",
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return {name: tmp / name for name in files}


def test_bad_files_raise_synthmed_error_naming_the_file(tmp_path, kermany, busi, dicom_file) -> None:
    for name, path in _bad_files(tmp_path, kermany, busi, dicom_file("RG1_UNCI.dcm")).items():
        with pytest.raises(SynthmedError) as err:
            read_image(path)
        assert name in str(err.value), err.value


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(SynthmedError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(SynthmedError, match="folder"):
        read_image(tmp_path)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG header for a huge image (decompression bomb) with one tiny data chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [9000, 60000])  # ours (64 MP) and beyond Pillow's own limit
def test_decompression_bomb_fails_fast(tmp_path: Path, side: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(side, side))
    start = time.perf_counter()
    with pytest.raises(SynthmedError, match="pixels"):
        read_image(path)
    assert time.perf_counter() - start < 1.0


# --- validate_array -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((5, 7), (5, 7)), ((5, 7, 1), (5, 7)), ((5, 7, 3), (5, 7)), ((5, 7, 4), (5, 7))],
)
def test_validate_accepts_images(shape: tuple[int, ...], expected: tuple[int, int]) -> None:
    out = validate_array(np.ones(shape, dtype=np.uint8) * 10, "x")
    assert out.shape == expected and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, 10, rtol=1e-6)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[1.0, np.inf]]), "NaN or infinite"),
        (np.array([[1e300]]), "exceed float32"),
        (np.zeros((0, 4)), "no pixels"),
        (np.zeros((4, 0, 3)), "no pixels"),
        (np.zeros(5), "2-D"),
        (np.zeros((2, 3, 4, 5)), "2-D"),
        (np.zeros((4, 4, 17)), "2-D"),
        (np.zeros((4, 4), dtype=bool), "bool"),
        (np.zeros((4, 4), dtype=complex), "complex"),
        (np.array([[object()]]), "object"),
        (np.array([["a"]]), "not a real number"),
    ],
)
def test_validate_rejects(arr: np.ndarray, match: str) -> None:
    with pytest.raises(SynthmedError, match=match) as err:
        validate_array(arr, "scan.npz#train/3")
    assert "scan.npz#train/3" in str(err.value)
