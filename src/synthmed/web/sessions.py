"""Server-side logins and trusted browsers.

The signed session cookie (Starlette's SessionMiddleware) carries only random tokens: the login's and the
CSRF token. The login itself is a LoginSession row found by the sha256 of its token, so ending the row ends
the login everywhere at once, whoever holds a copy of the cookie. A login also ends after
``session_hours`` (absolute) and ``session_idle_minutes`` without a request.

A browser that logged in as a user gets a long-lived random cookie (a TrustedDevice row): a lock that
failed guesses from elsewhere put on the account does not hold that browser up (see auth.authenticate).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from fastapi import Request, Response
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from synthmed.catalogue.db import changed_rows
from synthmed.catalogue.models import LoginSession, TrustedDevice, User, utcnow
from synthmed.review.times import as_utc
from synthmed.web.settings import WebConfig

SESSION_TOKEN = "sid"  # the login's token in the signed session cookie
DEVICE_COOKIE = "synthmed_device"
TOUCH_EVERY = timedelta(minutes=1)  # last_seen is written at most this often (idle time-out precision)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_address(request: Request) -> str:
    """The connecting address (a trusted proxy's X-Forwarded-For already applied by uvicorn)."""
    return request.client.host if request.client else "unknown"


def start(session: Session, request: Request, user: User, config: WebConfig) -> LoginSession:
    """A new login for ``user``: a fresh session cookie holding only its token (the caller adds CSRF)."""
    token, now = secrets.token_urlsafe(32), utcnow()
    # Rows past their absolute end can never be used again: drop them.
    session.execute(delete(LoginSession).where(LoginSession.expires < now))
    row = LoginSession(
        user_id=user.id,
        token_sha256=digest(token),
        address=client_address(request)[:64],
        created=now,
        last_seen=now,
        expires=now + timedelta(hours=config.session_hours),
    )
    session.add(row)
    session.flush()
    request.session.clear()
    request.session[SESSION_TOKEN] = token
    return row


def current(session: Session, request: Request, config: WebConfig) -> LoginSession | None:
    """The request's login if it is open: not ended, not past its absolute or idle time-out, and its user
    still active. Renews ``last_seen``."""
    token = request.session.get(SESSION_TOKEN)
    if not isinstance(token, str):
        return None
    row = session.scalar(
        select(LoginSession).where(LoginSession.token_sha256 == digest(token), LoginSession.ended.is_(None))
    )
    now = utcnow()
    if row is None or not _alive(row, now, config) or not row.user.active:
        return None
    if now - as_utc(row.last_seen) >= TOUCH_EVERY:
        row.last_seen = now
    return row


def _alive(row: LoginSession, now: datetime, config: WebConfig) -> bool:
    idle = timedelta(minutes=config.session_idle_minutes)
    return as_utc(row.expires) > now and as_utc(row.last_seen) + idle > now


def open_sessions(session: Session, config: WebConfig, user_id: int | None = None) -> list[LoginSession]:
    """Logins still usable, newest first; of one user when ``user_id`` is given."""
    query = select(LoginSession).where(LoginSession.ended.is_(None)).order_by(LoginSession.id.desc())
    if user_id is not None:
        query = query.where(LoginSession.user_id == user_id)
    now = utcnow()
    return [row for row in session.scalars(query) if _alive(row, now, config)]


def end_sessions(session: Session, user_id: int | None, reason: str, keep: int | None = None) -> int:
    """End every login of ``user_id`` (of everyone: None) but ``keep``; returns how many were open."""
    query = update(LoginSession).where(LoginSession.ended.is_(None))
    if user_id is not None:
        query = query.where(LoginSession.user_id == user_id)
    if keep is not None:
        query = query.where(LoginSession.id != keep)
    return changed_rows(session, query.values(ended=utcnow(), end_reason=reason))


def end_current(session: Session, request: Request, reason: str) -> LoginSession | None:
    """End the request's own login (logout) and empty its cookie; returns the row if it was open."""
    token = request.session.get(SESSION_TOKEN)
    request.session.clear()
    if not isinstance(token, str):
        return None
    row = session.scalar(select(LoginSession).where(LoginSession.token_sha256 == digest(token)))
    if row is None or row.ended is not None:
        return None
    row.ended, row.end_reason = utcnow(), reason
    return row


def trusted_device(session: Session, token: str | None, user: User | None) -> TrustedDevice | None:
    """The trusted-browser record of ``token`` if it belongs to ``user`` and has not expired."""
    if not token or user is None:
        return None
    row = session.scalar(select(TrustedDevice).where(TrustedDevice.token_sha256 == digest(token)))
    if row is None or row.user_id != user.id or as_utc(row.expires) <= utcnow():
        return None
    return row


def trust_device(session: Session, response: Response, user: User, config: WebConfig) -> None:
    """Remember this browser for ``user``: a new random cookie and its record."""
    token, now = secrets.token_urlsafe(32), utcnow()
    days = timedelta(days=config.trusted_device_days)
    session.execute(delete(TrustedDevice).where(TrustedDevice.expires < now))
    session.add(TrustedDevice(user_id=user.id, token_sha256=digest(token), created=now, expires=now + days))
    response.set_cookie(
        DEVICE_COOKIE,
        token,
        max_age=round(days.total_seconds()),
        path="/",
        secure=config.secure_cookies,
        httponly=True,
        samesite="strict",
    )


def distrust_devices(session: Session, user_id: int) -> None:
    """No browser of the user is trusted any more (new password, deactivation)."""
    session.execute(delete(TrustedDevice).where(TrustedDevice.user_id == user_id))
