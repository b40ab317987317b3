"""Data fixtures: the real data sets under $SYNTHMED_DATA (default <repo>/../shared/data) and pydicom-data."""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("SYNTHMED_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}: set SYNTHMED_DATA to the shared data folder")
    return root


def _subset(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_dir():
        pytest.skip(f"{path} missing from the shared data folder")
    return path


@pytest.fixture(scope="session")
def kermany(data_root: Path) -> Path:
    return _subset(data_root, "cxr-kermany")


@pytest.fixture(scope="session")
def busi(data_root: Path) -> Path:
    return _subset(data_root, "busi")


@pytest.fixture(scope="session")
def hippocampus(data_root: Path) -> Path:
    return _subset(data_root, "hippocampus")


@pytest.fixture(scope="session")
def retinamnist(data_root: Path) -> Path:
    """The RetinaMNIST .npz (colour fundus photographs, 28 px, MedMNIST layout)."""
    return _subset(data_root, "retinamnist") / "retinamnist.npz"


@pytest.fixture(scope="session")
def msd_pairs(hippocampus: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[Sequence[str]], Path]:
    """Copy real hippocampus image/label pairs (by key or file name) into a fresh {images,labels}/ folder."""

    def build(keys: Sequence[str]) -> Path:
        root = tmp_path_factory.mktemp("hippo")
        for sub in ("images", "labels"):
            (root / sub).mkdir()
            for key in keys:
                name = key if key.endswith(".nii.gz") else f"{key}.nii.gz"
                shutil.copy(hippocampus / sub / name, root / sub / name)
        return root

    return build


@pytest.fixture(scope="session")
def dicom_file() -> Callable[[str], Path]:
    """Path of a real DICOM object shipped with pydicom / pydicom-data, e.g. 'RG1_UNCI.dcm'."""
    from pydicom.data import get_testdata_file

    def get(name: str) -> Path:
        path = get_testdata_file(name)
        if path is None:
            pytest.skip(f"{name} not available (install pydicom-data)")
        return Path(path)

    return get


@pytest.fixture
def kermany_folder(kermany: Path, tmp_path: Path) -> Callable[..., Path]:
    """Build <tmp>/<name>/<class>/*.jpeg from the first ``n`` Kermany train images of each class."""

    def build(n: int = 6, classes: tuple[str, ...] = ("NORMAL", "PNEUMONIA"), name: str = "cxr") -> Path:
        root = tmp_path / name
        for cls in classes:
            (root / cls).mkdir(parents=True)
            for src in sorted((kermany / "train" / cls).glob("*.jpeg"))[:n]:
                shutil.copy(src, root / cls / src.name)
        return root

    return build


@pytest.fixture(scope="session")
def kermany_small(kermany: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 real chest X-rays per class (NORMAL, PNEUMONIA), shared by the training and generation tests."""
    root = tmp_path_factory.mktemp("kermany_small")
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir()
        for src in sorted((kermany / "train" / cls).glob("*.jpeg"))[:16]:
            shutil.copy(src, root / cls / src.name)
    return root


@pytest.fixture(scope="session")
def tiny_run(kermany_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the ``tiny`` preset trained for a few dozen steps on ``kermany_small`` (seconds on a CPU)."""
    from synthmed.config import build_train_config
    from synthmed.training.run import train

    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = build_train_config(
        {
            "preset": "tiny",
            "run_dir": str(run_dir),
            "data": {"source": str(kermany_small)},
            "autoencoder": {"steps": 60, "log_every": 5, "preview_every": 30, "checkpoint_every": 30},
            "diffusion": {"steps": 60, "log_every": 5, "preview_every": 30, "checkpoint_every": 30},
        }
    )
    return train(cfg, progress=False)


@pytest.fixture(scope="session")
def busi_small(busi: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 real BUSI ultrasound images per class with their masks (BUSI layout: <class>/images + <class>/mask;
    'normal' masks are empty), for the 2D ControlNet and editing tests."""
    from synthmed.data.masks import find_mask_files

    root = tmp_path_factory.mktemp("busi_small")
    for cls in ("benign", "malignant", "normal"):
        (root / cls / "images").mkdir(parents=True)
        (root / cls / "mask").mkdir()
        for src in sorted((busi / cls / "images").glob("*.png"))[:10]:
            shutil.copy(src, root / cls / "images" / src.name)
            for mask in find_mask_files(src):
                shutil.copy(mask, root / cls / "mask" / mask.name)
    return root


@pytest.fixture(scope="session")
def busi_run(busi_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` (32 px) trained a few dozen steps on ``busi_small``, with mask and edges ControlNets."""
    from synthmed.config import build_train_config
    from synthmed.training.run import train

    values = {
        "preset": "tiny",
        "run_dir": str(tmp_path_factory.mktemp("busi_run") / "run"),
        "data": {"source": str(busi_small)},
        "autoencoder": {"steps": 60},
        "diffusion": {"steps": 60},
        "controlnet": {"steps": 20},
    }
    train(build_train_config(values), ["autoencoder", "diffusion", "controlnet"], progress=False)
    values["controlnet"] |= {"condition": "edges", "steps": 10}
    return train(build_train_config(values), ["controlnet"], progress=False)


@pytest.fixture(scope="session")
def wide_busi(busi: Path):
    """A real ultrasound image clearly wider than tall, so pad mode adds padding rows."""
    from synthmed.data import read_image

    for path in sorted((busi / "benign" / "images").glob("*.png")):
        img = read_image(path)
        if img.shape[1] > img.shape[0] * 1.2:
            return img
    pytest.skip("no clearly non-square BUSI image found")


# --- catalogue databases: SQLite files and a throwaway PostgreSQL server -------------------------

POSTGRES_ENV = "SYNTHMED_TEST_POSTGRES_URL"


def _postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server binaries (/usr/lib/postgresql/<version>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL server whose user may create databases: $SYNTHMED_TEST_POSTGRES_URL,
    else a throwaway cluster (trust auth, 127.0.0.1, a free port) started for this test session."""
    import subprocess
    import tempfile

    from sqlalchemy.engine import make_url

    if os.environ.get(POSTGRES_ENV):
        yield make_url(os.environ[POSTGRES_ENV]).set(drivername="postgresql+psycopg").render_as_string(False)
        return
    bin_dir = _postgres_bin()
    if bin_dir is None:
        from system_deps import missing

        missing(
            f"PostgreSQL server not found (no /usr/lib/postgresql/*/bin/initdb): install it with "
            f"`apt-get install postgresql`, or set {POSTGRES_ENV} to a server URL whose user may create "
            "databases"
        )
    # PostgreSQL refuses to run as root: run it as the postgres user on a folder that user owns.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="synthmed-pg-"))
    if as_user:
        shutil.chown(base, "postgres")
    data = base / "data"
    from web_support import free_port

    port = free_port()
    run = functools.partial(subprocess.run, check=True, capture_output=True, text=True)
    run([*as_user, bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"])
    options = f"-h 127.0.0.1 -p {port} -k {base} -F"  # -F: no fsync, a test cluster needs no durability
    run([*as_user, bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", base / "log", "-w", "start"])
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty database (no tables) on SQLite or PostgreSQL; tests call migrate.upgrade."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalogue.db'}"
        return
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(request.getfixturevalue("postgres_server"))
    name = f"test_{uuid.uuid4().hex}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:  # FORCE: a test that failed may have left connections open
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def generate_tiny(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Makes a real `synthmed generate` folder from the tiny chest X-ray run: 2 NORMAL and 1 PNEUMONIA
    image (2 steps); keyword arguments are further GenerateConfig fields."""
    from synthmed.config import GenerateConfig
    from synthmed.sampling.generate import generate_to_folder

    def make(**fields) -> Path:
        out = tmp_path_factory.mktemp("generated") / "cxr-syn"
        for label, count in (("NORMAL", 2), ("PNEUMONIA", 1)):
            cfg = GenerateConfig(run_dir=tiny_run, out=out, label=label, count=count, steps=2, **fields)
            generate_to_folder(cfg, progress=False)
        return out

    return make


@pytest.fixture
def out_copy(generated: Path, tmp_path: Path) -> Path:
    """A copy of the test module's ``generated`` folder that a test may change."""
    return Path(shutil.copytree(generated, tmp_path / "cxr-syn"))
