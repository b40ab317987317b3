"""The worker: claims queued jobs one at a time and runs them (``synthmed worker``, or a thread of
``synthmed serve``). Any number of workers may share a database, on one machine or several.

While a job runs, a heartbeat thread renews its lease every ``heartbeat_s``; whenever the worker looks at the
queue it first recovers the jobs of workers that died (see synthmed.jobs.queue). ``stop()`` (SIGTERM or
Ctrl+C for the command, shutdown for the server) stops the running job at its next step and queues it again.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading

from sqlalchemy.exc import SQLAlchemyError

from synthmed.catalogue.db import database_url, session_factory, transaction
from synthmed.catalogue.models import Job
from synthmed.config import WorkerConfig
from synthmed.errors import SynthmedError
from synthmed.jobs import queue
from synthmed.jobs.files import default_jobs_dir
from synthmed.jobs.queue import Lease
from synthmed.jobs.runner import JobContext, Stop, run_job

log = logging.getLogger("synthmed.jobs")


class Worker:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        url = database_url(cfg.database)
        self.engine = queue.worker_engine(url)
        self.sessions = session_factory(self.engine)
        self.jobs_dir = cfg.jobs_dir or default_jobs_dir(url)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def stop(self) -> None:
        """Stop after the running job's next step; that job is queued again."""
        self.stopping.set()

    def run(self) -> int:
        """Run jobs until stop() (with ``once``: until the queue is empty); returns how many ran."""
        ran = 0
        try:
            while not self.stopping.is_set():
                lease = self._next()
                if lease is not None:
                    self._run(lease)
                    ran += 1
                elif self.cfg.once:
                    break
                else:
                    self.stopping.wait(self.cfg.poll_s)
        finally:
            self.engine.dispose()
        return ran

    def start_thread(self) -> Worker:
        """Run in a background thread (the server's in-process worker)."""
        self.thread = threading.Thread(target=self.run, name="synthmed-worker", daemon=True)
        self.thread.start()
        return self

    def _next(self) -> Lease | None:
        try:
            with transaction(self.sessions) as session:
                for job in queue.recover_stale(session, self.cfg.stale_after_s, self.cfg.max_attempts):
                    log.warning("job %d: %s", job.id, job.error or job.progress.get("message"))
            with transaction(self.sessions) as session:
                return queue.claim(session, self.name)
        except SQLAlchemyError as exc:
            log.warning("cannot use the job queue (%s); trying again in %g s", exc, self.cfg.poll_s)
            return None

    def _run(self, lease: Lease) -> None:
        with transaction(self.sessions) as session:
            job = session.get(Job, lease.job_id)
            assert job is not None
            kind, values = job.kind, dict(job.config)
        log.info("job %d (%s): started by %s, attempt %d", lease.job_id, kind, self.name, lease.attempt)
        ctx = JobContext(lease, self.sessions, self.jobs_dir, self.cfg, self.stopping)
        finished = threading.Event()
        beat = threading.Thread(target=self._beat, args=(ctx, finished), daemon=True)
        beat.start()
        try:
            outcome = self._outcome(kind, values, ctx)
        except SQLAlchemyError as exc:  # its heartbeat stops, so recovery takes the job over
            outcome = f"left running: cannot reach the database ({exc})"
        finally:
            finished.set()
            beat.join()
        log.info("job %d: %s", lease.job_id, outcome)

    def _outcome(self, kind: str, values: dict, ctx: JobContext) -> str:
        try:
            run_job(kind, queue.job_config(kind, values), ctx)
            return "done"
        except Stop as stop:
            return self._stopped(ctx, stop.reason)
        except SynthmedError as exc:
            return self._fail(ctx, str(exc))
        except Exception as exc:
            log.exception("job %d: unexpected error", ctx.lease.job_id)
            error = f"unexpected {type(exc).__name__}: {exc} (the worker's log has the traceback)"
            return self._fail(ctx, error)

    def _stopped(self, ctx: JobContext, reason: str) -> str:
        with transaction(self.sessions) as session:
            status = queue.touch(session, ctx.lease) if reason == "shutdown" else reason
            if status == "running":  # shutting down: the next worker resumes it
                queue.release(session, ctx.lease, f"queued again: worker {self.name} stopped")
                return "queued again (worker stopping)"
            if status == "lost":
                return "taken over by another worker after a stall; stopped here"
            stopped = ctx.values | {"phase": "cancelled", "eta_s": None, "message": "cancelled"}
            queue.end(session, ctx.lease, "cancelled", progress=stopped)
        return "cancelled"

    def _fail(self, ctx: JobContext, error: str) -> str:
        failed = ctx.values | {"phase": "failed", "eta_s": None, "message": "failed"}
        with transaction(self.sessions) as session:
            queue.end(session, ctx.lease, "failed", error=error, progress=failed)
        return f"failed: {error}"

    def _beat(self, ctx: JobContext, finished: threading.Event) -> None:
        while not finished.wait(self.cfg.heartbeat_s):
            ctx.touch()
