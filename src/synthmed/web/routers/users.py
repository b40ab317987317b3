"""Admin pages for logins: the users with their state and open sessions, the security log, and changes
(add, new password, deactivate/activate, unlock, role, end sessions). Every change is a CSRF-protected form
that also asks for the acting admin's own password (re-authentication, counted like a login attempt)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import select

from synthmed.catalogue.models import ROLES, User
from synthmed.config import UserConfig, format_validation_error
from synthmed.errors import SynthmedError
from synthmed.web import events, sessions, users
from synthmed.web.auth import CSRF, Admin, Attempt, LoginFailed, authenticate, current_login
from synthmed.web.deps import DB, get_or_404
from synthmed.web.pages import render

router = APIRouter(prefix="/admin/users")
EVENTS_SHOWN = 50
Password = Annotated[str, Form(max_length=1024)]
Field = Annotated[str, Form(max_length=64)]
WRONG_PASSWORD = "Your own password was wrong: nothing was changed."
DONE = {  # what a finished change says (a fixed text: nothing from the request is echoed)
    "added": "The user was added.",
    "password": "The password was changed; the user's sessions were ended.",
    "deactivate": "The user was deactivated; their sessions were ended.",
    "activate": "The user was activated.",
    "unlock": "The lock was lifted.",
    "end_sessions": "The user's sessions were ended.",
    "role": "The role was changed; the user's sessions were ended.",
    "all_ended": "Every other session was ended.",
}
SELF_REFUSED = ("deactivate", "role")  # on one's own account these would cut the admin off mid-change


@router.get("")
def users_page(
    request: Request, session: DB, user: Admin, done: Annotated[str, Query(max_length=20)] = ""
) -> HTMLResponse:
    return _users_page(request, session, user, 200, message=DONE.get(done))


def _users_page(request: Request, session: DB, user: User, status: int, **context: object) -> HTMLResponse:
    everyone = session.scalars(select(User).order_by(User.username)).all()
    open_counts: dict[int, int] = {}
    for login in sessions.open_sessions(session, request.app.state.config):
        open_counts[login.user_id] = open_counts.get(login.user_id, 0) + 1
    return render(
        request,
        "users.html",
        status,
        user=user,
        users=[(u, users.state(u), open_counts.get(u.id, 0)) for u in everyone],
        roles=ROLES,
        events=events.recent(session, EVENTS_SHOWN),
        **context,
    )


@router.get("/{user_id}")
def user_page(
    request: Request,
    session: DB,
    user: Admin,
    user_id: int,
    done: Annotated[str, Query(max_length=20)] = "",
) -> HTMLResponse:
    return _user_page(request, session, user, get_or_404(session, User, user_id), 200, message=DONE.get(done))


def _user_page(
    request: Request, session: DB, user: User, target: User, status: int, **context: object
) -> HTMLResponse:
    return render(
        request,
        "user.html",
        status,
        user=user,
        target=target,
        state=users.state(target),
        roles=ROLES,
        logins=sessions.open_sessions(session, request.app.state.config, target.id),
        events=events.recent(session, EVENTS_SHOWN, target.id),
        **context,
    )


def _reauthenticated(request: Request, session: DB, admin: User, password: str) -> bool:
    """The acting admin's own password, checked (and counted when wrong) as a login attempt is."""
    config = request.app.state.config
    attempt = Attempt(
        admin.username,
        password,
        sessions.client_address(request),
        request.cookies.get(sessions.DEVICE_COOKIE),
    )
    try:
        authenticate(
            session, attempt, max_failures=config.max_failed_logins, lockout=request.app.state.lockout
        )
    except LoginFailed:
        return False
    return True


@router.post("", dependencies=[CSRF], response_model=None)
def add(
    request: Request,
    session: DB,
    user: Admin,
    username: Field,
    admin_password: Password,
    password: Password,
    confirm: Password,
    role: Field = "reader",
) -> HTMLResponse | RedirectResponse:
    if not _reauthenticated(request, session, user, admin_password):
        return _users_page(request, session, user, 403, error=WRONG_PASSWORD)
    try:
        if password != confirm:
            raise SynthmedError("the two passwords differ", field="password")
        cfg = UserConfig.model_validate({"username": username, "role": role})
        added = users.add_user(session, cfg, password, actor=user, address=sessions.client_address(request))
    except ValidationError as exc:
        return _users_page(request, session, user, 400, error=format_validation_error(exc, "form"))
    except SynthmedError as exc:
        return _users_page(request, session, user, 400, error=_one_line(exc))
    return RedirectResponse(f"/admin/users/{added.id}?done=added", status_code=303)


@router.post("/end-sessions", dependencies=[CSRF], response_model=None)
def end_all(
    request: Request, session: DB, user: Admin, admin_password: Password
) -> HTMLResponse | RedirectResponse:
    """End every session but the acting admin's own (e.g. after a suspected break-in)."""
    if not _reauthenticated(request, session, user, admin_password):
        return _users_page(request, session, user, 403, error=WRONG_PASSWORD)
    own = current_login(request, session).id
    users.end_user_sessions(session, None, actor=user, address=sessions.client_address(request), keep=own)
    return RedirectResponse("/admin/users?done=all_ended", status_code=303)


@router.post("/{user_id}", dependencies=[CSRF], response_model=None)
def change(
    request: Request,
    session: DB,
    user: Admin,
    user_id: int,
    action: Field,
    admin_password: Password,
    password: Password = "",
    confirm: Password = "",
    role: Field = "",
) -> HTMLResponse | RedirectResponse:
    target = get_or_404(session, User, user_id)
    if not _reauthenticated(request, session, user, admin_password):
        return _user_page(request, session, user, target, 403, error=WRONG_PASSWORD)
    try:
        _apply(request, session, user, target, action, password, confirm, role)
    except SynthmedError as exc:
        return _user_page(request, session, user, target, 400, error=_one_line(exc))
    return RedirectResponse(f"/admin/users/{target.id}?done={action}", status_code=303)


def _apply(
    request: Request,
    session: DB,
    admin: User,
    target: User,
    action: str,
    password: str,
    confirm: str,
    role: str,
) -> None:
    if target.id == admin.id and action in SELF_REFUSED:
        raise SynthmedError("not on your own account: ask another admin", field="action")
    who = {"actor": admin, "address": sessions.client_address(request)}
    own = current_login(request, session).id  # an admin acting on themselves stays logged in
    if action == "password":
        if password != confirm:
            raise SynthmedError("the two passwords differ", field="password")
        users.set_password(session, target, password, keep=own, **who)
    elif action in ("deactivate", "activate"):
        users.set_active(session, target, action == "activate", **who)
    elif action == "unlock":
        users.unlock(session, target, **who)
    elif action == "end_sessions":
        users.end_user_sessions(session, target, keep=own, **who)
    elif action == "role":
        users.set_role(session, target, role, **who)
    else:
        raise SynthmedError(f"unknown action {action!r}", field="action")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
