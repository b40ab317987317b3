"""Security of the review web app: roles, other readers' trials, the answer key, CSRF, cookies, lockout,
password hashes, headers and hostile requests."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from web_support import PASSWORD, build_catalogue, csrf_of, fast_hasher, login, make_client, make_study

from synthmed.catalogue.db import make_engine, session_factory, transaction
from synthmed.catalogue.models import Sample, User, utcnow
from synthmed.config import ServeConfig, UserConfig
from synthmed.errors import SynthmedError
from synthmed.web import auth
from synthmed.web.app import create_app
from synthmed.web.auth import hasher as production_hasher  # before the tests patch in a cheap one
from synthmed.web.users import add_user, find_user, set_password

TOKEN = re.compile(r'name="token" value="([^"]+)"')


@pytest.fixture(autouse=True)
def _fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "hasher", fast_hasher)


@pytest.fixture
def site(tmp_path: Path, kermany: Path):
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    build_catalogue(url, kermany, tmp_path, n_real=3, n_synthetic=3, readers=["r1", "r2"])
    cache = tmp_path / "cache"
    one = make_study(url, cache, name="one", readers=["r1"], n_real=3, n_synthetic=3)
    two = make_study(url, cache, name="two", readers=["r2"], n_real=3, n_synthetic=3)
    config = ServeConfig(cache_dir=cache, max_failed_logins=3, max_failed_per_address=8)
    engine = make_engine(url)
    yield SimpleNamespace(app=create_app(url, config), url=url, one=one, two=two, db=session_factory(engine))
    engine.dispose()


def trial_token(client, study_id: int) -> str:
    page = client.get(f"/studies/{study_id}")
    assert page.status_code == 200, page.text
    return TOKEN.search(page.text).group(1)


def admin_urls(site) -> list[str]:
    with site.db() as session:
        sample = session.scalar(select(Sample.id))
    return [
        "/admin",
        "/admin/studies/new",
        f"/admin/studies/{site.one}",
        f"/admin/studies/{site.one}/statistics",
        f"/admin/studies/{site.one}/statistics.csv",
        f"/admin/studies/{site.one}/answers.csv",
        "/admin/review",
        f"/admin/samples/{sample}/preview.png",
    ]


def test_anonymous_requests_go_to_the_login_page(site) -> None:
    client = make_client(site.app)
    for url in ["/", "/studies", f"/studies/{site.one}", "/images/abc/0", *admin_urls(site)]:
        response = client.get(url)
        assert response.status_code == 303 and response.headers["location"] == "/login", url


def test_readers_cannot_reach_admin_pages_statistics_or_exports(site) -> None:
    reader = make_client(site.app, "r1")
    for url in admin_urls(site):
        response = reader.get(url)
        assert response.status_code == 403, url
        assert "accuracy" not in response.text.lower()
    token = csrf_of(reader.get("/studies").text)
    assert reader.post("/admin/studies/new", data={"csrf_token": token, "name": "x"}).status_code == 403
    assert (
        reader.post("/admin/review/1", data={"csrf_token": token, "decision": "approve"}).status_code == 403
    )
    admin = make_client(site.app, "admin")
    assert admin.get("/studies").status_code == 403  # and admins take no blinded study


def test_readers_see_only_their_own_trials(site) -> None:
    r1, r2 = make_client(site.app, "r1"), make_client(site.app, "r2")
    token = trial_token(r1, site.one)
    assert r1.get(f"/images/{token}/0").status_code == 200
    assert r2.get(f"/images/{token}/0").status_code == 404
    assert r2.get(f"/studies/{site.one}").status_code == 404  # not assigned
    assert r1.get(f"/studies/{site.two}").status_code == 404
    own = trial_token(r2, site.two)
    form = {"csrf_token": csrf_of(r2.get("/studies").text), "choice": "real", "confidence": "3"}
    form |= {"realism": "3", "anatomy": "3"}
    assert r2.post(f"/studies/{site.one}/answer", data=form | {"token": token}).status_code == 404
    assert r2.post(f"/studies/{site.two}/answer", data=form | {"token": token}).status_code == 404
    assert r2.post(f"/studies/{site.two}/answer", data=form | {"token": own}).status_code == 303
    assert r1.get(f"/images/{own}/0").status_code == 404


def test_reader_pages_name_no_file_label_or_data_set(site) -> None:
    reader = make_client(site.app, "r1")
    pages = [reader.get("/studies").text, reader.get(f"/studies/{site.one}").text]
    with site.db() as session:
        secrets_ = {s.path for s in session.scalars(select(Sample))} | {
            "kermany",
            "syn_",
            "NORMAL",
            "PNEUMONIA",
        }
    for page in pages:
        for secret in secrets_:
            assert secret not in page


def test_posts_need_the_sessions_csrf_token(site) -> None:
    client = make_client(site.app)
    client.get("/login")
    form = {"username": "r1", "password": PASSWORD}
    assert client.post("/login", data=form).status_code == 403
    assert client.post("/login", data=form | {"csrf_token": "x" * 43}).status_code == 403
    other = make_client(site.app)
    foreign = csrf_of(other.get("/login").text)  # valid, but another browser's
    assert client.post("/login", data=form | {"csrf_token": foreign}).status_code == 403
    reader = make_client(site.app, "r1")
    token = trial_token(reader, site.one)
    answer = {"token": token, "choice": "real", "confidence": "3", "realism": "3", "anatomy": "3"}
    assert reader.post(f"/studies/{site.one}/answer", data=answer).status_code == 403
    assert reader.post("/logout", data={"next": "/"}).status_code == 403
    assert reader.get("/studies").status_code == 200  # still logged in


def test_session_cookie_flags(site, tmp_path: Path) -> None:
    response = login(make_client(site.app), "r1")
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    local = create_app(site.url, ServeConfig(cache_dir=tmp_path / "c", secure_cookies=False))
    assert "secure" not in login(make_client(local), "r1").headers["set-cookie"].lower()
    with pytest.raises(ValidationError, match="loopback"):
        ServeConfig(host="0.0.0.0", secure_cookies=False)


def test_lockout_after_repeated_failures(site) -> None:
    client = make_client(site.app)
    for _ in range(3):
        assert login(client, "r1", "wrong password!").status_code == 401
    locked = login(client, "r1")
    assert locked.status_code == 401 and "too many failed attempts" in locked.text
    with transaction(site.db) as session:
        user = session.scalar(select(User).where(User.username == "r1"))
        assert user.locked_until is not None
        user.locked_until = utcnow() - timedelta(seconds=1)  # the lock has run out
    assert login(client, "r1").status_code == 303
    with site.db() as session:
        user = session.scalar(select(User).where(User.username == "r1"))
        assert user.failed_logins == 0 and user.locked_until is None


def test_lockout_per_client_address(site) -> None:
    client = make_client(site.app)
    for i in range(8):  # unknown names: no user is locked, the address is
        assert login(client, f"nobody{i}", "wrong password!").status_code == 401
    assert login(client, "r2").status_code == 429


def test_passwords_are_stored_as_argon2id_hashes(site) -> None:
    from argon2 import Type

    assert production_hasher().type == Type.ID
    with transaction(site.db) as session:
        user = add_user(session, UserConfig(username="new", role="reader"), "a long passphrase")
        assert user.password_hash.startswith("$argon2id$")
        assert "a long passphrase" not in user.password_hash
        with pytest.raises(SynthmedError, match="at least 10"):
            add_user(session, UserConfig(username="short", role="reader"), "short")
        with pytest.raises(SynthmedError, match="exists already"):
            add_user(session, UserConfig(username="new", role="reader"), "a long passphrase")


def test_a_password_change_ends_existing_logins(site) -> None:
    reader = make_client(site.app, "r1")
    assert reader.get("/studies").status_code == 200
    with transaction(site.db) as session:
        set_password(session, find_user(session, "r1"), "another passphrase")
    assert reader.get("/studies").status_code == 303
    assert login(make_client(site.app), "r1").status_code == 401
    assert login(make_client(site.app), "r1", "another passphrase").status_code == 303


def test_logout_ends_the_session(site) -> None:
    reader = make_client(site.app, "r1")
    assert (
        reader.post("/logout", data={"csrf_token": csrf_of(reader.get("/studies").text)}).status_code == 303
    )
    assert reader.get("/studies").status_code == 303


def test_security_headers(site) -> None:
    reader = make_client(site.app, "r1")
    token = trial_token(reader, site.one)
    for response in (
        reader.get(f"/studies/{site.one}"),
        reader.get(f"/images/{token}/0"),
        reader.get("/login"),
    ):
        headers = response.headers
        assert headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["cache-control"] == "no-store"
        assert headers["x-content-type-options"] == "nosniff"
        assert "server" not in headers


def test_hostile_requests_are_refused(site) -> None:
    reader = make_client(site.app, "r1")
    token = csrf_of(reader.get("/studies").text)
    big = {"csrf_token": token, "token": "x" * 70_000}
    assert reader.post(f"/studies/{site.one}/answer", data=big).status_code == 413
    upload = reader.post(
        f"/studies/{site.one}/answer", data={"csrf_token": token}, files={"f": ("x.png", b"\x89PNG")}
    )
    assert upload.status_code == 415
    assert reader.get("/images/" + "a" * 65 + "/0").status_code in (400, 404)
    assert reader.get("/images/abc/99999").status_code == 400
    assert reader.get("/images/abc/-1").status_code == 400
    assert reader.get("/images/..%2f..%2fetc%2fpasswd/0").status_code == 404
    answer = {"csrf_token": token, "token": trial_token(reader, site.one), "choice": "real"}
    bad = reader.post(f"/studies/{site.one}/answer", data=answer | {"confidence": "9; DROP TABLE"})
    assert bad.status_code == 400 and "confidence" in bad.text
