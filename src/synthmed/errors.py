"""The one exception type users see for bad input, with the file or field, the problem and the fix."""

from __future__ import annotations

from pathlib import Path


class SynthmedError(Exception):
    """Bad input or an unusable run: the message names the file or config field, the problem and the fix.

    The CLI prints it as one line and exits with code 2; every reader wraps third-party errors in it so
    nothing else escapes on bad files.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.field = field
        prefix = ""
        if self.path is not None:
            prefix = f"{self.path}: "
        elif field is not None:
            prefix = f"{field}: "
        super().__init__(prefix + message)
