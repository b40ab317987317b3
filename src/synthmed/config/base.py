"""What every settings model shares: unknown keys refused, YAML read and written, errors worded for users."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from synthmed.artifacts.files import atomic_write
from synthmed.errors import SynthmedError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"field '{loc}': {e['msg']}")
    return f"invalid config {source}: " + "; ".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise SynthmedError("config file not found", path=path) from exc
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise SynthmedError(f"not a readable YAML file ({exc})", path=path) from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SynthmedError("the YAML top level must be a mapping of fields", path=path)
    return raw


def save_yaml(model: BaseModel, path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False))
