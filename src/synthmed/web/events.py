"""The security log in the catalogue: logins, failures, locks and every change to a user, with who did it
(an admin, or the command line) and from which address."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from synthmed.catalogue.models import SecurityEvent, User


def record(
    session: Session,
    event: str,
    user: User | None,
    *,
    actor: User | None = None,
    address: str | None = None,
    detail: str = "",
) -> None:
    """Log ``event`` about ``user`` (None: a login attempt under a name that is no user; the name typed is
    not stored, it may be a mistyped password)."""
    session.add(
        SecurityEvent(
            event=event,
            user_id=user.id if user is not None else None,
            username=user.username if user is not None else None,
            actor_id=actor.id if actor is not None else None,
            address=address[:64] if address else None,
            detail=detail,
        )
    )


def recent(session: Session, limit: int, user_id: int | None = None) -> Sequence[SecurityEvent]:
    """The newest ``limit`` events, of one user when ``user_id`` is given."""
    query = select(SecurityEvent).order_by(SecurityEvent.id.desc()).limit(limit)
    if user_id is not None:
        query = query.where(SecurityEvent.user_id == user_id)
    return session.scalars(query).all()
