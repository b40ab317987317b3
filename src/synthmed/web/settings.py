"""Settings of `synthmed serve` that belong to the web app's security: sessions, trusted browsers and which
reverse proxies may state the client's address; and the uvicorn options that follow from them."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, field_validator

from synthmed.config import ServeConfig


class WebConfig(ServeConfig):
    """`synthmed serve`: ServeConfig plus the session and proxy settings."""

    session_idle_minutes: float = Field(
        30.0, gt=0, description="A login ends after this many minutes without a request."
    )
    trusted_device_days: float = Field(
        30.0,
        gt=0,
        description="A browser that logged in is trusted this long: a lock others' failed guesses put on "
        "the account does not hold it up.",
    )
    forwarded_allow_ips: list[str] = Field(
        default_factory=list,
        description="Addresses or networks of the reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; empty (default): none, the connecting address is the client's.",
    )

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an IP address or network: name your reverse proxy's address "
                    "(e.g. 127.0.0.1 or 10.0.0.0/24); '*' would let any client choose its address"
                ) from None
        return values


def web_config(config: ServeConfig | None) -> WebConfig:
    """``config`` with the web settings (their defaults where a plain ServeConfig is given)."""
    if isinstance(config, WebConfig):
        return config
    return WebConfig.model_validate(config.model_dump() if config is not None else {})


def server_options(config: WebConfig) -> dict[str, Any]:
    """uvicorn's options: forwarded headers are believed only from the named proxies (uvicorn's own default
    believes them from 127.0.0.1, so any local process could claim any address); no Server header."""
    return {
        "proxy_headers": bool(config.forwarded_allow_ips),
        "forwarded_allow_ips": config.forwarded_allow_ips or [],
        "server_header": False,
    }
