"""Finished runs of `synthmed benchmark-augmentation`, kept on disk so that a stopped benchmark (hours: arms x
seeds x real fractions) resumes where it stopped. This module owns the folder ``<out>/runs/<fingerprint>/``:
one ``.npz`` per (arm, seed) with its test scores on the shared bootstrap resamples, its validation metric and
its run information, and one ``.json`` per (real fraction, seed) selection record.

The fingerprint covers every setting a single run depends on and the bytes of the loaded images, labels and
targets, so a changed setting or data set never reuses a stale run; the lists that only say which runs to do
(arms, ratios, weights, fractions, seeds) are left out of it, so adding a seed or an arm reuses the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.config import AugmentationConfig
from synthmed.downstream.arms import Arm
from synthmed.downstream.data import Labelled, Sets
from synthmed.downstream.metrics import Scores

#: AugmentationConfig fields that choose which runs happen, not what one run computes.
PLAN_FIELDS = {"out", "resume", "cache_dir", "arms", "ratios", "synthetic_weights", "real_fractions", "seeds"}


def fingerprint(cfg: AugmentationConfig, sets: Sets) -> str:
    h = hashlib.sha256(json.dumps(cfg.model_dump(mode="json", exclude=PLAN_FIELDS), sort_keys=True).encode())
    h.update(json.dumps(sets.class_names).encode())
    for part in (sets.train, sets.val, sets.test, sets.synthetic):
        _update(h, part)
    return h.hexdigest()[:16]


def _update(h: Any, part: Labelled) -> None:
    for t in (part.images, part.labels, part.targets):
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.contiguous().numpy().tobytes())


class RunStore:
    """Finished (arm, seed) runs and selection records of one benchmark configuration."""

    def __init__(self, cfg: AugmentationConfig, sets: Sets) -> None:
        self.root = Path(cfg.out) / "runs" / fingerprint(cfg, sets)
        self.enabled = cfg.resume

    def _path(self, arm: Arm, seed: int) -> Path:
        return self.root / f"{arm.label.replace(' ', '_')}_f{arm.fraction}_s{seed}.npz"

    def load(self, arm: Arm, seed: int) -> tuple[Scores, float, dict[str, Any]] | None:
        path = self._path(arm, seed)
        if not (self.enabled and path.is_file()):
            return None
        with np.load(path) as f:
            scores = Scores(json.loads(str(f["names"])), f["point"], f["boots"])
            return scores, float(f["val"]), json.loads(str(f["info"]))

    def save(self, arm: Arm, seed: int, scores: Scores, val: float, info: dict[str, Any]) -> None:
        path = self._path(arm, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")  # written whole, then renamed: a kill never leaves half a run
        np.savez(
            tmp,
            names=json.dumps(scores.names),
            point=scores.point,
            boots=scores.boots,
            val=val,
            info=json.dumps(info),
        )
        os.replace(tmp, path)

    def save_selection(self, fraction: float, seed: int, record: dict[str, Any]) -> None:
        path = self.root / f"selection_f{fraction}_s{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(record))
        os.replace(path.with_suffix(".tmp"), path)

    def selections(self, keys: list[tuple[float, int]]) -> list[dict[str, Any]]:
        """The stored selection records of ``keys`` (real fraction, seed), in that order."""
        out = []
        for fraction, seed in keys:
            path = self.root / f"selection_f{fraction}_s{seed}.json"
            if path.is_file():
                out.append({"real_fraction": fraction, "seed": seed} | json.loads(path.read_text()))
        return out
