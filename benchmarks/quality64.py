"""quality64: the old generator recipe against the new one at the same wall-clock training budget, judged by
`synthmed evaluate` against each run's own holdout split (same distribution; issue 16's targets).

Arms, each trained on Kermany *train* (NORMAL + PNEUMONIA) at 64 px on this machine:
- ``old``: the small64 recipe before issue 16: the run's own 0.45 M-parameter autoencoder (L1 + KL, 500
  steps), then 1000 epsilon-prediction UNet steps at a constant lr; sampled as its default then (ancestral
  DDPM, 10 steps, guidance 3). Its training wall time is the budget.
- ``foundation_ae``: the shipped foundation autoencoder with the old diffusion recipe and sampler, trained for
  the budget: the autoencoder's share of the change.
- ``new``: today's small64 defaults (foundation autoencoder; v-prediction, min-SNR-5, warm-up and cosine
  decay) and today's default sampler, trained for the budget. Its figures are the ``headline``.
- ``busi``: the new recipe on BUSI (normal, benign, malignant) at 64 px, for the same budget.

A budget in steps is found by timing: each arm first trains ``CALIBRATION_STEPS`` steps, then resumes to the
steps its measured rate fits into the rest of the budget. ``user_train_minutes`` is the wall time of the whole
``synthmed train`` of the new arm (data loading and latent encoding included): what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

OLD_AUTOENCODER = {
    "source": "train",
    "arch": {
        "channels": [32, 64, 64],
        "num_res_blocks": 1,
        "attention_levels": [False, False, False],
        "latent_channels": 3,
        "norm_num_groups": 16,
        "with_nonlocal_attn": False,
    },
    "steps": 500,
    "batch_size": 32,
    "lr": 0.001,
}
OLD_DIFFUSION = {
    "noise": {"prediction_type": "epsilon"},
    "snr_gamma": None,
    "warmup_steps": 0,
    "lr_decay": "none",
}
OLD_SAMPLER = {"sampler": "ddpm", "steps": 10, "guidance": 3.0}
CALIBRATION_STEPS = 40
HEADLINE = ("fid", "fid_floor", "recall", "recall_floor", "sharpness_ratio", "c2st_accuracy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--old-ae-steps", type=int, default=500)
    p.add_argument("--old-diffusion-steps", type=int, default=1000)
    p.add_argument("--images", type=int, default=300, help="synthetic images per class")
    p.add_argument("--budget-s", type=float, default=None, help="training budget (default: the old arm's)")
    p.add_argument("--work-dir", default="runs/bench-quality64")
    p.add_argument("--arms", nargs="+", default=["old", "new", "busi", "foundation_ae"])
    p.add_argument("--resume", action="store_true", help="reuse arms finished by a stopped run")


def _train(values: dict[str, Any], budget_s: float | None) -> tuple[Path, float, int]:
    """Train a run (to ``diffusion.steps``, or to what fits ``budget_s``); its dir, wall seconds and steps."""
    from synthmed.config import build_train_config
    from synthmed.training.run import train

    run_dir = Path(values["run_dir"])
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    if budget_s is None:
        train(build_train_config(values), progress=False)
        return run_dir, time.perf_counter() - t0, values["diffusion"]["steps"]
    first = {**values, "diffusion": {**values["diffusion"], "steps": CALIBRATION_STEPS}}
    train(build_train_config(first), progress=False)
    rows = [json.loads(x) for x in (run_dir / "diffusion" / "log.jsonl").read_text().splitlines()]
    rate = [r["steps_per_s"] for r in rows if "steps_per_s" in r][-1]
    left = budget_s - (time.perf_counter() - t0)
    steps = max(CALIBRATION_STEPS, CALIBRATION_STEPS + int(left * rate))
    train(
        build_train_config({**values, "diffusion": {**values["diffusion"], "steps": steps}}),
        resume=True,
        progress=False,
    )
    return run_dir, time.perf_counter() - t0, steps


def _generate(run_dir: Path, out: Path, classes: list[str], n: int, sampler: dict[str, Any]) -> None:
    from synthmed.config import GenerateConfig
    from synthmed.sampling.generate import generate_to_folder

    shutil.rmtree(out, ignore_errors=True)
    for label in classes:
        cfg = GenerateConfig(run_dir=run_dir, out=out, label=label, count=n, batch_size=100, precision="bf16")
        generate_to_folder(cfg.model_copy(update=sampler), progress=False)


def _figures(report: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """The issue's headline keys, with per-class recall and floors beside them."""
    head = report["headline"]
    div = report["diversity"]["all"]
    fidelity = report["fidelity"]
    return {
        **{k: head[k] for k in HEADLINE},
        "msssim": div["synthetic"]["value"],
        "msssim_real": div["holdout"]["value"],
        "recall_per_class": {
            c: {
                "recall": fidelity[c]["synthetic"]["recall"]["value"],
                "floor": fidelity[c]["real_floor"]["recall"]["value"],
            }
            for c in classes
            if c in fidelity
        },
        "c2st_ci95": head["c2st_ci95"],
        "warnings": head["warnings"],
        "verdicts": {r["measure"]: r["verdict"] for r in report["summary"]},
    }


def _arm(
    name: str,
    values: dict[str, Any],
    sampler: dict[str, Any],
    budget_s: float | None,
    args,
    classes: list[str],
) -> dict[str, Any]:
    from synthmed.config import EvaluateConfig
    from synthmed.evaluation.run import evaluate

    work = Path(args.work_dir)
    run_dir, wall, steps = _train({**values, "run_dir": str(work / name / "run")}, budget_s)
    t0 = time.perf_counter()
    _generate(run_dir, work / name / "synthetic", classes, args.images, sampler)
    generation_s = time.perf_counter() - t0
    cfg = EvaluateConfig(
        synthetic=work / name / "synthetic", out=work / name / "report", cache_dir=work / "cache"
    )
    report = json.loads((evaluate(cfg) / "report.json").read_text())
    return {
        **_figures(report, classes),
        "user_train_minutes": round(wall / 60, 2),
        "diffusion_steps": steps,
        "sampler": sampler or "default",
        "generation_s": round(generation_s, 1),
        "evaluate_s": report["timings_s"],
    }


def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    kermany = {"source": str(data / "cxr-kermany" / "train")}
    busi = {"source": str(data / "busi")}
    base = {"preset": "small64", "runtime": {"precision": "bf16"}}
    old = {
        **base,
        "data": kermany,
        "autoencoder": {**OLD_AUTOENCODER, "steps": args.old_ae_steps, "preview_every": 100000},
        "diffusion": {**OLD_DIFFUSION, "steps": args.old_diffusion_steps, "preview_every": 100000},
    }
    new = {**base, "data": kermany, "diffusion": {"preview_every": 100000}}
    arms = {
        "old": (old, OLD_SAMPLER, ["NORMAL", "PNEUMONIA"]),
        "foundation_ae": (
            {**new, "diffusion": {**OLD_DIFFUSION, "preview_every": 100000}},
            OLD_SAMPLER,
            None,
        ),
        "new": (new, {}, None),
        "busi": ({**new, "data": busi}, {}, ["normal", "benign", "malignant"]),
    }
    results: dict[str, Any] = {}
    budget = args.budget_s
    for name in args.arms:
        values, sampler, classes = arms[name]
        classes = classes or ["NORMAL", "PNEUMONIA"]
        done = Path(args.work_dir) / name / "result.json"  # --resume keeps an arm finished before a stop
        if args.resume and done.is_file():
            results[name] = json.loads(done.read_text())
        else:
            results[name] = _arm(name, values, sampler, None if name == "old" else budget, args, classes)
            done.write_text(json.dumps(results[name], indent=1))
        if name == "old" and budget is None:
            budget = results["old"]["user_train_minutes"] * 60
    from synthmed.models.foundation import shipped_card

    card = shipped_card()
    keys = (*HEADLINE, "msssim", "msssim_real", "user_train_minutes")
    head = results.get("new", {})
    return {
        "headline": {k: head.get(k) for k in keys},
        "old": {k: results["old"][k] for k in keys} if "old" in results else None,
        "busi": {k: results["busi"][k] for k in keys} if "busi" in results else None,
        "budget_s": budget,
        "foundation_autoencoder": {k: card[k] for k in ("sha256", "steps")},
        "arms": results,
    }
