"""eval_controls: does `synthmed evaluate` see what a radiologist sees? Known answers on real chest X-rays.

Disjoint random samples of Kermany *train* (one distribution) at 64 px: a reference set, a holdout, and
three stand-ins for a synthetic set whose verdict is known in advance:
- ``unseen``: other real images of the same distribution: must pass (C2ST interval around 0.5, sharpness
  ratio near 1, FID and FRD at their floors);
- ``blurred``: the same unseen images, Gaussian-blurred with sigma 1 px at 64 px (what a weak autoencoder
  does): must be caught (C2ST near 1, sharpness ratio well below 0.8, FRD above its floor);
- ``copies``: training images themselves: must be flagged by the memorisation audit.
Default evaluation settings (5 C2ST folds, 100 steps per fold, 200 bootstrap resamples). Writes
``benchmarks/results/eval_controls.json`` with each control's ``headline`` and the timings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

SIZE = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", type=int, default=400, help="reference images per class")
    p.add_argument("--holdout", type=int, default=150, help="holdout (and control) images per class")
    p.add_argument("--work-dir", default="runs/bench-eval-controls")


def _save64(src: Path, dest: Path, blur: float = 0.0) -> None:
    arr = np.asarray(Image.open(src).convert("L").resize((SIZE, SIZE), Image.Resampling.BOX), np.float32)
    dest.parent.mkdir(parents=True, exist_ok=True)
    arr = gaussian_filter(arr, blur) if blur else arr
    Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).save(dest)


def _sets(data: Path, root: Path, n_train: int, n_holdout: int) -> None:
    rng = np.random.default_rng(0)
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((data / "cxr-kermany" / "train" / cls).glob("*.jpeg"))
        files = [files[i] for i in rng.permutation(len(files))[: n_train + 2 * n_holdout]]
        parts = {
            "train": files[:n_train],
            "holdout": files[n_train : n_train + n_holdout],
            "unseen": files[n_train + n_holdout :],
        }
        for name, part in parts.items():
            for f in part:
                _save64(f, root / name / cls / f"{f.stem}.png")
        for f in parts["unseen"]:
            _save64(f, root / "blurred" / cls / f"{f.stem}.png", blur=1.0)
        (root / "copies" / cls).mkdir(parents=True)
        for f in parts["train"][:n_holdout]:
            shutil.copy(root / "train" / cls / f"{f.stem}.png", root / "copies" / cls / f"{f.stem}.png")


def run(args: argparse.Namespace, data: Path) -> dict:
    from synthmed.config import EvaluateConfig
    from synthmed.evaluation.run import evaluate

    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    _sets(data, work / "sets", args.train, args.holdout)
    controls = {}
    for name in ("unseen", "blurred", "copies"):
        cfg = EvaluateConfig(
            real=work / "sets" / "train",
            holdout=work / "sets" / "holdout",
            synthetic=work / "sets" / name,
            out=work / name,
            cache_dir=work / "cache",
        )
        t0 = time.perf_counter()
        report = json.loads((evaluate(cfg) / "report.json").read_text())
        priv = report["privacy"]
        controls[name] = {
            "headline": report["headline"],
            "c2st_linear_probe": report["c2st"]["linear_probe"]["all"],
            "high_frequency_share": {
                n: report["sharpness"]["all"]["high_frequency_share"][n]["value"]
                for n in ("synthetic", "holdout")
            },
            "flagged_copies": priv["flagged_fraction"],
            "flagged_floor": priv["holdout_flagged_fraction"],
            "verdicts": {r["measure"]: r["verdict"] for r in report["summary"]},
            "evaluate_s": round(time.perf_counter() - t0, 1),
            "phases_s": report["timings_s"],
        }
    return {"images_per_class": {"train": args.train, "holdout": args.holdout}, "controls": controls}
