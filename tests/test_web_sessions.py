"""Logins kept on the server and users an admin can manage (issue 21), over HTTP against the app served by
uvicorn: a cookie copied before logout opens nothing after it, deactivation, new passwords, role changes and
an admin's "end sessions" end logins at once, idle and absolute time-outs, forwarded headers believed only
from a named proxy, a lock that stops guessers but not the owner's browser, the security log, and the
`synthmed users` commands."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from sqlalchemy import select, update
from typer.testing import CliRunner
from web_support import PASSWORD, build_catalogue, csrf_of, fast_hasher, login, make_study, serving

from synthmed.catalogue.db import make_engine, session_factory
from synthmed.catalogue.models import LoginSession, SecurityEvent, User, utcnow
from synthmed.cli import app as cli
from synthmed.web import auth
from synthmed.web.app import SESSION_COOKIE, create_app
from synthmed.web.sessions import DEVICE_COOKIE
from synthmed.web.settings import WebConfig

runner = CliRunner()
NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture(autouse=True)
def _fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "hasher", fast_hasher)


@pytest.fixture
def site(tmp_path: Path, kermany: Path):
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    build_catalogue(url, kermany, tmp_path, n_real=2, n_synthetic=2, readers=["r1", "r2"])
    study = make_study(url, tmp_path / "cache", name="one", readers=["r1", "r2"], n_real=2, n_synthetic=2)
    engine = make_engine(url)
    yield SimpleNamespace(url=url, cache=tmp_path / "cache", study=study, db=session_factory(engine))
    engine.dispose()


@contextmanager
def served(site, **settings) -> Iterator[str]:
    """The app on plain http over loopback (insecure cookies: a local trial), served by uvicorn."""
    config = WebConfig(cache_dir=site.cache, secure_cookies=False, worker=False, **settings)
    with serving(create_app(site.url, config)) as base:
        yield base


def browser(base: str, cookies: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=base, follow_redirects=False, cookies=cookies)


def logged_in(base: str, username: str, password: str = PASSWORD) -> httpx.Client:
    client = browser(base)
    response = login(client, username, password)
    assert response.status_code == 303, response.text
    return client


def is_logged_out(client: httpx.Client) -> bool:
    response = client.get("/studies")
    return response.status_code == 303 and response.headers["location"] == "/login"


def user_id(site, username: str) -> int:
    with site.db() as session:
        return session.scalar(select(User.id).where(User.username == username))


def cli_ok(*args: str, stdin: str | None = None) -> str:
    result = runner.invoke(cli, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


def table_rows(output: str) -> list[list[str]]:
    """The cells of each row of a Rich table printed by a command."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines() if line.count("│") > 2]


def events(site) -> list[tuple[str, str | None, str | None, str]]:
    with site.db() as session:
        rows = session.scalars(select(SecurityEvent).order_by(SecurityEvent.id)).all()
        return [(e.event, e.username, e.actor.username if e.actor else None, e.detail) for e in rows]


def test_a_cookie_copied_before_logout_opens_nothing_after_it(site) -> None:
    with served(site) as base:
        reader = logged_in(base, "r1")
        assert reader.get(f"/studies/{site.study}").status_code == 200
        stolen = {SESSION_COOKIE: reader.cookies[SESSION_COOKIE]}
        copy = browser(base, stolen)
        assert copy.get("/studies").status_code == 200
        token = csrf_of(reader.get("/studies").text)
        assert reader.post("/logout", data={"csrf_token": token}).status_code == 303
        for client in (browser(base, stolen), reader):
            assert is_logged_out(client)
            assert client.get(f"/studies/{site.study}").headers["location"] == "/login"
            assert "Log in" in client.get("/login").text
    with site.db() as session:
        ended = session.scalar(select(LoginSession).where(LoginSession.end_reason == "logout"))
        assert ended is not None and ended.user.username == "r1"


def test_the_cookie_holds_only_random_tokens_and_the_database_only_their_hash(site) -> None:
    with served(site) as base:
        cookie = logged_in(base, "r1").cookies[SESSION_COOKIE]
    payload = json.loads(base64.b64decode(cookie.split(".")[0]))  # Starlette's signed session cookie
    assert set(payload) == {"sid", "csrf"}
    with site.db() as session:
        row = session.scalar(select(LoginSession))
        assert row.token_sha256 == hashlib.sha256(payload["sid"].encode()).hexdigest()
        assert row.token_sha256 not in cookie and row.user.username == "r1"


def test_a_spoofed_forwarded_header_does_not_reset_the_address_limit(site) -> None:
    spoofed = {"X-Forwarded-For": "203.0.113.9"}
    with served(site, max_failed_per_address=3) as base:
        client = browser(base)
        for i in range(3):
            assert login(client, f"nobody{i}", "wrong password!").status_code == 401
        assert login(client, "r1").status_code == 429
        client.headers.update(spoofed)
        assert login(client, "r1").status_code == 429
        assert login(client, "nobody9", "wrong password!").status_code == 429
    # Behind a named proxy the header is the client's address: one client's failures do not block another.
    with served(site, max_failed_per_address=3, forwarded_allow_ips=["127.0.0.1"]) as base:
        attacker = browser(base)
        attacker.headers.update({"X-Forwarded-For": "198.51.100.7"})
        for i in range(3):
            assert login(attacker, f"nobody{i}", "wrong password!").status_code == 401
        assert login(attacker, "r1").status_code == 429
        other = browser(base)
        other.headers.update(spoofed)
        assert login(other, "r1").status_code == 303
    with site.db() as session:
        blocked = session.scalars(select(SecurityEvent).where(SecurityEvent.event == "address_blocked")).all()
        assert [e.address for e in blocked] == ["127.0.0.1", "198.51.100.7"]


def test_serve_believes_forwarded_headers_only_from_the_named_proxy(
    site, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    cli_ok("serve", "--database", site.url, "--no-worker")
    cli_ok("serve", "--database", site.url, "--no-worker", "--forwarded-allow-ips", "10.0.0.2, 10.1.0.0/16")
    assert calls[0]["proxy_headers"] is False and calls[0]["server_header"] is False
    assert calls[1]["proxy_headers"] is True and calls[1]["forwarded_allow_ips"] == [
        "10.0.0.2",
        "10.1.0.0/16",
    ]
    star = runner.invoke(cli, ["serve", "--database", site.url, "--forwarded-allow-ips", "*"])
    assert star.exit_code == 2 and "forwarded_allow_ips" in star.output and "any client" in star.output


def test_a_deactivated_readers_open_session_ends(site) -> None:
    with served(site) as base:
        reader = logged_in(base, "r1")
        other = logged_in(base, "r2")
        assert reader.get(f"/studies/{site.study}").status_code == 200
        cli_ok("users", "deactivate", "r1", "--database", site.url)
        assert is_logged_out(reader)
        assert login(browser(base), "r1").status_code == 401
        assert other.get("/studies").status_code == 200  # nobody else is touched
        cli_ok("users", "activate", "r1", "--database", site.url)
        assert login(reader, "r1").status_code == 303
    with site.db() as session:
        reasons = session.scalars(select(LoginSession.end_reason).where(LoginSession.ended.is_not(None)))
        assert list(reasons) == ["deactivated"]


def test_idle_and_absolute_time_outs(site) -> None:
    with served(site, session_idle_minutes=30, session_hours=8) as base:
        idle, old = logged_in(base, "r1"), logged_in(base, "r2")
        with site.db.begin() as session:
            hour_ago = utcnow() - timedelta(minutes=31)
            session.execute(
                update(LoginSession)
                .where(LoginSession.user_id == user_id(site, "r1"))
                .values(last_seen=hour_ago)
            )
            session.execute(
                update(LoginSession)
                .where(LoginSession.user_id == user_id(site, "r2"))
                .values(expires=utcnow() - timedelta(seconds=1))
            )
        assert is_logged_out(idle) and is_logged_out(old)
        fresh = logged_in(base, "r1")
        with site.db.begin() as session:  # 29 minutes idle: still in, and the request renews the clock
            session.execute(
                update(LoginSession)
                .where(LoginSession.ended.is_(None), LoginSession.user_id == user_id(site, "r1"))
                .values(last_seen=utcnow() - timedelta(minutes=29))
            )
        assert fresh.get("/studies").status_code == 200
    with site.db() as session:
        newest = session.scalar(select(LoginSession).order_by(LoginSession.id.desc()))
        assert utcnow() - newest.last_seen.replace(tzinfo=utcnow().tzinfo) < timedelta(minutes=1)


def test_admin_manages_users_on_the_web_with_csrf_and_re_authentication(site) -> None:
    r1 = user_id(site, "r1")
    with served(site) as base:
        admin, reader = logged_in(base, "admin"), logged_in(base, "r1")
        page = admin.get(f"/admin/users/{r1}")
        assert page.status_code == 200 and "r1" in page.text
        token = csrf_of(page.text)
        assert reader.get("/admin/users").status_code == 403
        forged = {"action": "end_sessions", "admin_password": PASSWORD}
        assert admin.post(f"/admin/users/{r1}", data=forged).status_code == 403  # no CSRF token
        wrong = admin.post(f"/admin/users/{r1}", data=forged | {"csrf_token": token, "admin_password": "no!"})
        assert wrong.status_code == 403 and "Your own password was wrong" in wrong.text
        assert reader.get("/studies").status_code == 200
        ended = admin.post(f"/admin/users/{r1}", data=forged | {"csrf_token": token})
        assert ended.status_code == 303 and is_logged_out(reader)
        change = {"csrf_token": token, "action": "password", "admin_password": PASSWORD}
        differ = admin.post(f"/admin/users/{r1}", data=change | {"password": NEW_PASSWORD, "confirm": "x"})
        assert differ.status_code == 400 and "differ" in differ.text
        reader = logged_in(base, "r1")
        done = admin.post(
            f"/admin/users/{r1}", data=change | {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
        )
        assert done.status_code == 303 and is_logged_out(reader)
        assert login(browser(base), "r1").status_code == 401
        reader = logged_in(base, "r1", NEW_PASSWORD)
        role = {"csrf_token": token, "action": "role", "role": "admin", "admin_password": PASSWORD}
        assert admin.post(f"/admin/users/{r1}", data=role).status_code == 303
        assert is_logged_out(reader)
        assert logged_in(base, "r1", NEW_PASSWORD).get("/admin").status_code == 200
        own = admin.post(
            f"/admin/users/{user_id(site, 'admin')}",
            data={"csrf_token": token, "action": "deactivate", "admin_password": PASSWORD},
        )
        assert own.status_code == 400 and "not on your own account" in own.text
        assert admin.get("/admin").status_code == 200


def test_admin_adds_users_and_ends_every_other_session(site) -> None:
    with served(site) as base:
        admin, r1, r2 = logged_in(base, "admin"), logged_in(base, "r1"), logged_in(base, "r2")
        token = csrf_of(admin.get("/admin/users").text)
        new = {"csrf_token": token, "username": "dr.new", "role": "reader", "admin_password": PASSWORD}
        bad = admin.post(
            "/admin/users", data=new | {"username": "<b>", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
        )
        assert bad.status_code == 400 and "username" in bad.text and "<b>" not in bad.text
        added = admin.post("/admin/users", data=new | {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
        assert added.status_code == 303
        assert logged_in(base, "dr.new", NEW_PASSWORD).get("/studies").status_code == 200
        everyone = {"csrf_token": token, "admin_password": PASSWORD}
        assert admin.post("/admin/users/end-sessions", data=everyone).status_code == 303
        assert is_logged_out(r1) and is_logged_out(r2)
        assert admin.get("/admin/users").status_code == 200  # the acting admin's own session stays


def test_a_locked_account_stops_guessers_but_not_its_owners_browser(site) -> None:
    with served(site, max_failed_logins=3, max_failed_per_address=100) as base:
        owner = logged_in(base, "r1")
        assert owner.cookies.get(DEVICE_COOKIE)
        owner.post("/logout", data={"csrf_token": csrf_of(owner.get("/studies").text)})
        attacker = browser(base)
        for _ in range(3):
            assert login(attacker, "r1", "guess guess guess").status_code == 401
        assert login(attacker, "r1").status_code == 401  # locked: even the right password is not tried
        assert login(owner, "r1").status_code == 303  # the owner's browser is not held up
        assert owner.get("/studies").status_code == 200
        assert login(attacker, "r1").status_code == 401  # ...and the lock still holds for everyone else
        stolen = browser(base, {DEVICE_COOKIE: owner.cookies[DEVICE_COOKIE]})
        assert login(stolen, "r2").status_code == 303  # a device cookie is worth nothing for another user
        for _ in range(3):  # a trusted browser has its own limit: after it, it is trusted no more
            assert login(owner, "r1", "typo typo typo").status_code == 401
        assert login(owner, "r1").status_code == 401
        cli_ok("users", "unlock", "r1", "--database", site.url)
        assert login(attacker, "r1").status_code == 303
    kinds = [e[0] for e in events(site)]
    assert kinds.count("account_locked") == 1 and "device_distrusted" in kinds and "unlocked" in kinds


def test_security_events_are_logged(site) -> None:
    with served(site) as base:
        admin = logged_in(base, "admin")
        assert login(browser(base), "nobody", "wrong password!").status_code == 401
        assert login(browser(base), "r2", "wrong password!").status_code == 401
        token = csrf_of(admin.get("/admin/users").text)
        change = {"csrf_token": token, "action": "role", "role": "admin", "admin_password": PASSWORD}
        assert admin.post(f"/admin/users/{user_id(site, 'r2')}", data=change).status_code == 303
        log = admin.get("/admin/users").text
    cli_ok("users", "deactivate", "r1", "--database", site.url)
    logged = events(site)
    assert ("login", "admin", None, "") in logged
    assert ("login_failed", None, None, "unknown user name") in logged  # the name typed is not kept
    assert ("login_failed", "r2", None, "wrong password") in logged
    assert ("role_changed", "r2", "admin", "reader -> admin") in logged
    assert ("deactivated", "r1", None, "") in logged  # from the command line: no acting admin
    assert "role_changed" in log and "reader -&gt; admin" in log
    output = cli_ok("users", "events", "--database", site.url)
    assert "deactivated" in output and "role_changed" in output and "login_failed" in output


def test_users_commands(site) -> None:
    db = ["--database", site.url]
    with served(site) as base:
        reader = logged_in(base, "r1")
        assert "r1" in cli_ok("users", "sessions", *db)
        assert "ended 1 session(s)" in cli_ok("users", "sessions", "r1", "--end", *db)
        assert is_logged_out(reader)
        reader = logged_in(base, "r1")
        cli_ok("users", "passwd", "r1", "--password-stdin", *db, stdin=f"{NEW_PASSWORD}\n")
        assert is_logged_out(reader)
        assert login(browser(base), "r1").status_code == 401
        logged_in(base, "r1", NEW_PASSWORD)
        cli_ok("users", "role", "r2", "admin", *db)
        listing = cli_ok("users", "list", *db)
    rows = {cells[0]: cells[1:] for cells in table_rows(listing)}
    assert rows["r2"] == ["admin", "active", "0"] and rows["r1"] == ["reader", "active", "1"]
    short = runner.invoke(cli, ["users", "passwd", "r1", "--password-stdin", *db], input="short\n")
    assert short.exit_code == 2 and "at least 10" in short.output
    missing = runner.invoke(cli, ["users", "unlock", "nobody", *db])
    assert missing.exit_code == 2 and "no user named 'nobody'" in missing.output
    cli_ok("users", "role", "r2", "reader", *db)
    last = runner.invoke(cli, ["users", "deactivate", "admin", *db])
    assert last.exit_code == 2 and "last active admin" in last.output
