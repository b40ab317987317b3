"""Passwords and logins: argon2id hashes, lockout after repeated failures (per user name in the database,
per client address in memory; trusted browsers are not held up by a lock others caused), the logged-in user
of a request (a server-side session, see sessions.py), roles and CSRF tokens."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from synthmed.catalogue.models import LoginSession, TrustedDevice, User, utcnow
from synthmed.errors import SynthmedError
from synthmed.review.times import as_utc
from synthmed.web import events, sessions
from synthmed.web.deps import DB

MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # argon2 hashes anything, but a megabyte "password" is only load
FORM_TYPE = "application/x-www-form-urlencoded"


@cache
def hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the library's RFC 9106 low-memory defaults


@cache
def _dummy_hash() -> str:
    return hasher().hash(secrets.token_urlsafe(16))


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise SynthmedError(f"too short: use at least {MIN_PASSWORD} characters", field="password")
    if len(password) > MAX_PASSWORD:
        raise SynthmedError(f"too long: at most {MAX_PASSWORD} characters", field="password")
    return password


class AddressThrottle:
    """Failed logins per client address in a sliding window; thread-safe, in this process's memory."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, address: str) -> deque[float]:
        times = self._failures[address]
        while times and times[0] < time.monotonic() - self.window_s:
            times.popleft()
        return times

    def blocked(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address)) >= self.limit

    def failed(self, address: str) -> bool:
        """Count a failure; True when it is the one that blocks the address."""
        with self._lock:
            times = self._recent(address)
            times.append(time.monotonic())
            return len(times) == self.limit


class LoginFailed(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


@dataclass
class Attempt:
    """A login attempt: the form's fields, where it came from, and the browser's trusted-device cookie."""

    username: str
    password: str
    address: str
    device_token: str | None = None


def authenticate(
    session: Session, attempt: Attempt, *, max_failures: int, lockout: timedelta
) -> tuple[User, TrustedDevice | None]:
    """The user whose password this is (and the trusted browser it came from), or LoginFailed(401): wrong
    name, wrong password and locked account look alike (same answer, same argon2 work), so nobody learns
    which names exist. Every attempt is logged.

    Failures lock the account for ``lockout`` after ``max_failures``; while locked even the right password
    is refused (after the same argon2 work), so the lock stops guessing. A browser the user logged in with
    before is not held up by that lock (an attacker can lock an account but not keep its owner out): its
    failures count on its own record, and after ``max_failures`` of them it is no longer trusted.
    """
    user = session.scalar(select(User).where(User.username == attempt.username))
    device = sessions.trusted_device(session, attempt.device_token, user)
    now = utcnow()
    locked = user is not None and user.locked_until is not None and as_utc(user.locked_until) > now
    try:
        hasher().verify(
            user.password_hash if user is not None else _dummy_hash(), attempt.password[:MAX_PASSWORD]
        )
        ok = user is not None and user.active and (device is not None or not locked)
    except (VerificationError, InvalidHashError):
        ok = False
    if user is None:
        events.record(session, "login_failed", None, address=attempt.address, detail="unknown user name")
        raise LoginFailed(401)
    if not ok:
        _count_failure(session, user, device, locked, attempt.address, max_failures, now + lockout)
        raise LoginFailed(401)
    if device is not None:
        device.failed_logins = 0
    if not locked:
        user.failed_logins, user.locked_until = 0, None
    if hasher().check_needs_rehash(user.password_hash):
        user.password_hash = hasher().hash(attempt.password)
    return user, device


def _count_failure(
    session: Session,
    user: User,
    device: TrustedDevice | None,
    locked: bool,
    address: str,
    max_failures: int,
    lock_until: datetime,
) -> None:
    if not user.active:
        events.record(session, "login_failed", user, address=address, detail="account deactivated")
    elif device is not None:
        device.failed_logins += 1
        events.record(session, "login_failed", user, address=address, detail="from a trusted browser")
        if device.failed_logins >= max_failures:
            session.delete(device)
            events.record(session, "device_distrusted", user, address=address, detail="too many failures")
    elif locked:
        events.record(session, "login_failed", user, address=address, detail="account locked")
    else:
        user.failed_logins = (user.failed_logins or 0) + 1
        events.record(session, "login_failed", user, address=address, detail="wrong password")
        if user.failed_logins >= max_failures:
            user.locked_until, user.failed_logins = lock_until, 0
            until = f"until {lock_until.isoformat(timespec='seconds')}"
            events.record(session, "account_locked", user, address=address, detail=until)


class LoginRequired(Exception):
    """No valid login: pages answer with a redirect to /login."""


def current_login(request: Request, session: DB) -> LoginSession:
    """The request's open login (server-side), else LoginRequired."""
    login = sessions.current(session, request, request.app.state.config)
    if login is None:
        raise LoginRequired
    return login


def current_user(request: Request, session: DB) -> User:
    return current_login(request, session).user


def require_admin(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != "admin":
        raise HTTPException(403, "admins only")
    return user


def require_reader(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != "reader":
        raise HTTPException(403, "readers only")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
Admin = Annotated[User, Depends(require_admin)]
Reader = Annotated[User, Depends(require_reader)]


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use; every POST form carries it."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def csrf_protect(request: Request) -> None:
    """Refuse a POST that is not a plain form (the one upload form calls check_csrf) or lacks the token."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM_TYPE:
        raise HTTPException(415, "forms only")
    check_csrf(request, (await request.form()).get("csrf_token"))


def check_csrf(request: Request, sent: object) -> None:
    """Refuse a form whose token is not the session's (also used by the one upload form)."""
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        raise HTTPException(403, "the form's security token is missing or out of date: reload the page")


CSRF = Depends(csrf_protect)
