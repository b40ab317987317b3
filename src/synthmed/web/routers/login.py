"""Log in and out; the start page sends each role to its own pages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from synthmed.catalogue.models import User
from synthmed.web import events, sessions
from synthmed.web.auth import CSRF, Attempt, LoginFailed, authenticate, csrf_token, current_user
from synthmed.web.deps import DB
from synthmed.web.pages import render

router = APIRouter()
FAILED = "Wrong user name or password, or too many failed attempts: wait a while and try again."


@router.get("/")
def start(request: Request, session: DB) -> RedirectResponse:
    user = current_user(request, session)
    return RedirectResponse("/admin" if user.role == "admin" else "/studies", status_code=303)


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html")


@router.post("/login", dependencies=[CSRF], response_model=None)
def login(
    request: Request,
    session: DB,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
) -> HTMLResponse | RedirectResponse:
    state = request.app.state
    attempt = Attempt(
        username, password, sessions.client_address(request), request.cookies.get(sessions.DEVICE_COOKIE)
    )
    # A browser the user logged in with before is not held up by failures of others from its address.
    if state.throttle.blocked(attempt.address) and not _trusted(session, attempt):
        return render(request, "login.html", 429, error=FAILED)
    try:
        user, device = authenticate(
            session, attempt, max_failures=state.config.max_failed_logins, lockout=state.lockout
        )
    except LoginFailed as failed:
        if state.throttle.failed(attempt.address):
            events.record(session, "address_blocked", None, address=attempt.address)
        return render(request, "login.html", failed.status, error=FAILED)
    sessions.start(session, request, user, state.config)  # a fresh cookie: new login and CSRF tokens
    csrf_token(request)
    events.record(session, "login", user, address=attempt.address, detail="trusted browser" if device else "")
    response = RedirectResponse("/", status_code=303)
    if device is None:
        sessions.trust_device(session, response, user, state.config)
    return response


def _trusted(session: DB, attempt: Attempt) -> bool:
    user = session.scalar(select(User).where(User.username == attempt.username))
    return sessions.trusted_device(session, attempt.device_token, user) is not None


@router.post("/logout", dependencies=[CSRF])
def logout(request: Request, session: DB) -> RedirectResponse:
    login = sessions.end_current(session, request, "logout")
    if login is not None:
        events.record(session, "logout", login.user, address=sessions.client_address(request))
    return RedirectResponse("/login", status_code=303)
