"""A real browser (Playwright driving Debian's Chromium, headless) against the app served by uvicorn: two
readers complete a visual Turing test and a rating study with the keyboard alone on a 1280 x 800 screen
(no scrolling, window/level by dragging, zoom), Back never answers an item with another item's answers,
and the admin reads the statistics, which fit a 768 px screen.

With $SYNTHMED_SCREENSHOTS set to a folder, the trial screen is saved there as trial.png (the README's
docs/images/trial.png comes from this test)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from system_deps import missing
from web_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    browser_log_in,
    build_catalogue,
    fast_hasher,
    make_study,
    serving,
)

from synthmed.catalogue.db import make_engine, session_factory
from synthmed.catalogue.models import Answer, Trial
from synthmed.config import ServeConfig
from synthmed.web import auth
from synthmed.web.app import create_app

TURING_ITEMS = 10
RATING_ITEMS = 5
SCREEN = {"width": 1280, "height": 800}


@pytest.fixture
def server(tmp_path: Path, kermany: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """The app on a free localhost port (plain http: insecure cookies, as `synthmed serve` allows there)
    with a Turing study for two readers and a rating study for one."""
    monkeypatch.setattr(auth, "hasher", fast_hasher)
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    readers = ["reader", "reader2"]
    build_catalogue(url, kermany, tmp_path, n_real=5, n_synthetic=5, readers=readers)
    cache = tmp_path / "cache"
    common = {"repeat_fraction": 0, "image_size": 256}
    turing = make_study(url, cache, name="vtt", n_real=5, n_synthetic=5, readers=readers, **common)
    rating = make_study(
        url, cache, name="ratings", kind="rating", n_real=3, n_synthetic=2, readers=["reader"], **common
    )
    engine = make_engine(url)
    with serving(create_app(url, ServeConfig(cache_dir=cache, secure_cookies=False))) as base:
        yield SimpleNamespace(base=base, turing=turing, rating=rating, db=session_factory(engine))
    engine.dispose()


def canvas_mean(page) -> float:
    return page.evaluate(
        """() => {
            const c = document.getElementById("viewer");
            const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let sum = 0;
            for (let i = 0; i < px.length; i += 4) sum += px[i];
            return sum / (px.length / 4);
        }"""
    )


def wait_for_image(page) -> None:
    page.wait_for_function(
        "() => { const c = document.getElementById('viewer'); const ctx = c.getContext('2d');"
        " return ctx.getImageData(0, 0, c.width, c.height).data.some(v => v > 0); }"
    )


def assert_no_scrolling(page) -> None:
    """The whole trial screen, Next included, is inside the window: nothing to scroll."""
    overflow = page.evaluate(
        "() => [document.documentElement.scrollHeight - innerHeight, document.documentElement.scrollWidth"
        " - innerWidth, ...[...document.querySelectorAll('.panel, .panel *')].map(e => e.scrollHeight -"
        " e.clientHeight).filter(d => d > 1).slice(0, 1)]"
    )
    assert max(overflow) <= 0, overflow
    box = page.locator("#next").bounding_box()
    assert box["y"] + box["height"] <= SCREEN["height"], box


def token(page) -> str:
    return page.locator('input[name="token"]').get_attribute("value")


def answer_with_keys(page, keys: list[str]) -> None:
    for key in keys:
        page.keyboard.press(key)
    page.keyboard.press("Enter")


def turing_keys(k: int) -> list[str]:
    return ["s" if k % 2 else "r", str(1 + k % 5), str(1 + (k + 1) % 5), str(1 + (k + 2) % 5)]


def complete_turing(page, base: str, study: int, screenshot: bool = False) -> None:
    page.goto(f"{base}/studies/{study}")
    for k in range(1, TURING_ITEMS + 1):
        page.get_by_text(f"Item {k} of {TURING_ITEMS}").wait_for()
        wait_for_image(page)
        assert_no_scrolling(page)
        if screenshot and k == 3:
            page.keyboard.press("s")
            page.keyboard.press("4")
            page.screenshot(path=Path(os.environ["SYNTHMED_SCREENSHOTS"]) / "trial.png")
            page.reload()
            wait_for_image(page)
        answer_with_keys(page, turing_keys(k))
    page.get_by_text(f"All {TURING_ITEMS} items are answered").wait_for()


def test_readers_answer_with_the_keyboard_alone_and_the_admin_reads_the_statistics(server) -> None:
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    base = server.base
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pages = []
            for name in ("reader", "reader2", "admin"):
                page = browser.new_page(viewport=SCREEN)
                # Console errors include Content-Security-Policy violations and failed image loads.
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on(
                    "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
                )
                browser_log_in(page, base, name)
                pages.append(page)
            reader, reader2, admin = pages

            complete_turing(reader, base, server.turing, screenshot="SYNTHMED_SCREENSHOTS" in os.environ)
            complete_turing(reader2, base, server.turing)

            # The rating study: the viewer's mouse and keys first, then five items by keys alone.
            reader.goto(f"{base}/studies/{server.rating}")
            wait_for_image(reader)
            expect(reader.locator('input[name="choice"]')).to_have_count(0)
            before = canvas_mean(reader)
            box = reader.locator("#viewer").bounding_box()
            reader.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            reader.mouse.down()
            reader.mouse.move(box["x"] + box["width"] / 2 - 120, box["y"] + box["height"] / 2 + 40, steps=4)
            reader.mouse.up()
            assert canvas_mean(reader) != before and reader.locator("#window").input_value() != "255"
            reader.keyboard.press("0")
            assert canvas_mean(reader) == pytest.approx(before)
            reader.keyboard.press("+")
            assert canvas_mean(reader) != pytest.approx(before)  # zoomed in on the middle of the image
            reader.keyboard.press("0")
            for k in range(1, RATING_ITEMS + 1):
                expect(reader.locator("#progress")).to_have_text(f"Item {k} of {RATING_ITEMS}")
                wait_for_image(reader)
                assert_no_scrolling(reader)
                answer_with_keys(reader, [str(1 + k % 5), str(1 + (k + 2) % 5)])
            expect(reader.get_by_text(f"All {RATING_ITEMS} items are answered")).to_be_visible()

            # Two readers: the statistics page reads the study and shows a number for kappa.
            admin.goto(f"{base}/admin/studies/{server.turing}/statistics")
            expect(admin.locator("#verdict")).to_contain_text(
                re.compile(
                    r"Readers told real from synthetic in \d+% of trials \[\d+, \d+\]: .* at p [=<] [\d.]+"
                )
            )
            expect(admin.locator("#inter-reader")).to_contain_text(
                re.compile(r"Cohen's kappa -?\d\.\d{3} on the 10 items every reader answered")
            )
            admin.set_viewport_size({"width": 768, "height": 1000})
            fits = admin.evaluate(
                "() => [...document.querySelectorAll('table')].every(t => t.getBoundingClientRect().right"
                " <= document.documentElement.clientWidth)"
            )
            assert fits and admin.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
            admin.goto(f"{base}/admin/studies/{server.rating}/statistics")
            expect(admin.locator("#accuracy")).to_have_count(0)  # a rating study has no Turing table
            expect(admin.locator("#likert")).to_contain_text("realism")
        finally:
            browser.close()
    assert not problems, problems
    with server.db() as session:
        answered = session.scalars(select(Answer).join(Trial).where(Trial.study_id == server.turing)).all()
    assert len(answered) == 2 * TURING_ITEMS and all(a.response_ms > 0 for a in answered)


def test_back_then_next_never_answers_with_another_items_answers(server) -> None:
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    base = server.base
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=SCREEN)
            browser_log_in(page, base, "reader")
            page.goto(f"{base}/studies/{server.turing}")
            wait_for_image(page)
            first = token(page)
            answer_with_keys(page, ["s", "5", "5", "5"])
            expect(page.locator("#progress")).to_have_text(f"Item 2 of {TURING_ITEMS}")
            second = token(page)
            page.go_back()  # the history entry of item 1: the server shows item 2 again, empty
            expect(page.locator("#progress")).to_have_text(f"Item 2 of {TURING_ITEMS}")
            wait_for_image(page)
            assert token(page) == second
            expect(page.locator("input:checked")).to_have_count(0)
            page.keyboard.press("Enter")  # nothing answered: Next does not go
            expect(page.locator("#missing")).to_contain_text("Is this image real or synthetic?")
            expect(page.locator("#progress")).to_have_text(f"Item 2 of {TURING_ITEMS}")
            answer_with_keys(page, ["r", "2", "3", "4"])
            expect(page.locator("#progress")).to_have_text(f"Item 3 of {TURING_ITEMS}")
        finally:
            browser.close()
    with server.db() as session:
        answers = {
            t.token: (a.choice, a.confidence, a.realism, a.anatomy)
            for t, a in session.execute(select(Trial, Answer).join(Answer, Answer.trial_id == Trial.id))
        }
    assert answers == {first: ("synthetic", 5, 5, 5), second: ("real", 2, 3, 4)}
