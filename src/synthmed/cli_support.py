"""What every command shares: one-line errors with exit code 2, config objects from YAML plus options, and
the choices several commands offer.

Each stage keeps its commands in its own ``commands`` module; cli.py only assembles them into one app.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from synthmed.config import format_validation_error, read_yaml
from synthmed.errors import SynthmedError

err = Console(stderr=True)
C = TypeVar("C", bound=BaseModel)


class ConditionName(StrEnum):
    """What a 2D ControlNet follows (config.Condition), as a command-line choice."""

    mask = "mask"
    edges = "edges"
    sobel = "sobel"


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


def command_config(model: type[C], path: Path | None, options: Mapping[str, Any]) -> C:
    """The YAML file's fields, overridden by the options given on the command line, validated.

    ``options``: the command's parameters (its ``locals()``). Each named like a field of ``model`` and given
    (not None; a choice as its value) sets that field, so an option maps to its field by name alone.
    """
    values = read_yaml(path) if path else {}
    values |= {k: _plain(v) for k, v in options.items() if k in model.model_fields and v is not None}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SynthmedError(format_validation_error(exc, str(path or "(arguments)"))) from exc


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value
