"""What every command shares: one-line errors with exit code 2, and config objects from YAML plus options.

Kept apart from cli.py so the stage packages' own command modules (catalogue, web) can use it while cli.py
imports them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from synthmed.config import format_validation_error, read_yaml
from synthmed.errors import SynthmedError

err = Console(stderr=True)
C = TypeVar("C", bound=BaseModel)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a SynthmedError as one line and exit with code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SynthmedError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted; the last checkpoint is kept: continue with --resume")
            raise typer.Exit(130) from None

    return wrapper


def command_config(model: type[C], path: Path | None, given: dict[str, Any]) -> C:
    """The YAML file's fields, overridden by the options given on the command line, validated."""
    values = read_yaml(path) if path else {}
    values |= {k: v for k, v in given.items() if v is not None}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SynthmedError(format_validation_error(exc, str(path or "(arguments)"))) from exc
