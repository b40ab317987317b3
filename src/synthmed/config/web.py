"""Settings of the review web app (``synthmed serve``) and its logins (``synthmed users``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator

from synthmed.config.base import Strict

USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class UserConfig(Strict):
    """`synthmed users add`: a login of the review web app (the password never goes through a config)."""

    username: str = Field(pattern=USERNAME_PATTERN, description="Letters, digits and _ . @ - (1-64).")
    role: Literal["admin", "reader"] = Field("reader", description="admin: studies, review; reader: studies.")
    database: str | None = Field(None, description="Catalogue URL (default: $SYNTHMED_DATABASE_URL).")


class ServeConfig(Strict):
    """`synthmed serve`: the review web app."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    database: str | None = Field(None, description="Catalogue URL (default: $SYNTHMED_DATABASE_URL).")
    secure_cookies: bool = Field(
        True, description="Session cookie only over HTTPS; off only for plain http on a loopback host."
    )
    cache_dir: Path | None = Field(
        None, description="Blinded study images (default: beside a SQLite file, else ./synthmed-review-cache)"
    )
    max_failed_logins: int = Field(5, ge=1, description="Failed logins before a user name is locked.")
    max_failed_per_address: int = Field(
        20, ge=1, description="Failed logins before a client address is locked."
    )
    lockout_minutes: float = Field(15.0, gt=0, description="How long a lock lasts.")
    session_hours: float = Field(8.0, gt=0, description="A login expires after this many hours.")
    worker: bool = Field(True, description="Run queued jobs in the server process (off: synthmed worker).")
    jobs_dir: Path | None = Field(
        None, description="Job previews (default: beside a SQLite file, else ./synthmed-jobs)."
    )
    outputs_dir: Path | None = Field(
        None, description="Generation jobs' outputs (default: beside a SQLite file, else ./synthmed-outputs)."
    )
    runs_dir: Path | None = Field(None, description="Trained runs offered besides the catalogue's models.")

    @model_validator(mode="after")
    def _cookies_need_tls(self) -> Self:
        if not self.secure_cookies and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"insecure cookies are only allowed on a loopback host ({', '.join(LOOPBACK_HOSTS)}), not "
                f"{self.host!r}: serve behind HTTPS instead"
            )
        return self
