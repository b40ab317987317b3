"""`synthmed users` (logins of the review web app) and `synthmed serve` (the web app itself).

Heavy imports (SQLAlchemy, FastAPI, uvicorn, argon2) stay inside the functions: `synthmed --help` stays fast.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from synthmed.cli_support import command_config, err, user_errors
from synthmed.config import DatabaseConfig, ServeConfig, UserConfig
from synthmed.errors import SynthmedError

users_app = typer.Typer(help="Logins of the review web app (synthmed serve).", no_args_is_help=True)

Database = Annotated[
    str | None,
    typer.Option(
        help="Catalogue database URL (default: $SYNTHMED_DATABASE_URL, else sqlite:///synthmed.db)."
    ),
]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML with the command's fields.")]


class Role(StrEnum):
    admin = "admin"
    reader = "reader"


def _read_password(from_stdin: bool) -> str:
    from synthmed.web.auth import check_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return check_password(password)


@users_app.command("add")
@user_errors
def users_add(
    username: Annotated[str | None, typer.Argument(help="User name: letters, digits and _ . @ -.")] = None,
    role: Annotated[Role | None, typer.Option(help="admin (studies, review, statistics) or reader.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
    ] = False,
    database: Database = None,
    config: ConfigFile = None,
) -> None:
    """Add a login; the password is asked twice (hidden) or read from stdin; stored as an argon2id hash."""
    from synthmed.catalogue.commands import catalogue_session
    from synthmed.web.auth import add_user

    given = {"username": username, "role": role.value if role else None, "database": database}
    cfg = command_config(UserConfig, config, given)
    password = _read_password(password_stdin)
    with catalogue_session(cfg.database) as session:
        add_user(session, cfg, password)
    err.print(f"added {cfg.role} {cfg.username}", highlight=False)


@users_app.command("list")
@user_errors
def users_list(database: Database = None, config: ConfigFile = None) -> None:
    """List the logins with their role and state."""
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import select

    from synthmed.catalogue.commands import catalogue_session
    from synthmed.catalogue.models import User, utcnow
    from synthmed.review.times import as_utc

    cfg = command_config(DatabaseConfig, config, {"database": database})
    table = Table("user", "role", "state")
    with catalogue_session(cfg.database) as session:
        for user in session.scalars(select(User).order_by(User.username)):
            locked = user.locked_until is not None and as_utc(user.locked_until) > utcnow()
            table.add_row(
                user.username, user.role, "inactive" if not user.active else "locked" if locked else "active"
            )
    Console().print(table)


@user_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (8000).")] = None,
    database: Database = None,
    insecure_cookies: Annotated[
        bool,
        typer.Option(
            "--insecure-cookies",
            help="Send the login cookie over plain http too: only for a loopback --host without HTTPS.",
        ),
    ] = False,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Folder of the blinded study images (default: beside the database).")
    ] = None,
    worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker",
            help="Run queued jobs in this process (default), or leave them to `synthmed worker` processes.",
        ),
    ] = None,
    runs_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of trained runs offered by the dashboard, besides the catalogue's."),
    ] = None,
    outputs_dir: Annotated[
        Path | None, typer.Option(help="Generation jobs' output folders (default: beside the database).")
    ] = None,
    jobs_dir: Annotated[
        Path | None, typer.Option(help="Job previews (default: beside the database).")
    ] = None,
    config: ConfigFile = None,
) -> None:
    """Serve the review web app: blinded visual Turing tests and rating studies, sample review, statistics.

    Put it behind an HTTPS reverse proxy: the login cookie is Secure, so browsers only send it over HTTPS
    (--insecure-cookies allows plain http on 127.0.0.1 for a local trial). Logins come from
    `synthmed users add`; the session key is $SYNTHMED_SECRET_KEY (else random: logins end on restart).
    Queued jobs run in this process (--no-worker: only in `synthmed worker` processes, which may run too).
    """
    import uvicorn

    from synthmed.catalogue.migrate import require_head
    from synthmed.web.app import create_app

    given = {
        "host": host,
        "port": port,
        "database": database,
        "secure_cookies": False if insecure_cookies else None,
        "cache_dir": cache_dir,
        "worker": worker,
        "runs_dir": runs_dir,
        "outputs_dir": outputs_dir,
        "jobs_dir": jobs_dir,
    }
    cfg = command_config(ServeConfig, config, given)
    require_head(cfg.database)
    app = create_app(cfg.database, cfg)
    note = " (reach it through an HTTPS proxy: the login cookie is Secure)" if cfg.secure_cookies else ""
    err.print(f"listening on http://{cfg.host}:{cfg.port}{note}; stop with Ctrl+C", highlight=False)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, server_header=False, log_level="info")
    except OSError as exc:
        raise SynthmedError(f"cannot listen on {cfg.host}:{cfg.port} ({exc})", field="port") from exc
