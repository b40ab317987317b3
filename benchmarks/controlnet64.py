"""``python -m benchmarks.run controlnet64``: does a 2D mask ControlNet put lesions where the masks say?

A ``small64`` run is trained on BUSI (benign, malignant, normal; 64 px; BUSI's normal masks are empty) for a
fixed number of steps per stage, then its mask ControlNet. For every holdout image with a lesion mask, one
image of that image's class is generated for its mask, with seed i:

- ``controlnet``: the mask ControlNet at conditioning scale 1;
- ``baseline`` (same run): conditioning scale 0, i.e. the class-conditional model alone, same seeds.

A lesion segmenter (the evaluation stage's MONAI UNet), trained only on the real BUSI training images with
lesion masks (benign, malignant), segments every generated image; Dice against the conditioning mask is
reported for both, beside the same segmenter's Dice on the real holdout images (the ceiling a perfect
generator could reach with this segmenter). With ``--distilled 1 2 4`` the run is also distilled
(``synthmed distill``, default rounds, no lightweight decoder) and the teacher's ControlNet is put in front of
each student (``distilled_<N>``, scale 1; ``distilled_<N>_scale0`` beside it): does the ControlNet transfer?
Seconds per image are timed for every arm (one image at a time, the teacher's 25 DDIM steps or the student's,
guidance 3, VAE decoding included). ``--reuse-run`` keeps the trained run and its training
figures and measures again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from synthmed.config import build_train_config
from synthmed.data.masks import load_image_mask_pairs
from synthmed.data.sources import source_root
from synthmed.evaluation.condition import dice_hd95, segment, train_segmenter
from synthmed.sampling.pipeline import ImageCondition, Pipeline
from synthmed.training.run import load_training_data, train

CLASSES = ["benign", "malignant", "normal"]
RESULTS = Path(__file__).parent / "results"


def _train(args: argparse.Namespace, data: Path) -> tuple[dict, object]:
    steps = {
        "autoencoder": args.ae_steps,
        "diffusion": args.diffusion_steps,
        "controlnet": args.controlnet_steps,
    }
    values: dict = {
        "preset": "small64",
        "run_dir": args.run_dir,
        "data": {"source": str(data), "classes": CLASSES},
        "runtime": {"precision": args.precision, "num_threads": args.threads},
    }
    for stage, n in steps.items():
        values[stage] = values.get(stage, {}) | {"steps": n, "preview_every": n, "checkpoint_every": n}
    cfg = build_train_config(values)
    previous = RESULTS / "controlnet64.json"
    if args.reuse_run and previous.exists():  # the training figures of the run being reused
        return json.loads(previous.read_text())["train"], cfg
    if not args.reuse_run:
        shutil.rmtree(args.run_dir, ignore_errors=True)
    times = {}
    for stage in steps:
        t0 = time.perf_counter()
        train(cfg, [stage], resume=args.reuse_run, progress=False)
        times[stage] = round(time.perf_counter() - t0, 1)
    return {"steps": steps, "wall_s": times, "precision": args.precision, "threads": args.threads}, cfg


def lesion_pairs(cfg, split: str):
    """The run's ``split`` images with a lesion mask (benign, malignant), and their classes."""
    data = load_training_data(cfg, torch.device("cpu"))
    root = source_root(Path(cfg.data.source))
    records = [r for r in data.records if r.split == split and r.label != "normal"]  # lesion masks only
    pairs = load_image_mask_pairs([root / r.source for r in records], cfg.data)
    labels = {str(root / r.source): r.label for r in records}
    return pairs, [labels[s] for s in pairs.sources]


@torch.inference_mode()
def generate_for(
    pipe: Pipeline,
    maps: torch.Tensor,
    labels: list[str],
    scale: float,
    steps: int,
    sampler: str = "ddim",
    condition: str = "mask",
) -> tuple:
    """One image per (N, 1, S, S) condition map and class, with seed i, one at a time; and s/image."""
    images, t0 = [], time.perf_counter()
    for i, (mask, label) in enumerate(zip(maps, labels, strict=True)):
        control = ImageCondition(mask[None].float(), condition, scale)
        images.append(
            pipe.sample_batch([i], label, steps=steps, guidance=3.0, sampler=sampler, control=control)
        )
    return torch.cat(images), (time.perf_counter() - t0) / len(labels)


def _distil(args: argparse.Namespace) -> dict:
    """The run's students (made now unless they exist; resumable) and the minutes it took."""
    from synthmed.config import DistillConfig
    from synthmed.training.distill import distill

    t0 = time.perf_counter()
    cfg = DistillConfig(run_dir=Path(args.run_dir), decoder_steps=0, precision=args.precision)
    students = distill(cfg, resume=True, progress=False)
    return {
        "students": students,
        "wall_s": round(time.perf_counter() - t0, 1),
        "config": cfg.model_dump(mode="json"),
    }


def run(args: argparse.Namespace, data: Path) -> dict:
    torch.set_num_threads(args.threads)
    training, cfg = _train(args, data / "busi")
    train_pairs, _ = lesion_pairs(cfg, "train")
    holdout, labels = lesion_pairs(cfg, "holdout")
    t0 = time.perf_counter()
    segmenter = train_segmenter(
        train_pairs.images, train_pairs.masks, steps=args.segmenter_steps, batch_size=32, seed=0
    )
    seg_s = time.perf_counter() - t0
    pipe = Pipeline.load(args.run_dir, precision=args.precision)
    pipe.sample_batch([0], "benign", steps=2)  # warm-up: allocations, oneDNN kernel choice
    generated, seconds = {}, {}
    for arm, scale in (("controlnet", 1.0), ("baseline_scale0", 0.0)):
        generated[arm], seconds[arm] = generate_for(pipe, holdout.masks, labels, scale, args.steps)
    distillation = _distil(args) if args.distilled else None
    for k in args.distilled:
        for arm, scale in ((f"distilled_{k}", 1.0), (f"distilled_{k}_scale0", 0.0)):
            generated[arm], seconds[arm] = generate_for(pipe, holdout.masks, labels, scale, k, "distilled")
    dice = {arm: dice_hd95(segment(segmenter, x), holdout.masks) for arm, x in generated.items()}
    dice["real_holdout_ceiling"] = dice_hd95(segment(segmenter, holdout.images), holdout.masks)
    return {
        "benchmark": "controlnet64",
        "train": training,
        "segmenter": {
            "train_pairs": len(train_pairs.sources),
            "steps": args.segmenter_steps,
            "wall_s": round(seg_s, 1),
        },
        "holdout_masks": len(labels),
        "sampler": f"ddim {args.steps} steps, guidance 3, {args.precision}",
        "dice": {arm: d["dice"] for arm, d in dice.items()},
        "hd95_px": {arm: d["hd95"] for arm, d in dice.items()},
        "seconds_per_image": {arm: round(s, 3) for arm, s in seconds.items()},
    } | ({"distillation": distillation} if distillation else {})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ae-steps", type=int, default=400)
    p.add_argument("--diffusion-steps", type=int, default=800)
    p.add_argument("--controlnet-steps", type=int, default=600)
    p.add_argument("--segmenter-steps", type=int, default=400)
    p.add_argument("--steps", type=int, default=25, help="sampler steps")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run-dir", default="runs/bench-controlnet64")
    p.add_argument("--reuse-run", action="store_true", help="keep the trained run and its training figures")
    p.add_argument(
        "--distilled",
        type=int,
        nargs="*",
        default=[],
        help="also distil the run and measure the ControlNet in front of these students' step counts",
    )
