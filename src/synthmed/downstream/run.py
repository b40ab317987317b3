"""`synthmed benchmark-augmentation`: train downstream models under several arms, score them on real test
images with paired bootstrap CIs against the real-only arm, and write results.json, results.csv and
report.html.

Arms: ``real`` (real images with the standard augmentation: the honest baseline), ``real+synthetic`` at
each synthetic:real ratio, ``synthetic`` (synthetic only, tested on real) and ``pretrain`` (synthetic
pre-training, then real fine-tuning; classification only). Every arm but ``synthetic`` runs at each
real fraction (scarcity sweep), after the optional minority-class subsampling (rarity sweep).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from synthmed.config import AugmentationConfig
from synthmed.downstream.data import Labelled, Sets, leak_check, load_sets, real_subset, synthetic_subset
from synthmed.downstream.metrics import (
    Scorer,
    Scores,
    bootstrap_indices,
    classification_scorer,
    mean_scores,
    score,
    segmentation_scorer,
)
from synthmed.downstream.report import write_csv, write_html
from synthmed.downstream.train import class_probabilities, train_classifier, train_segmentation
from synthmed.errors import SynthmedError
from synthmed.evaluation.condition import segment
from synthmed.evaluation.features import ExtractorSettings, InHouseExtractor
from synthmed.evaluation.sections import phase

ARMS = ("real", "real+synthetic", "synthetic", "pretrain")
PRIMARY = {"classify": "macro_f1", "segment": "dice"}


@dataclass(frozen=True)
class Arm:
    """One training configuration; ``fraction`` is None for the synthetic-only arm (no real images)."""

    name: str
    ratio: float | None
    fraction: float | None


def plan_arms(cfg: AugmentationConfig) -> list[Arm]:
    arms = cfg.arms or (ARMS if cfg.task == "classify" else ARMS[:3])
    if cfg.task == "segment" and "pretrain" in arms:
        raise SynthmedError("the pretrain arm is only available for --task classify", field="arms")
    plan = []
    for f in cfg.real_fractions:
        plan += [Arm("real", None, f)] if "real" in arms else []
        plan += [Arm("real+synthetic", r, f) for r in cfg.ratios] if "real+synthetic" in arms else []
        plan += [Arm("pretrain", None, f)] if "pretrain" in arms else []
    return plan + ([Arm("synthetic", None, None)] if "synthetic" in arms else [])


def _reference(arm: Arm, cfg: AugmentationConfig) -> Arm | None:
    """The real-only arm a run is compared with (the full real set for the synthetic-only arm)."""
    if "real" not in (cfg.arms or ARMS) or arm.name == "real":
        return None
    return Arm("real", None, arm.fraction if arm.fraction is not None else max(cfg.real_fractions))


def _training_set(arm: Arm, sets: Sets, cfg: AugmentationConfig, seed: int) -> tuple[Labelled, int, int]:
    """(training images, number of real ones, number of synthetic ones)."""
    if arm.name == "synthetic" or arm.fraction is None:
        return sets.synthetic, 0, len(sets.synthetic)
    real = real_subset(sets, cfg, arm.fraction, seed)
    if arm.name != "real+synthetic" or arm.ratio is None:
        return real, len(real), 0
    syn = synthetic_subset(fill_pool(sets, cfg), round(arm.ratio * len(real)), seed)
    return real.concat(syn), len(real), len(syn)


def fill_pool(sets: Sets, cfg: AugmentationConfig) -> Labelled:
    """The synthetic images real+synthetic arms draw from: all, or only ``cfg.fill_class``."""
    if cfg.fill_class is None:
        return sets.synthetic
    pool = torch.nonzero(sets.synthetic.labels == sets.class_index(cfg.fill_class, "fill_class")).flatten()
    if not len(pool):
        raise SynthmedError(f"the synthetic set has no '{cfg.fill_class}' images", path=cfg.synthetic)
    return sets.synthetic.take(pool)


def _train_and_score(arm: Arm, sets: Sets, cfg: AugmentationConfig, seed: int) -> tuple[Scorer, dict]:
    train, n_real, n_syn = _training_set(arm, sets, cfg, seed)
    info: dict[str, Any] = {"n_real": n_real, "n_synthetic": n_syn}
    if arm.ratio is not None:  # below the asked ratio when the synthetic pool is too small
        info["ratio_achieved"] = round(n_syn / n_real, 3)
    if cfg.task == "segment":
        model, info["training"] = train_segmentation(
            train, sets.val, cfg.steps, cfg.batch_size, seed, cfg.eval_every
        )
        return segmentation_scorer(segment(model, sets.test.images), sets.test.targets), info
    settings = ExtractorSettings(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, flip=True)
    k = len(sets.class_names)
    pretrained: InHouseExtractor | None = None
    if arm.name == "pretrain":
        pretrained, pre = train_classifier(sets.synthetic, sets.val, k, settings, cfg.eval_every)
        info["n_synthetic"] = len(sets.synthetic)
        info["pretraining"] = {"best_step": pre["step"], "val_macro_f1": pre["val_macro_f1"]}
    classifier, fit = train_classifier(train, sets.val, k, settings, cfg.eval_every, pretrained)
    info["training"] = {"best_step": fit["step"], "val_macro_f1": fit["val_macro_f1"]}
    prob = class_probabilities(classifier, sets.test.images).numpy()
    return classification_scorer(sets.test.labels.numpy(), prob, sets.class_names), info


def _row(arm: Arm) -> dict[str, Any]:
    return {"arm": arm.name, "ratio": arm.ratio, "real_fraction": arm.fraction}


def _compare(arms: list[Arm], scores: dict[tuple[Arm, int], Scores], cfg: AugmentationConfig) -> tuple:
    """Per-run and pooled (mean over seeds) summaries with paired differences against the real arm."""
    runs, pooled = [], []
    for arm in arms:
        ref = _reference(arm, cfg)
        for seed in cfg.seeds:
            s = scores[arm, seed]
            diff = s.minus(scores[ref, seed]).summary() if ref else None
            runs.append(_row(arm) | {"seed": seed, "metrics": s.summary(), "vs_real": diff})
        mean = mean_scores([scores[arm, seed] for seed in cfg.seeds])
        ref_mean = mean_scores([scores[ref, seed] for seed in cfg.seeds]) if ref else None
        diff = mean.minus(ref_mean).summary() if ref_mean else None
        pooled.append(_row(arm) | {"seeds": cfg.seeds, "metrics": mean.summary(), "vs_real": diff})
    return runs, pooled


def benchmark(cfg: AugmentationConfig) -> dict[str, Any]:
    """Run every arm and seed; write and return the results (see the module docstring)."""
    timings: dict[str, float] = {}
    arms = plan_arms(cfg)
    with phase(timings, "load"):
        sets = load_sets(cfg)
    with phase(timings, "leak_check"):
        leak = leak_check(sets.test_hashes, cfg.synthetic)
    indices = bootstrap_indices(len(sets.test), cfg.bootstrap, cfg.seed)
    scores: dict[tuple[Arm, int], Scores] = {}
    info: dict[tuple[Arm, int], dict] = {}
    for arm in arms:
        for seed in cfg.seeds:
            start = time.perf_counter()
            with phase(timings, f"train:{arm.name}"):
                scorer, info[arm, seed] = _train_and_score(arm, sets, cfg, seed)
            with phase(timings, "bootstrap"):
                scores[arm, seed] = score(scorer, len(sets.test), indices)
            info[arm, seed]["seconds"] = round(time.perf_counter() - start, 2)
    runs, pooled = _compare(arms, scores, cfg)
    for run, arm in zip(runs, [a for a in arms for _ in cfg.seeds], strict=True):
        run |= info[arm, run["seed"]]
    results = {
        "task": cfg.task,
        "primary_metric": PRIMARY[cfg.task],
        "settings": cfg.model_dump(mode="json"),
        "protocol": _protocol(cfg),
        "data": _data_summary(sets),
        "leak_check": leak,
        "runs": runs,
        "pooled": pooled,
        "timings_s": timings,
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_csv(results, cfg.out / "results.csv")
    write_html(results, cfg.out)
    return results


def _protocol(cfg: AugmentationConfig) -> dict[str, str]:
    model = (
        "MONAI ResNet (basic blocks, widths 16-128) with a class head; shared evaluation training loop"
        if cfg.task == "classify"
        else "MONAI UNet from the condition-fidelity segmenter"
    )
    metric = "macro-F1" if cfg.task == "classify" else "mean Dice"
    stopping = f"best real-validation {metric}, checked every {cfg.eval_every} steps"
    return {
        "model": model,
        "budget": f"{cfg.steps} steps x batch {cfg.batch_size} per arm; pretrain: {cfg.steps} on synthetic "
        f"then {cfg.steps} on real",
        "early_stopping": stopping,
        "bootstrap": f"{cfg.bootstrap} resamples of the test images, shared by all runs (paired)",
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
