"""label3d (issue 25, item 2): what makes 3D label maps shape anatomy.

On one trained 3D run (autoencoder and UNet; ``--run-dir``, e.g. quality3d's ``today/run``), the label-map
ControlNet is trained with each label encoding (``--encodings``: onehot, MAISI's bits; bits is left out when
it equals onehot, i.e. for three label values or fewer) to each budget
(``--budgets`` steps, ascending: each budget resumes the previous one), and volumes are generated for the
run's own *validation* label maps at each conditioning scale (``--scales``). A one-vs-rest 3D segmenter per
label, trained once on the real training pairs (the evaluation's), scores each generated volume against the
label map it was made for: condition Dice, the mean over labels. The setting with the best validation Dice is
chosen, then measured once on the *holdout* label maps beside the same segmenters' Dice on the real holdout
volumes (the ceiling): choices are made on validation maps only, never on the reported ones.

Each variant's ControlNet is trained in a copy of the run (its autoencoder and UNet; the ControlNet stage
rebuilt), so the given run is left as it was. ``--smoke`` shrinks the grid and steps to prove the code path.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

HEADLINE = ("condition_dice", "condition_dice_ceiling", "ratio", "choice", "controlnet_train_minutes")
SMOKE = {"budgets": [2, 4], "scales": [1.0, 2.0], "sample_steps": 2, "segmenter_steps": 4, "max_maps": 3}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", type=Path, required=True, help="a trained 3D run (autoencoder + diffusion)")
    p.add_argument("--encodings", nargs="+", default=["onehot", "bits"], choices=["onehot", "bits"])
    p.add_argument("--budgets", type=int, nargs="+", default=[150, 600], help="ControlNet steps, ascending")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="conditioning scales")
    p.add_argument("--sample-steps", type=int, default=30, help="rflow steps per volume")
    p.add_argument("--segmenter-steps", type=int, default=400)
    p.add_argument("--max-maps", type=int, default=None, help="label maps per split (default: all)")
    p.add_argument("--work-dir", default="runs/bench-label3d")
    p.add_argument("--smoke", action="store_true", help="toy sizes: proves the code path, not the claim")


def _pairs(run_dir: Path, split: str, work: Path, limit: int | None) -> Path:
    """The run's ``split`` image/label pairs (one per volume, spacing copies left out) in a folder."""
    from synthmed.config import read_run_config

    cfg = read_run_config(run_dir)
    source = Path(str(cfg.data.source))
    items = json.loads((run_dir / "split.json").read_text())["items"]
    names = sorted({Path(i["source"]).name for i in items if i["split"] == split})[:limit]
    root = work / "real" / split
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
        for name in names:
            shutil.copy(source / sub / name, root / sub / name)
    return root


def _load(root: Path, run_dir: Path):
    """Volumes and label maps of a folder on the run's grid."""
    from synthmed.config import read_run_config
    from synthmed.data.volumes import load_volumes

    volume = read_run_config(run_dir).data.volume
    assert volume is not None
    return load_volumes(root, volume.ingestion(), require_labels=True)


def _segmenters(train, steps: int) -> dict[int, torch.nn.Module]:
    from synthmed.evaluation.condition import train_segmenter

    values = sorted(set(torch.unique(train.labels).tolist()) - {0})
    return {
        v: train_segmenter(
            train.images, (train.labels == v).to(torch.uint8), steps=steps, batch_size=4, seed=0
        )
        for v in values
    }


def _dice(segmenters: dict[int, torch.nn.Module], loaded) -> float:
    """Mean over labels of the mean Dice of each label's segmenter against the label maps."""
    from synthmed.evaluation.condition import dice_hd95, segment

    per_label = [
        dice_hd95(segment(model, loaded.images), (loaded.labels == v).to(torch.uint8))["dice"]["mean"]
        for v, model in segmenters.items()
    ]
    return sum(per_label) / len(per_label)


def _distinct_encodings(encodings: list[str], num_labels: int) -> tuple[list[str], str | None]:
    """The encodings that differ for ``num_labels`` label values (background included): with three or fewer,
    MAISI's bits give each foreground label its own channel, the one-hot encoding exactly, so only onehot
    is trained."""
    if num_labels <= 3 and {"onehot", "bits"} <= set(encodings):
        why = f"bits: identical to onehot for {num_labels} label values (one channel per foreground label)"
        return [e for e in encodings if e != "bits"], why
    return list(encodings), None


def _variant(run_dir: Path, work: Path, encoding: str) -> Path:
    """A copy of the run without its ControlNet: the variant's own folder."""
    dest = work / "variants" / encoding / "run"
    if not dest.is_dir():
        shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("controlnet*", "cache"))
    return dest


def _snapshot(work: Path, encoding: str, steps: int) -> Path:
    """Where the ControlNet of ``encoding`` trained to ``steps`` is kept."""
    return work / "variants" / encoding / f"controlnet-{steps}"


def _train_controlnet(run: Path, encoding: str, steps: int) -> float:
    from synthmed.config import read_run_config
    from synthmed.training.run import train

    cfg = read_run_config(run)
    cfg.controlnet = cfg.controlnet.model_copy(
        update={"encoding": encoding, "steps": steps, "preview_every": steps, "checkpoint_every": steps}
    )
    t0 = time.perf_counter()
    train(cfg, ["controlnet"], resume=True, progress=False)
    return time.perf_counter() - t0


def _generate(run: Path, maps: Path, out: Path, scale: float, steps: int) -> Path:
    """One volume per label map of ``maps``, seed = its index, at conditioning ``scale``."""
    from synthmed.config import GenerateConfig
    from synthmed.sampling.generate import generate_to_folder

    shutil.rmtree(out, ignore_errors=True)
    for seed, label_map in enumerate(sorted((maps / "labels").glob("*.nii.gz"))):
        cfg = GenerateConfig(
            run_dir=run,
            out=out,
            count=1,
            seed=seed,
            steps=steps,
            label_map=label_map,
            augment_label_maps=False,
            conditioning_scale=scale,
        )
        generate_to_folder(cfg, progress=False)
    return out


def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    from synthmed.artifacts.run import RunDir

    del data  # the run names its data
    args = argparse.Namespace(**(vars(args) | (SMOKE if args.smoke else {})))
    work, run_dir = Path(args.work_dir), Path(args.run_dir)
    real = {s: _pairs(run_dir, s, work, args.max_maps) for s in ("train", "val", "holdout")}
    train_pairs = _load(real["train"], run_dir)
    encodings, same = _distinct_encodings(args.encodings, int(train_pairs.labels.max()) + 1)
    segmenters = _segmenters(train_pairs, args.segmenter_steps)
    rows: list[dict[str, Any]] = []
    minutes: dict[str, float] = {}
    for encoding in encodings:
        variant, spent = _variant(run_dir, work, encoding), 0.0
        for budget in sorted(args.budgets):
            spent += _train_controlnet(variant, encoding, budget)
            minutes[f"{encoding}@{budget}"] = round(spent / 60, 2)
            stage = RunDir(variant).controlnet("mask")
            shutil.copytree(stage, _snapshot(work, encoding, budget), dirs_exist_ok=True)
            for scale in args.scales:
                out = work / "generated" / f"{encoding}-{budget}-{scale:g}"
                _generate(variant, real["val"], out, scale, args.sample_steps)
                dice = _dice(segmenters, _load(out, run_dir))
                rows.append({"encoding": encoding, "steps": budget, "scale": scale, "val_dice": dice})
                print(f"label3d: {rows[-1]}", flush=True)
    best = max(rows, key=lambda r: r["val_dice"])
    chosen = work / "variants" / best["encoding"] / "run"
    stage = RunDir(chosen).controlnet("mask")
    shutil.rmtree(stage)  # the chosen budget's ControlNet back in place (training went on past it)
    shutil.copytree(_snapshot(work, best["encoding"], best["steps"]), stage)
    out = _generate(chosen, real["holdout"], work / "generated" / "holdout", best["scale"], args.sample_steps)
    dice, ceiling = _dice(segmenters, _load(out, run_dir)), _dice(segmenters, _load(real["holdout"], run_dir))
    choice = {k: best[k] for k in ("encoding", "steps", "scale")}
    head = {
        "condition_dice": dice,
        "condition_dice_ceiling": ceiling,
        "ratio": dice / ceiling if ceiling else None,
        "choice": choice,
        "controlnet_train_minutes": minutes[f"{best['encoding']}@{best['steps']}"],
    }
    return {
        "headline": head,
        "target": {"rule": "condition Dice >= 0.7 x ceiling", "met": (head["ratio"] or 0.0) >= 0.7},
        "validation": rows,
        "encodings_left_out": same,
        "train_minutes": minutes,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
        "smoke": args.smoke,
    }
