"""A synthetic sample must prove where it came from (issue 21): real chest X-rays and a real DICOM slipped
into a `synthmed generate` folder with forged manifest rows are refused at import, naming the file; genuine
images are regenerated bit for bit (all of a small set, a random 20 of a larger one, all when asked); the
model's weights must be the row's; the proof is repeated before export; likely copies of training images
are marked and neither approved nor exported."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.manifest import MANIFEST, read_manifest
from synthmed.catalogue import provenance
from synthmed.catalogue.db import make_engine, session_factory, transaction
from synthmed.catalogue.export import export_approved
from synthmed.catalogue.importer import import_generation
from synthmed.catalogue.migrate import upgrade
from synthmed.catalogue.models import Sample, User
from synthmed.cli import app
from synthmed.config import GenerateConfig
from synthmed.data.splits import read_split_file
from synthmed.errors import SynthmedError
from synthmed.review.decisions import decide
from synthmed.sampling.generate import generate_to_folder

runner = CliRunner()


@contextmanager
def _session(url: str) -> Iterator[Session]:
    engine = make_engine(url)
    try:
        with transaction(session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def generated(generate_tiny: Callable[..., Path]) -> Path:
    return generate_tiny(seed=0)


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade(url)
    return url


def _count(url: str) -> int:
    with _session(url) as session:
        return session.scalar(select(func.count()).select_from(Sample))


def _rows(out: Path) -> list[dict]:
    return read_manifest(out / MANIFEST)


def _write_rows(out: Path, rows: list[dict]) -> None:
    (out / MANIFEST).write_text("".join(json.dumps(row) + "\n" for row in rows))


def _real_png(kermany: Path, path: Path, size: int, index: int = 0) -> None:
    """A real patient's chest X-ray, made to look like a generated image: greyscale, the model's size."""
    source = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[100 + index]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(source).convert("L").resize((size, size), Image.Resampling.LANCZOS).save(path)


def _forge(out: Path, rel: str, seed: int, **changes: object) -> None:
    """Append a manifest row for ``rel`` copied from a genuine NORMAL row, with its seed and the file's
    sha256: what someone laundering a real image would write."""
    rows = _rows(out)
    row = next(r for r in rows if r["label"] == "NORMAL")
    forged = row | {"file": rel, "seed": seed, "batch_seeds": [seed], "sha256": file_sha256(out / rel)}
    _write_rows(out, [*rows, forged | changes])


def _import(url: str, out: Path, *extra: str):
    return runner.invoke(app, ["catalogue", "import", str(out), "--database", url, *extra])


def test_a_laundered_real_image_is_refused_at_import_naming_the_file(
    url: str, out_copy: Path, kermany: Path
) -> None:
    size = _rows(out_copy)[0]["image_size"]
    _real_png(kermany, out_copy / "NORMAL" / "syn_00000007.png", size)
    _forge(out_copy, "NORMAL/syn_00000007.png", 7)
    result = _import(url, out_copy)
    assert result.exit_code == 2, result.output
    assert "NORMAL/syn_00000007.png: regenerating seed 7 from its manifest row does not reproduce it" in (
        " ".join(result.output.split())
    )
    assert "nothing was catalogued" in result.output and _count(url) == 0
    assert "syn_00000000.png" not in result.output  # the genuine images are not accused


@pytest.mark.parametrize(
    ("forgery", "message"),
    [
        ("dicom", "not a PNG file as synthmed generate writes"),
        ("size", "generation wrote this row as 8-bit greyscale of 32x32 pixels"),
        ("no_sha", "records no sha256"),
        ("other_sha", "its sha256 is not the one its manifest row records"),
        ("name", "generation names the image of seed 9 'NORMAL/syn_00000009.png'"),
    ],
)
def test_files_that_are_not_what_generation_writes_are_refused(
    url: str,
    out_copy: Path,
    kermany: Path,
    dicom_file: Callable[[str], Path],
    forgery: str,
    message: str,
) -> None:
    rel = "NORMAL/syn_00000009.png" if forgery != "name" else "NORMAL/scan.png"
    path = out_copy / rel
    if forgery == "dicom":  # a real patient's DICOM file under a generated image's name
        shutil.copy(dicom_file("CT_small.dcm"), path)
    else:
        _real_png(kermany, path, 64 if forgery == "size" else 32)
    changes = {"no_sha": {"sha256": None}, "other_sha": {"sha256": "0" * 64}}.get(forgery, {})
    _forge(out_copy, rel, 9, **changes)
    result = _import(url, out_copy)
    assert result.exit_code == 2 and str(path) in result.output
    assert message in " ".join(result.output.split())
    assert _count(url) == 0


def test_a_genuine_folder_is_proven_regenerated_and_checked_for_copies(
    url: str, out_copy: Path, tiny_run: Path
) -> None:
    result = _import(url, out_copy)
    assert result.exit_code == 0, result.output
    assert "3 synthetic samples (0 likely copies of training images)" in result.output
    train = {r.source for r in read_split_file(tiny_run / "split.json").records if r.split == "train"}
    with _session(url) as session:
        samples = session.scalars(select(Sample)).all()
        assert len(samples) == 3
        for sample in samples:
            assert sample.verified is not None and sample.regenerated is not None
            assert sample.likely_copy is False and sample.copy_check["nearest_train"] in train
            assert sample.copy_check["distance"] >= sample.copy_check["threshold"]


def test_large_sets_regenerate_a_random_sample_and_everything_when_asked(
    url: str, tiny_run: Path, tmp_path: Path, kermany: Path
) -> None:
    out = tmp_path / "many"
    # One image per batch, so each regeneration proves exactly one image.
    cfg = GenerateConfig(run_dir=tiny_run, out=out, label="NORMAL", count=25, steps=1, batch_size=1)
    generate_to_folder(cfg, progress=False)
    with _session(url) as session:
        import_generation(session, out, copy_percentile=None)
        regenerated = session.scalar(select(func.count()).where(Sample.regenerated.is_not(None)))
        assert regenerated == provenance.REGENERATE_AT_LEAST < 25
    # A real image hidden among many: --verify-all regenerates every image and finds it wherever it is.
    _real_png(kermany, out / "NORMAL" / "syn_00000030.png", 32)
    _forge(out, "NORMAL/syn_00000030.png", 30)
    more = cfg.model_copy(update={"seed": 31, "count": 30})  # more new images than a random sample takes
    generate_to_folder(more, progress=False)
    result = _import(url, out, "--verify-all")
    assert result.exit_code == 2 and "syn_00000030.png: regenerating seed 30" in " ".join(
        result.output.split()
    )
    assert _count(url) == 25


def test_the_weights_a_row_names_must_be_there_unchanged(
    url: str, out_copy: Path, tiny_run: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run", symlinks=True))
    _write_rows(out_copy, [r | {"run_dir": str(run)} for r in _rows(out_copy)])
    weights = run / "diffusion" / "model.pt"
    with weights.open("ab") as fh:
        fh.write(b"tampered")
    result = _import(url, out_copy)
    assert result.exit_code == 2 and f"the diffusion weights {weights}, which are of another sha256" in (
        " ".join(result.output.split())
    )
    weights.unlink()
    result = _import(url, out_copy)
    assert result.exit_code == 2 and "which are missing" in result.output
    assert _count(url) == 0


def _approve_all(url: str) -> None:
    with _session(url) as session:
        admin = User(username="admin", password_hash="not used here", role="admin")
        session.add(admin)
        session.flush()
        for sample in session.scalars(select(Sample)):
            decide(session, sample.id, admin.id, "approve")


def test_samples_prove_themselves_again_before_export(
    url: str, out_copy: Path, tmp_path: Path, kermany: Path
) -> None:
    with _session(url) as session:
        import_generation(session, out_copy)
    _approve_all(url)
    with _session(url) as session:
        summary = export_approved(session, tmp_path / "ok", "png")
        assert summary["cases"] == 3
    # Someone swaps in a real image and rewrites the catalogue's checksums to match: regeneration tells.
    real = out_copy / "NORMAL" / "syn_00000001.png"
    _real_png(kermany, real, 32)
    with _session(url) as session:
        sample = session.scalar(select(Sample).where(Sample.path == "NORMAL/syn_00000001.png"))
        sample.sha256 = file_sha256(real)
        sample.provenance = sample.provenance | {"sha256": sample.sha256}
    with pytest.raises(SynthmedError, match=r"syn_00000001\.png: regenerating seed 1"), _session(url) as s:
        export_approved(s, tmp_path / "swapped", "png")
    # Only the file swapped: the catalogue's checksum tells at once.
    with _session(url) as session:
        session.execute(
            update(Sample).where(Sample.path == "NORMAL/syn_00000001.png").values(sha256="1" * 64)
        )
    with pytest.raises(SynthmedError, match="changed since it was catalogued"), _session(url) as session:
        export_approved(session, tmp_path / "changed", "png")
    assert not (tmp_path / "swapped").exists() and not (tmp_path / "changed").exists()


def test_samples_never_proven_are_all_regenerated_before_export(
    url: str, out_copy: Path, tmp_path: Path
) -> None:
    with _session(url) as session:
        import_generation(session, out_copy)
        session.execute(update(Sample).values(verified=None, regenerated=None))  # as before issue 21
    _approve_all(url)
    with _session(url) as session:
        export_approved(session, tmp_path / "out", "png")
    with _session(url) as session:
        assert all(s.verified and s.regenerated for s in session.scalars(select(Sample)))
    result = runner.invoke(app, ["catalogue", "verify", "cxr-syn", "--verify-all", "--database", url])
    assert result.exit_code == 0 and "3 samples proven, 3 regenerated bit for bit, 0 likely" in result.output


def test_likely_copies_are_marked_and_neither_approved_nor_exported(
    url: str, out_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_guard = provenance.copy_guard_for_run

    def strict(run_dir: Path, cfg, percentile: float):
        """The run's real copy check, with the threshold a memorising model's images would fall under."""
        guard = real_guard(run_dir, cfg, percentile)
        guard.threshold = 2.0  # every image is closer than this to its nearest training image
        return guard

    monkeypatch.setattr(provenance, "copy_guard_for_run", strict)
    result = _import(url, out_copy)
    assert result.exit_code == 0 and "(3 likely copies of training images)" in result.output
    with _session(url) as session:
        admin = User(username="admin", password_hash="not used here", role="admin")
        session.add(admin)
        session.flush()
        sample = session.scalar(select(Sample).where(Sample.path == "NORMAL/syn_00000000.png"))
        assert sample.likely_copy is True and sample.copy_check["flagged"] is True
        with pytest.raises(SynthmedError, match=r"likely copy of the training image .* cannot be approved"):
            decide(session, sample.id, admin.id, "approve")
        session.execute(update(Sample).values(review_state="approved"))  # approved before the check ran
    refused = pytest.raises(
        SynthmedError, match=r"likely copies .*/NORMAL/syn_00000000\.png \(nearest training"
    )
    with refused, _session(url) as session:
        export_approved(session, tmp_path / "out", "png")
