"""Benchmarks: ``python -m benchmarks.run train64 [--ae-steps N --diffusion-steps N --precision bf16]``.

train64: train the ``small64`` preset on Kermany train (NORMAL + PNEUMONIA) for a fixed number of steps on
this machine, then generate at 25 DDIM steps. Records wall time, steps/s, images/s and peak memory, and in
the same run the baseline: MONAI's tutorial sampler (``LatentDiffusionInferer.sample``, fp32, no guidance)
on the same weights. Results go to ``benchmarks/results/train64.json`` with machine information.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DATA = Path(os.environ.get("SYNTHMED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def machine() -> dict:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stage_rate(run_dir: Path, stage: str) -> float:
    rows = [json.loads(x) for x in (run_dir / stage / "log.jsonl").read_text().splitlines()]
    return [r["steps_per_s"] for r in rows if "steps_per_s" in r][-1]


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
            "autoencoder_steps_per_s": round(_stage_rate(run_dir, "autoencoder"), 3),
            "diffusion_steps": args.diffusion_steps,
            "diffusion_batch": cfg.diffusion.batch_size,
            "diffusion_steps_per_s": round(_stage_rate(run_dir, "diffusion"), 3),
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
            lambda p=pipe: p.generate(label="PNEUMONIA", n=n, steps=25, guidance=3.0, batch_size=n), n
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
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    result = train64(args, out)
    result["generate"] = generate64(args)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
