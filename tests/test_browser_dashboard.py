"""A real browser (Playwright driving Debian's Chromium, headless) against `synthmed serve`'s app with its
in-process worker: the admin configures a generation with the tiny model, watches the live view's previews
of the predicted clean image arrive, and finds the images in the gallery.

With $SYNTHMED_DASHBOARD_SCREENSHOT set to a file name, the job page is saved there while a preview shows
(the README's docs/images/dashboard.png comes from this test)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from system_deps import missing
from web_support import CHROMIUM, CHROMIUM_ARGS, browser_log_in, build_catalogue, fast_hasher, serving

from synthmed.config import ServeConfig
from synthmed.web import auth
from synthmed.web.app import create_app

COUNT = 32  # two batches of 16, so the job lasts long enough for several previews (one a second at most)
STEPS = 500
PREVIEW = re.compile(r"/jobs/\d+/previews/(\d+)\.png$")


@pytest.fixture
def server(tmp_path: Path, kermany: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app with its in-process worker on a free localhost port; the tiny run is on offer."""
    monkeypatch.setattr(auth, "hasher", fast_hasher)
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    build_catalogue(url, kermany, tmp_path, n_real=2, n_synthetic=2, readers=["reader"])
    config = ServeConfig(secure_cookies=False, runs_dir=tiny_run.parent, worker=True)
    with serving(create_app(url, config), stop_timeout=60) as base:  # the worker stops its job first
        yield base


def test_configure_a_generation_watch_its_previews_and_find_the_images(server: str) -> None:
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    base = server
    problems: list[str] = []
    previews: set[int] = set()

    def seen(response) -> None:
        if response.status >= 400:
            problems.append(f"{response.status} {response.url}")
        match = PREVIEW.search(response.url)
        if match and response.status == 200:
            previews.add(int(match.group(1)))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            # Console errors include Content-Security-Policy violations and failed image loads.
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("response", seen)
            browser_log_in(page, base, "admin")
            page.get_by_role("link", name="Dashboard").click()
            page.get_by_role("link", name="Configure").click()
            page.locator('select[name="label"]').select_option("PNEUMONIA")
            page.locator('input[name="count"]').fill(str(COUNT))
            page.locator('input[name="steps"]').fill(str(STEPS))
            page.get_by_role("button", name="Start generation").click()
            expect(page).to_have_url(re.compile(rf"{base}/jobs/\d+$"))

            # The live view: previews swap in while the job runs (live.js counts the loads).
            page.wait_for_function(
                "() => Number(document.getElementById('preview').dataset.loaded || 0) >= 2", timeout=300_000
            )
            expect(page.locator("#step")).to_contain_text(f"of {STEPS}")
            if os.environ.get("SYNTHMED_DASHBOARD_SCREENSHOT"):
                page.screenshot(path=os.environ["SYNTHMED_DASHBOARD_SCREENSHOT"], full_page=False)

            # At the end the page shows the final state and the way to the gallery.
            expect(page.locator("#state")).to_have_text("done", timeout=300_000)
            page.get_by_role("link", name="Gallery of the generated images").click()
            expect(page.get_by_text(f"{COUNT} samples match")).to_be_visible()
            thumbs = page.locator('.gallery img[src$="/thumb.png"]')
            expect(thumbs).to_have_count(24)  # the first page
            expect(page.locator(".gallery figcaption").first).to_contain_text("PNEUMONIA")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.gallery img')].every(i => i.naturalWidth > 0)"
            )
        finally:
            browser.close()
    assert len(previews) >= 2, previews
    assert not problems, problems
