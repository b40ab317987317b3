"""Benchmarks: ``python -m benchmarks.run train64 [--ae-steps N ...]`` or ``python -m benchmarks.run eval64``.

train64: train the ``small64`` preset on Kermany train (NORMAL + PNEUMONIA) for a fixed number of steps on
this machine, then generate at 25 DDIM steps. Records wall time, steps/s, images/s and peak memory, and in
the same run the baseline: MONAI's tutorial sampler (``LatentDiffusionInferer.sample``, fp32, no guidance)
on the same weights. Results go to ``benchmarks/results/train64.json`` with machine information.

eval64: ``synthmed evaluate`` on 1,000 real Kermany training images vs 1,000 synthetic 64 px images (generated
with the train64 run when it exists, else 1,000 other real training images as a stand-in; the JSON says
which), holdout = the 624 Kermany test images. Records time per phase (extractor training included), peak
memory, the headline figures, and in the same run the baseline: MONAI's `FIDMetric` (scipy sqrtm) vs
synthmed's eigendecomposition FID on the same features.

decode3d (benchmarks/decode3d.py): peak memory of decoding 128^3-256^3 volumes, tiled vs untiled.

volume64 (benchmarks/volume64.py): seconds per 64^3 volume with a label map, rflow 30 vs DDPM 1000 steps.

sampling (benchmarks/sampling.py): FID against network evaluations for DDPM 1000, DDIM, DPM-Solver++ and
UniPC on the train64 model; the default sampler; images/s and FLOP/s against MONAI's DDPM 1000 recipe.

training (benchmarks/training.py): steps/s, peak memory and FLOP/s of synthmed's trainer (autoencoder and
diffusion stages, bf16) against MONAI's tutorial training loops (fp32, latents encoded every step) on train64.

quality64 (benchmarks/quality64.py): the old and the new generator recipe at the same training wall time on
Kermany 64 px (and the new one on BUSI), evaluated against each run's own holdout split.

recipe64 (benchmarks/recipe64.py): each choice of the small64 diffusion recipe left out in turn (v-prediction,
min-SNR, warm-up + cosine decay, EMA, UNet width) at equal training wall time, judged on the val split.

quality3d (benchmarks/quality3d.py): today's 3D recipe against the 3D autoencoder with adversarial, gradient
and spectral losses and against the slice-wise foundation autoencoder, at the same training wall time on
hippocampus MRI at 1 mm: 2.5D FID and recall on three views, condition Dice, sharpness; ``--smoke`` for toy
sizes, written to its work folder.

label3d (benchmarks/label3d.py): what makes 3D label maps shape anatomy: the label-map ControlNet's encoding,
training steps and conditioning scale chosen on a trained run's validation label maps by condition Dice, the
choice measured on the holdout maps against the real ceiling.

eval_controls (benchmarks/eval_controls.py): evaluate on known answers (unseen real, blurred, copies).

controlnet64 (benchmarks/controlnet64.py): BUSI 64 px mask ControlNet: Dice between the conditioning masks
and a real-trained segmenter's output on the generated images, against scale 0 and the real ceiling; s/image.

resolution (benchmarks/resolution.py): small64, small128 and small256 on Kermany: encoding s/image, UNet
steps/s, peak memory, minutes per training budget, generation s/image, decoding memory whole vs per image.

thin128 (benchmarks/thin128.py): small128 on BUSI with mask and edges ControlNets: segmenter Dice vs the masks
and edge F1 (1-2 px tolerance) vs the conditioning edges, against scale 0 and real holdout references.

distill64 (benchmarks/distill64.py): distilled few-step students (issue 23) against their teacher and MONAI's
DDPM-1000 recipe on the same weights: images/s with decoding, peak memory, FID, recall, sharpness, C2ST, the
decoder's share, distillation wall time; ``--smoke`` for a tiny teacher, written to its work folder.

utility_kermany, utility_busi_seg (benchmarks/utility.py): the proof-of-utility protocol of issue 19 (a
generator per regime, controls, synthetic arms, 5 seeds, Holm); ``--smoke`` for a toy-sized run.

augment64: the augmentation protocol on Kermany 64 px with NORMAL reduced to 5% prevalence. A small64
generator is trained (as train64) on the reduced training folder only; it generates NORMAL and PNEUMONIA
images; ``synthmed benchmark-augmentation`` then runs every arm (real+synthetic adds synthetic NORMAL images
only) over several seeds and reports minority-class F1 and macro-F1 with paired CIs against real-only.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import time
from pathlib import Path

import torch

from benchmarks import (
    controlnet64,
    decode3d,
    distill3d,
    distill64,
    eval_controls,
    label3d,
    quality3d,
    quality64,
    recipe64,
    resolution,
    sampling,
    thin128,
    training,
    utility,
    volume64,
)
from benchmarks.measure import last_rate, machine, peak_rss_mib, write_result

RESULTS = Path(__file__).parent / "results"
DATA = Path(os.environ.get("SYNTHMED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def _images_per_s(fn, n: int) -> float:
    fn()  # warm-up (allocations, oneDNN kernel selection)
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def train64(args: argparse.Namespace, out: Path) -> dict:
    """Training figures, written to ``out`` as soon as training ends; ``--reuse-run`` skips to generation."""
    if args.reuse_run:
        return json.loads(out.read_text())
    from synthmed.config import build_train_config
    from synthmed.training.run import train

    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = build_train_config(
        {
            "preset": "small64",
            "run_dir": str(run_dir),
            "data": {"source": str(DATA / "cxr-kermany" / "train")},
            "autoencoder": {"steps": args.ae_steps, "preview_every": args.ae_steps},
            "diffusion": {"steps": args.diffusion_steps, "preview_every": args.diffusion_steps},
            "runtime": {"precision": args.precision},
        }
    )
    t0 = time.perf_counter()
    train(cfg, progress=False)
    wall = time.perf_counter() - t0
    result = {
        "benchmark": "train64",
        "machine": machine(),
        "preset": "small64",
        "precision": args.precision,
        "train": {
            "wall_s": round(wall, 1),
            "autoencoder_steps": args.ae_steps,
            "autoencoder_batch": cfg.autoencoder.batch_size,
            "autoencoder_steps_per_s": round(last_rate(run_dir / "autoencoder" / "log.jsonl"), 3),
            "diffusion_steps": args.diffusion_steps,
            "diffusion_batch": cfg.diffusion.batch_size,
            "diffusion_steps_per_s": round(last_rate(run_dir / "diffusion" / "log.jsonl"), 3),
            "peak_rss_mib": round(peak_rss_mib()),
        },
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def generate64(args: argparse.Namespace) -> dict:
    """Images/s of synthmed's sampler (fp32, bf16) and of MONAI's tutorial sampler on the same weights."""
    from monai.inferers import LatentDiffusionInferer

    from synthmed import load
    from synthmed.models.builders import build_scheduler

    run_dir, n, gen = Path(args.run_dir), args.images, {}
    for precision in ("fp32", "bf16"):
        pipe = load(run_dir, precision=precision)
        rate = _images_per_s(
            lambda p=pipe: p.generate(
                label="PNEUMONIA", n=n, sampler="ddim", steps=25, guidance=3.0, batch_size=n
            ),
            n,
        )
        gen[f"synthmed_ddim25_cfg3_{precision}"] = round(rate, 3)
    pipe = load(run_dir, precision="fp32")
    scheduler = build_scheduler(pipe.cfg.diffusion.noise, "ddim")
    scheduler.set_timesteps(25)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=pipe.scale_factor)
    noise = torch.randn((n, *pipe.latent_shape))
    # MONAI's inferer passes conditioning only as cross-attention context: bind the class label here.
    unet = functools.partial(pipe.unet, class_labels=torch.full((n,), pipe.label_index("PNEUMONIA")))

    @torch.inference_mode()
    def baseline() -> None:
        inferer.sample(noise, pipe.autoencoder, unet, scheduler, verbose=False)

    gen["monai_inferer_ddim25_noguidance_fp32"] = round(_images_per_s(baseline, n), 3)
    gen["speedup_bf16_vs_monai_baseline"] = round(
        gen["synthmed_ddim25_cfg3_bf16"] / gen["monai_inferer_ddim25_noguidance_fp32"], 2
    )
    return {
        "images": n,
        "images_per_s": gen,
        "peak_rss_mib": round(peak_rss_mib()),
        "note": "synthmed runs guided sampling (2 network evaluations per step); the MONAI "
        "baseline runs unguided (1 per step); decoding is included in both",
    }


def _synthetic_set(args: argparse.Namespace, root: Path, pool: list[Path]) -> str:
    """1,000 synthetic images from the train64 run (500 per class), or real stand-ins from ``pool``."""
    from synthmed.config import GenerateConfig
    from synthmed.sampling.generate import generate_to_folder

    run_dir = Path(args.run_dir)
    if (run_dir / "diffusion" / "model.pt").is_file():
        for label in ("NORMAL", "PNEUMONIA"):
            cfg = GenerateConfig(
                run_dir=run_dir,
                out=root,
                label=label,
                count=args.images // 2,
                sampler="ddim",  # the recorded results were made with DDIM 25 (the default then)
                steps=25,
                batch_size=100,
                precision="bf16",
            )
            generate_to_folder(cfg, progress=False)
        return f"generated by {run_dir} (small64, DDIM 25 steps, guidance 3, bf16)"
    for f in pool:
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f.parent.name / f.name)
    return "stand-in: real Kermany training images not in the real set (no train64 run found)"


def eval64(args: argparse.Namespace) -> dict:
    import random

    from synthmed.config import EvaluateConfig
    from synthmed.evaluation import run as ev

    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    files = sorted((DATA / "cxr-kermany" / "train").glob("*/*.jpeg"))
    random.Random(0).shuffle(files)
    real = work / "real"
    for f in files[: args.images]:
        (real / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, real / f.parent.name / f.name)
    t0 = time.perf_counter()
    synthetic_source = _synthetic_set(args, work / "synthetic", files[args.images : 2 * args.images])
    generation_s = time.perf_counter() - t0
    cfg = EvaluateConfig(
        real=real,
        holdout=DATA / "cxr-kermany" / "test",
        synthetic=work / "synthetic",
        out=work / "report",
        cache_dir=work / "cache",  # empty: extractor training and data loading are timed
    )
    t0 = time.perf_counter()
    ev.evaluate(cfg)
    total = time.perf_counter() - t0
    report = json.loads((cfg.out / "report.json").read_text())
    return {
        "synthetic": synthetic_source,
        "generation_s": round(generation_s, 1),
        "evaluate_s": round(total, 1),
        "phases_s": report["timings_s"],
        "peak_rss_mib": round(peak_rss_mib()),
        "sets": {n: s["n"] for n, s in report["sets"].items()},
        "settings": {
            k: report["settings"][k] for k in ("image_size", "extractor_steps", "bootstrap", "msssim_pairs")
        },
        "headline": _headline(report),
        "fid_baseline": _fid_baseline(report),
    }


def _headline(report: dict) -> dict:
    fid = report["fidelity"]["all"]
    return {
        "fid_synthetic": round(fid["synthetic"]["fid"]["value"], 3),
        "fid_floor": round(fid["real_floor"]["fid"]["value"], 3),
        "precision_synthetic": round(fid["synthetic"]["precision"]["value"], 3),
        "recall_synthetic": round(fid["synthetic"]["recall"]["value"], 3),
        "flagged_copies": report["privacy"]["flagged_fraction"],
        "label_agreement": {
            c: v.get("agreement") for c, v in report["label_fidelity"].get("synthetic", {}).items()
        },
    }


def _fid_baseline(report: dict) -> dict:
    """MONAI FIDMetric vs synthmed's FID on random features of the extractor's dimension (same values)."""
    from monai.metrics import FIDMetric

    from synthmed.evaluation.fidelity import fid

    dim = report["extractor"]["feature_dim"]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, dim, generator=g).relu(), (torch.randn(1000, dim, generator=g) * 1.1).relu()
    timings = {}
    for name, fn in (
        ("monai_fidmetric", lambda: float(FIDMetric()(b.double(), a.double()))),
        ("synthmed_fid", lambda: fid(a, b)),
    ):
        fn()
        t = time.perf_counter()
        value = [fn() for _ in range(5)][-1]
        timings[name] = {
            "ms_per_call": round((time.perf_counter() - t) / 5 * 1000, 2),
            "value": round(value, 6),
        }
    timings["speedup"] = round(
        timings["monai_fidmetric"]["ms_per_call"] / timings["synthmed_fid"]["ms_per_call"], 1
    )
    return timings


def _reduced_kermany(root: Path, prevalence: float, seed: int) -> dict[str, int]:
    """Kermany train with NORMAL subsampled to ``prevalence`` of the images (seeded)."""
    import random

    pneumonia = sorted((DATA / "cxr-kermany" / "train" / "PNEUMONIA").glob("*.jpeg"))
    normal = sorted((DATA / "cxr-kermany" / "train" / "NORMAL").glob("*.jpeg"))
    keep = round(prevalence / (1 - prevalence) * len(pneumonia))
    chosen = {"PNEUMONIA": pneumonia, "NORMAL": random.Random(seed).sample(normal, keep)}
    for cls, files in chosen.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, root / cls / f.name)
    return {cls: len(files) for cls, files in chosen.items()}


def augment64(args: argparse.Namespace) -> dict:
    from synthmed.config import AugmentationConfig, GenerateConfig, build_train_config
    from synthmed.downstream.run import benchmark
    from synthmed.sampling.generate import generate_to_folder
    from synthmed.training.run import train

    work = Path(args.work_dir)
    real, run_dir, synthetic = work / "real_train", work / "generator", work / "synthetic"
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if not args.reuse_generator:
        shutil.rmtree(work, ignore_errors=True)
        counts = _reduced_kermany(real, args.prevalence, seed=0)
        cfg = build_train_config(
            {
                "preset": "small64",
                "run_dir": str(run_dir),
                "data": {"source": str(real)},
                "autoencoder": {"steps": args.ae_steps, "preview_every": args.ae_steps},
                "diffusion": {"steps": args.diffusion_steps, "preview_every": args.diffusion_steps},
                "runtime": {"precision": "bf16"},
            }
        )
        train(cfg, progress=False)
        times["generator_training_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        for label, count in (("NORMAL", args.normal), ("PNEUMONIA", args.pneumonia)):
            generate_to_folder(
                GenerateConfig(
                    run_dir=run_dir,
                    out=synthetic,
                    label=label,
                    count=count,
                    sampler="ddim",  # as recorded in results/augment64.json
                    steps=25,
                    batch_size=100,
                    precision="bf16",
                ),
                progress=False,
            )
        times["generation_s"] = round(time.perf_counter() - t0, 1)
    else:
        counts = {c: len(list((real / c).iterdir())) for c in ("NORMAL", "PNEUMONIA")}
    t0 = time.perf_counter()
    results = benchmark(
        AugmentationConfig(
            real_train=real,
            real_test=DATA / "cxr-kermany" / "test",
            synthetic=synthetic,
            out=work / "results",
            ratios=args.ratios,
            fill_class="NORMAL",
            seeds=args.seeds,
            steps=args.steps,
            cache_dir=work / "cache",
        )
    )
    times["benchmark_s"] = round(time.perf_counter() - t0, 1)
    return {
        "real_train": counts,
        "times": times,
        "summary": _augment_summary(results),
        "leak_check": results["leak_check"],
    }


def _augment_summary(results: dict) -> list[dict]:
    """Per arm (pooled over seeds): minority F1, macro-F1 and their paired differences vs real-only."""
    rows = []
    for r in results["pooled"]:
        m, d = r["metrics"], r["vs_real"] or {}
        rows.append(
            {
                "arm": r["arm"],
                "ratio": r["ratio"],
                **{
                    k: {"value": round(m[k]["value"], 4), "ci95": [round(x, 4) for x in m[k]["ci95"]]}
                    for k in ("f1[NORMAL]", "macro_f1", "balanced_accuracy", "auroc")
                },
                "vs_real": {
                    k: {"value": round(d[k]["value"], 4), "ci95": [round(x, 4) for x in d[k]["ci95"]]}
                    for k in ("f1[NORMAL]", "macro_f1")
                    if k in d
                },
            }
        )
    return rows


#: Benchmarks whose results go through write_result (a smoke run's stays in its work folder): their run and
#: the part of the result printed.
SELF_WRITTEN = {
    "utility_kermany": (utility.run_kermany, "headline"),
    "utility_busi_seg": (utility.run_busi, "headline"),
    "quality3d": (quality3d.run, "headline"),
    "label3d": (label3d.run, "headline"),
    "distill3d": (distill3d.run, "rows"),
    "distill64": (distill64.run, "headline"),
    "resolution": (resolution.run, "presets"),
    "thin128": (thin128.run, "headline"),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="name", required=True)
    p = sub.add_parser("train64", help="train small64 on Kermany, then time generation")
    p.add_argument("--ae-steps", type=int, default=500)
    p.add_argument("--diffusion-steps", type=int, default=1000)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--run-dir", default="runs/bench-train64")
    p.add_argument(
        "--reuse-run", action="store_true", help="keep the trained run and its figures; time generation"
    )
    p = sub.add_parser("eval64", help="time synthmed evaluate on 1,000 real vs 1,000 synthetic 64 px images")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--run-dir", default="runs/bench-train64", help="train64 run that makes the synthetic set")
    p.add_argument("--work-dir", default="runs/bench-eval64")
    p = sub.add_parser("augment64", help="augmentation protocol on Kermany 64 px, NORMAL at 5%% prevalence")
    p.add_argument("--prevalence", type=float, default=0.05)
    p.add_argument("--ae-steps", type=int, default=500)
    p.add_argument("--diffusion-steps", type=int, default=1000)
    p.add_argument("--normal", type=int, default=800, help="synthetic NORMAL images to generate")
    p.add_argument("--pneumonia", type=int, default=400, help="synthetic PNEUMONIA images to generate")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--work-dir", default="runs/bench-augment64")
    p.add_argument("--reuse-generator", action="store_true", help="keep the trained generator and its images")
    decode3d.add_arguments(sub.add_parser("decode3d", help="3D VAE decoding peak memory, tiled vs untiled"))
    volume64.add_arguments(
        sub.add_parser("volume64", help="3D 64^3 with label map: rflow 30 vs DDPM 1000 steps")
    )
    eval_controls.add_arguments(
        sub.add_parser("eval_controls", help="evaluate on known answers: unseen real, blurred, copies")
    )
    sampling.add_arguments(sub.add_parser("sampling", help="FID vs network evaluations per sampler; speed"))
    training.add_arguments(sub.add_parser("training", help="trainer throughput vs MONAI's tutorial loops"))
    controlnet64.add_arguments(
        sub.add_parser(
            "controlnet64", help="BUSI 64 px mask ControlNet: segmenter Dice vs the masks, s/image"
        )
    )
    quality64.add_arguments(
        sub.add_parser("quality64", help="old vs new generator recipe at equal training time, own holdout")
    )
    recipe64.add_arguments(
        sub.add_parser("recipe64", help="small64 recipe choices left out in turn, equal time, val split")
    )
    quality3d.add_arguments(
        sub.add_parser("quality3d", help="3D recipes at equal training time, hippocampus 1 mm, three views")
    )
    label3d.add_arguments(
        sub.add_parser("label3d", help="3D label-map ControlNet: encoding, steps, scale chosen on val maps")
    )
    resolution.add_arguments(
        sub.add_parser("resolution", help="64/128/256 px presets: encode, train, generate speed and memory")
    )
    thin128.add_arguments(
        sub.add_parser("thin128", help="128 px mask and edges ControlNets on BUSI: Dice and edge F1")
    )
    distill64.add_arguments(
        sub.add_parser("distill64", help="distilled 1-4 step students vs teacher and MONAI DDPM-1000, 64 px")
    )
    distill3d.add_arguments(
        sub.add_parser("distill3d", help="distilled 3D students vs the rflow-30 teacher, 64^3 hippocampus")
    )
    utility.add_arguments(
        sub.add_parser("utility_kermany", help="proof of utility: Kermany rarity and scarcity regimes"),
        "kermany",
    )
    utility.add_arguments(
        sub.add_parser("utility_busi_seg", help="proof of utility: BUSI segmentation with ControlNet pairs"),
        "busi",
    )
    args = parser.parse_args()
    if args.name in SELF_WRITTEN:
        bench, shown = SELF_WRITTEN[args.name]
        result = bench(args, DATA)  # first: machine() records the thread count the run set
        result = {"machine": machine(), **result}
        print(json.dumps(result[shown], indent=2))
        print(f"written: {write_result(args.name, result, args.work_dir)}")
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    if args.name == "eval64":
        result = {"machine": machine(), **eval64(args)}
    elif args.name == "augment64":
        result = {"machine": machine(), **augment64(args)}
    elif args.name == "decode3d":
        result = decode3d.run(args)
    elif args.name == "volume64":
        result = {"machine": machine(), **volume64.run(args, DATA)}
    elif args.name == "training":
        result = {"machine": machine(), **training.run(args)}
    elif args.name == "eval_controls":
        result = {"machine": machine(), **eval_controls.run(args, DATA)}
    elif args.name == "quality64":
        result = {"machine": machine(), **quality64.run(args, DATA)}
    elif args.name == "recipe64":
        result = {"machine": machine(), **recipe64.run(args, DATA)}
    elif args.name == "sampling":
        result = {"machine": machine(), **sampling.run(args, DATA)}
    elif args.name == "controlnet64":
        result = controlnet64.run(args, DATA)  # sets the thread count, which machine() records
        result = {"machine": machine(), **result}
    else:
        result = train64(args, out)
        result["generate"] = generate64(args)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
