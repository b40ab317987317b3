"""``python -m benchmarks.run distill3d``: distilled few-step 3D generation (issue 23's 3D target) against the
rectified-flow teacher at 30 steps, on the 64^3 hippocampus model, in one run on the same weights.

- Teacher: ``--run-dir`` (a trained 3D rectified-flow run with its label-map ControlNet), or, when it has no
  trained model, a ``vae3d`` run trained here as ``volume64`` trains it (MSD hippocampus at 0.7 mm so the
  structure fills the 64^3 grid; ``--volumes`` pairs; fixed steps per stage).
- Distillation: ``synthmed distill`` (rectified-flow halving from ``--teacher-steps`` down to 1 step, the
  label-map ControlNet attached), timed, unless its students exist (then the minutes come from its logs).
- Rows: the teacher (rflow, 30 steps) and the students at 1, 2 and 4 steps. Each: seconds per 64^3 volume with
  its label map (ControlNet and tiled VAE decoding included; the best of ``--repeats`` after a warm-up), then
  ``--generate`` volumes for label maps drawn from the training maps, judged by ``synthmed evaluate`` against
  the run's own split: 2.5D FID and recall (axial, coronal, sagittal) with the real floor, sharpness ratio,
  condition Dice of the evaluation's segmenter against its real holdout ceiling (the figures quality3d
  reports).

``--smoke`` runs toy sizes (tiny3d, 32 x 48 x 32 voxels, a few steps) into the work folder's
``distill3d_smoke.json``: it proves the code path, not the claim; benchmarks/results is untouched.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import quality3d, volume64

STUDENT_STEPS = (1, 2, 4)
TEACHER_STEPS = 30
SMOKE = {
    "size": [32, 48, 32],  # the 3D MS-SSIM needs 22+ voxels a side
    "spacing": [1.0, 1.0, 1.0],
    "volumes": 8,
    "stage_steps": [4, 4, 4],
    "teacher_steps": 4,
    "round_steps": 2,
    "generate": 2,
    "repeats": 1,
    "extractor_steps": 5,
    "segmenter_steps": 5,
    "c2st_steps": 5,
    "bootstrap": 10,
    "msssim_pairs": 2,
    "precision": "fp32",  # tiny3d's first steps overflow in bf16
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir", default="runs/bench-distill3d/run", help="the 3D teacher (trained if missing)"
    )
    p.add_argument("--work-dir", default="runs/bench-distill3d")
    p.add_argument("--size", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--spacing", type=float, nargs=3, default=list(volume64.SPACING))
    p.add_argument("--volumes", type=int, default=40, help="hippocampus pairs of a teacher trained here")
    p.add_argument(
        "--stage-steps",
        type=int,
        nargs=3,
        default=[60, 200, 100],
        help="AE, UNet, ControlNet steps (teacher)",
    )
    p.add_argument("--teacher-steps", type=int, default=16, help="distill: halving starts from this grid")
    p.add_argument("--round-steps", type=int, default=50, help="distill: optimiser steps per round")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=2, help="timed volumes per row (the best counts)")
    p.add_argument("--generate", type=int, default=16, help="volumes per row for the quality measures")
    quality3d.add_evaluation_arguments(p, extractor=300, segmenter=300, bootstrap=100, pairs=60)
    p.add_argument("--smoke", action="store_true", help="toy sizes: proves the code path, not the claim")


def _teacher(args: argparse.Namespace, data: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    """The teacher run (trained here when ``--run-dir`` has none) and its training figures."""
    from synthmed.config import build_train_config
    from synthmed.training.run import train

    run_dir = Path(args.run_dir)
    record = work / "teacher.json"
    if (run_dir / "diffusion" / "model.pt").is_file():
        return run_dir, json.loads(record.read_text()) if record.is_file() else {"trained": "before"}
    source = volume64._subset(data, work / "data", args.volumes)
    values: dict[str, Any] = {
        "preset": "tiny3d" if args.smoke else "vae3d",
        "run_dir": str(run_dir),
        "data": {"source": str(source), "volume": {"size": list(args.size), "spacing": list(args.spacing)}},
        "runtime": {"precision": args.precision},
    }
    if args.smoke:
        values["data"]["holdout_fraction"] = 0.25
    for stage, n in zip(quality3d.STAGES, args.stage_steps, strict=True):
        values[stage] = {"steps": n, "preview_every": n, "checkpoint_every": n, "batch_size": 2}
    t0 = time.perf_counter()
    train(build_train_config(values), progress=False)
    found = {"wall_s": round(time.perf_counter() - t0, 1), "volumes": args.volumes, "steps": args.stage_steps}
    record.write_text(json.dumps(found))
    return run_dir, found


def _distill(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from synthmed.artifacts.run import RunDir
    from synthmed.config import DistillConfig
    from synthmed.training.distill import distill

    had = bool(RunDir(run_dir).distilled_steps())
    cfg = DistillConfig(
        run_dir=run_dir,
        teacher_steps=args.teacher_steps,
        steps=args.round_steps,
        batch_size=2,
        decoder_steps=0,
        precision=args.precision,
        checkpoint_every=max(1, args.round_steps // 2),
    )
    t0 = time.perf_counter()
    students = distill(cfg, resume=True, progress=not args.smoke)
    if had:
        from benchmarks.distill64 import minutes_from_logs

        minutes, source = minutes_from_logs(RunDir(run_dir), "students"), "its logs (made before)"
    else:
        minutes, source = round((time.perf_counter() - t0) / 60, 2), "timed in this benchmark"
    return {
        "students": students,
        "distill_minutes": minutes,
        "source": source,
        "config": cfg.model_dump(mode="json"),
    }


@torch.inference_mode()
def _seconds_per_volume(pipe, sampler: str, steps: int, labels: torch.Tensor, args) -> float:
    """The best of ``repeats`` single volumes with their label map, decoding included, after a warm-up."""
    from synthmed.sampling.pipeline import VolumeCondition

    volume = VolumeCondition(tuple(args.spacing), tuple(args.size), labels)
    pipe.sample_batch([0], None, steps=steps, sampler=sampler, volume=volume)
    times = []
    for k in range(args.repeats):
        t0 = time.perf_counter()
        pipe.sample_batch([k + 1], None, steps=steps, sampler=sampler, volume=volume)
        times.append(time.perf_counter() - t0)
    return min(times)


def _quality(
    run_dir: Path, sampler: str, steps: int, real: dict[str, Path], out: Path, args
) -> dict[str, Any]:
    """``--generate`` volumes of the row, judged by synthmed evaluate (quality3d's figures)."""
    import shutil

    from synthmed.config import GenerateConfig
    from synthmed.sampling.generate import generate_to_folder

    shutil.rmtree(out, ignore_errors=True)
    gen = GenerateConfig(
        run_dir=run_dir,
        out=out / "synthetic",
        count=args.generate,
        steps=steps,
        sampler=sampler,
        batch_size=2,
    )
    generate_to_folder(gen, progress=False)
    report = quality3d._evaluate(out / "synthetic", real, out / "report", args, tuple(args.spacing))
    return quality3d.figures(report, 0.0)


def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    from synthmed.artifacts import checkpoint as ckpt
    from synthmed.artifacts.run import RunDir
    from synthmed.sampling.pipeline import Pipeline

    args = argparse.Namespace(**(vars(args) | (SMOKE if args.smoke else {})))
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    run_dir, teacher = _teacher(args, data / "hippocampus", work)
    distilled = _distill(run_dir, args)
    pipe = Pipeline.load(run_dir, precision=args.precision)
    labels = ckpt.load(RunDir(run_dir).candidates)["label_maps"][:1].long()
    real = quality3d._real_sets(run_dir, Path(pipe.cfg.data.source), work)
    plan = [("teacher", "rflow", TEACHER_STEPS)]
    plan += [("student", "distilled", k) for k in STUDENT_STEPS if k in distilled["students"]]
    rows = []
    for role, sampler, steps in plan:
        seconds = _seconds_per_volume(pipe, sampler, steps, labels, args)
        quality = _quality(run_dir, sampler, steps, real, work / f"{sampler}-{steps}", args)
        keep = ("fid_25d", "fid_25d_floor", "recall_25d", "recall_25d_floor", "condition_dice")
        keep += ("condition_dice_ceiling", "sharpness_ratio", "per_view", "msssim_3d", "msssim_3d_real")
        row = {"row": role, "sampler": sampler, "steps": steps, "seconds_per_volume": round(seconds, 3)}
        rows.append(row | {k: quality[k] for k in keep})
        print({k: v for k, v in rows[-1].items() if k != "per_view"}, flush=True)
    for row in rows[1:]:
        row["speedup_vs_teacher"] = round(rows[0]["seconds_per_volume"] / row["seconds_per_volume"], 1)
    return {
        "benchmark": "distill3d",
        "smoke": args.smoke,
        "run_dir": str(run_dir),
        "teacher_training": teacher,
        "volume": {"size": list(args.size), "spacing": list(args.spacing), "with_label_map": True},
        "precision": args.precision,
        "distillation": distilled,
        "rows": rows,
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
    }
