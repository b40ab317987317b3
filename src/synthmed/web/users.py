"""Managing logins, from the command line (`synthmed users`) and the admin pages alike: add a user, set a
new password, deactivate and activate, unlock, change the role, end sessions.

Every change is a security event (``actor`` None: the command line). A change to what a login may do (new
password, deactivation, new role) ends that user's sessions at once and forgets their trusted browsers.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from synthmed.catalogue.models import ROLES, User, utcnow
from synthmed.config import UserConfig
from synthmed.errors import SynthmedError
from synthmed.review.times import as_utc
from synthmed.web import auth, events, sessions


def add_user(
    session: Session, cfg: UserConfig, password: str, *, actor: User | None = None, address: str | None = None
) -> User:
    if session.scalar(select(User.id).where(User.username == cfg.username)) is not None:
        raise SynthmedError(f"user {cfg.username!r} exists already", field="username")
    if cfg.role not in ROLES:
        raise SynthmedError(f"role must be one of {', '.join(ROLES)}", field="role")
    user = User(username=cfg.username, role=cfg.role, password_hash=_hashed(password))
    session.add(user)
    session.flush()
    events.record(session, "user_added", user, actor=actor, address=address, detail=f"role {cfg.role}")
    return user


def find_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise SynthmedError(f"no user named {username!r}; synthmed users list shows them", field="username")
    return user


def state(user: User) -> str:
    """inactive, locked (a lock from failed logins in force) or active."""
    if not user.active:
        return "inactive"
    locked = user.locked_until is not None and as_utc(user.locked_until) > utcnow()
    return "locked" if locked else "active"


def set_password(
    session: Session,
    user: User,
    password: str,
    *,
    actor: User | None = None,
    address: str | None = None,
    keep: int | None = None,
) -> None:
    """A new password; ends the user's sessions (but ``keep``, the acting admin's own) and unlocks."""
    user.password_hash = _hashed(password)
    user.failed_logins, user.locked_until = 0, None
    _revoke(session, user, "password_changed", keep)
    events.record(session, "password_changed", user, actor=actor, address=address)


def set_active(
    session: Session, user: User, active: bool, *, actor: User | None = None, address: str | None = None
) -> None:
    """Deactivate (sessions end at once; the user's studies and decisions stay) or activate again."""
    if user.active == active:
        return
    if not active:
        _keep_an_admin(session, user)
        _revoke(session, user, "deactivated")
    user.active = active
    events.record(session, "activated" if active else "deactivated", user, actor=actor, address=address)


def unlock(session: Session, user: User, *, actor: User | None = None, address: str | None = None) -> None:
    """Lift a lock from failed logins now."""
    user.failed_logins, user.locked_until = 0, None
    events.record(session, "unlocked", user, actor=actor, address=address)


def set_role(
    session: Session, user: User, role: str, *, actor: User | None = None, address: str | None = None
) -> None:
    """A new role; the user's sessions end, so no page keeps the old role's rights."""
    if role not in ROLES:
        raise SynthmedError(f"must be one of {', '.join(ROLES)}, got {role!r}", field="role")
    if user.role == role:
        return
    _keep_an_admin(session, user)
    events.record(
        session, "role_changed", user, actor=actor, address=address, detail=f"{user.role} -> {role}"
    )
    user.role = role
    _revoke(session, user, "role_changed")


def end_user_sessions(
    session: Session,
    user: User | None,
    *,
    actor: User | None = None,
    address: str | None = None,
    keep: int | None = None,
) -> int:
    """End the open sessions of ``user`` (of everyone: None) but ``keep``; returns how many ended."""
    ended = sessions.end_sessions(session, user.id if user is not None else None, "ended_by_admin", keep)
    detail = f"{ended} session(s)" + ("" if user is not None else " of every user")
    events.record(session, "sessions_ended", user, actor=actor, address=address, detail=detail)
    return ended


def _hashed(password: str) -> str:
    return auth.hasher().hash(auth.check_password(password))


def _revoke(session: Session, user: User, reason: str, keep: int | None = None) -> None:
    sessions.end_sessions(session, user.id, reason, keep)
    sessions.distrust_devices(session, user.id)


def _keep_an_admin(session: Session, user: User) -> None:
    """Refuse to take the last active admin away: nobody could manage users or studies any more."""
    if user.role != "admin" or not user.active:
        return
    others = select(func.count()).where(User.role == "admin", User.active.is_(True), User.id != user.id)
    if not session.scalar(others):
        raise SynthmedError(
            f"{user.username!r} is the last active admin; make another user admin first", field="username"
        )
