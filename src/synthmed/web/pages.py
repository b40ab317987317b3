"""Server-rendered pages: Jinja2 templates (autoescaped) with the session's CSRF token in every page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from synthmed.web.auth import csrf_token

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
SHA256 = re.compile(r"[0-9a-f]{64}")
SHORT_HASH = 12


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


templates.env.filters |= {"num": _num, "pct": _pct}


def readable(value: Any, names: dict[str, str]) -> Any:
    """A stored setting or manifest value as pages show it: a server path by the name of the data set at
    it (``names``: root -> name), else by its last part; a SHA-256 by its first characters; lists and
    mappings item by item."""
    if isinstance(value, dict):
        return {key: readable(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [readable(item, names) for item in value]
    if isinstance(value, str) and value.startswith("/"):
        return names.get(value.rstrip("/"), Path(value).name)
    if isinstance(value, str) and SHA256.fullmatch(value):
        return value[:SHORT_HASH]
    return value


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"csrf": csrf_token(request), **context}, status_code=status
    )
