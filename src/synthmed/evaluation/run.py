"""`synthmed evaluate`: every figure comparing synthetic to real images, beside its real-vs-real floor.

Fidelity and diversity compare equal-sized samples (m = the smaller of the synthetic and holdout sets,
per class) against m training images, so the synthetic figure and the train-vs-holdout floor share the
same sample-size bias. The privacy audit uses every image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from synthmed.config import EvaluateConfig
from synthmed.errors import SynthmedError
from synthmed.evaluation.diversity import pairwise_ms_ssim
from synthmed.evaluation.features import (
    ExtractorSettings,
    InHouseExtractor,
    LocalExtractor,
    trained_extractor,
)
from synthmed.evaluation.fidelity import fidelity
from synthmed.evaluation.privacy import audit, feature_vectors, pixel_vectors, top_pairs
from synthmed.evaluation.report import write_html
from synthmed.evaluation.sets import ImageSet, load_set

SET_NAMES = ("train", "holdout", "synthetic")


def default_cache_dir() -> Path:
    return Path(os.environ.get("SYNTHMED_CACHE", Path.home() / ".cache" / "synthmed"))


def load_sets(cfg: EvaluateConfig) -> dict[str, ImageSet]:
    cache = cfg.cache_dir or default_cache_dir()
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


def _sample(idx: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    return idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:m]]


def _groups(sets: dict[str, ImageSet], classes: list[str]) -> dict[str, dict[str, torch.Tensor] | str]:
    """Per group ("all" and each class): the indices into each set, or why the group cannot be compared."""
    out: dict[str, dict[str, torch.Tensor] | str] = {
        "all": {n: torch.arange(len(s)) for n, s in sets.items()}
    }
    for c in sets["train"].class_names:
        idx = {n: s.of_class(c) for n, s in sets.items()}
        missing = [n for n, i in idx.items() if len(i) == 0]
        out[c] = f"class '{c}' has no images in the {', '.join(missing)} set" if missing else idx
    if sets["synthetic"].labels is None:
        for c in sets["train"].class_names:
            out[c] = "the synthetic set is unlabelled (a flat folder), so there are no per-class figures"
    return {g: v for g, v in out.items() if g == "all" or g in classes or isinstance(v, str)}


def matched(idx: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Equal-sized random samples of the three sets (see the module docstring)."""
    m = min(len(i) for i in idx.values())
    return {n: _sample(i, m, seed) for n, i in idx.items()}


def fidelity_section(groups: dict[str, Any], feats: dict[str, torch.Tensor], cfg: EvaluateConfig) -> dict:
    out = {}
    for group, idx in groups.items():
        if isinstance(idx, str):
            out[group] = {"not_computed": idx}
            continue
        s = matched(idx, cfg.seed)
        ref = feats["train"][s["train"]]
        kwargs = {"k": cfg.prdc_k, "n_boot": cfg.bootstrap, "seed": cfg.seed}
        out[group] = {
            "n_per_set": len(s["train"]),
            "synthetic": fidelity(ref, feats["synthetic"][s["synthetic"]], **kwargs),
            "real_floor": fidelity(ref, feats["holdout"][s["holdout"]], **kwargs),
        }
    return out


def diversity_section(groups: dict[str, Any], sets: dict[str, ImageSet], cfg: EvaluateConfig) -> dict:
    out = {}
    for group, idx in groups.items():
        if isinstance(idx, str):
            out[group] = {"not_computed": idx}
            continue
        s = matched(idx, cfg.seed)
        out[group] = {
            n: pairwise_ms_ssim(sets[n].images[s[n]], cfg.msssim_pairs, cfg.seed) for n in SET_NAMES
        }
    return out


def privacy_section(
    sets: dict[str, ImageSet], feats: dict[str, torch.Tensor], cfg: EvaluateConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    centre = feats["train"].mean(0)
    spaces = {
        "pixel": tuple(pixel_vectors(sets[n].images) for n in SET_NAMES),
        "feature": tuple(feature_vectors(feats[n], centre) for n in SET_NAMES),
    }
    audits, summary = audit(spaces, cfg.copy_percentile)
    pairs = top_pairs(audits, 16)
    for p in pairs:
        p["synthetic_file"] = sets["synthetic"].sources[p["synthetic"]]
        p["train_file"] = sets["train"].sources[p["train"]]
    summary["top_pairs"] = pairs
    summary["distances"] = {
        space: {"synthetic": a.distance.tolist(), "holdout": a.holdout_distance.tolist()}
        for space, a in audits.items()
    }
    return summary, pairs


def label_section(sets: dict[str, ImageSet], classifier: InHouseExtractor, classes: list[str]) -> dict:
    if classifier.class_head is None:
        return {"not_computed": "the real training set has fewer than two classes, so there is no classifier"}
    if not classes:
        return {"not_computed": "the synthetic set shares no class with the real training set"}
    names = sets["train"].class_names
    out: dict[str, Any] = {}
    for name in ("synthetic", "holdout"):
        s = sets[name]
        pred = classifier.predict(s.images)
        out[name] = {}
        for c in classes:
            idx = s.of_class(c)
            hit = (pred[idx] == names.index(c)).float()
            out[name][c] = (
                {"agreement": float(hit.mean()), "n": len(idx)}
                if len(idx)
                else {"not_computed": f"no {name} images of class '{c}'"}
            )
    out["note"] = "agreement of a classifier trained on real training images; the holdout row is its ceiling"
    return out


def _set_summary(s: ImageSet) -> dict[str, Any]:
    counts = {c: len(s.of_class(c)) for c in s.class_names}
    return {
        "root": str(s.root),
        "n": len(s),
        "classes": counts,
        "skipped": [{"source": k.source, "reason": k.reason} for k in s.skipped],
    }


def evaluate(cfg: EvaluateConfig) -> Path:
    """Compute every figure and write ``report.json`` and ``report.html`` under ``cfg.out``."""
    sets = load_sets(cfg)
    classes = check_classes(sets)
    train = sets["train"]
    settings = ExtractorSettings(steps=cfg.extractor_steps, seed=cfg.seed)
    classifier, extractor_info = trained_extractor(
        train.images, train.labels, train.class_names, settings, (cfg.cache_dir or default_cache_dir())
    )
    featurer = LocalExtractor(cfg.extractor, cfg.extractor_size) if cfg.extractor else classifier
    extractor_info["kind"] = f"local file {cfg.extractor}" if cfg.extractor else "in-house ResNet"
    feats = {n: featurer.features(s.images) for n, s in sets.items()}
    groups = _groups(sets, classes)
    privacy, pairs = privacy_section(sets, feats, cfg)
    report = {
        "settings": cfg.model_dump(mode="json"),
        "sets": {n: _set_summary(s) for n, s in sets.items()},
        "extractor": extractor_info | {"feature_dim": int(feats["train"].shape[1])},
        "fidelity": fidelity_section(groups, feats, cfg),
        "diversity": diversity_section(groups, sets, cfg),
        "privacy": privacy,
        "label_fidelity": label_section(sets, classifier, classes),
        "condition_fidelity": {"not_computed": "run with --masks to evaluate masks"},
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "report.json").write_text(json.dumps(report, indent=1))
    write_html(report, sets, pairs, cfg.out)
    return cfg.out
