"""Peak memory of decoding a 3D latent tiled vs in one call: ``python -m benchmarks.decode3d [--sizes ...]``.

The ``vae3d`` autoencoder (channels 32/64/64, 4x compression, 4 latent channels; random weights, since
memory does not depend on them) decodes a random latent of ``size/4`` voxels per axis in float32 under
``torch.inference_mode()``: once with `synthmed.diffusion.tiled.decode_latents` (tiles of 16 latent = 64
output voxels, overlap 0.25, stitched on the CPU) and once in a single ``decode`` call.

Each measurement is a fresh subprocess (``--child tiled|untiled --size N``), so its peak RSS (ru_maxrss)
belongs to that measurement alone; the RSS after building the model and latent is recorded as the baseline,
so ``decode_mib`` is the decode's own increment. Children run under an address-space cap (RLIMIT_DATA,
default: the memory available at start less 1 GiB) so an untiled decode that cannot fit fails with an
allocation error, recorded in the results, instead of waking the OOM killer.
Results: ``benchmarks/results/decode3d.json`` with machine information.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.measure import machine, peak_rss_mib
from synthmed.config import AutoencoderArch
from synthmed.diffusion.tiled import decode_latents
from synthmed.models.builders import build_autoencoder

RESULTS = Path(__file__).parent / "results"

SMALL3D = AutoencoderArch(
    channels=[32, 64, 64],
    attention_levels=[False] * 3,
    latent_channels=4,
    norm_num_groups=16,
    num_res_blocks=1,
)
TILE, OVERLAP = 16, 0.25
MODES = ("tiled", "untiled")
OUT = RESULTS / "decode3d.json"
REPO = Path(__file__).resolve().parents[1]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256], help="output voxels per axis")
    p.add_argument("--tile", type=int, default=TILE, help="tile in latent voxels per axis")
    p.add_argument("--overlap", type=float, default=OVERLAP)
    p.add_argument("--mem-limit-gib", type=float, default=None, help="cap per child (default: available - 1)")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)


def _defaults() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args([])


def _available_gib() -> float:
    line = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemAvailable"))
    return int(line.split()[1]) / 2**20


def measure(mode: str, size: int, tile: int, overlap: float) -> dict:
    """One decode in this process: seconds and RSS figures in MiB (call it in a fresh process)."""
    torch.manual_seed(0)
    ae = build_autoencoder(SMALL3D, spatial_dims=3).eval()
    n = size // SMALL3D.compression
    z = torch.randn(1, SMALL3D.latent_channels, n, n, n)
    baseline = peak_rss_mib()
    result: dict = {"mode": mode, "size": size, "latent": n, "baseline_rss_mib": round(baseline)}
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            y = decode_latents(ae, z, tile=tile if mode == "tiled" else None, overlap=overlap)
    except (RuntimeError, MemoryError) as exc:  # torch's CPU allocator raises RuntimeError when capped
        result["error"] = str(exc).splitlines()[0][:300]
    else:
        result["output_shape"] = list(y.shape)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["peak_rss_mib"] = round(peak_rss_mib())
    result["decode_mib"] = result["peak_rss_mib"] - result["baseline_rss_mib"]
    return result


def _child(mode: str, size: int, args: argparse.Namespace, limit_gib: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.decode3d", "--child", mode, "--size", str(size)]
    cmd += ["--tile", str(args.tile), "--overlap", str(args.overlap), "--mem-limit-gib", str(limit_gib)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    # Killed (e.g. by the OOM killer despite the cap) or crashed: record it, keep going.
    tail = proc.stderr.strip().splitlines()[-1:] or [""]
    return {"mode": mode, "size": size, "error": f"child exited with {proc.returncode}: {tail[0][:300]}"}


def _ratio(rows: dict) -> float | None:
    tiled, untiled = rows["tiled"], rows["untiled"]
    if "error" in tiled or "error" in untiled:
        return None
    return round(untiled["peak_rss_mib"] / tiled["peak_rss_mib"], 2)


def run(args: argparse.Namespace | None = None) -> dict:
    """Every size in both modes, each in a fresh subprocess; untiled/tiled peak RSS ratio per size."""
    args = args or _defaults()
    limit = args.mem_limit_gib or round(_available_gib() - 1, 1)
    results = {}
    for size in args.sizes:
        rows = {mode: _child(mode, size, args, limit) for mode in MODES}
        results[str(size)] = {**rows, "peak_ratio_untiled_over_tiled": _ratio(rows)}
        print(json.dumps({size: results[str(size)]}), file=sys.stderr, flush=True)
    return {
        "benchmark": "decode3d",
        "machine": machine(),
        "arch": SMALL3D.model_dump(),
        "precision": "fp32",
        "tile_latent": args.tile,
        "tile_voxels": args.tile * SMALL3D.compression,
        "overlap": args.overlap,
        "mem_limit_gib": limit,
        "sizes": args.sizes,
        "results": results,
    }


def _cap_memory(gib: float) -> None:
    cap = int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args()
    if args.child:
        if args.mem_limit_gib:
            _cap_memory(args.mem_limit_gib)
        print(json.dumps(measure(args.child, args.size, args.tile, args.overlap)))
        return
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written: {OUT}")


if __name__ == "__main__":
    main()
