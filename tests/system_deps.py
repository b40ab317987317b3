"""System programs some tests need (a PostgreSQL server, Chromium). A missing one fails the test, except
where `make test` runs without root (it sets SYNTHMED_SKIP_MISSING_SYSTEM_DEPS=1): there the test is
skipped, saying what is missing and how to install it."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

SKIP_ENV = "SYNTHMED_SKIP_MISSING_SYSTEM_DEPS"


def missing(problem: str) -> NoReturn:
    """Fail with ``problem`` (what is missing and how to install it), or skip when running without root."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{problem} (skipped: `make test` ran without root, so it could not install it)")
    pytest.fail(problem)
