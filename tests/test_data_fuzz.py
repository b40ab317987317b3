"""Property tests: whatever bytes or arrays come in, readers raise SynthmedError or succeed; no other
exception and no hang."""

from __future__ import annotations

import contextlib
import io
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from synthmed.config import DataConfig
from synthmed.data import discover, load_arrays, read_image, validate_array
from synthmed.errors import SynthmedError

FUZZ = settings(max_examples=80, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
HANG_SECONDS = 10


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Fail loudly instead of hanging the suite if a reader ever loops on hostile input."""

    def on_alarm(signum: int, frame: object) -> None:
        raise AssertionError(f"reader still running after {seconds}s: a hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def only_synthmed_errors(fn: Callable[[], object]) -> object:
    with no_hang(), contextlib.suppress(SynthmedError):
        return fn()
    return None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def real_bytes(kermany: Path, busi: Path) -> dict[str, bytes]:
    from pydicom.data import get_testdata_file

    rg1 = get_testdata_file("RG1_UNCI.dcm")
    if rg1 is None:
        pytest.skip("RG1_UNCI.dcm not available (install pydicom-data)")
    return {
        ".jpeg": sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes(),
        ".png": (busi / "malignant" / "images" / "malignant (1).png").read_bytes(),
        ".dcm": Path(rg1).read_bytes(),
    }


EXTENSIONS = st.sampled_from([".png", ".jpg", ".dcm", ".npz", ".csv", ""])


@FUZZ
@given(data=st.binary(max_size=4096), ext=EXTENSIONS, dicom_preamble=st.booleans())
def test_random_bytes(scratch: Path, data: bytes, ext: str, dicom_preamble: bool) -> None:
    if dicom_preamble:  # force the DICOM parser onto the garbage, whatever the name
        data = bytes(128) + b"DICM" + data
    path = scratch / f"random file{ext}"
    path.write_bytes(data)
    out = only_synthmed_errors(lambda: read_image(path))
    if out is not None:
        assert isinstance(out, np.ndarray) and out.ndim == 2 and np.isfinite(out).all()


@FUZZ
@given(
    kind=st.sampled_from([".jpeg", ".png", ".dcm"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=4),
    ext=st.sampled_from(["same", "", ".dcm", ".png"]),
)
def test_damaged_real_files(scratch: Path, real_bytes: dict[str, bytes], kind, cut, flips, ext) -> None:
    raw = real_bytes[kind]
    data = bytearray(raw[: int(len(raw) * cut)])
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    path = scratch / f"damaged (copy){kind if ext == 'same' else ext}"
    path.write_bytes(bytes(data))
    out = only_synthmed_errors(lambda: read_image(path))
    if out is not None:
        assert out.ndim == 2 and out.dtype == np.float32 and np.isfinite(out).all()


ODD_DTYPES = st.one_of(
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.boolean_dtypes(),
    hnp.byte_string_dtypes(max_len=2),
    hnp.datetime64_dtypes(),
)
ODD_ARRAYS = st.one_of(
    hnp.arrays(ODD_DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)),
    st.just(np.array([[object(), 1]], dtype=object)),
    st.just(np.zeros((2, 2), dtype=[("a", "f4")])),
    st.lists(st.floats(), max_size=4).map(lambda v: [v, v]),  # nested lists, ragged when empty
)


@FUZZ
@given(arr=ODD_ARRAYS)
def test_validate_array(arr: object) -> None:
    out = only_synthmed_errors(lambda: validate_array(arr, "fuzz"))
    if out is not None:
        assert out.ndim == 2 and out.size > 0 and out.dtype == np.float32 and np.isfinite(out).all()


NPZ_IMAGES = hnp.arrays(
    st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.boolean_dtypes(), hnp.complex_number_dtypes()),
    hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=6),
)
NPZ_LABELS = hnp.arrays(
    st.one_of(hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes()),
    hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=6),
)
NPZ_CONTENT = st.dictionaries(
    st.sampled_from(
        ["train_images", "train_labels", "val_images", "val_labels", "images", "labels", "label_names"]
    ),
    st.one_of(NPZ_IMAGES, NPZ_LABELS, st.just(np.array(["a", "b", "a"])), st.just(np.array(["x", "y"]))),
    max_size=6,
)


@st.composite
def medmnist_like(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Mostly well-formed MedMNIST archives with odd details: NaN/Inf pixels, odd dtypes, float labels."""
    n = draw(st.integers(0, 5))
    image_shape = draw(st.sampled_from([(n, 4, 5), (n, 3, 3, 3), (n, 2, 6, 1), (n, 0, 4)]))
    images = draw(hnp.arrays(st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes()), image_shape))
    labels = draw(hnp.arrays(st.sampled_from(["i8", "u1", "f4"]), draw(st.sampled_from([(n,), (n, 1)]))))
    return {"train_images": images, "train_labels": labels}


@FUZZ
@given(
    content=st.one_of(NPZ_CONTENT, medmnist_like(), st.binary(max_size=2048)),
    on_error=st.sampled_from(["skip", "raise"]),
)
def test_npz_source(scratch: Path, content, on_error: str) -> None:
    path = scratch / "fuzz.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        buf = io.BytesIO()
        np.savez(buf, **content)
        path.write_bytes(buf.getvalue())
    cfg = DataConfig(source=path, on_error=on_error, allow_single_class=True, image_size=8)

    def run() -> None:
        found = discover(cfg)
        load_arrays(found.records, cfg, found.class_names)

    only_synthmed_errors(run)


@pytest.fixture(scope="module")
def csv_dir(scratch: Path, real_bytes: dict[str, bytes]) -> Path:
    folder = scratch / "csv"
    folder.mkdir()
    (folder / "good (1).png").write_bytes(real_bytes[".png"])
    (folder / "cut.jpeg").write_bytes(real_bytes[".jpeg"][:700])
    (folder / "notes.txt").write_text("hello")
    return folder


CSV_CELLS = st.one_of(
    st.sampled_from(
        ["good (1).png", "cut.jpeg", "notes.txt", "missing.png", ".", "..", "csv", "/", "a\\b.png"]
    ),
    st.sampled_from(["train", "val", "holdout", "test", "", "x", "A", "B"]),
    st.text(max_size=12),
)
CSV_ROWS = st.lists(st.lists(CSV_CELLS, min_size=0, max_size=4), max_size=6)
CSV_HEADERS = st.sampled_from(
    ["path,label", "path,label,split", "label;path", "path\tlabel\tsplit", "x,y", ""]
)


@FUZZ
@given(
    header=CSV_HEADERS,
    rows=CSV_ROWS,
    sep=st.sampled_from([",", ";", "\t"]),
    raw=st.one_of(st.none(), st.binary(max_size=512)),
    on_error=st.sampled_from(["skip", "raise"]),
)
def test_csv_source(csv_dir: Path, header: str, rows, sep: str, raw: bytes | None, on_error: str) -> None:
    path = csv_dir / "manifest.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(
            "\n".join([header, *(sep.join(r) for r in rows)]), encoding="utf-8", errors="surrogatepass"
        )
    cfg = DataConfig(source=path, on_error=on_error, allow_single_class=True, image_size=8)

    def run() -> None:
        found = discover(cfg)
        load_arrays(found.records, cfg, found.class_names)

    only_synthmed_errors(run)
