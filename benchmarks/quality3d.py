"""quality3d: today's 3D recipe against the new ones at the same wall-clock training budget on MSD hippocampus
MRI at 1 mm (issue 25), judged by `synthmed evaluate` on the three views against the run's own holdout split.

Arms, each trained on the hippocampus training split at ``--size`` voxels and 1 mm on this machine:
- ``today``: the 3D recipe before issue 25, preset vae3d (its own 3D AutoencoderKL with L1 + KL, the
  spacing-conditioned rectified-flow UNet, the label-map ControlNet) for ``--today-steps`` AE / UNet /
  ControlNet steps. Its training wall time is the budget (or ``--budget-min``).
- ``ae_losses``: vae3d with the 3D autoencoder's adversarial (3D PatchDiscriminator), gradient and spectral
  losses (``--adv-weight``, ``--grad-weight``, ``--spectral-weight``), trained for the budget.
- ``slicewise``: preset small3d (the 3D default since this benchmark measured it the better): the shipped 2D
  foundation autoencoder encodes each axial slice, no autoencoder is trained; the 3D UNet and ControlNet get
  the whole budget.

The budget is shared out as ``today`` spent it: each stage's share of today's stage seconds (the slice-wise
arm gives the autoencoder's share to the other two, in proportion), turned into steps by each stage's step
time, timed before training on this machine (synthmed.training.estimate). ``train_minutes`` is the measured
wall time of the arm's whole ``synthmed train`` (data loading and latent encoding included).

Each arm generates ``--volumes`` volumes for label maps drawn from its training maps (rflow, 30 steps,
generate's 3D default conditioning scale, recorded per arm: arms at different scales are refused) and is
evaluated with ``--masks``: 2.5D FID and recall (axial, coronal, sagittal) with their real floors (holdout vs
train), sharpness ratio, 3D MS-SSIM, condition Dice of a segmenter trained on the real training pairs against
its real holdout ceiling. The ``headline`` is the new arm with the lowest 2.5D FID, named in
``headline_arm``, with the issue's keys; ``targets`` holds the issue's pass rules.

``--smoke`` runs toy sizes (16 volumes, tiny3d networks, 32 x 48 x 32 voxels, a few steps) into the work
folder's ``quality3d_smoke.json``: it proves the code path, not the claim; benchmarks/results is untouched.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

ARMS = ("today", "ae_losses", "slicewise")
STAGES = ("autoencoder", "diffusion", "controlnet")
HEADLINE = (
    "fid_25d",
    "fid_25d_floor",
    "recall_25d",
    "recall_25d_floor",
    "condition_dice",
    "condition_dice_ceiling",
    "sharpness_ratio",
    "train_minutes",
)
SMOKE = {
    "size": [32, 48, 32],  # the 3D MS-SSIM needs 22+ voxels a side
    "pairs": 16,
    "today_steps": [4, 4, 4],
    "volumes": 4,
    "sample_steps": 3,
    "extractor_steps": 10,
    "segmenter_steps": 10,
    "c2st_steps": 5,
    "bootstrap": 10,
    "msssim_pairs": 4,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, nargs=3, default=[32, 48, 32], help="voxels X Y Z at 1 mm")
    p.add_argument("--pairs", type=int, default=None, help="image/label pairs used (default: all)")
    p.add_argument(
        "--today-steps", type=int, nargs=3, default=[150, 300, 150], help="today's AE, UNet, ControlNet steps"
    )
    p.add_argument("--budget-min", type=float, default=None, help="training budget (default: today's)")
    p.add_argument("--adv-weight", type=float, default=0.05)
    p.add_argument("--grad-weight", type=float, default=0.5)
    p.add_argument("--spectral-weight", type=float, default=0.1)
    p.add_argument("--volumes", type=int, default=60, help="generated volumes per arm")
    p.add_argument("--sample-steps", type=int, default=30, help="rflow steps")
    add_evaluation_arguments(p)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--work-dir", default="runs/bench-quality3d")
    p.add_argument(
        "--resume", action="store_true", help="reuse arms (and arms' trainings) finished by a stopped run"
    )
    p.add_argument("--smoke", action="store_true", help="toy sizes: proves the code path, not the claim")


def add_evaluation_arguments(
    p: argparse.ArgumentParser,
    extractor: int = 600,
    segmenter: int = 400,
    bootstrap: int = 200,
    pairs: int = 300,
) -> None:
    """The settings of synthmed evaluate's 3D measures (see :func:`_evaluate`)."""
    p.add_argument("--extractor-steps", type=int, default=extractor)
    p.add_argument("--segmenter-steps", type=int, default=segmenter)
    p.add_argument("--c2st-steps", type=int, default=100)
    p.add_argument("--bootstrap", type=int, default=bootstrap)
    p.add_argument("--msssim-pairs", type=int, default=pairs)


def _sizes(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**(vars(args) | (SMOKE if args.smoke else {})))


def _data(args: argparse.Namespace, data: Path, work: Path) -> Path:
    """The hippocampus set, or (``--pairs``) its first N complete pairs copied into the work folder."""
    src = data / "hippocampus"
    if args.pairs is None:
        return src
    root = work / "data"
    shutil.rmtree(root, ignore_errors=True)
    paired = [p for p in sorted((src / "images").glob("*.nii.gz")) if (src / "labels" / p.name).exists()]
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
        for image in paired[: args.pairs]:
            shutil.copy(src / sub / image.name, root / sub / image.name)
    return root


def _recipes(args: argparse.Namespace, source: Path) -> dict[str, dict[str, Any]]:
    preset = "tiny3d" if args.smoke else "vae3d"
    volume = {"size": list(args.size), "spacing": [1.0, 1.0, 1.0]}
    split = {"holdout_fraction": 0.25} if args.smoke else {}  # a few holdout volumes even among 16
    base = {"preset": preset, "seed": 0, "data": {"source": str(source), "volume": volume} | split}
    quiet = {"preview_every": 100000, "checkpoint_every": 100000}
    today = base | {s: quiet | {"steps": n} for s, n in zip(STAGES, args.today_steps, strict=True)}
    losses = {"adv_weight": args.adv_weight, "grad_weight": args.grad_weight}
    losses |= {"spectral_weight": args.spectral_weight, "disc_channels": 8 if args.smoke else 32}
    slicewise = base | {"preset": "small3d"}
    if args.smoke:  # tiny3d's UNet and ControlNet on the foundation autoencoder
        from synthmed.config import PRESETS

        tiny = PRESETS["tiny3d"]
        foundation = PRESETS["small3d"]["autoencoder"]
        slicewise = base | {"autoencoder": foundation} | {s: tiny[s] for s in ("diffusion", "controlnet")}
    return {
        "today": today,
        "ae_losses": today | {"autoencoder": today["autoencoder"] | losses},
        "slicewise": slicewise | {s: quiet for s in STAGES[1:]},
    }


def _train(values: dict[str, Any]) -> float:
    """Train every stage of a fresh run; its wall seconds."""
    from synthmed.config import build_train_config
    from synthmed.training.run import train

    shutil.rmtree(values["run_dir"], ignore_errors=True)
    t0 = time.perf_counter()
    train(build_train_config(values), progress=False)
    return time.perf_counter() - t0


def _stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds each trained stage spent stepping, from its log's steps and rate."""
    from benchmarks.measure import stepping_seconds

    logs = {stage: run_dir / stage / "log.jsonl" for stage in STAGES}
    return {stage: stepping_seconds(log) for stage, log in logs.items() if log.is_file()}


def _budget_steps(values: dict[str, Any], shares: dict[str, float], seconds: float) -> dict[str, int]:
    """Steps per stage that spend ``shares`` of ``seconds``, by step times measured on this machine."""
    from synthmed.config import build_train_config
    from synthmed.runtime import resolve_device
    from synthmed.training.estimate import estimate_stages
    from synthmed.training.run import load_training_data

    probe = {s: values.get(s, {}) | {"steps": 1} for s in STAGES}
    cfg = build_train_config(values | probe | {"run_dir": str(Path(values["run_dir"]).parent / "probe")})
    device = resolve_device(cfg.runtime.device)
    data = load_training_data(cfg, device)
    per_step = estimate_stages(cfg, [s for s in STAGES if s in shares], data, device)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    total = sum(shares[s] for s in per_step)
    return {s: max(2, int(seconds * shares[s] / total / per_step[s])) for s in per_step}


def _generate(run_dir: Path, out: Path, args: argparse.Namespace) -> float:
    from synthmed.config import GenerateConfig
    from synthmed.sampling.generate import generate_to_folder

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    cfg = GenerateConfig(run_dir=run_dir, out=out, count=args.volumes, steps=args.sample_steps, batch_size=2)
    generate_to_folder(cfg, progress=False)
    return time.perf_counter() - t0


def _real_sets(run_dir: Path, source: Path, work: Path) -> dict[str, Path]:
    """The run's training and holdout pairs copied into folders evaluate reads ({images,labels}/)."""
    split = json.loads((run_dir / "split.json").read_text())
    roots = {}
    for name in ("train", "holdout"):
        root = work / "real" / name
        shutil.rmtree(root, ignore_errors=True)
        for item in (i for i in split["items"] if i["split"] == name):
            image = Path(item["source"])  # images/<name>.nii.gz
            for sub in ("images", "labels"):
                (root / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(source / sub / image.name, root / sub / image.name)
        roots[name] = root
    return roots


def _evaluate(
    synthetic: Path,
    real: dict[str, Path],
    out: Path,
    args: argparse.Namespace,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> dict[str, Any]:
    """synthmed evaluate's report on ``synthetic`` volumes of ``args.size`` voxels at ``spacing`` mm."""
    from synthmed.config import EvaluateConfig
    from synthmed.evaluation.run import evaluate

    cfg = EvaluateConfig(
        real=real["train"],
        holdout=real["holdout"],
        synthetic=synthetic,
        out=out,
        masks=True,
        volume_size=tuple(args.size),
        volume_spacing=spacing,
        image_size=32 if args.smoke else 64,
        extractor_steps=args.extractor_steps,
        segmenter_steps=args.segmenter_steps,
        c2st_steps=args.c2st_steps,
        bootstrap=args.bootstrap,
        msssim_pairs=args.msssim_pairs,
        cache_dir=Path(args.work_dir) / "cache",
    )
    return json.loads((evaluate(cfg) / "report.json").read_text())


def figures(report: dict[str, Any], train_s: float) -> dict[str, Any]:
    """The issue's headline keys of one evaluation report, with per-view and per-label figures beside them."""
    labels = report["condition_fidelity"].get("labels", {})
    dice = [v["synthetic"]["dice"]["mean"] for v in labels.values()]
    ceiling = [v["holdout_ceiling"]["dice"]["mean"] for v in labels.values()]
    views = {v: report["fidelity"][v] for v in ("axial", "coronal", "sagittal")}
    diversity = report["diversity"]["all"]
    return {
        "fid_25d": report["fid_25d"]["synthetic"],
        "fid_25d_floor": report["fid_25d"]["real_floor"],
        "recall_25d": report["recall_25d"]["synthetic"],
        "recall_25d_floor": report["recall_25d"]["real_floor"],
        "condition_dice": sum(dice) / len(dice) if dice else None,
        "condition_dice_ceiling": sum(ceiling) / len(ceiling) if ceiling else None,
        "sharpness_ratio": report["sharpness"]["all"]["sharpness_ratio"]["value"],
        "train_minutes": round(train_s / 60, 2),
        "per_view": {
            v: {
                side: {k: f[side][k]["value"] for k in ("fid", "recall") if k in f.get(side, {})}
                for side in ("synthetic", "real_floor")
            }
            for v, f in views.items()
        },
        "condition_dice_per_label": {k: v["synthetic"]["dice"]["mean"] for k, v in labels.items()},
        "intensity_ks": report["condition_fidelity"].get("intensity", {}).get("ks_test"),
        "msssim_3d": diversity["synthetic"]["value"],
        "msssim_3d_real": diversity["holdout"]["value"],
        "warnings": report["headline"]["warnings"],
    }


def targets(head: dict[str, Any]) -> dict[str, Any]:
    """The issue's pass rules on the headline, each with its figures."""

    def rule(ok: bool | None, text: str) -> dict[str, Any]:
        return {"rule": text, "met": ok}

    fid, floor = head["fid_25d"], head["fid_25d_floor"]
    dice, ceiling = head["condition_dice"], head["condition_dice_ceiling"]
    return {
        "fid": rule(None if fid is None or floor is None else fid <= 3 * floor, "2.5D FID <= 3 x its floor"),
        "dice": rule(
            None if dice is None or ceiling is None else dice >= 0.7 * ceiling,
            "condition Dice >= 0.7 x ceiling",
        ),
        "sharpness": rule(head["sharpness_ratio"] >= 0.8, "sharpness ratio >= 0.8"),
        "time": rule(head["train_minutes"] <= 90, "training <= 90 min"),
    }


def _arm(name: str, values: dict[str, Any], args: argparse.Namespace) -> dict:
    """Train (or, with --resume, reuse the arm's finished training), generate, evaluate."""
    work = Path(args.work_dir) / name
    trained = work / "train.json"  # written once training finished: a resumed run never reuses half of one
    if args.resume and trained.is_file():
        seconds = json.loads(trained.read_text())["seconds"]
    else:
        seconds = _train(values)
        trained.parent.mkdir(parents=True, exist_ok=True)
        trained.write_text(json.dumps({"seconds": seconds, "values": values}))
    run_dir = Path(values["run_dir"])
    real = _real_sets(run_dir, Path(values["data"]["source"]), work)
    generation_s = _generate(run_dir, work / "synthetic", args)
    report = _evaluate(work / "synthetic", real, work / "report", args)
    steps = {s: values[s]["steps"] for s in STAGES if "steps" in values.get(s, {})}
    return figures(report, seconds) | {
        "conditioning_scale": _conditioning_scale(work / "synthetic"),
        "steps": steps,
        "stage_seconds": _stage_seconds(run_dir),
        "generation_s": round(generation_s, 1),
        "evaluate_s": report["timings_s"],
    }


def _conditioning_scale(synthetic: Path) -> float:
    """The label-map ControlNet's scale the arm's volumes were generated at (generate's default for 3D)."""
    from synthmed.artifacts.manifest import read_manifest

    rows = read_manifest(synthetic / "manifest.jsonl")
    scales = {row["conditioning_scale"] for row in rows if "conditioning_scale" in row}
    if len(scales) != 1:
        raise SystemExit(f"{synthetic}: volumes generated at several conditioning scales {sorted(scales)}")
    return float(scales.pop())


def _same_scale(results: dict[str, Any], work: Path) -> None:
    """Arms are compared at one conditioning scale: a resumed arm generated at another default is refused."""
    for name, result in results.items():
        result.setdefault("conditioning_scale", _conditioning_scale(work / name / "synthetic"))
    scales = {n: r["conditioning_scale"] for n, r in results.items()}
    if len(set(scales.values())) > 1:
        raise SystemExit(
            f"arms generated at different conditioning scales {scales}: delete the result.json of those "
            "at the old scale and rerun with --resume (their trainings are reused)"
        )


def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    args = _sizes(args)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    source = _data(args, data, work)
    recipes = {n: r | {"run_dir": str(work / n / "run")} for n, r in _recipes(args, source).items()}
    results: dict[str, Any] = {}
    budget_s = None if args.budget_min is None else args.budget_min * 60
    for name in ["today", *[a for a in args.arms if a != "today"]]:
        done = work / name / "result.json"
        if args.resume and done.is_file():
            results[name] = json.loads(done.read_text())
        else:
            values = recipes[name]
            trained = work / name / "train.json"
            if args.resume and trained.is_file():  # trained by a stopped run: its steps
                values = json.loads(trained.read_text())["values"]
            elif name != "today":  # the budget, shared out as today spent it
                today = results["today"]
                shares = dict(today["stage_seconds"])
                if name == "slicewise":
                    shares.pop("autoencoder", None)
                spent = sum(today["stage_seconds"].values())
                stepping = (budget_s or today["train_minutes"] * 60) * spent / (today["train_minutes"] * 60)
                steps = _budget_steps(values, shares, stepping)
                values = values | {s: values.get(s, {}) | {"steps": n} for s, n in steps.items()}
            results[name] = _arm(name, values, args)
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(results[name], indent=1))
    _same_scale(results, work)
    new = {n: r for n, r in results.items() if n != "today" and r["fid_25d"] is not None}
    best = min(new, key=lambda n: new[n]["fid_25d"]) if new else "today"
    head = {k: results[best][k] for k in HEADLINE}
    return {
        "headline": head,
        "headline_arm": best,
        "targets": targets(head),
        "arms": results,
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "smoke": args.smoke,
    }
