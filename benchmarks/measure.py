"""Measurements shared by the benchmarks: wall time with device synchronisation, peak memory of a phase, and
the matrix-multiply peak of this machine (the hardware limit FLOP/s are compared with)."""

from __future__ import annotations

import json
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from synthmed.models.foundation import shipped_card

PAGE = os.sysconf("SC_PAGE_SIZE")
RESULTS = Path(__file__).parent / "results"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device = torch.device("cpu")) -> float:
    """Seconds ``fn()`` takes, with queued device work finished before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def matmul_peak(dtype: torch.dtype, device: torch.device = torch.device("cpu"), size: int = 2048) -> float:
    """FLOP/s of a square matmul on this machine (best of 10)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, device) for _ in range(10))
    return 2 * size**3 / best


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


class PeakMemory:
    """Peak memory a ``with`` block adds: CUDA's allocator peak on a GPU; on the CPU the process RSS, sampled
    every 2 ms by a thread (getrusage's peak never goes down, so it cannot tell one phase from another)."""

    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        self.device, self.mib = device, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.mib = round((peak - self._start) / 2**20, 1)


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
        # the shipped weights change between versions and most benchmarks' generators stand on them
        "foundation_autoencoder_sha256": shipped_card()["sha256"],
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rated(log: Path) -> dict:
    """The last row of a training log that has a rate."""
    rows = [json.loads(x) for x in Path(log).read_text().splitlines()]
    return [r for r in rows if "steps_per_s" in r][-1]


def last_rate(log: Path) -> float:
    """Steps per second of a stage, from its training log (the last logged rate)."""
    return float(_rated(log)["steps_per_s"])


def stepping_seconds(log: Path) -> float:
    """Seconds a stage spent stepping, from its training log: steps over the last logged rate."""
    row = _rated(log)
    return row["step"] / row["steps_per_s"]


def write_result(name: str, result: dict, work_dir: str | Path) -> Path:
    """``benchmarks/results/<name>.json``; a smoke run's ``<name>_smoke.json`` stays in its work folder."""
    smoke = bool(result.get("smoke"))
    path = Path(work_dir) / f"{name}_smoke.json" if smoke else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
