"""`synthmed worker`: run the catalogue's queued jobs. Heavy imports stay inside the function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthmed.cli_support import command_config, err, user_errors
from synthmed.config import WorkerConfig


@user_errors
def worker(
    database: Annotated[
        str | None,
        typer.Option(
            help="Catalogue database URL (default: $SYNTHMED_DATABASE_URL, else sqlite:///synthmed.db)."
        ),
    ] = None,
    poll_s: Annotated[
        float | None, typer.Option("--poll", help="Seconds between looks at an empty queue (2).")
    ] = None,
    once: Annotated[
        bool | None,
        typer.Option("--once", help="Run the jobs queued now, then exit instead of waiting for more."),
    ] = None,
    jobs_dir: Annotated[
        Path | None,
        typer.Option(help="Job previews (default: beside a SQLite database, else ./synthmed-jobs)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with the fields of WorkerConfig.")
    ] = None,
) -> None:
    """Run queued generation, evaluation and training jobs (started from the dashboard of synthmed serve).

    Several workers may run, on one machine or several sharing a PostgreSQL database; each job runs on one.
    A job whose worker dies is queued again after stale_after_s (60 s) without a heartbeat and resumes, up to
    max_attempts (3) starts. SIGTERM or Ctrl+C stops the running job at its next step and queues it again.
    """
    options = locals()  # each option sets the WorkerConfig field of its name
    import logging
    import signal

    from synthmed.catalogue.migrate import require_head
    from synthmed.jobs.worker import Worker

    cfg = command_config(WorkerConfig, config, options)
    require_head(cfg.database)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    running = Worker(cfg)
    previous = {sig: signal.signal(sig, lambda *_: running.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    err.print(f"worker {running.name}: waiting for jobs; stop with Ctrl+C", highlight=False)
    try:
        ran = running.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    err.print(f"worker {running.name}: ran {ran} job(s)", highlight=False)
