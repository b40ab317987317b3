"""recipe64: what each choice of the small64 diffusion recipe is worth (issue 16, item 3), at equal training
wall time on Kermany 64 px with the shipped foundation autoencoder.

Leave-one-out from today's recipe (``new``: v-prediction, min-SNR-5, 100 warm-up steps and cosine decay, EMA
0.999, UNet [64, 128, 128]); each arm changes one thing:
- ``eps``: epsilon prediction instead of v;
- ``no_snr``: no min-SNR weighting;
- ``constant_lr``: no warm-up, constant lr;
- ``no_ema``: samples from the raw weights (EMA decay 0);
- ``wide``: UNet [96, 192, 192] (fewer steps in the same time);
- ``mean``: the UNet learns the posterior-mean latents instead of sampled ones;
- ``augment``: adds light geometric augmentation (two seeded copies of each image, +-5 degrees, +-5% zoom,
  +-3% shift; no flips).

Every arm trains for the same seconds (``--budget-s``: a timed budget, so run the arms one after another on a
machine whose load does not change while they run), then generates with the default sampler and is evaluated
against the run's **validation** split: these figures choose settings, so the holdout split that reports
the generator (quality64) plays no part in them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import quality64

ARMS: dict[str, dict[str, Any]] = {
    "new": {},
    "eps": {"noise": {"prediction_type": "epsilon"}},
    "no_snr": {"snr_gamma": None},
    "constant_lr": {"warmup_steps": 0, "lr_decay": "none"},
    "no_ema": {"ema_decay": 0.0},
    "wide": {
        "arch": {
            "channels": [96, 192, 192],
            "num_res_blocks": 1,
            "attention_levels": [False, True, True],
            "num_head_channels": 32,
            "norm_num_groups": 32,
        }
    },
    "mean": {"latents": "mean"},
    "augment": {"augment": {"copies": 2}},
}
KEYS = ("fid", "fid_floor", "recall", "recall_floor", "sharpness_ratio", "msssim", "msssim_real")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget-s", type=float, default=480.0, help="training seconds per arm")
    p.add_argument("--images", type=int, default=300, help="synthetic images per class")
    p.add_argument("--work-dir", default="runs/bench-recipe64")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--resume", action="store_true", help="reuse arms finished by a stopped run")


def _intervals(report: Path) -> dict[str, Any]:
    """The FID's and recall's 95% bootstrap intervals from an arm's evaluation report."""
    synthetic = json.loads(report.read_text())["fidelity"]["all"]["synthetic"]
    return {f"{k}_ci95": synthetic[k]["ci95"] for k in ("fid", "recall")}


def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    base = {
        "preset": "small64",
        "runtime": {"precision": "bf16"},
        "data": {"source": str(data / "cxr-kermany" / "train")},
    }
    classes = ["NORMAL", "PNEUMONIA"]
    results: dict[str, Any] = {}
    for name in args.arms:
        done = Path(args.work_dir) / name / "result.json"
        if args.resume and done.is_file():
            results[name] = json.loads(done.read_text())
            continue
        diffusion = {**ARMS[name], "preview_every": 100000, "checkpoint_every": 250}
        values = {**base, "diffusion": diffusion}
        results[name] = quality64._arm(name, values, {}, args.budget_s, args, classes, reference_split="val")
        done.write_text(json.dumps(results[name], indent=1))
    ref = results.get("new")
    effects = {
        name: {
            "diffusion_steps": r["diffusion_steps"],
            **{k: r[k] for k in KEYS},
            **_intervals(Path(args.work_dir) / name / "report" / "report.json"),
            "recall_per_class": {c: v["recall"] for c, v in r["recall_per_class"].items()},
            "minus_new": {k: round(r[k] - ref[k], 4) for k in ("fid", "recall", "sharpness_ratio", "msssim")}
            if ref
            else None,
        }
        for name, r in results.items()
    }
    return {
        "budget_s": args.budget_s,
        "reference_split": "val",
        "effects": effects,
        "arms": results,
    }
