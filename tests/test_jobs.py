"""The job queue on SQLite and PostgreSQL: enqueue, atomic claims, leases, cancel and the recovery policy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError
from sqlalchemy import update

from synthmed.catalogue.db import session_factory, transaction
from synthmed.catalogue.migrate import upgrade
from synthmed.catalogue.models import Job, utcnow
from synthmed.config import EvaluateConfig, GenerateConfig, WorkerConfig, build_train_config
from synthmed.errors import SynthmedError
from synthmed.jobs import queue
from synthmed.jobs.files import count_previews, preview_path, write_preview


@pytest.fixture
def jobs_db(catalogue_url: str) -> Iterator[SimpleNamespace]:
    upgrade(catalogue_url)
    engine = queue.worker_engine(catalogue_url)
    yield SimpleNamespace(url=catalogue_url, sessions=session_factory(engine))
    engine.dispose()


def generate_config(tmp_path: Path, **extra) -> GenerateConfig:
    return GenerateConfig(run_dir=tmp_path / "run", out=tmp_path / "out", count=2, steps=2, **extra)


def add_jobs(db: SimpleNamespace, tmp_path: Path, n: int) -> list[int]:
    with transaction(db.sessions) as session:
        return [
            queue.enqueue(session, "generate", generate_config(tmp_path, seed=i), None).id for i in range(n)
        ]


def claim(db: SimpleNamespace, worker: str = "w") -> queue.Lease | None:
    with transaction(db.sessions) as session:
        return queue.claim(session, worker)


def job(db: SimpleNamespace, job_id: int) -> Job:
    with db.sessions() as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def age_heartbeat(db: SimpleNamespace, job_id: int, seconds: float = 3600) -> None:
    with transaction(db.sessions) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(heartbeat=utcnow() - timedelta(seconds=seconds))
        )


def test_enqueue_stores_the_validated_config(jobs_db: SimpleNamespace, tmp_path: Path) -> None:
    cfg = generate_config(tmp_path, label="NORMAL")
    with transaction(jobs_db.sessions) as session:
        plain = queue.enqueue(session, "generate", cfg, None)
        placed = queue.enqueue(session, "generate", cfg, None, out_root=tmp_path / "outputs")
        trained = queue.enqueue(session, "train", build_train_config({"preset": "tiny"}), None)
        with pytest.raises(SynthmedError, match="unknown job kind 'render'"):
            queue.enqueue(session, "render", cfg, None)
        with pytest.raises(SynthmedError, match="needs a EvaluateConfig, not GenerateConfig"):
            queue.enqueue(session, "evaluate", cfg, None)
        with pytest.raises(SynthmedError, match="out_root"):
            queue.enqueue(session, "train", build_train_config({"preset": "tiny"}), None, out_root=tmp_path)
    assert job(jobs_db, plain.id).state == "queued"
    assert job(jobs_db, plain.id).config == cfg.model_dump(mode="json")
    assert job(jobs_db, placed.id).config["out"] == str(tmp_path / "outputs" / f"job-{placed.id}")
    assert queue.job_config("train", job(jobs_db, trained.id).config).preset == "tiny"
    with jobs_db.sessions() as session:
        assert [j.id for j in queue.list_jobs(session, limit=2)] == [trained.id, placed.id]


def test_claims_take_the_oldest_job_once(jobs_db: SimpleNamespace, tmp_path: Path) -> None:
    ids = add_jobs(jobs_db, tmp_path, 3)
    leases = [claim(jobs_db, name) for name in ("a", "b", "a")]
    assert [lease.job_id for lease in leases if lease] == ids
    assert claim(jobs_db) is None
    first = job(jobs_db, ids[0])
    assert (first.state, first.worker, first.attempts) == ("running", "a", 1)
    assert first.started is not None and first.heartbeat is not None


def test_concurrent_claims_never_share_a_job(jobs_db: SimpleNamespace, tmp_path: Path) -> None:
    """Four workers, each with its own connection pool, race for 24 jobs."""
    ids = add_jobs(jobs_db, tmp_path, 24)
    claimed: dict[str, list[int]] = {}

    def work(name: str) -> None:
        engine = queue.worker_engine(jobs_db.url)
        sessions = session_factory(engine)
        mine = claimed.setdefault(name, [])
        while True:
            with transaction(sessions) as session:
                lease = queue.claim(session, name)
            if lease is None:
                break
            mine.append(lease.job_id)
        engine.dispose()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for mine in claimed.values() for i in mine]
    assert sorted(every) == ids  # each job exactly once
    assert {job(jobs_db, i).worker for i in ids} <= set(claimed)


def test_a_lease_fences_its_workers_writes(jobs_db: SimpleNamespace, tmp_path: Path) -> None:
    [job_id] = add_jobs(jobs_db, tmp_path, 1)
    lease = claim(jobs_db)
    assert lease is not None
    other = queue.Lease(job_id, "someone else", lease.attempt)
    with transaction(jobs_db.sessions) as session:
        assert queue.touch(session, lease, {"step": 3}) == "running"
        assert queue.touch(session, other) == "lost"
        assert not queue.end(session, other, "done")
    assert job(jobs_db, job_id).progress == {"step": 3}
    with transaction(jobs_db.sessions) as session:
        assert queue.end(session, lease, "done", result={"images": 2})
        assert queue.touch(session, lease) == "lost"  # ended: no longer this lease's
    assert (job(jobs_db, job_id).state, job(jobs_db, job_id).result) == ("done", {"images": 2})


def test_cancel(jobs_db: SimpleNamespace, tmp_path: Path) -> None:
    queued, running, finished = add_jobs(jobs_db, tmp_path, 3)
    leases = [claim(jobs_db), claim(jobs_db), claim(jobs_db)]
    with transaction(jobs_db.sessions) as session:  # the first and third run, the first ends
        assert queue.release(session, leases[0], "back")  # type: ignore[arg-type]
        assert queue.end(session, leases[2], "done")  # type: ignore[arg-type]
    with transaction(jobs_db.sessions) as session:
        assert queue.request_cancel(session, queued).state == "cancelled"
        flagged = queue.request_cancel(session, running)
        assert (flagged.state, flagged.cancel_requested) == ("running", True)
        assert queue.touch(session, leases[1]) == "cancel"  # type: ignore[arg-type]
        assert queue.request_cancel(session, queued).state == "cancelled"  # again: no harm
        with pytest.raises(SynthmedError, match="already ended \\(done\\)"):
            queue.request_cancel(session, finished)
        with pytest.raises(SynthmedError, match="no job 999"):
            queue.request_cancel(session, 999)
    assert job(jobs_db, queued).finished is not None
    assert claim(jobs_db) is None  # a cancelled job is never claimed


def test_release_queues_the_job_again_without_counting_the_attempt(
    jobs_db: SimpleNamespace, tmp_path: Path
) -> None:
    [job_id] = add_jobs(jobs_db, tmp_path, 1)
    lease = claim(jobs_db)
    with transaction(jobs_db.sessions) as session:
        assert queue.release(session, lease, "queued again: worker stopped")  # type: ignore[arg-type]
    released = job(jobs_db, job_id)
    assert (released.state, released.attempts, released.worker) == ("queued", 0, None)
    assert released.progress["message"] == "queued again: worker stopped"
    again = claim(jobs_db, "next")
    assert again is not None and again.attempt == 1


def test_recover_stale_requeues_fails_or_cancels(jobs_db: SimpleNamespace, tmp_path: Path) -> None:
    retry, exhausted, cancelled, alive = add_jobs(jobs_db, tmp_path, 4)
    leases = {lease.job_id: lease for lease in (claim(jobs_db, "dead") for _ in range(4)) if lease}
    with transaction(jobs_db.sessions) as session:
        session.execute(update(Job).where(Job.id == exhausted).values(attempts=3))
        queue.request_cancel(session, cancelled)
    for job_id in (retry, exhausted, cancelled):
        age_heartbeat(jobs_db, job_id)
    with transaction(jobs_db.sessions) as session:
        recovered = queue.recover_stale(session, timeout_s=60, max_attempts=3)
    assert sorted(j.id for j in recovered) == [retry, exhausted, cancelled]

    requeued = job(jobs_db, retry)
    assert (requeued.state, requeued.worker, requeued.heartbeat) == ("queued", None, None)
    assert "worker dead sent no heartbeat for over 60 s during attempt 1" in requeued.progress["message"]
    failed = job(jobs_db, exhausted)
    assert failed.state == "failed" and failed.finished is not None
    assert "during attempt 3 of 3, so the job is not started again" in (failed.error or "")
    assert job(jobs_db, cancelled).state == "cancelled"
    assert job(jobs_db, alive).state == "running"

    with transaction(jobs_db.sessions) as session:  # the dead worker's lease is void
        assert queue.touch(session, leases[retry]) == "lost"
    again = claim(jobs_db, "next")
    assert again is not None and (again.job_id, again.attempt) == (retry, 2)


def test_worker_config_needs_heartbeats_well_inside_the_timeout() -> None:
    with pytest.raises(ValidationError, match="at least twice heartbeat_s"):
        WorkerConfig(heartbeat_s=10, stale_after_s=15)


def test_preview_files(tmp_path: Path) -> None:
    import torch
    from PIL import Image

    assert count_previews(tmp_path, 7) == 0
    for n in range(2):
        write_preview(torch.rand(3, 1, 32, 32), preview_path(tmp_path, 7, n))
    assert count_previews(tmp_path, 7) == 2
    with Image.open(preview_path(tmp_path, 7, 1)) as image:
        assert image.width >= 2 * 128 and image.height >= 2 * 128  # 2 x 2 grid, small images scaled up


def test_evaluate_jobs_take_an_output_folder(jobs_db: SimpleNamespace, tmp_path: Path) -> None:
    cfg = EvaluateConfig(real=tmp_path, holdout=tmp_path, synthetic=tmp_path, out=tmp_path / "x")
    with transaction(jobs_db.sessions) as session:
        evaluation = queue.enqueue(session, "evaluate", cfg, None, out_root=tmp_path / "outputs")
    assert job(jobs_db, evaluation.id).config["out"] == str(tmp_path / "outputs" / f"job-{evaluation.id}")


def test_worker_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from synthmed.cli import app

    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    refused = CliRunner().invoke(app, ["worker", "--database", url, "--once"])
    assert refused.exit_code == 2 and "run synthmed db upgrade" in refused.output
    upgrade(url)
    ran = CliRunner().invoke(app, ["worker", "--database", url, "--once", "--poll", "0.1"])
    assert ran.exit_code == 0 and "ran 0 job(s)" in ran.output


@pytest.mark.parametrize("preset", ["tiny", "tiny3d"])
def test_previews_decode_the_predicted_clean_latents(preset: str) -> None:
    """Up to four 2D images; 3D: the middle axial slice of the first volume, upright and padded square."""
    import torch

    from synthmed.jobs.runner import preview_images
    from synthmed.models.builders import build_autoencoder

    cfg = build_train_config({"preset": preset})
    arch, volume = cfg.autoencoder.arch, cfg.data.volume
    size = volume.size if volume else (cfg.data.image_size,) * 2
    autoencoder = build_autoencoder(arch, cfg.data.spatial_dims).eval()
    cpu = torch.device("cpu")
    pipe = SimpleNamespace(
        cfg=cfg,
        autoencoder=autoencoder,
        scale_factor=0.5,
        device=cpu,
        dtype=torch.float32,
        tile_size=None,
        tile_overlap=0.25,
    )
    latents = torch.randn(6, arch.latent_channels, *(s // arch.compression for s in size))
    with torch.inference_mode():
        images = preview_images(pipe, latents)  # type: ignore[arg-type]
        decoded = autoencoder.decode(latents[:1] / 0.5).float().clamp(0, 1)
    if volume is None:
        assert images.shape == (4, 1, *size)
        return
    x, y, z = size
    side = max(x, y)
    assert images.shape == (1, 1, side, side)
    middle = torch.rot90(decoded[0, 0, :, :, (z - 1) // 2], 1, dims=(0, 1))  # (y, x): x across, y up
    top, left = (side - y) // 2, (side - x) // 2
    assert torch.allclose(images[0, 0, top : top + y, left : left + x], middle, atol=1e-5)
