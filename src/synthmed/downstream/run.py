"""`synthmed benchmark-augmentation`: the proof-of-utility protocol (issue 19). Train downstream models
under every arm (downstream.arms: real-only, count-matched controls, synthetic arms) over seeds and real
fractions, score them on real test images, pick the strongest control and the best synthetic arm on the
real validation split, and report paired differences pooled over seeds with Holm-corrected tests
(downstream.stats). Writes results.json (with ``headline``), results.csv, selection.json and report.html.
Each finished run is kept (downstream.store), so a stopped benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from synthmed.config import AugmentationConfig
from synthmed.downstream.arms import TASK_ARMS, Arm, TrainingSet, fill_pool, plan_arms, training_set
from synthmed.downstream.data import Labelled, Sets, leak_check, load_sets, real_subset
from synthmed.downstream.metrics import (
    Scorer,
    Scores,
    bootstrap_indices,
    classification_scorer,
    score,
    segmentation_scorer,
)
from synthmed.downstream.report import write_csv, write_html
from synthmed.downstream.selection import Selected, privacy_guard, select
from synthmed.downstream.stats import compare, headline, seed_draws
from synthmed.downstream.store import RunStore
from synthmed.downstream.train import class_probabilities, train_classifier, train_segmentation
from synthmed.errors import SynthmedError
from synthmed.evaluation.condition import segment
from synthmed.evaluation.features import ExtractorSettings, InHouseExtractor
from synthmed.evaluation.sections import phase

PRIMARY = {"classify": "macro_f1", "segment": "dice"}
MIN_SEEDS = 5


def primary_metric(cfg: AugmentationConfig, class_names: list[str]) -> str:
    """The metric that chooses arms and is corrected for multiplicity; higher must be better."""
    allowed = (
        ["macro_f1", "balanced_accuracy", "auroc", *(f"f1[{c}]" for c in class_names)]
        if cfg.task == "classify"
        else ["dice"]
    )
    metric = cfg.primary_metric or PRIMARY[cfg.task]
    if metric not in allowed:
        raise SynthmedError(f"'{metric}' is not one of {allowed}", field="primary_metric")
    return metric


class Runner:
    """Trains and scores one arm for one seed; caches the selection per (real fraction, seed)."""

    def __init__(self, sets: Sets, cfg: AugmentationConfig, primary: str, store: RunStore) -> None:
        self.sets, self.cfg, self.primary, self.store = sets, cfg, primary, store
        self.guard = (
            privacy_guard(sets, cfg) if "real+selected" in (cfg.arms or TASK_ARMS[cfg.task]) else None
        )
        self.selections: dict[tuple[float, int], Selected] = {}

    def selected(self, fraction: float, seed: int) -> Labelled:
        if (fraction, seed) not in self.selections:
            real = real_subset(self.sets, self.cfg, fraction, seed)
            pool = fill_pool(self.sets, self.cfg)
            self.selections[fraction, seed] = select(pool, real, self.sets, self.cfg, seed, self.guard)
            self.store.save_selection(fraction, seed, self.selections[fraction, seed].record)
        return self.selections[fraction, seed].pool

    def run(self, arm: Arm, seed: int) -> tuple[Scorer, float, dict[str, Any]]:
        """(test scorer, validation primary metric, run information)."""
        ts = training_set(arm, self.sets, self.cfg, seed, self.selected)
        info: dict[str, Any] = {"n_real": ts.n_real, "n_synthetic": ts.n_synthetic, "n_copies": ts.n_copies}
        info |= ts.info
        if self.cfg.task == "segment":
            return self._segment(ts, seed, info)
        return self._classify(ts, seed, info)

    def _segment(self, ts: TrainingSet, seed: int, info: dict[str, Any]) -> tuple[Scorer, float, dict]:
        cfg, sets = self.cfg, self.sets
        model = None
        if ts.pretrain_on is not None:
            model, pre = train_segmentation(
                ts.pretrain_on, sets.val, cfg.steps, cfg.batch_size, seed, cfg.eval_every
            )
            info["pretraining"] = pre
        model, info["training"] = train_segmentation(
            ts.data, sets.val, cfg.steps, cfg.batch_size, seed, cfg.eval_every, model, ts.sample_weights
        )
        val = segmentation_scorer(segment(model, sets.val.images), sets.val.targets)(np.arange(len(sets.val)))
        return (
            segmentation_scorer(segment(model, sets.test.images), sets.test.targets),
            val[self.primary],
            info,
        )

    def _classify(self, ts: TrainingSet, seed: int, info: dict[str, Any]) -> tuple[Scorer, float, dict]:
        cfg, sets = self.cfg, self.sets
        settings = ExtractorSettings(
            steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, flip=True
        )
        k = len(sets.class_names)
        pretrained: InHouseExtractor | None = None
        if ts.pretrain_on is not None:
            pretrained, pre = train_classifier(ts.pretrain_on, sets.val, k, settings, cfg.eval_every)
            info["pretraining"] = {"best_step": pre["step"], "val_macro_f1": pre["val_macro_f1"]}
        classifier, fit = train_classifier(
            ts.data,
            sets.val,
            k,
            settings,
            cfg.eval_every,
            pretrained,
            class_weighted=ts.class_weighted,
            sample_weights=ts.sample_weights,
        )
        info["training"] = {"best_step": fit["step"], "val_macro_f1": fit["val_macro_f1"]}
        val_prob = class_probabilities(classifier, sets.val.images).numpy()
        val = classification_scorer(sets.val.labels.numpy(), val_prob, sets.class_names)(
            np.arange(len(sets.val))
        )
        prob = class_probabilities(classifier, sets.test.images).numpy()
        return (
            classification_scorer(sets.test.labels.numpy(), prob, sets.class_names),
            val[self.primary],
            info,
        )


def _run_row(arm: Arm, seed: int, s: Scores, ref: Scores | None, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "arm": arm.name,
        "label": arm.label,
        "ratio": arm.ratio,
        "weight": arm.weight,
        "real_fraction": arm.fraction,
        "seed": seed,
        "metrics": s.summary(),
        "vs_real": s.minus(ref).summary() if ref is not None else None,
    } | info


def benchmark(cfg: AugmentationConfig) -> dict[str, Any]:
    """Run every arm and seed; write and return the results (see the module docstring)."""
    timings: dict[str, float] = {}
    arms = plan_arms(cfg)
    with phase(timings, "load"):
        sets = load_sets(cfg)
    primary = primary_metric(cfg, sets.class_names)
    with phase(timings, "leak_check"):
        leak = leak_check(sets.test_hashes, cfg.synthetic)
    indices = bootstrap_indices(len(sets.test), cfg.bootstrap, cfg.seed)
    store = RunStore(cfg, sets)
    runner = Runner(sets, cfg, primary, store)
    scores: dict[tuple[Arm, int], Scores] = {}
    val: dict[tuple[Arm, int], float] = {}
    info: dict[tuple[Arm, int], dict] = {}
    reused = 0
    for arm in arms:
        for seed in cfg.seeds:
            done = store.load(arm, seed)
            if done is not None:
                scores[arm, seed], val[arm, seed], info[arm, seed] = done
                reused += 1
                continue
            start = time.perf_counter()
            with phase(timings, f"train:{arm.name}"):
                scorer, val[arm, seed], info[arm, seed] = runner.run(arm, seed)
            with phase(timings, "bootstrap"):
                scores[arm, seed] = score(scorer, len(sets.test), indices)
            info[arm, seed]["seconds"] = round(time.perf_counter() - start, 2)
            store.save(arm, seed, scores[arm, seed], val[arm, seed], info[arm, seed])
    draws = seed_draws(len(cfg.seeds), cfg.bootstrap, cfg.seed)
    pooled, chosen, warnings = compare(arms, scores, val, cfg.seeds, primary, cfg.alpha, draws)
    if len(cfg.seeds) < MIN_SEEDS:
        warnings.append(f"{len(cfg.seeds)} seeds per arm: the protocol asks for at least {MIN_SEEDS}")
    runs = []
    for arm in arms:
        ref = Arm("real", None, arm.fraction if arm.fraction is not None else max(cfg.real_fractions))
        for seed in cfg.seeds:
            ref_scores = scores.get((ref, seed)) if ref != arm else None
            runs.append(
                _run_row(arm, seed, scores[arm, seed], ref_scores, info[arm, seed] | {"val": val[arm, seed]})
            )
    selection = store.selections(
        sorted({(a.fraction, s) for a in arms if a.name == "real+selected" and a.fraction for s in cfg.seeds})
    )
    fractions = sorted(chosen)
    results = {
        "task": cfg.task,
        "primary_metric": primary,
        "headline": headline(pooled, chosen, min(fractions), primary) if fractions else None,
        "headlines": {str(f): headline(pooled, chosen, f, primary) for f in fractions},
        "choice": {
            str(f): {k: (a.label if a is not None else None) for k, a in c.items()} for f, c in chosen.items()
        },
        "warnings": warnings,
        "settings": cfg.model_dump(mode="json"),
        "protocol": _protocol(cfg, primary),
        "data": _data_summary(sets),
        "leak_check": leak,
        "runs": runs,
        "pooled": pooled,
        "selection": [{k: v for k, v in s.items() if k != "dropped"} for s in selection],
        "timings_s": timings,
        "reused_runs": reused,
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (cfg.out / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    write_csv(results, cfg.out / "results.csv")
    write_html(results, cfg.out)
    return results


def _protocol(cfg: AugmentationConfig, primary: str) -> dict[str, str]:
    model = (
        "MONAI ResNet (basic blocks, widths 16-128) with a class head; shared evaluation training loop"
        if cfg.task == "classify"
        else "MONAI UNet from the condition-fidelity segmenter"
    )
    metric = "macro-F1" if cfg.task == "classify" else "mean Dice"
    n = len(cfg.seeds)
    return {
        "model": model,
        "budget": f"{cfg.steps} steps x batch {cfg.batch_size} per arm; pretrain: {cfg.steps} on synthetic "
        f"then {cfg.steps} on real",
        "early_stopping": f"best real-validation {metric}, checked every {cfg.eval_every} steps",
        "controls": "real-only (standard augmentation, plain loss); oversample: real images of the fill "
        "class (or all) repeated, count-matched to each ratio's synthetic images; weighted: "
        "inverse-frequency class weights; augment: count-matched deformed copies of real images (random "
        "affine + elastic)",
        "choice": "strongest control and best synthetic arm per real fraction: highest mean real-validation "
        f"{primary} over the {n} seeds, chosen before test figures (ties: first in plan order)",
        "statistics": f"{cfg.bootstrap} paired bootstrap resamples of test images and of the {n} seeds "
        "(shared by all arms); mean over seeds; 95% percentile intervals",
        "multiplicity": f"two-sided bootstrap p-values of {primary} differences, Holm-corrected "
        "(statsmodels) across all synthetic arms, one family per reference (real-only, strongest control), "
        f"alpha {cfg.alpha}; ci95_adjusted: simultaneous 1 - alpha/m (Bonferroni) percentile intervals",
        "selection": "real+selected: label confidence >= "
        f"{cfg.selection.min_confidence} from a model trained on the run's real training images, "
        f"privacy filter ({'on' if cfg.selection.privacy else 'off'}), k-center greedy spread "
        f"({'on' if cfg.selection.diversity else 'off'}); dropped images in selection.json",
    }


def _data_summary(sets: Sets) -> dict[str, Any]:
    def counts(s: Labelled) -> dict[str, int]:
        n = np.bincount(s.labels.numpy(), minlength=len(sets.class_names))
        return dict(zip(sets.class_names, n.tolist(), strict=True))

    return {
        "class_names": sets.class_names,
        "train": counts(sets.train),
        "val": counts(sets.val),
        "test": counts(sets.test),
        "synthetic": counts(sets.synthetic),
    }
