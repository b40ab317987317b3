"""``python -m benchmarks.run volume64``: 3D generation cost at 64^3 with a label map, rectified flow in 30
steps against DDPM in 1000 steps on the same network, in one run.

A ``vae3d`` run (rectified flow, MAISI style) is trained on MSD hippocampus MRI resampled to 0.7 mm so the
structure fills the 64^3 grid, for a fixed number of steps per stage. Then, on the same weights and the same
label map, one volume is generated (network + ControlNet per step, VAE decoding included) with:

- synthmed's default: the rflow sampler, 30 steps;
- the DDPM ancestral sampler, 1000 steps, through the identical code path (only the scheduler differs).

The network was trained for rectified flow, so the DDPM volumes are not meant to look right: the comparison is
of cost per volume at equal network cost per step, which is what MAISI's 30 vs 1000 steps claim is about.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.run import RunDir
from synthmed.config import build_train_config
from synthmed.diffusion.sampler import denoise, initial_noise
from synthmed.diffusion.tiled import decode_latents
from synthmed.models.builders import build_scheduler
from synthmed.sampling.pipeline import Pipeline, VolumeCondition
from synthmed.training.run import train

SPACING = (0.7, 0.7, 0.7)
RESULTS = Path(__file__).parent / "results"


def _subset(data: Path, work: Path, n: int) -> Path:
    """The first ``n`` image/label pairs: 64^3 encoding costs ~2 s per volume on 2 cores."""
    root = work / "hippocampus-subset"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for label in sorted((data / "labels").glob("*.nii.gz"))[: n + 2]:
        image = data / "images" / label.name
        if image.exists() and len(list((root / "labels").iterdir())) < n:
            shutil.copy(image, root / "images" / label.name)
            shutil.copy(label, root / "labels" / label.name)
    return root


def _train(args: argparse.Namespace, data: Path) -> dict:
    run_dir = Path(args.run_dir)
    previous = RESULTS / "volume64.json"
    if args.reuse_run and previous.exists():  # the training figures of the run being reused
        return json.loads(previous.read_text())["train"]
    if not args.reuse_run:
        shutil.rmtree(run_dir, ignore_errors=True)
    data = _subset(data, run_dir.parent / "bench-volume64-data", args.volumes)
    steps = {
        "autoencoder": args.ae_steps,
        "diffusion": args.diffusion_steps,
        "controlnet": args.controlnet_steps,
    }
    values = {
        "preset": "vae3d",
        "run_dir": str(run_dir),
        "data": {"source": str(data), "volume": {"spacing": list(SPACING)}},
        "runtime": {"precision": args.precision},
    }
    for stage, n in steps.items():
        values[stage] = {"steps": n, "preview_every": n, "checkpoint_every": n, "batch_size": args.batch_size}
    t0 = time.perf_counter()
    train(build_train_config(values), progress=False)
    return {
        "wall_s": round(time.perf_counter() - t0, 1),
        "volumes": args.volumes,
        "steps": steps,
        "batch_size": args.batch_size,
        "precision": args.precision,
    }


@torch.inference_mode()
def _one_volume(pipe: Pipeline, sampler: str, steps: int, labels: torch.Tensor) -> float:
    """Seconds for one 64^3 volume: denoising with the ControlNet, then (tiled) VAE decoding."""
    volume = VolumeCondition(SPACING, (64, 64, 64), labels)
    noise = initial_noise([0], pipe.latent_shape_for(volume.size), pipe.device)
    kind = "rflow" if sampler == "rflow" else "ddpm"
    scheduler = build_scheduler(pipe.cfg.diffusion.noise.model_copy(update={"kind": kind}), sampler, 3)
    class_labels = torch.zeros(1, dtype=torch.long)
    t0 = time.perf_counter()
    z = denoise(
        pipe.denoiser(1, volume), scheduler, noise, class_labels, null_label=1, steps=steps, guidance=1.0
    )
    decode_latents(pipe.autoencoder, z / pipe.scale_factor, tile=pipe.tile_size, overlap=pipe.tile_overlap)
    return time.perf_counter() - t0


def run(args: argparse.Namespace, data: Path) -> dict:
    training = _train(args, data / "hippocampus")
    pipe = Pipeline.load(args.run_dir)
    labels = ckpt.load(RunDir(Path(args.run_dir)).candidates)["label_maps"][:1].long()
    _one_volume(pipe, "rflow", 2, labels)  # warm-up: allocations, oneDNN kernel choice
    rflow = [_one_volume(pipe, "rflow", 30, labels) for _ in range(args.repeats)]
    ddpm = _one_volume(pipe, "ddpm", 1000, labels)
    best = min(rflow)
    return {
        "benchmark": "volume64",
        "train": training,
        "volume": {"size": [64, 64, 64], "spacing": list(SPACING), "with_label_map": True},
        "seconds_per_volume": {"rflow_30": round(best, 2), "ddpm_1000": round(ddpm, 2)},
        "rflow_30_all_runs_s": [round(t, 2) for t in rflow],
        "speedup_rflow30_vs_ddpm1000": round(ddpm / best, 1),
        "note": "same weights, label map and code path; VAE decoding included; fp32; the network was trained "
        "for rectified flow, so only the DDPM cost (not its images) is meaningful",
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--volumes", type=int, default=40, help="hippocampus pairs used (split 80/10/10)")
    p.add_argument("--ae-steps", type=int, default=150)
    p.add_argument("--diffusion-steps", type=int, default=300)
    p.add_argument("--controlnet-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--run-dir", default="runs/bench-volume64")
    p.add_argument("--reuse-run", action="store_true", help="continue/keep the trained run; time generation")
