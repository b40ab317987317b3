"""Log in and out; the start page sends each role to its own pages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from synthmed.web.auth import CSRF, LoginFailed, authenticate, csrf_token, current_user, session_tag
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
    address = request.client.host if request.client else "unknown"
    if state.throttle.blocked(address):
        return render(request, "login.html", 429, error=FAILED)
    try:
        user = authenticate(
            session, username, password, max_failures=state.config.max_failed_logins, lockout=state.lockout
        )
    except LoginFailed as failed:
        state.throttle.failed(address)
        return render(request, "login.html", failed.status, error=FAILED)
    request.session.clear()  # a fresh session and CSRF token: later pages set no cookie
    request.session.update(uid=user.id, tag=session_tag(state.secret, user))
    csrf_token(request)
    return RedirectResponse("/", status_code=303)


@router.post("/logout", dependencies=[CSRF])
def logout(request: Request) -> RedirectResponse:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
