"""`synthmed evaluate`: every figure comparing synthetic to real images, beside its real-vs-real floor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from synthmed.config import EvaluateConfig
from synthmed.errors import SynthmedError
from synthmed.evaluation.features import ExtractorSettings, LocalExtractor, trained_extractor
from synthmed.evaluation.fidelity import fid
from synthmed.evaluation.sections import (
    SET_NAMES,
    Groups,
    c2st_section,
    condition_section,
    default_cache_dir,
    diversity_section,
    fidelity_section,
    frd_section,
    label_section,
    phase,
    phase_hook,
    privacy_section,
    set_summary,
    sharpness_section,
    write_report,
)
from synthmed.evaluation.sets import ImageSet, load_run_split, load_set, manifest_run
from synthmed.evaluation.verdict import finish
from synthmed.evaluation.volumetric import evaluate_volumes, is_volume_folder


def load_sets(cfg: EvaluateConfig) -> tuple[dict[str, ImageSet], dict[str, Any]]:
    """The train, holdout and synthetic sets, and where the real ones came from.

    Same-distribution floors by default: when the synthetic folder's manifest names its run, the real
    reference and holdout are that run's own train and holdout splits, so the floor is what an unseen image
    of the training distribution scores. A holdout given beside a run is loaded as ``given_holdout``.
    """
    common: dict[str, Any] = {
        "image_size": cfg.image_size,
        "resize_mode": cfg.resize_mode,
        "clip_percentiles": cfg.clip_percentiles,
        "cache_dir": default_cache_dir(cfg) / "data",
        "max_images": cfg.max_images,
        "seed": cfg.seed,
    }
    sets = {"synthetic": load_set("synthetic", cfg.synthetic, **common)}
    common["channels"] = sets["synthetic"].images.shape[1]  # real sets as the synthetic (grey or colour)
    run = cfg.run_dir or manifest_run(cfg.synthetic)
    if run is not None:
        sets |= {
            "train": load_run_split("train", Path(run), "train", **common),
            "holdout": load_run_split("holdout", Path(run), cfg.reference_split, **common),
        }
        if cfg.holdout is not None:
            sets["given_holdout"] = load_set("given_holdout", cfg.holdout, **common)
        return sets, {
            "kind": "run split",
            "run_dir": str(run),
            "reference_split": cfg.reference_split,
            "ignored_real": str(cfg.real or "") or None,
        }
    if cfg.real is None or cfg.holdout is None:
        raise SynthmedError(
            "the synthetic folder names no run with a split (no manifest.jsonl with run_dir); give --real "
            "and --holdout, or --run-dir",
            path=cfg.synthetic,
        )
    sets |= {
        "train": load_set("train", cfg.real, **common),
        "holdout": load_set("holdout", cfg.holdout, **common),
    }
    return sets, {"kind": "given folders", "real": str(cfg.real), "holdout": str(cfg.holdout)}


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
    hears each phase's name as it starts."""
    for name, root in (("real", cfg.real), ("holdout", cfg.holdout), ("synthetic", cfg.synthetic)):
        if root is not None and not Path(root).exists():
            raise SynthmedError(f"the {name} folder does not exist", path=root)
    if not Path(cfg.synthetic).is_dir():
        raise SynthmedError("the synthetic set must be a folder of images", path=cfg.synthetic)
    volumes = is_volume_folder(cfg.synthetic) or (cfg.real is not None and is_volume_folder(cfg.real))
    token = phase_hook.set(on_phase)
    try:
        return evaluate_volumes(cfg) if volumes else evaluate_images(cfg)
    finally:
        phase_hook.reset(token)


def evaluate_images(cfg: EvaluateConfig) -> Path:
    timings: dict[str, float] = {}
    with phase(timings, "load"):
        all_sets, reference = load_sets(cfg)
        sets = {n: all_sets[n] for n in SET_NAMES}
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
        feats = {n: featurer.features(s.images) for n, s in all_sets.items()}
    groups = _groups(sets, classes)
    report: dict[str, Any] = {
        "settings": cfg.model_dump(mode="json"),
        "reference": reference,
        "sets": {n: set_summary(s) for n, s in all_sets.items()},
        "extractor": extractor_info | {"feature_dim": int(feats["train"].shape[1])},
    }
    with phase(timings, "fidelity"):
        report["fidelity"] = fidelity_section(groups, feats, cfg)
        if "given_holdout" in all_sets:
            reference["given_holdout"] = given_holdout_shift(feats, report["fidelity"], cfg)
    with phase(timings, "frd"):
        report["frd"] = frd_section(groups, sets, cfg)
    with phase(timings, "sharpness"):
        report["sharpness"] = sharpness_section(groups, sets, cfg)
    with phase(timings, "c2st"):
        report["c2st"] = c2st_section(groups, sets, feats, cfg)
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
    return write_report(finish(report), sets, pairs, cfg.out)


def given_holdout_shift(
    feats: dict[str, torch.Tensor], fidelity: dict[str, Any], cfg: EvaluateConfig
) -> dict:
    """FID of a user-given holdout against the run's training images, beside the run's own holdout floor:
    shifted when it is more than twice that floor and outside its interval."""
    given = fid(feats["train"], feats["given_holdout"])
    floor = fidelity["all"].get("real_floor", {}).get("fid")
    if floor is None:
        return {"fid": given, "fid_same_distribution": None, "shifted": None}
    upper = (floor.get("ci95") or [floor["value"]] * 2)[1]
    return {
        "fid": given,
        "fid_same_distribution": floor["value"],
        "shifted": bool(given > 2 * floor["value"] and given > upper),
    }
