"""Workers running real jobs on the tiny run: generation end to end with progress, previews and the catalogue
import; failures, cancel, graceful stop; worker processes racing for jobs and a worker killed mid-job."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from PIL import Image
from sqlalchemy import func, select

from synthmed.artifacts.manifest import MANIFEST, read_manifest
from synthmed.catalogue.db import session_factory, transaction
from synthmed.catalogue.migrate import upgrade
from synthmed.catalogue.models import Job, Sample
from synthmed.config import EvaluateConfig, GenerateConfig, ServeConfig, WorkerConfig, build_train_config
from synthmed.jobs import queue
from synthmed.jobs.files import count_previews, preview_path
from synthmed.jobs.worker import Worker

WAIT_S = 120  # generous: the machine is shared; the tests wait for states, never for durations


def open_db(url: str, tmp_path: Path) -> Iterator[SimpleNamespace]:
    upgrade(url)
    engine = queue.worker_engine(url)
    yield SimpleNamespace(url=url, sessions=session_factory(engine), jobs_dir=tmp_path / "jobs")
    engine.dispose()


@pytest.fixture
def jobs_db(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """SQLite: for what does not depend on the database."""
    yield from open_db(f"sqlite:///{tmp_path / 'catalogue.db'}", tmp_path)


@pytest.fixture
def any_db(catalogue_url: str, tmp_path: Path) -> Iterator[SimpleNamespace]:
    """SQLite and PostgreSQL: for concurrent workers."""
    yield from open_db(catalogue_url, tmp_path)


def settings(db: SimpleNamespace, **extra) -> WorkerConfig:
    fast = {"poll_s": 0.1, "heartbeat_s": 0.2, "stale_after_s": 2.0, "progress_every_s": 0.0}
    return WorkerConfig(database=db.url, jobs_dir=db.jobs_dir, preview_every_s=0.0, **(fast | extra))


def enqueue(db: SimpleNamespace, kind: str, cfg, out_root: Path | None = None) -> int:
    with transaction(db.sessions) as session:
        return queue.enqueue(session, kind, cfg, None, out_root=out_root).id


def generation(run: Path, out: Path, **extra) -> GenerateConfig:
    values = {"label": "NORMAL", "count": 3, "batch_size": 2, "steps": 6, "device": "cpu"} | extra
    return GenerateConfig(run_dir=run, out=out, **values)


def job(db: SimpleNamespace, job_id: int) -> Job:
    with db.sessions() as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def written(out: Path) -> list[str]:
    return [row["file"] for row in read_manifest(out / MANIFEST) if row.get("file")]


def test_generation_job_end_to_end(jobs_db: SimpleNamespace, tiny_run: Path, tmp_path: Path) -> None:
    job_id = enqueue(jobs_db, "generate", generation(tiny_run, tmp_path / "ignored"), tmp_path / "outputs")
    assert Worker(settings(jobs_db, once=True)).run() == 1

    done = job(jobs_db, job_id)
    out = tmp_path / "outputs" / f"job-{job_id}"
    assert (done.state, done.error, done.attempts) == ("done", None, 1)
    assert done.result == {"out": str(out), "images": 3, "dataset": f"job-{job_id}"}
    progress = done.progress
    assert (progress["step"], progress["steps"], progress["batches"], progress["done"]) == (6, 6, 2, 3)
    assert progress["phase"] == "done" and progress["eta_s"] == 0
    assert progress["previews"] == count_previews(jobs_db.jobs_dir, job_id) >= 2
    for n in range(progress["previews"]):
        with Image.open(preview_path(jobs_db.jobs_dir, job_id, n)) as image:
            assert image.format == "PNG" and min(image.size) >= 128
    with jobs_db.sessions() as session:
        samples = session.scalar(
            select(func.count()).where(Sample.generation_run_id == done.generation_run_id)
        )
    assert samples == 3 and sorted(written(out)) == [f"NORMAL/syn_0000000{i}.png" for i in range(3)]


def test_failing_jobs_end_failed_with_the_reason(jobs_db: SimpleNamespace, tmp_path: Path) -> None:
    gone = tmp_path / "deleted_run"
    gone.mkdir()
    gone.rmdir()
    generate_id = enqueue(jobs_db, "generate", generation(gone, tmp_path / "out"))
    folders = {"real": tmp_path / "nowhere", "holdout": tmp_path, "synthetic": tmp_path}
    evaluate_id = enqueue(jobs_db, "evaluate", EvaluateConfig(**folders, out=tmp_path / "report"))
    assert Worker(settings(jobs_db, once=True)).run() == 2

    failed = job(jobs_db, generate_id)
    assert failed.state == "failed" and failed.finished is not None
    assert (
        failed.error
        == f"{gone}: not a synthmed run directory (no config.yaml); train one with synthmed train"
    )
    assert job(jobs_db, evaluate_id).error == f"{tmp_path / 'nowhere'}: the real folder does not exist"


def test_training_job_reports_its_steps(
    jobs_db: SimpleNamespace, kermany_small: Path, tmp_path: Path
) -> None:
    short = {"steps": 3, "log_every": 1, "preview_every": 3, "checkpoint_every": 2}
    values = {"preset": "tiny", "run_dir": str(tmp_path / "run"), "data": {"source": str(kermany_small)}}
    cfg = build_train_config(values | {"autoencoder": short, "diffusion": short})
    job_id = enqueue(jobs_db, "train", cfg)
    assert Worker(settings(jobs_db, once=True)).run() == 1

    done = job(jobs_db, job_id)
    assert done.state == "done", done.error
    assert done.result == {"run_dir": str(tmp_path / "run")}
    assert {k: done.progress[k] for k in ("step", "steps", "batch", "batches", "message")} == {
        "step": 3,
        "steps": 3,
        "batch": 2,
        "batches": 2,
        "message": "done",
    }
    assert (tmp_path / "run" / "diffusion" / "model.pt").is_file()


def test_evaluation_job_reports_its_phases_and_report(
    jobs_db: SimpleNamespace, kermany: Path, kermany_small: Path, tmp_path: Path
) -> None:
    for name, first in (("holdout", 0), ("synthetic", 8)):  # real test images stand in for synthetic ones
        for cls in ("NORMAL", "PNEUMONIA"):
            (tmp_path / name / cls).mkdir(parents=True)
            for src in sorted((kermany / "test" / cls).glob("*.jpeg"))[first : first + 8]:
                shutil.copy(src, tmp_path / name / cls / src.name)
    fast = {"image_size": 32, "extractor_steps": 10, "bootstrap": 0, "msssim_pairs": 10}
    folders = {"real": kermany_small, "holdout": tmp_path / "holdout", "synthetic": tmp_path / "synthetic"}
    cfg = EvaluateConfig(**folders, out=tmp_path / "x", cache_dir=tmp_path / "cache", **fast)
    job_id = enqueue(jobs_db, "evaluate", cfg, out_root=tmp_path / "outputs")
    assert Worker(settings(jobs_db, once=True)).run() == 1

    done = job(jobs_db, job_id)
    report = tmp_path / "outputs" / f"job-{job_id}" / "report.html"
    assert done.state == "done", done.error
    assert done.result == {"report": str(report), "out": str(report.parent)} and report.is_file()
    assert done.progress["step"] == len(json.loads((report.parent / "report.json").read_text())["timings_s"])


def start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run)
    thread.start()
    return thread


def test_cancel_stops_a_running_generation_keeping_its_images(
    jobs_db: SimpleNamespace, tiny_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job_id = enqueue(jobs_db, "generate", generation(tiny_run, out, count=200, steps=20))
    worker = Worker(settings(jobs_db))
    thread = start(worker)
    try:
        wait_for(lambda: job(jobs_db, job_id).progress.get("batch", 0) >= 2, "the second batch")
        with transaction(jobs_db.sessions) as session:
            assert queue.request_cancel(session, job_id).state == "running"
        wait_for(lambda: job(jobs_db, job_id).state != "running", "the cancel")
    finally:
        worker.stop()
        thread.join()
    cancelled = job(jobs_db, job_id)
    assert cancelled.state == "cancelled" and cancelled.progress["message"] == "cancelled"
    kept = written(out)
    assert 2 <= len(kept) < 200 and all((out / f).is_file() for f in kept)


def test_a_stopping_worker_queues_its_job_again(
    jobs_db: SimpleNamespace, tiny_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job_id = enqueue(jobs_db, "generate", generation(tiny_run, out, count=6, steps=10))
    worker = Worker(settings(jobs_db))
    thread = start(worker)
    wait_for(lambda: job(jobs_db, job_id).progress.get("batch", 0) >= 2, "the second batch")
    worker.stop()
    thread.join()
    released = job(jobs_db, job_id)
    assert (released.state, released.attempts) == ("queued", 0)
    assert released.progress["message"] == f"queued again: worker {worker.name} stopped"

    assert Worker(settings(jobs_db, once=True)).run() == 1
    assert (job(jobs_db, job_id).state, job(jobs_db, job_id).attempts) == ("done", 1)
    assert sorted(written(out)) == [f"NORMAL/syn_0000000{i}.png" for i in range(6)]


def test_the_server_runs_jobs_in_process_unless_told_not_to(
    jobs_db: SimpleNamespace, tiny_run: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from synthmed.web.app import create_app

    def workers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "synthmed-worker"]

    config = ServeConfig(cache_dir=tmp_path / "cache", jobs_dir=jobs_db.jobs_dir)
    job_id = enqueue(jobs_db, "generate", generation(tiny_run, tmp_path / "out", count=1, steps=2))
    with TestClient(create_app(jobs_db.url, config)):
        wait_for(lambda: job(jobs_db, job_id).state == "done", "the in-process worker")
    assert workers() == []  # stopped with the server
    with TestClient(create_app(jobs_db.url, config.model_copy(update={"worker": False}))):
        assert workers() == []


# --- worker processes -----------------------------------------------------------------------------------


def spawn(db: SimpleNamespace, tmp_path: Path, name: str, *extra: str, **cfg) -> subprocess.Popen:
    """`synthmed worker` in its own process, logging to tmp_path/<name>.log."""
    config = tmp_path / f"{name}.yaml"
    fast = {"heartbeat_s": 0.2, "stale_after_s": 2.0, "poll_s": 0.1, "progress_every_s": 0.1} | cfg
    config.write_text(yaml.safe_dump(fast | {"database": db.url, "jobs_dir": str(db.jobs_dir)}))
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (the process writes it)
    command = [sys.executable, "-m", "synthmed", "worker", "--config", str(config), *extra]
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"CUDA_VISIBLE_DEVICES": ""}
    )


STARTED = re.compile(r"job (\d+) \(\w+\): started by")


def test_two_worker_processes_run_every_job_exactly_once(
    any_db: SimpleNamespace, tiny_run: Path, tmp_path: Path
) -> None:
    ids = [enqueue(any_db, "generate", generation(tiny_run, tmp_path / f"out{i}", count=2)) for i in range(6)]
    workers = [spawn(any_db, tmp_path, name, "--once", stale_after_s=60.0) for name in ("a", "b")]
    for process in workers:
        assert process.wait(timeout=WAIT_S) == 0
    started = [int(i) for name in ("a", "b") for i in STARTED.findall((tmp_path / f"{name}.log").read_text())]
    assert sorted(started) == ids  # every job started once, by one of the two
    for job_id in ids:
        assert (job(any_db, job_id).state, job(any_db, job_id).attempts) == ("done", 1)


def test_a_killed_workers_job_is_recovered_and_finished(
    any_db: SimpleNamespace, tiny_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job_id = enqueue(any_db, "generate", generation(tiny_run, out, count=12, steps=20))
    doomed = spawn(any_db, tmp_path, "doomed")
    try:
        wait_for(lambda: len(written(out)) >= 2, "the first batch")
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    stuck = job(any_db, job_id)
    assert stuck.state == "running" and len(written(out)) < 12

    # Another worker recovers it once its heartbeat is stale_after_s old, and resumes from the manifest.
    rescuer = Worker(settings(any_db))
    thread = start(rescuer)
    try:
        wait_for(lambda: job(any_db, job_id).state == "done", "the recovered job")
    finally:
        rescuer.stop()
        thread.join()
    done = job(any_db, job_id)
    assert (done.attempts, done.worker, done.result["images"]) == (2, rescuer.name, 12)
    expected = [f"NORMAL/syn_{i:08d}.png" for i in range(12)]
    assert sorted(written(out)) == expected  # every image once in the manifest
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == expected  # and on disk
    rows = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert len(rows) == 12


def test_sigterm_queues_the_running_job_again(
    jobs_db: SimpleNamespace, tiny_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job_id = enqueue(jobs_db, "generate", generation(tiny_run, out, count=40, steps=20))
    process = spawn(jobs_db, tmp_path, "stopped")
    try:
        wait_for(lambda: job(jobs_db, job_id).progress.get("step", 0) >= 1, "the first step")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_S) == 0
    finally:
        process.kill()
    released = job(jobs_db, job_id)
    assert (released.state, released.attempts, released.worker) == ("queued", 0, None)
