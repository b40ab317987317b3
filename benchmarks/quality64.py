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

A budget in steps is found by timing (``--budget timed``, on an otherwise idle machine): each arm first
trains ``CALIBRATION_STEPS`` steps, then resumes to the steps its measured rate fits into the rest of the
budget. On a machine shared with other jobs a timed budget would measure them instead: ``--budget train64``
gives the new arms the UNet steps that the old recipe's training time buys on free cores
(results/train64.json). ``user_train_minutes`` is the wall time of the whole ``synthmed train`` of an arm
(data loading and latent encoding included): what a user waits for.
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
    p.add_argument(
        "--budget",
        choices=["timed", "train64"],
        default="timed",
        help="timed: the new arms train for the old arm's wall time in this run; train64: for as many UNet "
        "steps as the old recipe's time on free cores buys (results/train64.json), on a shared machine",
    )
    p.add_argument("--work-dir", default="runs/bench-quality64")
    p.add_argument("--arms", nargs="+", default=["old", "new", "busi", "foundation_ae"])
    p.add_argument("--resume", action="store_true", help="reuse arms finished by a stopped run")


def _train(values: dict[str, Any], budget: float | int | None, resume: bool) -> tuple[Path, float, int]:
    """Train a run: to ``diffusion.steps`` (budget None), that many steps (an int), or what fits a number of
    seconds (a float); its dir, wall seconds and diffusion steps. ``resume`` continues a stopped run."""
    from synthmed.config import build_train_config
    from synthmed.training.run import train

    run_dir = Path(values["run_dir"])
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    resume = resume and (run_dir / "config.yaml").is_file()
    t0 = time.perf_counter()
    if isinstance(budget, int):
        values = {**values, "diffusion": {**values["diffusion"], "steps": budget}}
    if not isinstance(budget, float):
        train(build_train_config(values), progress=False, resume=resume)
        return run_dir, time.perf_counter() - t0, values["diffusion"]["steps"]
    first = {**values, "diffusion": {**values["diffusion"], "steps": CALIBRATION_STEPS}}
    train(build_train_config(first), progress=False, resume=resume)
    rows = [json.loads(x) for x in (run_dir / "diffusion" / "log.jsonl").read_text().splitlines()]
    rate = [r["steps_per_s"] for r in rows if "steps_per_s" in r][-1]
    left = budget - (time.perf_counter() - t0)
    steps = max(CALIBRATION_STEPS, CALIBRATION_STEPS + int(left * rate))
    train(
        build_train_config({**values, "diffusion": {**values["diffusion"], "steps": steps}}),
        resume=True,
        progress=False,
    )
    return run_dir, time.perf_counter() - t0, steps


def train64_steps(results: Path) -> tuple[int, dict[str, Any]]:
    """Diffusion steps that the old recipe's whole training time buys the new one on free cores, from
    train64's figures for that recipe (500 autoencoder + 1000 UNet steps of the same UNet and batch): the
    UNet gets the autoencoder's training time on top of its own steps. For machines shared with other jobs,
    where a timed budget would measure the other jobs."""
    t = json.loads((results / "train64.json").read_text())["train"]
    ae_seconds = t["autoencoder_steps"] / t["autoencoder_steps_per_s"]
    steps = t["diffusion_steps"] + int(ae_seconds * t["diffusion_steps_per_s"])
    return steps, {"mode": "steps from train64", "train64": t, "diffusion_steps": steps}


def _generate(run_dir: Path, out: Path, classes: list[str], n: int, sampler: dict[str, Any]) -> None:
    from synthmed.config import GenerateConfig
    from synthmed.sampling.generate import generate_to_folder

    shutil.rmtree(out, ignore_errors=True)
    for label in classes:
        cfg = GenerateConfig(run_dir=run_dir, out=out, label=label, count=n, batch_size=100, precision="bf16")
        generate_to_folder(cfg.model_copy(update=sampler), progress=False)


def report_figures(report: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """The issue's headline keys, with per-class recall and floors beside them."""
    head = report["headline"]
    div = report["diversity"]["all"]
    fidelity = report["fidelity"]
    return {
        **{k: head[k] for k in HEADLINE},
        "msssim": div["synthetic"]["value"],
        "msssim_real": div["holdout"]["value"],
        "recall_per_class": {
            c: {  # None where the class had too few images to compute it (the report says why)
                "recall": _recall(fidelity[c], "synthetic"),
                "floor": _recall(fidelity[c], "real_floor"),
            }
            for c in classes
            if c in fidelity
        },
        "c2st_ci95": head["c2st_ci95"],
        "warnings": head["warnings"],
        "verdicts": {r["measure"]: r["verdict"] for r in report["summary"]},
    }


def _recall(entry: dict[str, Any], row: str) -> float | None:
    return entry.get(row, {}).get("recall", {}).get("value")


def _arm(
    name: str,
    values: dict[str, Any],
    sampler: dict[str, Any],
    budget_s: float | None,
    args,
    classes: list[str],
    reference_split: str = "holdout",
) -> dict[str, Any]:
    """Train, generate and evaluate one arm; ``reference_split`` val when the figures choose a setting."""
    from synthmed.config import EvaluateConfig
    from synthmed.evaluation.run import evaluate

    work = Path(args.work_dir)
    run_dir, wall, steps = _train({**values, "run_dir": str(work / name / "run")}, budget_s, args.resume)
    t0 = time.perf_counter()
    _generate(run_dir, work / name / "synthetic", classes, args.images, sampler)
    generation_s = time.perf_counter() - t0
    cfg = EvaluateConfig(
        synthetic=work / name / "synthetic",
        out=work / name / "report",
        cache_dir=work / "cache",
        reference_split=reference_split,
    )
    report = json.loads((evaluate(cfg) / "report.json").read_text())
    from synthmed.config import read_run_config
    from synthmed.models.foundation import shipped_card

    shipped = read_run_config(run_dir).autoencoder.source == "foundation"
    return {
        **report_figures(report, classes),
        "foundation_sha256": shipped_card()["sha256"] if shipped else None,  # a resumed arm keeps its own
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
        "autoencoder": {
            **OLD_AUTOENCODER,
            "steps": args.old_ae_steps,
            "preview_every": 100000,
            "checkpoint_every": 250,
        },
        "diffusion": {
            **OLD_DIFFUSION,
            "steps": args.old_diffusion_steps,
            "preview_every": 100000,
            "checkpoint_every": 250,
        },
    }
    new = {**base, "data": kermany, "diffusion": {"preview_every": 100000, "checkpoint_every": 250}}
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
    budget: float | int | None = args.budget_s
    budget_info: dict[str, Any] = {"mode": "timed", "seconds": budget}
    if args.budget == "train64":
        budget, budget_info = train64_steps(Path(__file__).parent / "results")
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
            budget_info["seconds"] = budget
    from synthmed.models.foundation import shipped_card

    card = shipped_card()
    keys = (*HEADLINE, "msssim", "msssim_real", "user_train_minutes")
    head = results.get("new", {})
    return {
        "headline": {k: head.get(k) for k in keys},
        "old": {k: results["old"][k] for k in keys} if "old" in results else None,
        "busi": {k: results["busi"][k] for k in keys} if "busi" in results else None,
        "budget": budget_info,
        "foundation_autoencoder": {k: card[k] for k in ("sha256", "steps")},
        "arms": results,
    }
