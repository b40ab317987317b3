"""The review web app: ``create_app`` builds a FastAPI app on a catalogue database.

Server-rendered pages, one router per area (login, reader studies, admin). A later area (e.g. a
dashboard) is one more router in ``ROUTERS``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synthmed.catalogue import db
from synthmed.config import ServeConfig, WorkerConfig
from synthmed.errors import SynthmedError
from synthmed.jobs.files import default_jobs_dir, default_outputs_dir
from synthmed.review.render import default_cache_dir
from synthmed.review.studies import TrialNotFound
from synthmed.web.auth import AddressThrottle, LoginRequired
from synthmed.web.pages import HERE, render
from synthmed.web.routers import admin, dashboard, gallery, jobs, login, reader, users
from synthmed.web.settings import web_config

if TYPE_CHECKING:
    from synthmed.jobs.worker import Worker

SECRET_ENV = "SYNTHMED_SECRET_KEY"
SESSION_COOKIE = "synthmed_session"
MAX_BODY = 64 * 1024  # every form is a few fields: nothing bigger is ever needed
WORKER_STOP_S = 30.0  # at shutdown, how long the in-process worker may take to put its job back
# The one form with a file (the configurator's structure map) gets its own, larger limit.
UPLOAD_LIMITS = {dashboard.UPLOAD_PATH: dashboard.MAX_UPLOAD + MAX_BODY}
ROUTERS = (
    login.router,
    reader.router,
    admin.router,
    users.router,
    dashboard.router,
    jobs.router,
    gallery.router,
)
HEADERS = {
    # No inline script or style anywhere and nothing from other origins.
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


class Hardening:
    """Security headers on every response, no-store on everything but the static files, and request bodies
    refused above MAX_BODY (a Content-Length is required: the server then never reads past it)."""

    def __init__(self, app: ASGIApp, secure: bool) -> None:
        self.app, self.secure = app, secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if b"transfer-encoding" in headers or (length is not None and not length.isdigit()):
            await Response("send a Content-Length", status_code=411)(scope, receive, self._send(scope, send))
            return
        if length is not None and int(length) > UPLOAD_LIMITS.get(scope["path"], MAX_BODY):
            await Response("request too large", status_code=413)(scope, receive, self._send(scope, send))
            return
        await self.app(scope, receive, self._send(scope, send))

    def _send(self, scope: Scope, send: Send) -> Send:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in HEADERS.items():  # a route may send a stricter policy (served reports)
                    headers.setdefault(key, value)
                if self.secure:
                    headers["Strict-Transport-Security"] = "max-age=31536000"
                if not scope["path"].startswith("/static/"):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        return send_with_headers


def create_app(database_url: str | None = None, config: ServeConfig | None = None) -> FastAPI:
    """The app on ``database_url`` (default: $SYNTHMED_DATABASE_URL or ./synthmed.db), which must hold the
    catalogue schema (`synthmed db upgrade`); ``config`` a ServeConfig or a WebConfig (web settings).
    Logins are kept in the catalogue; the key that signs the session cookie (its login token and CSRF
    token) is $SYNTHMED_SECRET_KEY, or a random one per process (logins then end when the server restarts)."""
    config = web_config(config)
    url = db.database_url(database_url or config.database)
    engine = db.make_engine(url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = _start_worker(url, app.state.jobs_dir) if config.worker else None
        yield
        if worker is not None:  # its running job is queued again; a job stuck in one step is recovered later
            worker.stop()
            await asyncio.to_thread(worker.thread.join, WORKER_STOP_S)  # type: ignore[union-attr]
        engine.dispose()  # close the pool's connections when the server stops

    app = FastAPI(title="synthmed review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.config = config
    app.state.sessions = db.session_factory(engine)
    app.state.cache = Path(config.cache_dir or default_cache_dir(url))
    app.state.jobs_dir = Path(config.jobs_dir or default_jobs_dir(url))  # the dashboard reads previews here
    app.state.outputs_dir = Path(config.outputs_dir or default_outputs_dir(url))
    app.state.secret = os.environ.get(SECRET_ENV) or secrets.token_urlsafe(32)
    app.state.lockout = timedelta(minutes=config.lockout_minutes)
    app.state.throttle = AddressThrottle(config.max_failed_per_address, config.lockout_minutes * 60)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_error_pages(app)
    app.add_middleware(
        SessionMiddleware,
        secret_key=app.state.secret,
        session_cookie=SESSION_COOKIE,
        max_age=round(config.session_hours * 3600),
        same_site="strict",
        https_only=config.secure_cookies,
    )
    app.add_middleware(Hardening, secure=config.secure_cookies)
    return app


def _start_worker(url: str, jobs_dir: Path) -> Worker:
    """The in-process job worker of `synthmed serve`, a thread (`--no-worker`: only `synthmed worker`)."""
    from synthmed.jobs.worker import Worker  # torch and the pipelines: only when a worker runs here

    return Worker(WorkerConfig(database=url, jobs_dir=jobs_dir)).start_thread()


def _add_error_pages(app: FastAPI) -> None:
    def page(request: Request, status: int, message: str) -> HTMLResponse:
        return render(request, "error.html", status, code=status, message=message)

    @app.exception_handler(LoginRequired)
    def _login(request: Request, _exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(TrialNotFound)
    def _no_trial(request: Request, _exc: TrialNotFound) -> HTMLResponse:
        return page(request, 404, "Not found.")

    @app.exception_handler(SynthmedError)
    def _bad_input(request: Request, exc: SynthmedError) -> HTMLResponse:
        return page(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> HTMLResponse:
        fields = sorted({".".join(str(p) for p in e["loc"][1:]) or "request" for e in exc.errors()})
        return page(request, 400, f"Invalid or missing: {', '.join(fields)}.")

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        return page(request, exc.status_code, str(exc.detail))
