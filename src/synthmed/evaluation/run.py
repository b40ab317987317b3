"""`synthmed evaluate`: every figure comparing synthetic to real images, beside its real-vs-real floor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from synthmed.config import EvaluateConfig
from synthmed.errors import SynthmedError
from synthmed.evaluation.features import ExtractorSettings, LocalExtractor, trained_extractor
from synthmed.evaluation.sections import (
    Groups,
    condition_section,
    default_cache_dir,
    diversity_section,
    fidelity_section,
    label_section,
    phase,
    phase_hook,
    privacy_section,
    set_summary,
    write_report,
)
from synthmed.evaluation.sets import ImageSet, load_set
from synthmed.evaluation.volumetric import evaluate_volumes, is_volume_folder


def load_sets(cfg: EvaluateConfig) -> dict[str, ImageSet]:
    cache = default_cache_dir(cfg)
    roots = {"train": cfg.real, "holdout": cfg.holdout, "synthetic": cfg.synthetic}
    return {
        name: load_set(
            name,
            root,
            image_size=cfg.image_size,
            resize_mode=cfg.resize_mode,
            clip_percentiles=cfg.clip_percentiles,
            cache_dir=cache / "data",
            max_images=cfg.max_images,
            seed=cfg.seed,
        )
        for name, root in roots.items()
    }


def check_classes(sets: dict[str, ImageSet]) -> list[str]:
    """Classes to report per class: the training classes present in the synthetic set."""
    train, synthetic = sets["train"], sets["synthetic"]
    for name in ("holdout", "synthetic"):
        extra = sorted(set(sets[name].class_names) - set(train.class_names))
        if extra and train.class_names:
            raise SynthmedError(
                f"the {name} set has classes {extra} that the real training set {train.class_names} lacks; "
                "rename its class folders to the training class names",
                path=sets[name].root,
            )
    return [c for c in train.class_names if c in synthetic.class_names]


def _groups(sets: dict[str, ImageSet], classes: list[str]) -> Groups:
    """Per group ("all" and each class): the indices into each set, or why the group cannot be compared."""
    out: Groups = {"all": {n: torch.arange(len(s)) for n, s in sets.items()}}
    for c in sets["train"].class_names:
        idx = {n: s.of_class(c) for n, s in sets.items()}
        missing = [n for n, i in idx.items() if len(i) == 0]
        out[c] = f"class '{c}' has no images in the {', '.join(missing)} set" if missing else idx
    if sets["synthetic"].labels is None:
        for c in sets["train"].class_names:
            out[c] = "the synthetic set is unlabelled (a flat folder), so there are no per-class figures"
    return {g: v for g, v in out.items() if g == "all" or g in classes or isinstance(v, str)}


def evaluate(cfg: EvaluateConfig, on_phase: Callable[[str], None] | None = None) -> Path:
    """Compute every figure and write ``report.json`` and ``report.html`` under ``cfg.out``; ``on_phase``
    hears each phase's name as it starts (2D)."""
    for name, root in (("real", cfg.real), ("holdout", cfg.holdout), ("synthetic", cfg.synthetic)):
        if not Path(root).is_dir():
            raise SynthmedError(f"the {name} folder does not exist", path=root)
    if is_volume_folder(cfg.real):
        return evaluate_volumes(cfg)
    token = phase_hook.set(on_phase)
    try:
        return evaluate_images(cfg)
    finally:
        phase_hook.reset(token)


def evaluate_images(cfg: EvaluateConfig) -> Path:
    timings: dict[str, float] = {}
    with phase(timings, "load"):
        sets = load_sets(cfg)
        classes = check_classes(sets)
    train = sets["train"]
    with phase(timings, "extractor"):
        local = LocalExtractor(cfg.extractor, cfg.extractor_size) if cfg.extractor else None
        settings = ExtractorSettings(steps=cfg.extractor_steps, seed=cfg.seed)
        classifier, extractor_info = trained_extractor(
            train.images, train.labels, train.class_names, settings, default_cache_dir(cfg)
        )
        featurer = local or classifier
        extractor_info["kind"] = f"local file {cfg.extractor}" if cfg.extractor else "in-house ResNet"
        feats = {n: featurer.features(s.images) for n, s in sets.items()}
    groups = _groups(sets, classes)
    report: dict[str, Any] = {
        "settings": cfg.model_dump(mode="json"),
        "sets": {n: set_summary(s) for n, s in sets.items()},
        "extractor": extractor_info | {"feature_dim": int(feats["train"].shape[1])},
    }
    with phase(timings, "fidelity"):
        report["fidelity"] = fidelity_section(groups, feats, cfg)
    with phase(timings, "diversity"):
        report["diversity"] = diversity_section(groups, sets, cfg)
    with phase(timings, "privacy"):
        report["privacy"], pairs = privacy_section(sets, feats, cfg)
    with phase(timings, "label_fidelity"):
        report["label_fidelity"] = label_section(sets, classifier, classes)
    with phase(timings, "condition_fidelity"):
        report["condition_fidelity"] = (
            condition_section(sets, cfg)
            if cfg.masks
            else {"not_computed": "run with --masks to evaluate masks"}
        )
    report["timings_s"] = timings
    return write_report(report, sets, pairs, cfg.out)
