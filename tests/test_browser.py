"""A real browser (Playwright driving Debian's Chromium, headless) against the app served by uvicorn: a
reader logs in and completes a short visual Turing test, then the admin reads the statistics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
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

from synthmed.config import ServeConfig
from synthmed.web import auth
from synthmed.web.app import create_app

ITEMS = 6


@pytest.fixture
def server(tmp_path: Path, kermany: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    """The app on a free localhost port (plain http: insecure cookies, as `synthmed serve` allows there)."""
    monkeypatch.setattr(auth, "hasher", fast_hasher)
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    build_catalogue(url, kermany, tmp_path, n_real=3, n_synthetic=3, readers=["reader"])
    study = make_study(
        url, tmp_path / "cache", n_real=3, n_synthetic=3, readers=["reader"], repeat_fraction=0
    )
    config = ServeConfig(cache_dir=tmp_path / "cache", secure_cookies=False)
    with serving(create_app(url, config)) as base:
        yield base, study


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


def test_reader_completes_a_turing_test_and_the_admin_sees_the_statistics(server) -> None:
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    base, study = server
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            reader = browser.new_page()
            # Console errors include Content-Security-Policy violations and failed image loads.
            reader.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            reader.on("pageerror", lambda e: problems.append(str(e)))
            reader.on(
                "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
            )
            browser_log_in(reader, base, "reader")
            expect(reader).to_have_url(f"{base}/studies")
            reader.get_by_role("link", name="Start").click()
            for k in range(1, ITEMS + 1):
                expect(reader.locator("#progress")).to_have_text(f"Item {k} of {ITEMS}")
                reader.wait_for_function("() => document.getElementById('viewer').dataset.slices === '1'")
                reader.wait_for_function(
                    "() => { const c = document.getElementById('viewer'); const ctx = c.getContext('2d');"
                    " return ctx.getImageData(0, 0, c.width, c.height).data.some(v => v > 0); }"
                )
                if k == 1:  # window/level acts on the drawn pixels
                    before = canvas_mean(reader)
                    reader.locator("#window").fill("60")
                    assert canvas_mean(reader) != before
                reader.get_by_label("Synthetic" if k % 2 else "Real", exact=True).check()
                for name in ("confidence", "realism", "anatomy"):
                    reader.locator(f'input[name="{name}"][value="{1 + k % 5}"]').check()
                reader.get_by_role("button", name="Next").click()
            expect(reader.get_by_text(f"All {ITEMS} items are answered")).to_be_visible()

            admin = browser.new_page()
            browser_log_in(admin, base, "admin")
            expect(admin).to_have_url(f"{base}/admin")
            admin.goto(f"{base}/admin/studies/{study}/statistics")
            table = admin.locator("#accuracy")
            expect(table).to_contain_text("reader")
            expect(table.locator("tr.pooled")).to_contain_text(re.compile(r"\d+\.\d%.*/6"))
            expect(admin.locator("#likert")).to_contain_text("realism")
        finally:
            browser.close()
    assert not problems, problems
