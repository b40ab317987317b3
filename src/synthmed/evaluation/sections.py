"""Report sections shared by the 2D and 3D evaluations.

Fidelity and diversity compare equal-sized samples (m = the smallest of the three sets, per group)
of synthetic, holdout and training images, so the synthetic figure and the train-vs-holdout floor share
the same sample-size bias. The privacy audit uses every image.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from synthmed.config import AugmentationConfig, DataConfig, EvaluateConfig
from synthmed.data.masks import load_image_mask_pairs
from synthmed.evaluation.c2st import cnn_c2st, probe_c2st
from synthmed.evaluation.condition import (
    compare_intensity,
    condition_fidelity,
    intensity_stats,
    train_segmenter,
)
from synthmed.evaluation.diversity import pairwise_ms_ssim
from synthmed.evaluation.features import InHouseExtractor
from synthmed.evaluation.fidelity import fidelity
from synthmed.evaluation.privacy import audit, feature_vectors, nearest, pixel_vectors, top_pairs
from synthmed.evaluation.report import write_html
from synthmed.evaluation.sets import ImageSet
from synthmed.evaluation.sharpness import sharpness
from synthmed.evaluation.texture import frd, radiomic_features, standardise

SET_NAMES = ("train", "holdout", "synthetic")
#: Pixel-space distance (1 - correlation) under which a holdout image counts as a copy of a training image:
#: re-encoded or resized copies of one scan sit far below it, different scans of one patient far above.
DUPLICATE_DISTANCE = 1e-3
Groups = dict[str, dict[str, torch.Tensor] | str]


# Told the name of every phase as it starts (a job's progress); set by evaluation.run.evaluate.
phase_hook: ContextVar[Callable[[str], None] | None] = ContextVar("phase_hook", default=None)


@contextmanager
def phase(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[name]`` (reported in report.json); tell ``phase_hook``."""
    hook = phase_hook.get()
    if hook is not None:
        hook(name)
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 2)


def default_cache_dir(cfg: EvaluateConfig | AugmentationConfig) -> Path:
    return cfg.cache_dir or Path(os.environ.get("SYNTHMED_CACHE", Path.home() / ".cache" / "synthmed"))


def _sample(idx: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    return idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:m]]


def matched(idx: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Equal-sized random samples of the sets (see the module docstring)."""
    m = min(len(i) for i in idx.values())
    return {n: _sample(i, m, seed) for n, i in idx.items()}


def per_group(
    groups: dict[str, Any], seed: int, compute: Callable[[dict[str, torch.Tensor]], dict[str, Any]]
) -> dict[str, Any]:
    """``compute`` on equal-sized samples of each group, or the reason a group cannot be compared."""
    return {
        group: {"not_computed": idx} if isinstance(idx, str) else compute(matched(idx, seed))
        for group, idx in groups.items()
    }


def fidelity_section(groups: dict[str, Any], feats: dict[str, torch.Tensor], cfg: EvaluateConfig) -> dict:
    kwargs = {"k": cfg.prdc_k, "n_boot": cfg.bootstrap, "seed": cfg.seed}

    def compute(s: dict[str, torch.Tensor]) -> dict[str, Any]:
        ref = feats["train"][s["train"]]
        return {
            "n_per_set": len(s["train"]),
            "synthetic": fidelity(ref, feats["synthetic"][s["synthetic"]], **kwargs),
            "real_floor": fidelity(ref, feats["holdout"][s["holdout"]], **kwargs),
        }

    return per_group(groups, cfg.seed, compute)


def diversity_section(groups: dict[str, Any], sets: dict[str, ImageSet], cfg: EvaluateConfig) -> dict:
    def compute(s: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {n: pairwise_ms_ssim(sets[n].images[s[n]], cfg.msssim_pairs, cfg.seed) for n in SET_NAMES}

    return per_group(groups, cfg.seed, compute)


def privacy_section(
    sets: dict[str, ImageSet], feats: dict[str, torch.Tensor], cfg: EvaluateConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The memorisation audit, calibrated on the holdout images that are not copies of training images."""
    centre = feats["train"].mean(0)
    vectors = {
        "pixel": [pixel_vectors(sets[n].images) for n in SET_NAMES],
        "feature": [feature_vectors(feats[n], centre) for n in SET_NAMES],
    }
    dup = real_duplicates(sets, vectors["pixel"][0], vectors["pixel"][1])
    unseen = torch.ones(len(sets["holdout"]), dtype=torch.bool)
    unseen[[d["holdout"] for d in dup.pop("pairs_all")]] = False
    if unseen.sum() < 2:  # nothing left to calibrate on: keep every holdout image, the warning says why
        unseen[:] = True
    audits, summary = audit(
        {space: (t, h[unseen], y) for space, (t, h, y) in vectors.items()}, cfg.copy_percentile
    )
    if dup["count"]:
        train, holdout, synthetic = vectors["pixel"]
        with_duplicates = audit({"pixel": (train, holdout, synthetic)}, cfg.copy_percentile)[1]
        dup["threshold_with_duplicates"] = with_duplicates["spaces"]["pixel"]["threshold"]
        dup["threshold_without"] = summary["spaces"]["pixel"]["threshold"]
    summary["real_duplicates"] = dup
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


def real_duplicates(
    sets: dict[str, ImageSet], train: torch.Tensor, holdout: torch.Tensor, shown: int = 8
) -> dict[str, Any]:
    """Holdout images that are (near-)copies of a training image in pixel space: they are not unseen, so
    they are left out of the copy threshold's calibration (they would drag it to 0) and reported."""
    dist, idx = nearest(holdout, train)
    close = torch.nonzero(dist < DUPLICATE_DISTANCE).flatten()
    order = close[torch.argsort(dist[close])]
    pairs = [
        {
            "holdout": int(i),
            "train": int(idx[i]),
            "distance": round(float(dist[i]), 6),
            "holdout_file": sets["holdout"].sources[int(i)],
            "train_file": sets["train"].sources[int(idx[i])],
        }
        for i in order
    ]
    return {
        "count": len(pairs),
        "distance_below": DUPLICATE_DISTANCE,
        "pairs": pairs[:shown],
        "pairs_all": pairs,
    }


def c2st_section(
    groups: dict[str, Any], sets: dict[str, ImageSet], feats: dict[str, torch.Tensor], cfg: EvaluateConfig
) -> dict[str, Any]:
    """The machine Turing test, real holdout vs synthetic: a CNN on pixels (one, scored per class too) and a
    linear probe on the extractor's features per group."""
    holdout, synthetic = sets["holdout"], sets["synthetic"]
    classes = {
        g: (i["holdout"], i["synthetic"]) for g, i in groups.items() if g != "all" and not isinstance(i, str)
    }
    cnn = cnn_c2st(
        holdout.images,
        synthetic.images,
        folds=cfg.c2st_folds,
        steps=cfg.c2st_steps,
        seed=cfg.seed,
        groups=classes,
    )
    probe = {
        g: {"not_computed": i}
        if isinstance(i, str)
        else probe_c2st(
            feats["holdout"][i["holdout"]],
            feats["synthetic"][i["synthetic"]],
            folds=cfg.c2st_folds,
            permutations=cfg.c2st_permutations,
            seed=cfg.seed,
        )
        for g, i in groups.items()
    }
    return {"cnn": cnn, "linear_probe": probe}


def sharpness_section(groups: dict[str, Any], sets: dict[str, ImageSet], cfg: EvaluateConfig) -> dict:
    def compute(s: dict[str, torch.Tensor]) -> dict[str, Any]:
        return sharpness({n: sets[n].images[s[n]] for n in SET_NAMES}, max(cfg.bootstrap, 100), cfg.seed)

    return per_group(groups, cfg.seed, compute)


def frd_section(groups: dict[str, Any], sets: dict[str, ImageSet], cfg: EvaluateConfig) -> dict:
    """Fréchet radiomics distance of synthetic and (floor) holdout images to the training images."""
    raw = {n: radiomic_features(sets[n].images) for n in SET_NAMES}
    feats = dict(zip(SET_NAMES, standardise(*(raw[n] for n in SET_NAMES)), strict=True))

    def compute(s: dict[str, torch.Tensor]) -> dict[str, Any]:
        ref = feats["train"][s["train"]]
        kw = {"n_boot": cfg.bootstrap, "seed": cfg.seed}
        return {
            "n_per_set": len(ref),
            "synthetic": frd(ref, feats["synthetic"][s["synthetic"]], **kw),
            "real_floor": frd(ref, feats["holdout"][s["holdout"]], **kw),
        }

    return per_group(groups, cfg.seed, compute) | {"features": int(feats["train"].shape[1])}


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


def condition_section(sets: dict[str, ImageSet], cfg: EvaluateConfig) -> dict[str, Any]:
    """Dice/HD95 of a segmenter trained on the real training pairs, on synthetic images vs their masks
    (the real holdout pairs give the ceiling), and per-label intensity statistics real vs synthetic."""
    dcfg = DataConfig(
        image_size=cfg.image_size, resize_mode=cfg.resize_mode, clip_percentiles=cfg.clip_percentiles
    )
    pairs = {n: load_image_mask_pairs([s.root / src for src in s.sources], dcfg) for n, s in sets.items()}
    skipped = {n: [{"source": k.source, "reason": k.reason} for k in p.skipped] for n, p in pairs.items()}
    empty = [n for n, p in pairs.items() if len(p.images) < 2]
    if empty:
        return {
            "not_computed": f"fewer than 2 images with masks in the {', '.join(empty)} set(s)",
            "skipped": skipped,
        }
    train, holdout, synthetic = (pairs[n] for n in SET_NAMES)
    segmenter = train_segmenter(
        train.images, train.masks, steps=cfg.segmenter_steps, batch_size=32, seed=cfg.seed
    )
    result = condition_fidelity(
        segmenter, synthetic.images, synthetic.masks, holdout.images, holdout.masks, seed=cfg.seed
    )
    real_stats, syn_stats = (
        intensity_stats(train.images, train.masks),
        intensity_stats(synthetic.images, synthetic.masks),
    )
    result["intensity"] = {
        "real": _without_medians(real_stats),
        "synthetic": _without_medians(syn_stats),
        "ks_test": compare_intensity(real_stats, syn_stats),
    }
    result["segmenter"] = {"steps": cfg.segmenter_steps, "train_pairs": len(train.images)}
    return result | {"skipped": skipped}


def _without_medians(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {label: {k: v for k, v in entry.items() if k != "medians"} for label, entry in stats.items()}


def set_summary(s: ImageSet) -> dict[str, Any]:
    counts = {c: len(s.of_class(c)) for c in s.class_names}
    return {
        "root": str(s.root),
        "n": len(s),
        "classes": counts,
        "skipped": [{"source": k.source, "reason": k.reason} for k in s.skipped],
    }


def write_report(
    report: dict[str, Any], shown: dict[str, ImageSet], pairs: list[dict[str, Any]], out: Path
) -> Path:
    """report.json and report.html; ``shown`` holds the 2D images the page displays for each set."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    write_html(report, shown, pairs, out)
    return out
