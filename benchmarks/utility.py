"""Proof of utility (issue 19): ``python -m benchmarks.run utility_kermany`` and ``utility_busi_seg``.

Each regime gets its own real training folder, drawn once with a fixed seed, and its own generator trained
on that folder only (a generator that saw more real images than the downstream arms would carry
information they are not supposed to have). The generator recipe is ``--preset`` (default small64) with
``--generator-config`` (a YAML of TrainConfig fields: the current best recipe) merged on top, trained for
1663 UNet steps (and 1000 mask ControlNet steps) unless told otherwise;
``--reuse-generators`` keeps trained generators and their images. Then ``synthmed benchmark-augmentation``
runs every arm of the protocol (controls, synthetic arms, 5 seeds, Holm) on real test images no generator
saw, and ``synthmed evaluate`` measures each regime's synthetic images against the generator's own real
split (``generator.quality``: fidelity, diversity, sharpness, C2ST, label and condition fidelity), which
names what limits the generator when a target is missed.

utility_kermany (Kermany chest X-rays, official test split as the test set):
- ``rarity5``, ``rarity10``: NORMAL cut to 5% / 10% prevalence; synthetic NORMAL images fill the gap
  (ratios of the real NORMAL count); primary metric NORMAL F1;
- ``scarcity10``, ``scarcity25``, ``full``: 10% / 25% / 100% of the training images (stratified);
  ratios of the whole set; primary metric macro-F1.
Headline: rarity5 (target: NORMAL F1 of the best synthetic arm >= +5 points over the strongest control,
corrected CI above 0); ``targets`` also gives the share of the macro-F1 gap between 10% and 100% real
closed by the best synthetic arm at 10% (target >= 0.5).

utility_busi_seg (BUSI benign + malignant lesion segmentation): a seeded, duplicate-aware 20% test split;
``pairs25``, ``pairs10``: 25% / 10% of the remaining image-mask pairs; the generator adds a mask
ControlNet; synthetic pairs are generated for training masks drawn and deformed (downstream.pairs).
Headline: pairs25 (target: Dice >= +3 points over the strongest control, corrected CI above 0).

``--arms`` restricts every regime of the run to those arms; with only ``real`` and ``weighted`` a regime
trains no generator (a real-data reference, e.g. ``full`` for the scarcity gap). ``--merge`` keeps the
regimes of the committed results file that this run does not measure, each with the commit that recorded
it, so regimes measured in different sessions make one report.

``--smoke`` runs everything at toy sizes (tiny preset, few images, steps and seeds) to prove the code path
end to end; its figures are not evidence and it writes ``<work-dir>/<name>_smoke.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.resolution import QUALITY_STEPS
from synthmed.downstream.arms import REAL_ONLY_ARMS

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "images"
RESULTS = Path(__file__).parent / "results"
KERMANY_REGIMES = {  # name: (NORMAL prevalence or None, real fraction)
    "rarity5": (0.05, 1.0),
    "rarity10": (0.10, 1.0),
    "scarcity10": (None, 0.10),
    "scarcity25": (None, 0.25),
    "full": (None, 1.0),
}
BUSI_REGIMES = {"pairs25": 0.25, "pairs10": 0.10}
BUSI_CLASSES = ("benign", "malignant")
SMOKE = {
    "preset": "tiny",
    "image_size": 32,
    "seeds": [0, 1],
    "steps": 6,
    "eval_every": 3,
    "bootstrap": 50,
    "ae_steps": 4,
    "diffusion_steps": 4,
    "controlnet_steps": 4,
    "sampler_steps": 2,
    "extractor_steps": 4,
    "max_per_class": 80,
    "test_per_class": 30,
}
EVALUATE_SMOKE = {  # `synthmed evaluate` at toy sizes for --smoke
    "extractor_steps": 4,
    "segmenter_steps": 2,
    "c2st_steps": 2,
    "c2st_folds": 2,
    "c2st_permutations": 10,
    "bootstrap": 10,
    "msssim_pairs": 4,
}


def add_arguments(p: argparse.ArgumentParser, kind: str) -> None:
    regimes = KERMANY_REGIMES if kind == "kermany" else BUSI_REGIMES
    p.add_argument("--smoke", action="store_true", help="toy sizes: proves the code path, not the claim")
    p.add_argument("--regimes", nargs="+", default=list(regimes), choices=list(regimes))
    p.add_argument("--preset", default="small64", help="generator preset (the recipe's base)")
    p.add_argument("--generator-config", type=Path, help="YAML of TrainConfig fields merged on the preset")
    p.add_argument("--ae-steps", type=int, default=None, help="default: the recipe's")
    # the budget every committed regime was measured at, so that a regime added later is comparable
    p.add_argument(
        "--diffusion-steps",
        type=int,
        default=QUALITY_STEPS,
        help="UNet steps (default %(default)s: the generator issue's 60-minute budget on 2 cores)",
    )
    p.add_argument("--controlnet-steps", type=int, default=1000, help="mask ControlNet steps (BUSI)")
    p.add_argument("--sampler-steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=400, help="downstream optimiser steps per arm")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--extractor-steps", type=int, default=300, help="selection: feature extractor steps")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    p.add_argument("--synthetic-weights", type=float, nargs="+", default=[1.0, 0.5])
    p.add_argument("--oversupply", type=float, default=1.5, help="synthetic images made per image used")
    p.add_argument("--work-dir", default=f"runs/bench-utility-{kind}")
    p.add_argument("--reuse-generators", action="store_true", help="keep trained generators and images")
    p.add_argument("--arms", nargs="+", help="downstream arms of every regime (default: all for the task)")
    p.add_argument(
        "--merge", action="store_true", help="keep the results file's regimes that this run does not measure"
    )


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's sizes: the arguments, or the smoke sizes."""
    keys = [k for k in SMOKE if k not in ("max_per_class", "test_per_class")]
    base = {k: getattr(args, k) for k in keys} | {"max_per_class": None, "test_per_class": None}
    return base | (SMOKE if args.smoke else {})


def _copy(files: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, dest / f.name)


def _train_generator(folder: Path, run_dir: Path, s: dict, args: argparse.Namespace, mask: bool) -> dict:
    """The recipe (preset, then --generator-config, then step options) trained on the regime's folder
    only: the run folder and data source are always the regime's, whatever the recipe file says."""
    from synthmed.config import build_train_config, read_yaml
    from synthmed.config.base import deep_merge
    from synthmed.training.run import train

    stages = ["autoencoder", "diffusion"] + (["controlnet"] if mask else [])
    steps = {
        "autoencoder": s["ae_steps"],
        "diffusion": s["diffusion_steps"],
        "controlnet": s["controlnet_steps"],
    }
    values: dict[str, Any] = {
        "preset": s["preset"],
        "data": {"image_size": s["image_size"]},
        "runtime": {"precision": args.precision},
    }
    if args.generator_config:
        values = deep_merge(values, read_yaml(args.generator_config))
    fixed: dict[str, Any] = {"run_dir": str(run_dir), "data": {"source": str(folder)}}
    for stage in stages:
        n = steps[stage]
        fixed[stage] = {"steps": n, "preview_every": n, "checkpoint_every": n} if n else {}
    if mask:
        fixed["controlnet"] |= {"condition": "mask"}
    values = deep_merge(values, fixed)
    cfg = build_train_config(values)

    def make() -> dict:
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        train(cfg, stages, progress=False)
        return {"recipe": values, "stages": stages, "wall_s": round(time.perf_counter() - t0, 1)}

    return _once(run_dir.with_suffix(".json"), args.reuse_generators, make)


def _once(marker: Path, reuse: bool, make: Callable[[], Any]) -> Any:
    """``make()``'s result, written to ``marker`` once it finished; with ``reuse`` (--reuse-generators) the
    result a finished earlier run wrote there, so a stopped benchmark never reuses a half-made step."""
    if reuse and marker.is_file():
        return json.loads(marker.read_text())
    result = make()
    marker.write_text(json.dumps(result))
    return result


def _generate(run_dir: Path, out: Path, counts: dict[str, int], s: dict, args: argparse.Namespace) -> None:
    from synthmed.config import GenerateConfig
    from synthmed.sampling.generate import generate_to_folder

    for label, count in counts.items():
        if count:
            generate_to_folder(
                GenerateConfig(
                    run_dir=run_dir,
                    out=out,
                    label=label,
                    count=count,
                    steps=s["sampler_steps"],
                    batch_size=100,
                    precision=args.precision,
                ),
                progress=False,
            )


def _benchmark(real: Path, test: Path, synthetic: Path | None, out: Path, s: dict, args, **kw: Any) -> dict:
    from synthmed.config import AugmentationConfig
    from synthmed.downstream.run import benchmark

    cfg = AugmentationConfig.model_validate(
        {
            "real_train": real,
            "real_test": test,
            "synthetic": synthetic,
            "out": out,
            "image_size": s["image_size"],
            "ratios": args.ratios,
            "synthetic_weights": args.synthetic_weights,
            "seeds": s["seeds"],
            "steps": s["steps"],
            "eval_every": s["eval_every"],
            "bootstrap": s["bootstrap"],
            "selection": {"extractor_steps": s["extractor_steps"]},
            "arms": args.arms,
            "cache_dir": out.parent / "cache",
        }
        | kw
    )
    return benchmark(cfg)


def _generator_quality(root: Path, classes: list[str], smoke: bool, reuse: bool, masks: bool = False) -> dict:
    """What may limit the generator (the issue asks to name it from the evaluation's measures): ``synthmed
    evaluate`` of the regime's synthetic images against its generator's own real train and holdout split:
    fidelity and diversity beside their real floors, sharpness, C2ST, label agreement of a real-trained
    classifier and, for pairs, condition fidelity. Done once per regime (``generator_quality.json``)."""
    from benchmarks.quality64 import report_figures
    from synthmed.config import EvaluateConfig
    from synthmed.evaluation.run import evaluate

    def make() -> dict:
        sizes = EVALUATE_SMOKE if smoke else {}
        out = root / "evaluation"
        cfg = EvaluateConfig(
            synthetic=root / "synthetic", out=out, cache_dir=out / "cache", masks=masks, **sizes
        )
        report = json.loads((evaluate(cfg) / "report.json").read_text())
        condition = report.get("condition_fidelity") or {}
        return report_figures(report, classes) | {
            "label_fidelity": report["label_fidelity"],
            "condition_fidelity": {k: v for k, v in condition.items() if k not in ("intensity", "skipped")},
            "report": str(out / "report.html"),
        }

    return _once(root / "generator_quality.json", reuse, make)


def _needs_generator(args: argparse.Namespace) -> bool:
    return args.arms is None or not set(args.arms) <= set(REAL_ONLY_ARMS)


def _regime_summary(results: dict, generator: dict | None, real_counts: dict, fraction: float) -> dict:
    return {
        "measured": _measured(),
        "real_fraction": fraction,
        "real_train": real_counts,
        "headline": results["headline"],
        "choice": results["choice"],
        "leak_check": results["leak_check"],
        "selection": results["selection"],
        "warnings": results["warnings"],
        "generator": generator,
        "table": results["pooled"],
        "data": results["data"],
        "protocol": results["protocol"],
        "timings_s": results["timings_s"],
        "reused_runs": results["reused_runs"],
    }


def _git(*a: str) -> str:
    return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()


def _measured() -> dict[str, Any]:
    """When and from which commit a regime was measured (``dirty``: with uncommitted changes other than the
    results and figures that benchmarks write)."""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    dirty = bool(_git("status", "--porcelain", "--", ".", ":!benchmarks/results", ":!docs/images"))
    return {"utc": when, "commit": _git("rev-parse", "HEAD") or None, "dirty": dirty}


def _merged(name: str, regimes: dict[str, dict], args: argparse.Namespace, order: list[str]) -> dict:
    """``regimes`` and, with --merge, the results file's regimes this run did not measure, in ``order``. A
    kept regime without its own ``measured`` record is dated by the commit that last wrote the file (a smoke
    run merges with its own earlier smoke result, where measure.write_result put it)."""
    path = Path(args.work_dir) / f"{name}_smoke.json" if args.smoke else RESULTS / f"{name}.json"
    kept: dict[str, dict] = {}
    if args.merge and path.is_file():
        last = _git("log", "-1", "--format=%H %cI", "--", str(path)).split()
        record = {"results_file_commit": last[0], "utc": last[1]} if last else {"results_file": str(path)}
        for k, r in json.loads(path.read_text()).get("regimes", {}).items():
            kept[k] = {"measured": record} | r  # a regime's own record, where it has one, wins
    both = kept | regimes
    return {k: both[k] for k in order if k in both}


def _figures(name: str, regimes: dict[str, dict], out_dir: Path, fractions: dict[str, float]) -> list[str]:
    """Gain vs ratio per regime, and gain vs real fraction across the regimes given in ``fractions``; a
    regime without synthetic arms (a real-data reference) has no gain to plot."""
    from synthmed.downstream.report import gain_points, plot_gain_vs_fraction, plot_gain_vs_ratio

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    regimes = {k: r for k, r in regimes.items() if r["generator"] is not None}
    for regime, r in regimes.items():
        path = out_dir / f"{name}_{regime}_gain_vs_ratio.png"
        plot_gain_vs_ratio(r["table"], r["headline"]["metric"], path)
        written.append(_shown(path))
    points = [
        p | {"real_fraction": fractions[regime]}
        for regime, r in regimes.items()
        if regime in fractions
        for p in gain_points(r["table"], r["headline"]["metric"])
    ]
    if points:
        metric = next(r["headline"]["metric"] for k, r in regimes.items() if k in fractions)
        path = out_dir / f"{name}_gain_vs_fraction.png"
        plot_gain_vs_fraction(points, metric, path)
        written.append(_shown(path))
    return written


def _shown(path: Path) -> str:
    """A figure's path as the results name it: relative to the repository when inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _target(regime: dict, points: float) -> dict:
    """Met when the best arm gains ``points`` over the strongest control, its corrected CI is above 0 and
    Holm rejects."""
    headline = regime["headline"]
    ci, diff = headline["diff_vs_best_control_ci95"], headline["diff_vs_best_control"]
    row = next((r for r in regime["table"] if r["label"] == headline["best_arm"]), None)
    holm = bool(row and row["tests"].get("vs_best_control", {}).get("reject"))
    met = diff is not None and ci is not None and diff >= points and ci[0] > 0 and holm
    return {"needed": f"diff_vs_best_control >= {points}, corrected CI above 0, Holm rejects", "met": met}


# --- Kermany -------------------------------------------------------------------------------------------


def _kermany_folder(data: Path, root: Path, prevalence: float | None, fraction: float, s: dict) -> dict:
    """Kermany train reduced to the regime (seeded): NORMAL at ``prevalence`` or a stratified fraction."""
    rng = random.Random(0)
    files = {c: sorted((data / "cxr-kermany" / "train" / c).glob("*.jpeg")) for c in ("NORMAL", "PNEUMONIA")}
    if s["max_per_class"]:
        files = {c: rng.sample(f, s["max_per_class"]) for c, f in files.items()}
    if prevalence is not None:
        keep = max(2, round(prevalence / (1 - prevalence) * len(files["PNEUMONIA"])))
        files["NORMAL"] = rng.sample(files["NORMAL"], keep)
    else:
        files = {c: rng.sample(f, max(2, round(fraction * len(f)))) for c, f in files.items()}
    if not (root / "NORMAL").is_dir():
        for c, f in files.items():
            _copy(f, root / c)
    return {c: len(list((root / c).iterdir())) for c in files}


def _kermany_test(data: Path, work: Path, s: dict) -> Path:
    if not s["test_per_class"]:
        return data / "cxr-kermany" / "test"
    test = work / "test"
    if not test.is_dir():
        for c in ("NORMAL", "PNEUMONIA"):
            files = sorted((data / "cxr-kermany" / "test" / c).glob("*.jpeg"))
            _copy(random.Random(1).sample(files, s["test_per_class"]), test / c)
    return test


def run_kermany(args: argparse.Namespace, data: Path) -> dict:
    s, work = _settings(args), Path(args.work_dir)
    test = _kermany_test(data, work, s)
    regimes: dict[str, dict] = {}
    for name in args.regimes:
        prevalence, fraction = KERMANY_REGIMES[name]
        root = work / name
        if not args.reuse_generators:
            shutil.rmtree(root, ignore_errors=True)
        counts = _kermany_folder(data, root / "real", prevalence, fraction, s)
        rarity = prevalence is not None
        kw: dict[str, Any] = {"fill_class": "NORMAL", "primary_metric": "f1[NORMAL]"} if rarity else {}
        if not _needs_generator(args):
            results = _benchmark(root / "real", test, None, root / "results", s, args, **kw)
            regimes[name] = _regime_summary(results, None, counts, fraction)
            continue
        generator = _train_generator(root / "real", root / "generator", s, args, mask=False)
        base = counts["NORMAL"] if rarity else sum(counts.values())
        wanted = math.ceil(args.oversupply * max(args.ratios) * base)
        per_class = (
            {"NORMAL": wanted, "PNEUMONIA": wanted}
            if rarity
            else {c: math.ceil(wanted * n / base) for c, n in counts.items()}
        )

        def make(per_class: dict[str, int] = per_class, root: Path = root) -> dict[str, int]:
            shutil.rmtree(root / "synthetic", ignore_errors=True)
            _generate(root / "generator", root / "synthetic", per_class, s, args)
            return per_class

        _once(root / "synthetic.json", args.reuse_generators, make)
        results = _benchmark(root / "real", test, root / "synthetic", root / "results", s, args, **kw)
        generator["synthetic_generated"] = per_class
        generator["quality"] = _generator_quality(root, list(counts), args.smoke, args.reuse_generators)
        regimes[name] = _regime_summary(results, generator, counts, fraction)
    return _kermany_result(_merged("utility_kermany", regimes, args, list(KERMANY_REGIMES)), args, work)


def _kermany_result(regimes: dict[str, dict], args: argparse.Namespace, work: Path) -> dict:
    targets: dict[str, Any] = {}
    if "rarity5" in regimes:
        targets["rarity5_normal_f1"] = _target(regimes["rarity5"], 0.05)
    if {"scarcity10", "full"} <= regimes.keys():
        targets["scarcity10_gap_closed"] = _gap_closed(regimes["scarcity10"], regimes["full"])
    fractions = {k: KERMANY_REGIMES[k][1] for k in ("scarcity10", "scarcity25", "full") if k in regimes}
    first = "rarity5" if "rarity5" in regimes else next(iter(regimes))
    return {
        "benchmark": "utility_kermany",
        "smoke": args.smoke,
        "headline": regimes[first]["headline"],
        "headline_regime": first,
        "targets": targets,
        "figures": _figures(
            "utility_kermany", regimes, work / "figures" if args.smoke else FIGURES, fractions
        ),
        "regimes": regimes,
    }


def _gap_closed(low: dict, full: dict) -> dict:
    """Share of the macro-F1 gap between 10% real and 100% real closed by the best synthetic arm at 10%."""

    def value(regime: dict, label: str) -> float:
        row = next(r for r in regime["table"] if r["label"] == label)
        return row["metrics"]["macro_f1"]["value"]

    best = low["headline"]["best_arm"]
    real_low, real_full = value(low, "real"), value(full, "real")
    gap = real_full - real_low
    share = (value(low, best) - real_low) / gap if best is not None and gap > 0 else None
    return {
        "gap": gap,  # <= 0: 100% real does not beat 10% real on test, so there is no gap to close
        "best_arm_at_10pct": best,
        "macro_f1": {"real_10pct": real_low, "real_100pct": real_full, "best_arm_10pct": value(low, best)}
        if best
        else None,
        "share_closed": share,
        "needed": ">= 0.5",
        "met": share is not None and share >= 0.5,
    }


# --- BUSI ----------------------------------------------------------------------------------------------


def _busi_groups(data: Path) -> list[tuple[str, list[Path]]]:
    """(class, images) groups: near-identical images (BUSI files one image as benign and as malignant) share
    a group, so they land in one split."""
    from synthmed.data import read_image
    from synthmed.data.integrity import near_pairs, pixel_hash

    items = [(c, f) for c in BUSI_CLASSES for f in sorted((data / "busi" / c / "images").glob("*.png"))]
    hashes = [pixel_hash(read_image(f)) for _, f in items]
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in near_pairs(hashes):
        parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(find(i), []).append(i)
    return [(items[g[0]][0], [items[i][1] for i in g]) for g in groups.values()]


def _copy_pairs(images: list[Path], data: Path, dest: Path) -> None:
    for f in images:
        cls = f.parent.parent.name
        _copy([f], dest / cls / "images")
        _copy(sorted((data / "busi" / cls / "mask").glob(f"{f.stem}_mask*.png")), dest / cls / "mask")


def _busi_split(data: Path, work: Path, s: dict) -> tuple[Path, list[tuple[str, list[Path]]]]:
    """A seeded 20% test split of the groups per class; the rest is the real training pool."""
    rng = random.Random(0)
    test: list[Path] = []
    pool: list[tuple[str, list[Path]]] = []
    every = _busi_groups(data)
    for cls in BUSI_CLASSES:
        groups = [g for g in every if g[0] == cls]
        rng.shuffle(groups)
        if s["max_per_class"]:
            groups = groups[: s["max_per_class"]]
        n_test = s["test_per_class"] or round(0.2 * len(groups))
        test += [f for _, files in groups[:n_test] for f in files]
        pool += groups[n_test:]
    root = work / "test"
    if not root.is_dir():
        _copy_pairs(test, data, root)
    return root, pool


def run_busi(args: argparse.Namespace, data: Path) -> dict:
    from synthmed.downstream.pairs import generate_pairs

    s, work = _settings(args), Path(args.work_dir)
    test, pool = _busi_split(data, work, s)
    regimes: dict[str, dict] = {}
    for name in args.regimes:
        fraction, root = BUSI_REGIMES[name], work / name
        if not args.reuse_generators:
            shutil.rmtree(root, ignore_errors=True)
        rng = random.Random(0)
        chosen = [
            f for cls in BUSI_CLASSES for _, files in _fraction(pool, cls, fraction, rng) for f in files
        ]
        if not (root / "real").is_dir():
            _copy_pairs(chosen, data, root / "real")
        counts = {c: len(list((root / "real" / c / "images").iterdir())) for c in BUSI_CLASSES}
        if not _needs_generator(args):
            results = _benchmark(root / "real", test, None, root / "results", s, args, task="segment")
            regimes[name] = _regime_summary(results, None, counts, fraction)
            continue
        generator = _train_generator(root / "real", root / "generator", s, args, mask=True)
        wanted = math.ceil(args.oversupply * max(args.ratios) * sum(counts.values()))

        def make(wanted: int = wanted, root: Path = root) -> dict:
            out = root / "synthetic"
            shutil.rmtree(out, ignore_errors=True)
            steps, precision = s["sampler_steps"], args.precision
            return generate_pairs(root / "generator", out, wanted, steps=steps, precision=precision)

        generator["pairs"] = _once(root / "synthetic.json", args.reuse_generators, make)
        results = _benchmark(
            root / "real", test, root / "synthetic", root / "results", s, args, task="segment"
        )
        reuse = args.reuse_generators
        generator["quality"] = _generator_quality(root, list(BUSI_CLASSES), args.smoke, reuse, masks=True)
        regimes[name] = _regime_summary(results, generator, counts, fraction)
    regimes = _merged("utility_busi_seg", regimes, args, list(BUSI_REGIMES))
    first = "pairs25" if "pairs25" in regimes else next(iter(regimes))
    return {
        "benchmark": "utility_busi_seg",
        "smoke": args.smoke,
        "headline": regimes[first]["headline"],
        "headline_regime": first,
        "targets": {"pairs25_dice": _target(regimes["pairs25"], 0.03)} if "pairs25" in regimes else {},
        "figures": _figures(
            "utility_busi_seg",
            regimes,
            work / "figures" if args.smoke else FIGURES,
            {k: BUSI_REGIMES[k] for k in regimes},
        ),
        "regimes": regimes,
    }


def _fraction(pool: list[tuple[str, list[Path]]], cls: str, fraction: float, rng: random.Random) -> list:
    groups = [g for g in pool if g[0] == cls]
    return rng.sample(groups, max(2, round(fraction * len(groups))))
