"""``python -m benchmarks.run thin128``: do 128 px ControlNets follow thin structures? (issue 22, item 3)

A ``small128`` run (the shipped foundation autoencoder, latents folded 2x2 into 16x16x16 cells) is trained on
BUSI (benign, malignant, normal; 128 px) for the generator issue's measured UNet budget, then a mask
ControlNet and an edges (Canny) ControlNet, each for ``--controlnet-steps`` (default: the preset's). Every
holdout image with a lesion mask (benign, malignant) gives one image of its class per arm, seed i, the default
sampler (25 DDIM steps, guidance 3) at each ControlNet's conditioning scale, the best of ``--scales`` on the
validation lesion images (as label3d chooses 3D's; the holdout images only measure the choice) and, as the
baseline, scale 0:

- mask: a lesion segmenter (the evaluation stage's MONAI UNet) trained only on the real training pairs
  segments the generated images; Dice against the conditioning masks beside the same segmenter's Dice on the
  real holdout images (the ceiling). Target: ratio >= 0.8.
- edges: the holdout image's Canny edges (the run's edge_sigma) condition the image; the generated image's
  Canny edges are scored against them by F1 with a 1 and a 2 px tolerance
  (:func:`synthmed.evaluation.condition.edge_f1`). References: the real holdout images and their own edges
  (the issue's reference, 1 by construction) and the autoencoder's reconstructions of them (the most any
  generator on this autoencoder can reach). Target: F1 at 2 px >= 0.8 of the real reference.

``realism`` gives each generated set's sharpness ratio and intensities beside the real holdout images' (what
a strong conditioning scale may cost), and ``--figure`` shows holdout conditions and their images.

``--resume`` keeps the trained stages (train.json), continues a stage from its checkpoint when more steps are
asked for, and measures again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.controlnet64 import CLASSES, generate_for, lesion_pairs
from benchmarks.resolution import QUALITY_STEPS
from synthmed.config import build_train_config
from synthmed.data.structure import structure_maps
from synthmed.evaluation.condition import dice_hd95, edge_f1, segment, summarise, train_segmenter
from synthmed.evaluation.sharpness import laplacian_energy
from synthmed.sampling.pipeline import Pipeline
from synthmed.training.run import train

TOLERANCES = (1.0, 2.0)
FIGURE_ROWS = 6
STAGES = ("autoencoder", "diffusion", "controlnet-mask", "controlnet-edges")


def _config(args: argparse.Namespace, data: Path, condition: str = "mask"):
    values: dict = {
        "preset": "small128",
        "run_dir": str(Path(args.work_dir) / "run"),
        "data": {"source": str(data / "busi"), "classes": CLASSES},
        "runtime": {"precision": args.precision, "num_threads": args.threads},
        "diffusion": {"steps": args.diffusion_steps, "preview_every": 10**6, "checkpoint_every": 250},
        "controlnet": {"condition": condition, "checkpoint_every": 250},
    }
    if args.controlnet_steps is not None:
        values["controlnet"]["steps"] = args.controlnet_steps
    return build_train_config(values)


def _train(args: argparse.Namespace, data: Path) -> dict:
    """Every stage not yet trained to its steps, resumed from its checkpoint (train.json records each stage's
    steps and wall time, summed over resumptions; an entry of a bare number, written before steps were
    recorded, is a finished stage). Returns the wall seconds per stage."""
    record = Path(args.work_dir) / "train.json"
    done = json.loads(record.read_text()) if args.resume and record.is_file() else {}
    for stage in STAGES:
        name, _, condition = stage.partition("-")
        cfg = _config(args, data, condition or "mask")
        steps = 0 if name == "autoencoder" else getattr(cfg, name).steps  # the foundation one is installed
        entry = done.get(stage)
        if isinstance(entry, (int, float)) or (entry and entry["steps"] >= steps):
            continue
        t0 = time.perf_counter()
        train(cfg, [name], resume=True, progress=False)
        wall = (entry["wall_s"] if entry else 0.0) + time.perf_counter() - t0
        done[stage] = {"wall_s": round(wall, 1), "steps": steps}
        record.write_text(json.dumps(done, indent=1))
    return {k: v if isinstance(v, (int, float)) else v["wall_s"] for k, v in done.items()}


def _edges(pipe: Pipeline, images: torch.Tensor) -> torch.Tensor:
    return structure_maps(images, "edges", pipe.cfg.controlnet.edge_sigma)


def _f1(pred: torch.Tensor, target: torch.Tensor) -> dict:
    return {f"{t:g}px": summarise(edge_f1(pred, target, t), seed=0) for t in TOLERANCES}


@torch.inference_mode()
def _reconstructed(pipe: Pipeline, images: torch.Tensor) -> torch.Tensor:
    z = pipe.autoencoder.encode(images.to(pipe.device))[0].float() * pipe.scale_factor
    return pipe.decode(z)


def _choose_scales(pipe: Pipeline, segmenter, cfg, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Each ControlNet's conditioning scale, the best of ``--scales`` on the validation lesion images (the
    holdout images only measure the choice), and the validation rows."""
    if len(args.scales) == 1:
        return {"mask": args.scales[0], "edges": args.scales[0]}, []
    val, labels = lesion_pairs(cfg, "val")
    edges = _edges(pipe, val.images)
    rows = []
    for scale in args.scales:
        masked, _ = generate_for(pipe, val.masks, labels, scale, args.steps)
        edged, _ = generate_for(pipe, edges, labels, scale, args.steps, condition="edges")
        rows.append(
            {
                "scale": scale,
                "val_images": len(labels),
                "val_mask_dice": dice_hd95(segment(segmenter, masked), val.masks)["dice"]["mean"],
                "val_edge_f1_2px": float(edge_f1(_edges(pipe, edged), edges, 2.0).mean()),
            }
        )
    best = {
        "mask": max(rows, key=lambda r: r["val_mask_dice"])["scale"],
        "edges": max(rows, key=lambda r: r["val_edge_f1_2px"])["scale"],
    }
    return best, rows


def run(args: argparse.Namespace, data: Path) -> dict:
    torch.set_num_threads(args.threads)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    wall = _train(args, data)
    cfg = _config(args, data)
    train_pairs, _ = lesion_pairs(cfg, "train")
    holdout, labels = lesion_pairs(cfg, "holdout")
    segmenter = train_segmenter(
        train_pairs.images, train_pairs.masks, steps=args.segmenter_steps, batch_size=32, seed=0
    )
    pipe = Pipeline.load(cfg.run_dir, precision=args.precision)
    pipe.sample_batch([0], labels[0], steps=2)  # warm-up: allocations, oneDNN kernel choice
    chosen, validation = _choose_scales(pipe, segmenter, cfg, args)
    cond_edges = _edges(pipe, holdout.images)
    dice, f1, seconds, made = {}, {}, {}, {}
    for arm in ("controlnet", "baseline_scale0"):
        scale = {"mask": 0.0, "edges": 0.0} if arm == "baseline_scale0" else chosen
        masked, seconds[f"mask_{arm}"] = generate_for(pipe, holdout.masks, labels, scale["mask"], args.steps)
        dice[arm] = dice_hd95(segment(segmenter, masked), holdout.masks)["dice"]
        edged, seconds[f"edges_{arm}"] = generate_for(
            pipe, cond_edges, labels, scale["edges"], args.steps, condition="edges"
        )
        f1[arm] = _f1(_edges(pipe, edged), cond_edges)
        made[f"mask_{arm}"], made[f"edges_{arm}"] = masked, edged
    _figure(holdout.images, holdout.masks, cond_edges, made, Path(args.figure))
    dice["real_holdout_ceiling"] = dice_hd95(segment(segmenter, holdout.images), holdout.masks)["dice"]
    f1["real_holdout_own_edges"] = _f1(_edges(pipe, holdout.images), cond_edges)
    f1["autoencoder_reconstruction"] = _f1(_edges(pipe, _reconstructed(pipe, holdout.images)), cond_edges)
    return {
        "benchmark": "thin128",
        "headline": _headline(dice, f1, wall),
        "train": {
            "wall_s": wall,
            "diffusion_steps": args.diffusion_steps,
            "controlnet_steps": cfg.controlnet.steps,
        },
        "segmenter": {"train_pairs": len(train_pairs.sources), "steps": args.segmenter_steps},
        "holdout_images": len(labels),
        "sampler": f"ddim {args.steps} steps, guidance 3, {args.precision}",
        "chosen_scale": chosen,
        "validation": validation,
        "mask_dice": dice,
        "edge_f1": f1,
        "realism": _realism(holdout.images, made),
        "figure": args.figure,
        "seconds_per_image": {arm: round(s, 3) for arm, s in seconds.items()},
    }


def _realism(real: torch.Tensor, made: dict[str, torch.Tensor]) -> dict:
    """What a strong conditioning scale may cost: each generated set's sharpness (mean |Laplacian|) over the
    real holdout images' (issue 16's sharpness ratio; 0.8-1.25 is its target) and its mean and spread of
    intensity beside theirs."""
    base = float(laplacian_energy(real).mean())
    out = {"real": {"intensity_mean": float(real.mean()), "intensity_std": float(real.std())}}
    for name, images in made.items():
        out[name] = {
            "sharpness_ratio": float(laplacian_energy(images).mean()) / base,
            "intensity_mean": float(images.mean()),
            "intensity_std": float(images.std()),
        }
    return out


def _figure(real: torch.Tensor, masks: torch.Tensor, edges: torch.Tensor, made: dict, path: Path) -> None:
    """The first FIGURE_ROWS holdout images, one per row: real | its edges | made from the edges | its mask |
    made from the mask (each ControlNet at its chosen scale), for the docs."""
    columns = [real, edges, made["edges_controlnet"], masks, made["mask_controlnet"]]
    rows = [torch.cat([c[i, 0].float().clamp(0, 1) for c in columns], dim=1) for i in range(FIGURE_ROWS)]
    grid = (torch.cat(rows, dim=0) * 255).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path, optimize=True)


def _headline(dice: dict, f1: dict, wall: dict) -> dict:
    mask, ceiling = dice["controlnet"]["mean"], dice["real_holdout_ceiling"]["mean"]
    edges, real = f1["controlnet"]["2px"]["mean"], f1["real_holdout_own_edges"]["2px"]["mean"]
    return {
        "mask_dice": mask,
        "mask_dice_ceiling": ceiling,
        "mask_dice_ratio": mask / ceiling,
        "edge_f1_2px": edges,
        "edge_f1_2px_real": real,
        "edge_f1_2px_ratio": edges / real,
        "edge_f1_2px_reconstruction": f1["autoencoder_reconstruction"]["2px"]["mean"],
        "train_minutes": round(sum(wall.values()) / 60, 1),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--diffusion-steps", type=int, default=QUALITY_STEPS)
    p.add_argument("--controlnet-steps", type=int, help="per ControlNet (mask, edges); default: the preset's")
    p.add_argument("--segmenter-steps", type=int, default=400)
    p.add_argument("--steps", type=int, default=25, help="sampler steps")
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=[1.0, 2.0, 4.0, 8.0],
        help="conditioning scales to choose from on the validation images (one: no choice)",
    )
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default="runs/bench-thin128")
    p.add_argument("--figure", default="docs/images/thin128.png", help="holdout conditions and their images")
    p.add_argument("--resume", action="store_true", help="keep or continue the trained stages (train.json)")
