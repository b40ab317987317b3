"""`synthmed generate --from-requests`: rejected synthetic samples (2D chest X-rays from the tiny run, 3D
hippocampus MRI volumes) are generated again with their recorded conditions and a new seed, written into the
same folder and manifest, and catalogued as new samples of the same generation run."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.manifest import CONDITION_SETTINGS, SETTINGS, read_manifest
from synthmed.catalogue.db import make_engine, session_factory, transaction
from synthmed.catalogue.importer import import_generation, import_real
from synthmed.catalogue.migrate import upgrade
from synthmed.catalogue.models import Dataset, Decision, RegenerationRequest, Sample, User
from synthmed.catalogue.requests import _config
from synthmed.cli import app
from synthmed.config import GenerateConfig, build_train_config
from synthmed.sampling.generate import generate_to_folder
from synthmed.sampling.volumes import RESUME_SETTINGS
from synthmed.training.run import train

pytestmark = pytest.mark.slow
runner = CliRunner()


@contextmanager
def _session(url: str) -> Iterator[Session]:
    engine = make_engine(url)
    try:
        with transaction(session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _reject(url: str, paths: list[str]) -> list[int]:
    """An admin rejects the samples at ``paths``: decisions, review states and open requests (what the web
    app's decide() does); returns the request ids."""
    with _session(url) as session:
        admin = session.scalar(select(User).where(User.username == "admin"))
        if admin is None:
            admin = User(username="admin", password_hash="not used here", role="admin")
            session.add(admin)
            session.flush()
        ids = []
        for path in paths:
            sample = session.scalar(select(Sample).where(Sample.path == path))
            sample.review_state = "rejected"
            decision = Decision(sample_id=sample.id, user_id=admin.id, decision="reject", reason="blurry")
            session.add(decision)
            session.flush()
            request = RegenerationRequest(sample_id=sample.id, decision_id=decision.id)
            session.add(request)
            session.flush()
            ids.append(request.id)
    return ids


def _from_requests(url: str) -> str:
    result = runner.invoke(app, ["generate", "--from-requests", "--database", url, "--no-progress"])
    assert result.exit_code == 0, result.output
    return result.output


def _catalogued(url: str, out: Path) -> None:
    upgrade(url)
    with _session(url) as session:
        import_generation(session, out)


@pytest.fixture(scope="module")
def generated(generate_tiny: Callable[..., Path]) -> Path:
    return generate_tiny(bit_depth=16)


def test_rejected_samples_are_regenerated_with_a_new_seed(catalogue_url: str, out_copy: Path) -> None:
    _catalogued(catalogue_url, out_copy)
    requests = _reject(catalogue_url, ["NORMAL/syn_00000001.png", "PNEUMONIA/syn_00000000.png"])
    before = read_manifest(out_copy / "manifest.jsonl")
    output = _from_requests(catalogue_url)
    assert "done: 2 regeneration requests fulfilled" in output
    rows = read_manifest(out_copy / "manifest.jsonl")
    assert rows[: len(before)] == before and len(rows) == len(before) + 2
    # Seeds 0 and 1 are taken in the folder: the two labels get 2 and 3 (one job each, in request order).
    expected = {"NORMAL/syn_00000002.png": before[1], "PNEUMONIA/syn_00000003.png": before[2]}
    assert {r["file"] for r in rows[len(before) :]} == set(expected)
    for row in rows[len(before) :]:
        rejected = expected[row["file"]]
        for key in (*SETTINGS, *CONDITION_SETTINGS, "bit_depth", "privacy_filter"):
            assert row.get(key) == rejected.get(key), key
        assert (out_copy / row["file"]).is_file()
    with _session(catalogue_url) as session:
        for request_id in requests:
            request = session.get(RegenerationRequest, request_id)
            old, new = (
                session.get(Sample, request.sample_id),
                session.get(Sample, request.fulfilled_sample_id),
            )
            assert request.status == "fulfilled" and request.fulfilled is not None
            assert new.seed == request.new_seed and new.path == f"{old.label}/syn_{new.seed:08d}.png"
            assert new.generation_run_id == old.generation_run_id and new.dataset_id == old.dataset_id
            assert new.review_state == "pending" and old.review_state == "rejected"
            assert new.sha256 == file_sha256(out_copy / new.path)
        assert session.scalar(select(func.count()).select_from(Sample)) == 5
    # Nothing open any more: a second run generates and adds nothing.
    assert "done: 0 regeneration requests fulfilled" in _from_requests(catalogue_url)
    assert len(read_manifest(out_copy / "manifest.jsonl")) == len(rows)
    with _session(catalogue_url) as session:
        assert session.scalar(select(func.count()).select_from(Sample)) == 5


def test_requests_that_cannot_be_fulfilled_are_reported_after_the_rest(
    out_copy: Path, tmp_path: Path, kermany_folder: Callable[..., Path], busi_small: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    _catalogued(url, out_copy)
    with _session(url) as session:
        import_real(session, kermany_folder(n=1), "real")
        sample = session.scalar(select(Sample).where(Sample.path == "NORMAL/syn_00000000.png"))
        mask = busi_small / "benign" / "mask" / "benign (1)_mask.png"  # a condition file edited since
        sample.provenance = sample.provenance | {
            "condition": "mask",
            "condition_file": str(mask),
            "condition_sha256": "0" * 64,
            "conditioning_scale": 1.0,
        }
        real = session.scalar(select(Sample).join(Dataset).where(Dataset.origin == "real")).path
    good, changed, not_synthetic = _reject(url, ["NORMAL/syn_00000001.png", "NORMAL/syn_00000000.png", real])
    result = runner.invoke(app, ["generate", "--from-requests", "--database", url, "--no-progress"])
    assert result.exit_code == 2
    assert "some regeneration requests could not be fulfilled (the others were)" in result.output
    assert f"request {changed}:" in result.output and "benign (1)_mask.png" in result.output
    assert f"request {not_synthetic}:" in result.output and "not from a generation run" in result.output
    with _session(url) as session:
        states = {i: session.get(RegenerationRequest, i).status for i in (good, changed, not_synthetic)}
    assert states == {good: "fulfilled", changed: "open", not_synthetic: "open"}


def test_from_requests_takes_no_generation_options(tmp_path: Path, tiny_run: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    result = runner.invoke(app, ["generate", "--from-requests", "--run", str(tiny_run), "--steps", "3"])
    assert result.exit_code == 2 and "leave out ['run_dir', 'steps']" in result.output
    result = runner.invoke(app, ["generate", "--database", url, "--run", str(tiny_run)])
    assert result.exit_code == 2 and "--from-requests only" in result.output
    result = runner.invoke(app, ["generate", "--from-requests", "--database", url])
    assert result.exit_code == 2 and "run synthmed db upgrade" in result.output


def test_conditioned_rows_keep_their_condition_file_and_scale(tiny_run: Path, busi_small: Path) -> None:
    mask = busi_small / "malignant" / "mask" / "malignant (1)_mask.png"
    row = {
        "label": "NORMAL",
        "seed": 4,
        "sampler": "ddim",
        "steps": 3,
        "guidance": 2.0,
        "checkpoint": "raw",
        "precision": "fp32",
        "run_dir": str(tiny_run),
        "autoencoder_sha256": file_sha256(tiny_run / "autoencoder" / "model.pt"),
        "diffusion_sha256": file_sha256(tiny_run / "diffusion" / "model.pt"),
        "bit_depth": 16,
        "privacy_filter": 97.5,
        "condition": "mask",
        "condition_file": str(mask),
        "condition_sha256": file_sha256(mask),
        "conditioning_scale": 0.5,
    }
    sample = Sample(id=1, generation_run_id=1, provenance=row, dataset=Dataset(root="/gen"))
    cfg = _config(sample, "cpu")
    assert (cfg.label, cfg.sampler, cfg.steps, cfg.guidance, cfg.checkpoint) == (
        "NORMAL",
        "ddim",
        3,
        2.0,
        "raw",
    )
    assert (cfg.condition_file, cfg.condition, cfg.conditioning_scale) == (mask, "mask", 0.5)
    assert (cfg.bit_depth, cfg.privacy_filter, cfg.copy_percentile) == (16, True, 97.5)
    assert cfg.out == Path("/gen") and cfg.device == "cpu"


# --- 3D ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run3d(msd_pairs: Callable[[Sequence[str]], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny3d trained two steps per stage on six real hippocampus pairs (the label-map ControlNet too)."""
    keys = [f"hippocampus_{n:03d}" for n in (1, 3, 4, 6, 7, 8)]
    stage = {"steps": 2, "batch_size": 2, "preview_every": 2}
    values = {
        "preset": "tiny3d",
        "run_dir": str(tmp_path_factory.mktemp("run3d")),
        "data": {"source": str(msd_pairs(keys)), "val_fraction": 0.2},
        "autoencoder": stage,
        "diffusion": stage,
        "controlnet": stage,
    }
    return train(build_train_config(values), progress=False)


def test_rejected_volume_is_regenerated_for_a_new_label_map_draw(run3d: Path, tmp_path: Path) -> None:
    out = tmp_path / "hippo-syn"
    generate_to_folder(GenerateConfig(run_dir=run3d, out=out, count=2, steps=2, qc_retries=1), progress=False)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    _catalogued(url, out)
    with _session(url) as session:
        samples = session.scalars(select(Sample).order_by(Sample.seed)).all()
        assert [(s.path, s.mask_path, s.seed) for s in samples] == [
            ("syn_00000000_image.nii.gz", "syn_00000000_label.nii.gz", 0),
            ("syn_00000001_image.nii.gz", "syn_00000001_label.nii.gz", 1),
        ]
        assert samples[0].dataset.spatial_dims == 3 and samples[0].label == "mri"
    (request,) = _reject(url, ["syn_00000000_image.nii.gz"])
    assert "done: 1 regeneration requests fulfilled" in _from_requests(url)
    rows = read_manifest(out / "manifest.jsonl")
    assert [r["seed"] for r in rows] == [0, 1, 2]  # retry seeds (derived, large) do not move the new seed
    for key in RESUME_SETTINGS:
        assert rows[2].get(key) == rows[0].get(key), key  # distilled_sha256: absent for both
    assert (out / "syn_00000002_image.nii.gz").is_file() and (out / "syn_00000002_label.nii.gz").is_file()
    with _session(url) as session:
        fulfilled = session.get(RegenerationRequest, request)
        new = session.get(Sample, fulfilled.fulfilled_sample_id)
        assert (fulfilled.new_seed, new.path, new.mask_path) == (
            2,
            "syn_00000002_image.nii.gz",
            "syn_00000002_label.nii.gz",
        )
