"""``python -m benchmarks.run resolution``: what 64, 128 and 256 px cost on this machine (issue 22, item 2).

For each preset (small64, small128, small256; all on the shipped foundation autoencoder, the latter two with
latents folded 2x2 into channels) on the same Kermany chest X-rays:

- encoding: seconds per training image to preprocess nothing (cached) and encode it once into the latent cache
  the diffusion stage trains on (the scale-factor estimate included);
- training: UNet steps/s at the preset's batch size (``--steps`` timed steps after ``--warmup``), the peak
  memory the steps add, and the minutes the generator issue's quality budget (1663 UNet steps, quality64's
  measured arm) and the preset's default budget take at that rate;
- generation: seconds per image at the default sampler (25 DDIM steps, guidance 3, decoding included) on a
  UNet trained ``--fit-steps`` steps (the speed does not depend on the weights), and the peak memory of
  decoding ``--decode-batch`` latents in one call against one image at a time (what tiling would save in 2D).

Minutes are measured rates times step counts, not trainings run to the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks.measure import PeakMemory, timed
from benchmarks.training import measure_steps
from synthmed.config import PRESETS, build_train_config
from synthmed.runtime import resolve_device
from synthmed.training.run import _stage_task, _trainer, load_training_data, train

MEASURED = ("small64", "small128", "small256")
#: The generator issue's measured UNet budget (quality64's 'new' arm).
QUALITY_STEPS = 1663


def _subset(data: Path, root: Path, per_class: int) -> Path:
    """``per_class`` Kermany training images of each class, copied into ``root`` (ingestion refuses links
    that leave a data folder)."""
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for src in sorted((data / "cxr-kermany" / "train" / cls).glob("*.jpeg"))[:per_class]:
            if not (root / cls / src.name).exists():
                shutil.copy(src, root / cls / src.name)
    return root


def _preset(preset: str, source: Path, work: Path, args: argparse.Namespace) -> dict:
    """One preset's row, measured from scratch (no cached latents) in the calling process."""
    torch.set_num_threads(args.threads)
    shutil.rmtree(work / preset, ignore_errors=True)
    values = {
        "preset": preset,
        "run_dir": str(work / preset),
        "data": {"source": str(source)},
        "runtime": {"precision": args.precision, "num_threads": args.threads},
        "diffusion": {"steps": args.fit_steps, "preview_every": 10**6, "checkpoint_every": 10**6},
    }
    cfg = build_train_config(values)
    device = resolve_device("auto")
    train(cfg, ["autoencoder"], progress=False)  # installs the shipped autoencoder
    data = load_training_data(cfg, device)
    with PeakMemory(device) as encode_memory:
        encode_s = timed(lambda: _stage_task(cfg, "diffusion", data, device))
    task = _stage_task(cfg, "diffusion", data, device)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = _trainer(
            task, cfg.diffusion, cfg.model_copy(update={"run_dir": Path(scratch)}), device, False
        )
        steps = measure_steps(trainer.train_step, args, device, cfg.diffusion.batch_size)
    rate = steps["steps_per_s"]
    train(cfg, ["diffusion"], progress=False)  # --fit-steps UNet steps: weights to time generation with
    return {
        "image_size": cfg.data.image_size,
        "unet_latents": [cfg.latent_channels, *(cfg.data.image_size // f for f in cfg.latent_factors)],
        "train_images": len(data.train_images),
        "encode_s_per_image": round(encode_s / len(data.train_images), 4),
        "encode_peak_mib": encode_memory.mib,
        "diffusion": steps | {"batch": cfg.diffusion.batch_size},
        "minutes_quality_budget": round(QUALITY_STEPS / rate / 60, 1),
        "minutes_preset_budget": round(PRESETS[preset]["diffusion"]["steps"] / rate / 60, 1),
        "preset_steps": PRESETS[preset]["diffusion"]["steps"],
    } | _generation(cfg, args)


@torch.inference_mode()
def _generation(cfg, args: argparse.Namespace) -> dict:
    from synthmed.sampling.pipeline import Pipeline

    pipe = Pipeline.load(cfg.run_dir, precision=args.precision)
    label = pipe.class_names[0]
    pipe.sample_batch([0], label, steps=2)  # warm-up: allocations, oneDNN kernel choice
    t0 = time.perf_counter()
    pipe.sample_batch(list(range(args.images)), label, steps=25, guidance=3.0)
    per_image = (time.perf_counter() - t0) / args.images
    latent = (cfg.latent_channels, *(cfg.data.image_size // f for f in cfg.latent_factors))
    z = torch.randn(args.decode_batch, *latent) * pipe.scale_factor
    with PeakMemory() as single:  # first: the whole batch's freed buffers would be reused unseen
        for one in z.split(1):
            pipe.decode(one)
    with PeakMemory() as whole:
        pipe.decode(z)
    return {
        "generate_s_per_image": round(per_image, 3),
        "decode_peak_mib": {f"batch_{args.decode_batch}": whole.mib, "one_at_a_time": single.mib},
    }


def run(args: argparse.Namespace, data: Path) -> dict:
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    source = _subset(data, work / "kermany", args.per_class)
    rows = {}
    for preset in args.presets:
        # A fresh process per preset: peak memory is then the preset's own, not the allocator's leftovers.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows[preset] = pool.submit(_preset, preset, source, work, args).result()
        print(preset, json.dumps(rows[preset]), flush=True)
    return {
        "benchmark": "resolution",
        "precision": args.precision,
        "threads": args.threads,
        "quality_budget_steps": QUALITY_STEPS,
        "presets": rows,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", nargs="+", default=list(MEASURED), choices=list(MEASURED))
    p.add_argument("--per-class", type=int, default=100, help="Kermany training images per class")
    p.add_argument("--steps", type=int, default=10, help="timed UNet training steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--fit-steps", type=int, default=2, help="UNet steps before timing generation")
    p.add_argument("--images", type=int, default=4, help="images generated in the timed batch")
    p.add_argument("--decode-batch", type=int, default=16)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default="runs/bench-resolution")
