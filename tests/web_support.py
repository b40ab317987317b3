"""Helpers shared by the review and web tests (no tests here): a catalogue with real Kermany chest X-rays and
synthmed-like synthetic PNGs, users, logged-in TestClients, and the app served on a real port for Chromium."""

from __future__ import annotations

import functools
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
STUDY = {  # the fields of a StudyConfig, overridden per test
    "name": "vtt",
    "real_dataset": "kermany",
    "synthetic_dataset": "kermany-syn",
    "n_real": 4,
    "n_synthetic": 4,
    "readers": ["r1", "r2"],
    "repeat_fraction": 0.25,
    "image_size": 64,
    "seed": 3,
}


def fast_hasher():
    """argon2id at its lowest cost: the real parameters take a third of a second per hash; tests patch
    ``synthmed.web.auth.hasher`` with this."""
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


@functools.cache
def password_hash() -> str:
    """One cheap argon2id hash of PASSWORD for every test user (verifying reads the cost from the hash)."""
    return fast_hasher().hash(PASSWORD)


def kermany_files(kermany: Path, n: int) -> list[Path]:
    """n real chest X-rays (224 px RGB JPEGs), alternating NORMAL and PNEUMONIA."""
    per_class = [sorted((kermany / "train" / c).glob("*.jpeg")) for c in ("NORMAL", "PNEUMONIA")]
    return [per_class[i % 2][i // 2] for i in range(n)]


def write_synthetic(
    sources: list[Path], out: Path, size: int = 64, resample: int = Image.Resampling.LANCZOS
) -> list[Path]:
    """Synthetic stand-ins written as `synthmed generate` writes them: OUT/<label>/syn_<seed:08d>.png, 64 px
    8-bit PNGs with a text chunk, made from real images (downsized with ``resample``), so pixels alone are
    hard to tell."""
    written = []
    for seed, src in enumerate(sources):
        label = src.parent.name
        path = out / label / f"syn_{seed:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", "synthmed 0.1 (latent diffusion)")
        Image.open(src).convert("L").resize((size, size), resample).save(path, pnginfo=info)
        written.append(path)
    return written


@dataclass
class Catalogue:
    url: str
    real: str
    synthetic: str
    readers: list[str]
    admin: str


def build_catalogue(
    url: str,
    kermany: Path,
    tmp: Path,
    *,
    n_real: int,
    n_synthetic: int,
    readers: list[str],
    admin: str = "admin",
    resample: int = Image.Resampling.LANCZOS,
) -> Catalogue:
    """Upgrade an empty database and add an admin, readers, a real and a synthetic 2D data set (its images
    downsized from real ones with ``resample``)."""
    from synthmed.catalogue.db import make_engine, session_factory, transaction
    from synthmed.catalogue.migrate import upgrade
    from synthmed.catalogue.models import Dataset, Sample, User
    from synthmed.data.sources import hash_file

    upgrade(url)
    real_files = kermany_files(kermany, n_real)
    syn_root = tmp / "synthetic"
    # Different real images than the real set, so no synthetic image is a copy of a real item.
    syn_files = write_synthetic(
        kermany_files(kermany, n_real + n_synthetic)[n_real:], syn_root, resample=resample
    )
    engine = make_engine(url)
    with transaction(session_factory(engine)) as session:
        for name in [admin, *readers]:
            role = "admin" if name == admin else "reader"
            session.add(User(username=name, role=role, password_hash=password_hash()))
        real = Dataset(name="kermany", origin="real", root=str(kermany / "train"))
        synthetic = Dataset(name="kermany-syn", origin="synthetic", root=str(syn_root))
        session.add_all([real, synthetic])
        for path in real_files:
            rel = path.relative_to(kermany / "train").as_posix()
            session.add(Sample(dataset=real, path=rel, label=path.parent.name, sha256=hash_file(path)))
        for seed, path in enumerate(syn_files):
            rel = path.relative_to(syn_root).as_posix()
            provenance = {"file": rel, "seed": seed, "label": path.parent.name}
            session.add(
                Sample(
                    dataset=synthetic,
                    path=rel,
                    label=path.parent.name,
                    sha256=hash_file(path),
                    seed=seed,
                    provenance=provenance,
                )
            )
    engine.dispose()
    return Catalogue(url, real.name, synthetic.name, list(readers), admin)


def add_volume_datasets(url: str, hippocampus: Path, tmp: Path, n: int) -> tuple[str, str]:
    """A real 3D set (MSD hippocampus MRI) and a 'synthetic' one (other real volumes, resampled to a fixed
    grid and saved as syn_<seed>_image.nii.gz float32 in [0, 1], as synthmed generate writes them)."""
    import nibabel as nib

    from synthmed.catalogue.db import make_engine, session_factory, transaction
    from synthmed.catalogue.models import Dataset, Sample

    images = sorted((hippocampus / "images").glob("*.nii.gz"))[: 2 * n]
    syn_root = tmp / "synthetic3d"
    syn_root.mkdir()
    for seed, src in enumerate(images[n:]):
        vol = nib.load(src)
        data = np.asarray(vol.dataobj, dtype=np.float32)[:32, :48, :32]
        data = (data - data.min()) / max(float(np.ptp(data)), 1e-6)
        nib.save(
            nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), syn_root / f"syn_{seed:08d}_image.nii.gz"
        )
    real_root = tmp / "real3d"
    real_root.mkdir()
    for src in images[:n]:
        shutil.copy(src, real_root / src.name)
    engine = make_engine(url)
    with transaction(session_factory(engine)) as session:
        real = Dataset(name="hippo", origin="real", root=str(real_root), spatial_dims=3)
        syn = Dataset(name="hippo-syn", origin="synthetic", root=str(syn_root), spatial_dims=3)
        session.add_all([real, syn])
        for path in sorted(real_root.iterdir()):
            session.add(Sample(dataset=real, path=path.name, label="hippocampus", sha256="0" * 64))
        for seed, path in enumerate(sorted(syn_root.iterdir())):
            session.add(Sample(dataset=syn, path=path.name, label="hippocampus", sha256="0" * 64, seed=seed))
    engine.dispose()
    return "hippo", "hippo-syn"


def make_study(url: str, cache: Path, **overrides) -> int:
    """A study created by the admin through the service layer (64 px images: fast)."""
    from sqlalchemy import select

    from synthmed.catalogue.db import make_engine, session_factory, transaction
    from synthmed.catalogue.models import User
    from synthmed.config import StudyConfig
    from synthmed.review.studies import create_study

    engine = make_engine(url)
    try:
        with transaction(session_factory(engine)) as session:
            admin = session.scalar(select(User).where(User.role == "admin"))
            return create_study(session, StudyConfig.model_validate(STUDY | overrides), admin.id, cache).id
    finally:
        engine.dispose()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG, read by hand: Pillow hides the raw chunk list."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client, username: str, password: str = PASSWORD):
    """Log in through the form, as a browser does; returns the login POST's response."""
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token})


def make_client(app, username: str | None = None):
    """A TestClient over https (the session cookie is Secure), logged in as ``username`` if given."""
    from fastapi.testclient import TestClient

    client = TestClient(app, base_url="https://testserver", follow_redirects=False)
    if username is not None:
        response = login(client, username)
        assert response.status_code == 303, response.text
    return client


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [  # headless on a machine without a display or network (see the browser tests)
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app, stop_timeout: float = 10) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free localhost port, with the options `synthmed serve`
    gives uvicorn; yields its base URL."""
    import uvicorn

    from synthmed.web.settings import server_options

    port = free_port()
    options = server_options(app.state.config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=stop_timeout)


def browser_log_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
