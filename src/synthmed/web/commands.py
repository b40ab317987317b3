"""`synthmed users` (logins of the review web app) and `synthmed serve` (the web app itself).

Heavy imports (SQLAlchemy, FastAPI, uvicorn, argon2) stay inside the functions: `synthmed --help` stays fast.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from synthmed.cli_support import command_config, err, user_errors
from synthmed.config import DatabaseConfig, UserConfig
from synthmed.errors import SynthmedError
from synthmed.web.settings import WebConfig

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from synthmed.catalogue.models import User

users_app = typer.Typer(help="Logins of the review web app (synthmed serve).", no_args_is_help=True)

Database = Annotated[
    str | None,
    typer.Option(
        help="Catalogue database URL (default: $SYNTHMED_DATABASE_URL, else sqlite:///synthmed.db)."
    ),
]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML with the command's fields.")]
UserName = Annotated[str, typer.Argument(help="The login's user name.")]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
]


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
    password_stdin: PasswordStdin = False,
    database: Database = None,
    config: ConfigFile = None,
) -> None:
    """Add a login; the password is asked twice (hidden) or read from stdin; stored as an argon2id hash."""
    options = locals()  # each option sets the UserConfig field of its name
    from synthmed.catalogue.commands import catalogue_session
    from synthmed.web.users import add_user

    cfg = command_config(UserConfig, config, options)
    password = _read_password(password_stdin)
    with catalogue_session(cfg.database) as session:
        add_user(session, cfg, password)
    err.print(f"added {cfg.role} {cfg.username}", highlight=False)


@users_app.command("list")
@user_errors
def users_list(database: Database = None, config: ConfigFile = None) -> None:
    """List the logins with their role, state (active, locked, inactive) and open sessions."""
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import select

    from synthmed.catalogue.commands import catalogue_session
    from synthmed.catalogue.models import User
    from synthmed.web.sessions import open_sessions
    from synthmed.web.users import state

    cfg = command_config(WebConfig, config, {"database": database})
    table = Table("user", "role", "state", "open sessions")
    with catalogue_session(cfg.database) as session:
        counts = Counter(login.user_id for login in open_sessions(session, cfg))
        for user in session.scalars(select(User).order_by(User.username)):
            table.add_row(user.username, user.role, state(user), str(counts[user.id]))
    Console().print(table)


@users_app.command("passwd")
@user_errors
def users_passwd(
    username: UserName, password_stdin: PasswordStdin = False, database: Database = None
) -> None:
    """Set a new password (asked twice, hidden, or from stdin); ends the user's sessions and lifts a lock."""
    from synthmed.web.users import set_password

    password = _read_password(password_stdin)
    _change(database, username, lambda session, user: set_password(session, user, password))
    err.print(f"new password for {username}; their sessions were ended", highlight=False)


@users_app.command("deactivate")
@user_errors
def users_deactivate(username: UserName, database: Database = None) -> None:
    """Deactivate a login: its sessions end at once; its studies, answers and decisions stay."""
    from synthmed.web.users import set_active

    _change(database, username, lambda session, user: set_active(session, user, False))
    err.print(f"deactivated {username}; their sessions were ended", highlight=False)


@users_app.command("activate")
@user_errors
def users_activate(username: UserName, database: Database = None) -> None:
    """Activate a deactivated login again."""
    from synthmed.web.users import set_active

    _change(database, username, lambda session, user: set_active(session, user, True))
    err.print(f"activated {username}", highlight=False)


@users_app.command("unlock")
@user_errors
def users_unlock(username: UserName, database: Database = None) -> None:
    """Lift the lock that failed logins put on an account."""
    from synthmed.web.users import unlock

    _change(database, username, unlock)
    err.print(f"unlocked {username}", highlight=False)


@users_app.command("role")
@user_errors
def users_role(
    username: UserName, role: Annotated[Role, typer.Argument()], database: Database = None
) -> None:
    """Give a login another role; its sessions end, so no page keeps the old role's rights."""
    from synthmed.web.users import set_role

    _change(database, username, lambda session, user: set_role(session, user, role.value))
    err.print(f"{username} is now {role.value}; their sessions were ended", highlight=False)


@users_app.command("sessions")
@user_errors
def users_sessions(
    username: Annotated[
        str | None, typer.Argument(help="Only this user's sessions (default: everyone's).")
    ] = None,
    end: Annotated[bool, typer.Option("--end", help="End them (log out everywhere).")] = False,
    database: Database = None,
    config: ConfigFile = None,
) -> None:
    """List the open sessions (what `synthmed serve -c` counts as open), or end them with --end."""
    from rich.console import Console
    from rich.table import Table

    from synthmed.catalogue.commands import catalogue_session
    from synthmed.web.sessions import open_sessions
    from synthmed.web.users import end_user_sessions, find_user

    cfg = command_config(WebConfig, config, {"database": database})
    with catalogue_session(cfg.database) as session:
        user = find_user(session, username) if username is not None else None
        if end:
            ended = end_user_sessions(session, user)
            err.print(f"ended {ended} session(s)", highlight=False)
            return
        table = Table("user", "started (UTC)", "last request (UTC)", "address")
        for login in open_sessions(session, cfg, user.id if user is not None else None):
            table.add_row(
                login.user.username, _when(login.created), _when(login.last_seen), login.address or ""
            )
    Console().print(table)


@users_app.command("events")
@user_errors
def users_events(
    username: Annotated[str | None, typer.Argument(help="Only this user's events.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many of the newest events.")] = 50,
    database: Database = None,
) -> None:
    """The security log: logins, failures, locks and changes to users, newest first."""
    from rich.console import Console
    from rich.table import Table

    from synthmed.catalogue.commands import catalogue_session
    from synthmed.web.events import recent
    from synthmed.web.users import find_user

    cfg = command_config(DatabaseConfig, None, {"database": database})
    table = Table("when (UTC)", "event", "user", "by", "address", "detail")
    with catalogue_session(cfg.database) as session:
        user_id = find_user(session, username).id if username is not None else None
        for event in recent(session, limit, user_id):
            by = event.actor.username if event.actor else ""
            table.add_row(
                _when(event.created), event.event, event.username or "", by, event.address or "", event.detail
            )
    Console().print(table)


def _change(database: str | None, username: str, apply: Callable[[Session, User], object]) -> None:
    """Apply a change to one user in one transaction (a command line change: no acting admin)."""
    from synthmed.catalogue.commands import catalogue_session
    from synthmed.web.users import find_user

    cfg = command_config(DatabaseConfig, None, {"database": database})
    with catalogue_session(cfg.database) as session:
        apply(session, find_user(session, username))


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


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
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated addresses or networks of your reverse proxy: only requests from them may "
            "state the client's address and scheme (X-Forwarded-For/-Proto). Default: nobody's."
        ),
    ] = None,
    config: ConfigFile = None,
) -> None:
    """Serve the review web app: blinded visual Turing tests and rating studies, sample review, statistics.

    Put it behind an HTTPS reverse proxy: the login cookie is Secure, so browsers only send it over HTTPS
    (--insecure-cookies allows plain http on 127.0.0.1 for a local trial); name the proxy with
    --forwarded-allow-ips so login limits count the real client addresses. Logins come from
    `synthmed users add`; the session key is $SYNTHMED_SECRET_KEY (else random: logins end on restart).
    Queued jobs run in this process (--no-worker: only in `synthmed worker` processes, which may run too).
    """
    import uvicorn

    from synthmed.catalogue.migrate import require_head
    from synthmed.web.app import create_app
    from synthmed.web.settings import server_options

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
        "forwarded_allow_ips": _addresses(forwarded_allow_ips),
    }
    cfg = command_config(WebConfig, config, given)
    require_head(cfg.database)
    app = create_app(cfg.database, cfg)
    note = " (reach it through an HTTPS proxy: the login cookie is Secure)" if cfg.secure_cookies else ""
    err.print(f"listening on http://{cfg.host}:{cfg.port}{note}; stop with Ctrl+C", highlight=False)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", **server_options(cfg))
    except OSError as exc:
        raise SynthmedError(f"cannot listen on {cfg.host}:{cfg.port} ({exc})", field="port") from exc


def _addresses(value: str | None) -> list[str] | None:
    return [item.strip() for item in value.split(",")] if value else None
