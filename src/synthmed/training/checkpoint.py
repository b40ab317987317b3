"""Atomic checkpoint files: a run killed mid-save keeps its previous checkpoint intact."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmed.errors import SynthmedError


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise SynthmedError("checkpoint not found; train this stage first (synthmed train ...)", path=path)
    try:
        # weights_only keeps a hostile checkpoint from running code; our files hold tensors and plain data.
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise SynthmedError(f"unreadable checkpoint ({type(exc).__name__}: {exc})", path=path) from exc


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # Plain tensors and numbers only, so the checkpoint loads with torch.load(weights_only=True).
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
