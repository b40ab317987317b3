"""Statistics of the protocol: paired bootstrap pooled over seeds, arm choice on validation, Holm correction.

- **Paired, pooled over seeds.** Every run is scored on the same bootstrap resamples of the test images. A
  pooled figure is the mean over seeds; its resample b draws the seeds with replacement (one draw per b,
  shared by every arm) and takes resample b of the test images, so the interval holds both seed-to-seed
  and test-set variation, and a difference of two arms is paired on seeds and test images.
- **Choice on validation.** At each real fraction the strongest control (real-only included) and the best
  synthetic arm are those with the highest mean primary metric on the real validation split over seeds,
  chosen before any test figure is looked at (first in plan order on ties).
- **Multiplicity.** Two-sided bootstrap p-values of the primary metric's differences, Holm-corrected
  (statsmodels ``multipletests``) over every synthetic arm, one family per reference (real-only, strongest
  control). Beside the raw 95% interval each difference has a simultaneous one at level 1 - alpha / m
  (Bonferroni over the m arms of the family); the headline reports that corrected interval. The smallest
  p-value B resamples can give is 2 / (B + 1), so Holm can reject only if B + 1 >= 2 m / alpha: a run
  with fewer resamples gets a warning (its corrected intervals are then not resolved either).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from statsmodels.stats.multitest import multipletests

from synthmed.downstream.arms import Arm
from synthmed.downstream.metrics import Scores

REFERENCES = ("vs_real", "vs_best_control")


def seed_draws(n_seeds: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_seeds) seed indices drawn with replacement, shared by every arm (paired)."""
    return np.random.default_rng(seed + 1).integers(0, n_seeds, size=(resamples, n_seeds))


def pooled(runs: Sequence[Scores], draws: np.ndarray, minus: Sequence[Scores] | None = None) -> Scores:
    """Mean over seeds of ``runs`` (minus ``minus``, seed by seed), resampling seeds and test images."""
    point = np.mean([r.point for r in runs], 0)
    boots = np.stack([r.boots for r in runs])  # (S, B, M)
    if minus is not None:
        point = point - np.mean([r.point for r in minus], 0)
        boots = boots - np.stack([r.boots for r in minus])
    b = np.arange(boots.shape[1])[:, None]
    return Scores(runs[0].names, point, boots[draws, b].mean(1))


def p_value(draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference being 0."""
    d = draws[~np.isnan(draws)]
    if not len(d):
        return 1.0
    one_sided = min((np.sum(d <= 0) + 1) / (len(d) + 1), (np.sum(d >= 0) + 1) / (len(d) + 1))
    return float(min(1.0, 2 * one_sided))


def choose(arms: Sequence[Arm], val: dict[Arm, float], fractions: Sequence[float]) -> dict[float, dict]:
    """Per real fraction: the strongest control and the best synthetic arm, by mean validation score."""
    top = max(fractions)
    out: dict[float, dict] = {}
    for f in fractions:
        here = [a for a in arms if a.fraction == f or (a.fraction is None and f == top)]
        controls = [a for a in here if a.kind in ("baseline", "control")]
        synthetic = [a for a in here if a.kind == "synthetic"]
        out[f] = {
            "best_control": max(controls, key=lambda a: val[a]) if controls else None,
            "best_arm": max(synthetic, key=lambda a: val[a]) if synthetic else None,
        }
    return out


def correct(tests: list[dict[str, Any]], alpha: float) -> None:
    """Holm-adjusted p-values (``p_holm``, ``reject``) written into ``tests`` (one family)."""
    if not tests:
        return
    reject, adjusted, _, _ = multipletests([t["p"] for t in tests], alpha=alpha, method="holm")
    for t, r, p in zip(tests, reject, adjusted, strict=True):
        t.update(p_holm=float(p), reject=bool(r), family_size=len(tests))


def resolution_warning(tests: dict[str, list[dict[str, Any]]], resamples: int, alpha: float) -> list[str]:
    """Families too large for the bootstrap's p-value resolution."""
    out = []
    for key, family in tests.items():
        need = math.ceil(2 * len(family) / alpha) - 1
        if family and resamples < need:
            out.append(
                f"{key}: {resamples} bootstrap resamples cannot resolve Holm-corrected p-values over "
                f"{len(family)} arms (the smallest p is 2/(B+1)); use bootstrap >= {need}"
            )
    return out


def adjusted_interval(draws: np.ndarray, alpha: float, m: int) -> list[float] | None:
    """Percentile interval at simultaneous level 1 - alpha over m comparisons (Bonferroni)."""
    d = draws[~np.isnan(draws)]
    if not len(d):
        return None
    q = 100 * alpha / (2 * m)
    return [float(np.percentile(d, q)), float(np.percentile(d, 100 - q))]


def compare(
    arms: Sequence[Arm],
    scores: dict[tuple[Arm, int], Scores],
    val: dict[tuple[Arm, int], float],
    seeds: Sequence[int],
    primary: str,
    alpha: float,
    draws: np.ndarray,
) -> tuple[list[dict[str, Any]], dict[float, dict], list[str]]:
    """Pooled rows (metrics, differences vs real-only and vs the strongest control, tests), the choice and
    warnings."""
    mean_val = {a: float(np.mean([val[a, s] for s in seeds])) for a in arms}
    fractions = sorted({a.fraction for a in arms if a.fraction is not None})
    chosen = choose(arms, mean_val, fractions)
    col = None
    rows: list[dict[str, Any]] = []
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for arm in arms:
        runs = [scores[arm, s] for s in seeds]
        col = col if col is not None else runs[0].names.index(primary)
        row: dict[str, Any] = _row(arm) | {
            "seeds": list(seeds),
            "metrics": pooled(runs, draws).summary(),
            "val": {"metric": primary, "mean": mean_val[arm], "per_seed": [val[arm, s] for s in seeds]},
            "vs_real": None,
            "vs_best_control": None,
            "tests": {},
        }
        f = arm.fraction if arm.fraction is not None else max(fractions, default=1.0)
        refs = {"vs_real": Arm("real", None, f), "vs_best_control": chosen.get(f, {}).get("best_control")}
        for key, ref in refs.items():
            if ref is None or ref == arm or (ref, seeds[0]) not in scores:
                continue
            diff = pooled(runs, draws, [scores[ref, s] for s in seeds])
            row[key] = diff.summary() | {"reference": ref.label}
            if arm.kind == "synthetic":
                test = {"p": p_value(diff.boots[:, col]), "draws": diff.boots[:, col]}
                row["tests"][key] = test
                families[key].append(test)
        rows.append(row)
    for tests in families.values():
        correct(tests, alpha)
        for t in tests:
            t["ci95_adjusted"] = adjusted_interval(t.pop("draws"), alpha, len(tests))
    return rows, chosen, resolution_warning(families, draws.shape[0], alpha)


def headline(rows: list[dict[str, Any]], chosen: dict[float, dict], fraction: float, primary: str) -> dict:
    """The issue's headline for one real fraction: the validation-chosen synthetic arm's differences with
    their multiplicity-corrected 95% intervals."""
    best = chosen.get(fraction, {}).get("best_arm")
    row = next((r for r in rows if best is not None and r["label"] == best.label), None)

    def diff(key: str) -> tuple[float | None, list[float] | None]:
        if row is None or row[key] is None:
            return None, None
        return row[key][primary]["value"], row["tests"].get(key, {}).get("ci95_adjusted")

    (d_real, ci_real), (d_ctrl, ci_ctrl) = diff("vs_real"), diff("vs_best_control")
    return {
        "metric": primary,
        "best_arm": best.label if best is not None else None,
        "diff_vs_real": d_real,
        "diff_vs_real_ci95": ci_real,
        "diff_vs_best_control": d_ctrl,
        "diff_vs_best_control_ci95": ci_ctrl,
        "seeds": row["seeds"] if row is not None else [],
    }


def _row(arm: Arm) -> dict[str, Any]:
    return {
        "arm": arm.name,
        "label": arm.label,
        "kind": arm.kind,
        "ratio": arm.ratio,
        "weight": arm.weight,
        "real_fraction": arm.fraction,
    }
