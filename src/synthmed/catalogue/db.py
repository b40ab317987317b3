"""Catalogue database connection: SQLite file by default (WAL, foreign keys on), PostgreSQL by URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

ENV_URL = "SYNTHMED_DATABASE_URL"
DEFAULT_URL = "sqlite:///synthmed.db"


def database_url(url: str | None = None) -> str:
    """``url`` if given, else ``$SYNTHMED_DATABASE_URL``, else ``synthmed.db`` in the working folder."""
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


def make_engine(url: str | None = None) -> Engine:
    url = database_url(url)
    if url.startswith("sqlite"):
        # Readers answer concurrently: wait for the writer's lock instead of failing at once.
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


def insert_or_ignore(session: Session, model: type, values: dict, unique: list[str]) -> None:
    """INSERT ... ON CONFLICT (unique) DO NOTHING on SQLite or PostgreSQL: when concurrent writers add the
    same row, one wins and nothing raises (callers select the row afterwards)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(model).values(**values).on_conflict_do_nothing(index_elements=unique))


def changed_rows(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE; returns how many rows it matched (its cursor's rowcount)."""
    result = session.execute(statement)
    assert isinstance(result, CursorResult)  # what DML returns; the typing says Result
    return result.rowcount


MIGRATIONS = Path(__file__).parent / "migrations"
