"""Checkpoint files (torch, weights only): saved atomically, so a run killed mid-save keeps its previous
checkpoint intact, and read back without ever running code from the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from synthmed.artifacts.files import atomic_write
from synthmed.errors import SynthmedError


def atomic_save(obj: Any, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise SynthmedError("checkpoint not found; train this stage first (synthmed train ...)", path=path)
    try:
        # weights_only keeps a hostile checkpoint from running code; our files hold tensors and plain data.
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise SynthmedError(f"unreadable checkpoint ({type(exc).__name__}: {exc})", path=path) from exc


def load_exported(
    model: torch.nn.Module, path: Path, which: str = "ema", state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Load the ``ema`` or ``raw`` weights of a stage's exported ``model.pt`` (or of its already-read
    ``state``) into ``model``; returns the whole file."""
    state = load(path) if state is None else state
    try:
        model.load_state_dict(state[which])
    except (KeyError, RuntimeError) as exc:
        raise SynthmedError(f"weights do not match the run's config.yaml ({exc})", path=path) from exc
    return state
