"""The catalogue on SQLite and PostgreSQL: migrations, `synthmed db`, importing generation output folders and
real data sets (real chest X-rays, BUSI with masks, hippocampus MRI volumes), and `synthmed catalogue`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.manifest import read_manifest
from synthmed.catalogue.db import make_engine, session_factory, transaction
from synthmed.catalogue.importer import CatalogueWarning, import_generation, import_real
from synthmed.catalogue.migrate import current_revision, head_revision, upgrade
from synthmed.catalogue.models import Base, Dataset, GenerationRun, Sample, TrainedModel
from synthmed.cli import app
from synthmed.config import GenerateConfig
from synthmed.errors import SynthmedError
from synthmed.sampling.generate import generate_to_folder

runner = CliRunner()


@contextmanager
def _session(url: str) -> Iterator[Session]:
    """A transaction on ``url`` (committed at the end) whose engine is closed afterwards."""
    engine = make_engine(url)
    try:
        with transaction(session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _count(url: str, model: type[Base]) -> int:
    with _session(url) as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.fixture(scope="module")
def generated(generate_tiny: Callable[..., Path]) -> Path:
    return generate_tiny(seed=0)


# --- migrations --------------------------------------------------------------------------------------


def test_upgrade_creates_the_schema_once_and_it_matches_the_models(catalogue_url: str) -> None:
    assert current_revision(catalogue_url) is None
    upgrade(catalogue_url)
    assert current_revision(catalogue_url) == head_revision() is not None
    engine = make_engine(catalogue_url)
    try:
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        with transaction(session_factory(engine)) as session:
            session.add(Dataset(name="kept", origin="real", root="/data"))
    finally:
        engine.dispose()
    upgrade(catalogue_url)  # at head already: nothing changes, data kept
    assert current_revision(catalogue_url) == head_revision()
    assert _count(catalogue_url, Dataset) == 1
    engine = make_engine(catalogue_url)
    try:
        with engine.connect() as conn:  # what autogenerate would write for models.py: nothing
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_db_commands(catalogue_url: str) -> None:
    result = runner.invoke(app, ["db", "current", "--database", catalogue_url])
    assert result.exit_code == 0 and "none (empty database)" in result.output
    result = runner.invoke(app, ["catalogue", "list", "--database", catalogue_url])
    assert result.exit_code == 2 and "run synthmed db upgrade" in result.output
    result = runner.invoke(app, ["db", "upgrade", "--database", catalogue_url])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["db", "current", "--database", catalogue_url])
    assert result.output.strip() == f"{head_revision()} (up to date)"


def test_db_commands_report_unusable_databases(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--database", "nosuchdriver://x"])
    assert result.exit_code == 2 and "not a usable database URL" in result.output
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'folder.db'}"
    result = runner.invoke(app, ["db", "upgrade", "--database", missing])
    assert result.exit_code == 2 and "cannot use the database" in result.output


# --- generation output -------------------------------------------------------------------------------


def test_import_generation_catalogues_run_model_and_samples(
    catalogue_url: str, out_copy: Path, tiny_run: Path
) -> None:
    upgrade(catalogue_url)
    rows = read_manifest(out_copy / "manifest.jsonl")
    with _session(catalogue_url) as session:
        run = import_generation(session, out_copy)
        run_id = run.id
        assert run.dataset.name == "cxr-syn" and run.dataset.origin == "synthetic"
        assert run.dataset.spatial_dims == 2 and run.out_dir == str(out_copy.resolve())
        assert run.settings["sampler"] == "ddim" and run.settings["steps"] == 2
        model = run.model
        assert model.run_dir == str(tiny_run.resolve())
        assert model.diffusion_sha256 == file_sha256(tiny_run / "diffusion" / "model.pt")
        assert model.config["preset"] == "tiny"
        samples = session.scalars(select(Sample).order_by(Sample.path)).all()
        assert [(s.label, s.seed, s.path) for s in samples] == [
            ("NORMAL", 0, "NORMAL/syn_00000000.png"),
            ("NORMAL", 1, "NORMAL/syn_00000001.png"),
            ("PNEUMONIA", 0, "PNEUMONIA/syn_00000000.png"),
        ]
        for sample in samples:
            assert sample.generation_run_id == run.id and sample.review_state == "pending"
            assert sample.sha256 == file_sha256(out_copy / sample.path)
            assert sample.provenance == next(r for r in rows if r["file"] == sample.path)
            assert sample.mask_path is None
    with _session(catalogue_url) as session:  # again: nothing new
        assert import_generation(session, out_copy).id == run_id
    assert _count(catalogue_url, Sample) == 3 and _count(catalogue_url, TrainedModel) == 1
    # More images in the folder: only they are added, to the same run.
    cfg = GenerateConfig(run_dir=tiny_run, out=out_copy, label="PNEUMONIA", count=2, steps=2, seed=0)
    generate_to_folder(cfg, progress=False)
    with _session(catalogue_url) as session:
        assert import_generation(session, out_copy).id == run_id
    assert _count(catalogue_url, Sample) == 4 and _count(catalogue_url, GenerationRun) == 1


def test_a_changed_file_is_reported_not_replaced(catalogue_url: str, out_copy: Path) -> None:
    upgrade(catalogue_url)
    with _session(catalogue_url) as session:
        import_generation(session, out_copy)
    changed = out_copy / "NORMAL" / "syn_00000001.png"
    old = file_sha256(changed)
    shutil.copy(out_copy / "NORMAL" / "syn_00000000.png", changed)
    warns = pytest.warns(CatalogueWarning, match=r"syn_00000001\.png: changed since it was catalogued")
    with warns, _session(catalogue_url) as session:
        import_generation(session, out_copy)
    with _session(catalogue_url) as session:
        sample = session.scalar(select(Sample).where(Sample.path == "NORMAL/syn_00000001.png"))
        assert sample.sha256 == old


def _rewrite_manifest(out: Path, edit: Callable[[list[str]], list[str]]) -> None:
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(edit(manifest.read_text().splitlines())) + "\n")


def _with_row(lines: list[str], **changes: object) -> list[str]:
    return [*lines, json.dumps(json.loads(lines[0]) | changes)]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: [lines[0], "{not json", *lines[1:]], "line 2 is not JSON"),
        (lambda lines: _with_row(lines, file="NORMAL/syn_00000042.png"), "does not exist"),
        (lambda lines: _with_row(lines, file="../../etc/passwd"), "outside the folder"),
        (lambda lines: _with_row(lines, seed="x"), "field 'seed'"),
        (lambda lines: [*lines, "[1, 2]"], "row 4 is not a JSON object"),
        (lambda lines: _with_row(lines, diffusion_sha256="0" * 64), "2 different trained models"),
        (lambda lines: [], "lists no written images"),
    ],
)
def test_bad_generation_folders_are_refused(
    out_copy: Path, tmp_path: Path, edit: Callable[[list[str]], list[str]], message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    _rewrite_manifest(out_copy, edit)
    with pytest.raises(SynthmedError, match=message), _session(url) as session:
        import_generation(session, out_copy)
    assert _count(url, Sample) == 0


def test_folders_without_manifest_or_images_are_refused(out_copy: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    (tmp_path / "empty" / "NORMAL").mkdir(parents=True)
    with _session(url) as session:
        with pytest.raises(SynthmedError, match=r"no manifest\.jsonl"):
            import_generation(session, out_copy / "NORMAL")
        with pytest.raises(SynthmedError, match="not a folder"):
            import_generation(session, tmp_path / "missing")
        with pytest.raises(SynthmedError, match="no image files"):
            import_real(session, tmp_path / "empty", "empty")
        import_generation(session, out_copy)
        with pytest.raises(SynthmedError, match="already catalogued as the 2D synthetic data set 'cxr-syn'"):
            import_real(session, out_copy, "as-real")
        with pytest.raises(SynthmedError, match="a data set named 'cxr-syn' already exists"):
            import_generation(session, shutil.copytree(out_copy, tmp_path / "elsewhere"), name="cxr-syn")


# --- real data sets ----------------------------------------------------------------------------------


def test_import_real_busi_with_masks(catalogue_url: str, busi_small: Path) -> None:
    upgrade(catalogue_url)
    with _session(catalogue_url) as session:
        dataset = import_real(session, busi_small, "busi")
        assert dataset.origin == "real" and dataset.spatial_dims == 2
        samples = {s.path: s for s in dataset.samples}
    assert len(samples) == 30
    assert {s.label for s in samples.values()} == {"benign", "malignant", "normal"}
    first = samples["benign/images/benign (1).png"]
    assert first.mask_path == "benign/mask/benign (1)_mask.png" and first.seed is None
    assert first.sha256 == file_sha256(busi_small / first.path)
    several = [s for s in samples.values() if "masks" in s.provenance]  # lesions in more than one mask file
    for sample in several:
        assert sample.mask_path == sample.provenance["masks"][0] and len(sample.provenance["masks"]) > 1
    assert all(s.mask_path for s in samples.values())  # BUSI ships a (possibly empty) mask for every image
    with _session(catalogue_url) as session:
        import_real(session, busi_small, "busi")
    assert _count(catalogue_url, Sample) == 30 and _count(catalogue_url, Dataset) == 1


def test_import_real_volumes_with_label_maps(
    catalogue_url: str, hippocampus: Path, msd_pairs: Callable[[Sequence[str]], Path]
) -> None:
    root = msd_pairs(["hippocampus_001", "hippocampus_003"])
    shutil.copy(hippocampus / "images" / "hippocampus_118.nii.gz", root / "images")  # has no label map
    shutil.copy(hippocampus / "labels" / "hippocampus_010.nii.gz", root / "labels")  # has no image
    upgrade(catalogue_url)
    warns = pytest.warns(CatalogueWarning, match=r"hippocampus_010\.nii\.gz: left out")
    with warns, _session(catalogue_url) as session:
        dataset = import_real(session, root, "hippo")
        assert dataset.spatial_dims == 3
        samples = {s.path: (s.label, s.mask_path) for s in dataset.samples}
    assert samples == {
        "images/hippocampus_001.nii.gz": ("mri", "labels/hippocampus_001.nii.gz"),
        "images/hippocampus_003.nii.gz": ("mri", "labels/hippocampus_003.nii.gz"),
        "images/hippocampus_118.nii.gz": ("mri", None),
    }


# --- CLI ---------------------------------------------------------------------------------------------


def test_catalogue_commands(catalogue_url: str, out_copy: Path, kermany_folder: Callable[..., Path]) -> None:
    real = kermany_folder(n=2)
    database = ["--database", catalogue_url]
    assert runner.invoke(app, ["db", "upgrade", *database]).exit_code == 0
    result = runner.invoke(app, ["catalogue", "import", str(out_copy), "--name", "syn", *database])
    assert result.exit_code == 0, result.output
    assert "data set 'syn': 3 synthetic samples" in result.output
    result = runner.invoke(app, ["catalogue", "import-real", str(real), "--name", "cxr", *database])
    assert result.exit_code == 0 and "data set 'cxr': 4 real samples" in result.output
    result = runner.invoke(app, ["catalogue", "import-real", str(real), *database])
    assert result.exit_code == 2 and "field 'name'" in result.output
    shutil.copy(out_copy / "NORMAL" / "syn_00000000.png", out_copy / "NORMAL" / "syn_00000001.png")
    result = runner.invoke(app, ["catalogue", "import", str(out_copy), *database])
    assert result.exit_code == 0 and "warning:" in result.output and "changed since" in result.output
    with _session(catalogue_url) as session:  # a review decision shows in the list
        session.scalar(
            select(Sample).where(Sample.path == "PNEUMONIA/syn_00000000.png")
        ).review_state = "approved"
    result = runner.invoke(app, ["catalogue", "list", *database], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert "NORMAL 2, PNEUMONIA 2" in lines["cxr"] and "pending 4" in lines["cxr"]
    assert "NORMAL 2, PNEUMONIA 1" in lines["syn"] and "approved 1, pending 2" in lines["syn"]
    assert "synthetic" in lines["syn"] and "2D" in lines["syn"]
