"""Create or upgrade the catalogue schema with the Alembic migrations shipped inside the package.

No alembic.ini is needed: the Alembic configuration is built here and hands ``migrations/env.py`` an open
connection. To write a new revision after changing models.py::

    from alembic import command
    from synthmed.catalogue.db import make_engine
    from synthmed.catalogue.migrate import alembic_config

    with make_engine("sqlite:///dev.db").begin() as conn:   # a database at the current head
        command.revision(alembic_config(conn), "what changed", autogenerate=True)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from synthmed.catalogue.db import MIGRATIONS, database_url, make_engine
from synthmed.errors import SynthmedError


def alembic_config(connection: Connection) -> Config:
    """An Alembic configuration for our migrations that runs them on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(url: str | None = None) -> None:
    """Create the schema in an empty database, or bring an existing one up to the newest revision."""
    with _engine(url) as engine, engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")


def current_revision(url: str | None = None) -> str | None:
    """The database's revision; None for a database without the catalogue schema."""
    with _engine(url) as engine, engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this version of synthmed."""
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def require_head(url: str | None = None) -> None:
    """Refuse to work on a database without the schema this version of synthmed expects."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise SynthmedError(
            f"the catalogue database {safe_url(url)} is at schema revision {current or 'none (empty)'}, this "
            f"synthmed needs {head}: run synthmed db upgrade",
            field="database",
        )


def safe_url(url: str | None = None) -> str:
    """The database URL with any password hidden, for messages."""
    try:
        return make_url(database_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable URL)"


@contextmanager
def _engine(url: str | None) -> Iterator[Engine]:
    """An engine for ``url``; a bad URL or an unreachable server becomes a SynthmedError."""
    try:
        engine = make_engine(database_url(url))
    except (ArgumentError, ImportError) as exc:
        raise SynthmedError(f"not a usable database URL ({exc})", field="database") from exc
    try:
        yield engine
    except OperationalError as exc:
        reason = " ".join(str(exc.orig).split())  # the driver's message spans lines
        raise SynthmedError(f"cannot use the database {safe_url(url)} ({reason})", field="database") from exc
    finally:
        engine.dispose()
