"""A real browser (Playwright driving Debian's Chromium, headless) on the review gallery: decisions change a
sample in place without a reload (the scroll position stays), a reject needs a reason and a confirmation,
the last decision is undone, keys decide, a batch decides the selected samples, and a sample opens at full
size with window/level.

With $SYNTHMED_SCREENSHOTS set to a folder, the gallery is saved there as review.png (the README's
docs/images/review.png comes from this test)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from system_deps import missing
from web_support import CHROMIUM, CHROMIUM_ARGS, browser_log_in, build_catalogue, fast_hasher, serving

from synthmed.catalogue.db import make_engine, session_factory
from synthmed.catalogue.models import RegenerationRequest, Sample
from synthmed.config import ServeConfig
from synthmed.web import auth
from synthmed.web.app import create_app

SAMPLES = 30


@pytest.fixture
def server(tmp_path: Path, kermany: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    monkeypatch.setattr(auth, "hasher", fast_hasher)
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    build_catalogue(url, kermany, tmp_path, n_real=2, n_synthetic=SAMPLES, readers=["reader"])
    engine = make_engine(url)
    factory = session_factory(engine)
    with factory() as session:
        ids = list(session.scalars(select(Sample.id).where(Sample.seed.is_not(None)).order_by(Sample.id)))
    with serving(create_app(url, ServeConfig(cache_dir=tmp_path / "cache", secure_cookies=False))) as base:
        yield SimpleNamespace(base=base, db=factory, ids=ids)
    engine.dispose()


def states(server) -> dict[int, str]:
    with server.db() as session:
        return {
            s.id: s.review_state for s in session.scalars(select(Sample).where(Sample.id.in_(server.ids)))
        }


def test_review_gallery_decides_in_place_with_undo_keys_batches_and_a_full_size_viewer(server) -> None:
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    ids = server.ids
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            browser_log_in(page, server.base, "admin")
            page.goto(f"{server.base}/admin/review")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.gallery img')].slice(0, 8)"
                ".every(i => i.naturalWidth > 0)"
            )
            if "SYNTHMED_SCREENSHOTS" in os.environ:  # a decision made, its Undo, a reason being written
                page.locator(f"#sample-{ids[0]}").get_by_role("button", name="Approve").click()
                expect(page.locator(f"#sample-{ids[0]}")).to_have_class("state-approved")
                page.locator(f"#sample-{ids[1]} input[name='reason']").fill("ribs fade into the heart")
                page.screenshot(path=Path(os.environ["SYNTHMED_SCREENSHOTS"]) / "review.png")
                page.locator(f"#sample-{ids[1]} input[name='reason']").fill("")
                page.locator("#undo").click()
                expect(page.locator(f"#sample-{ids[0]}")).to_have_class("state-pending")
            page.evaluate("() => { window.notReloaded = true; }")
            expect(page.locator(f"#sample-{ids[0]} figcaption")).to_contain_text(
                "kermany-syn"
            )  # "all" names sets

            # Approve far down the page: the sample changes in place, nothing reloads, the scroll stays.
            target = page.locator(f"#sample-{ids[12]}")
            target.scroll_into_view_if_needed()
            scrolled = page.evaluate("() => scrollY")
            assert scrolled > 500
            target.get_by_role("button", name="Approve").click()
            expect(target).to_have_class("state-approved")
            assert page.evaluate("() => [scrollY, window.notReloaded]") == [scrolled, True]

            # A reject without a reason: an inline error, nothing sent; with one: a confirmation first.
            other = page.locator(f"#sample-{ids[13]}")
            other.get_by_role("button", name="Reject").click()
            expect(other.locator(".field-error")).to_contain_text("Say why")
            assert states(server)[ids[13]] == "pending"
            other.locator("input[name='reason']").fill("blurred lung fields")
            other.get_by_role("button", name="Reject").click()
            expect(other.get_by_role("button", name="Confirm reject")).to_be_focused()
            assert states(server)[ids[13]] == "pending"
            page.keyboard.press("Enter")
            expect(other).to_have_class("state-rejected")
            expect(other.locator(".decision")).to_have_text("rejected: blurred lung fields")
            assert page.evaluate("() => [scrollY, window.notReloaded]") == [scrolled, True]

            # Undo (the U key) takes the reject back, with its regeneration request.
            page.keyboard.press("u")
            expect(other).to_have_class("state-pending")
            assert states(server)[ids[13]] == "pending"
            with server.db() as session:
                assert session.scalars(select(RegenerationRequest)).all() == []

            # Keys: J moves to the next sample, A approves it; Space selects for a batch.
            other.focus()
            page.keyboard.press("j")
            expect(page.locator(f"#sample-{ids[14]}")).to_be_focused()
            page.keyboard.press("a")
            expect(page.locator(f"#sample-{ids[14]}")).to_have_class("state-approved")
            page.keyboard.press("j")
            page.keyboard.press(" ")
            page.keyboard.press("j")
            page.keyboard.press(" ")
            expect(page.locator("#selected-count")).to_have_text("2")
            page.locator("#batch").get_by_role("button", name="Approve selected").click()
            expect(page.locator(f"#sample-{ids[16]}")).to_have_class("state-approved")
            assert page.evaluate("() => window.notReloaded") is True
            found = states(server)
            assert [found[i] for i in ids[12:17]] == [
                "approved",
                "pending",
                "approved",
                "approved",
                "approved",
            ]

            # Full size with window/level: V opens the focused sample at its native 64 px.
            page.locator(f"#sample-{ids[20]}").focus()
            page.keyboard.press("v")
            dialog = page.locator("#full-view")
            expect(dialog).to_be_visible()
            assert page.evaluate("() => document.getElementById('full-canvas').width") == 64
            mean = (
                "() => { const c = document.getElementById('full-canvas'); const d = c.getContext('2d')"
                ".getImageData(0, 0, c.width, c.height).data; let s = 0;"
                " for (let i = 0; i < d.length; i += 4) s += d[i]; return s / (d.length / 4); }"
            )
            before = page.evaluate(mean)
            box = page.locator("#full-canvas").bounding_box()
            page.mouse.move(box["x"] + 100, box["y"] + 100)
            page.mouse.down()
            page.mouse.move(box["x"] + 20, box["y"] + 160, steps=4)
            page.mouse.up()
            assert page.evaluate(mean) != before
            page.keyboard.press("Escape")
            expect(dialog).to_be_hidden()
        finally:
            browser.close()
    assert not problems, problems
