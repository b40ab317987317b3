"""Users, passwords and logins: argon2id hashes, lockout after repeated failures (per user name in the
database, per client address in memory), the logged-in user of a request, roles and CSRF tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import timedelta
from functools import cache
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from synthmed.catalogue.models import ROLES, User, utcnow
from synthmed.config import UserConfig
from synthmed.errors import SynthmedError
from synthmed.review.times import as_utc
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


def add_user(session: Session, cfg: UserConfig, password: str) -> User:
    if session.scalar(select(User.id).where(User.username == cfg.username)) is not None:
        raise SynthmedError(f"user {cfg.username!r} exists already", field="username")
    if cfg.role not in ROLES:
        raise SynthmedError(f"role must be one of {', '.join(ROLES)}", field="role")
    user = User(username=cfg.username, role=cfg.role, password_hash=hasher().hash(check_password(password)))
    session.add(user)
    session.flush()
    return user


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

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(time.monotonic())


class LoginFailed(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def authenticate(
    session: Session, username: str, password: str, *, max_failures: int, lockout: timedelta
) -> User:
    """The user whose password this is, or LoginFailed(401): wrong name, wrong password and locked
    account look alike (same answer, same argon2 work), so nobody learns which names exist."""
    user = session.scalar(select(User).where(User.username == username))
    now = utcnow()
    locked = user is not None and user.locked_until is not None and as_utc(user.locked_until) > now
    try:
        hasher().verify(user.password_hash if user is not None else _dummy_hash(), password[:MAX_PASSWORD])
        ok = user is not None and user.active and not locked
    except (VerificationError, InvalidHashError):
        ok = False
    if user is None:
        raise LoginFailed(401)
    if not ok:
        if not locked:
            user.failed_logins = (user.failed_logins or 0) + 1
            if user.failed_logins >= max_failures:
                user.locked_until, user.failed_logins = now + lockout, 0
        raise LoginFailed(401)
    user.failed_logins, user.locked_until = 0, None
    if hasher().check_needs_rehash(user.password_hash):
        user.password_hash = hasher().hash(password)
    return user


def session_tag(secret: str, user: User) -> str:
    """Ties a login cookie to the password hash: changing the password ends every existing login."""
    return hmac.new(secret.encode(), f"{user.id}:{user.password_hash}".encode(), hashlib.sha256).hexdigest()


class LoginRequired(Exception):
    """No valid login: pages answer with a redirect to /login."""


def current_user(request: Request, session: DB) -> User:
    uid, tag = request.session.get("uid"), request.session.get("tag")
    user = session.get(User, uid) if isinstance(uid, int) and isinstance(tag, str) else None
    if user is None or not user.active:
        raise LoginRequired
    if not hmac.compare_digest(tag, session_tag(request.app.state.secret, user)):
        raise LoginRequired
    return user


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
