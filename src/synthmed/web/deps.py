"""Request-scoped dependencies shared by every router: one database transaction per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from synthmed.catalogue.db import transaction


def db_session(request: Request) -> Iterator[Session]:
    """Commits when the route returns, before the response leaves (scope="function" below), so the page a
    redirect leads to already sees what the form changed; rolls back on any error."""
    with transaction(request.app.state.sessions) as session:
        yield session


DB = Annotated[Session, Depends(db_session, scope="function")]


Row = TypeVar("Row")


def get_or_404(session: Session, model: type[Row], key: int) -> Row:
    """The row with primary key ``key``, else 404."""
    row = session.get(model, key)
    if row is None:
        raise HTTPException(404, "Not found.")
    return row
