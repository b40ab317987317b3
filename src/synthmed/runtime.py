"""Device, precision and thread settings shared by training and generation, and the torchrun process group."""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from synthmed.errors import SynthmedError

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``name`` as a device; under torchrun with several processes, auto/cuda is the process's own GPU
    (cuda:LOCAL_RANK)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SynthmedError(
            "CUDA was requested but no CUDA device is available; use device: cpu", field="device"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and env_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 (fp16 where bf16 is unsupported) autocast on CUDA; fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {v: k for k, v in PRECISION_NAMES.items()}[name]


PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)


# --- several processes (torchrun) ------------------------------------------------------------------------
# torchrun starts one process per GPU (or CPU worker) with WORLD_SIZE, RANK and LOCAL_RANK set. With a world
# of one process none of this does anything: single-process runs behave exactly as without torchrun.


def env_world_size() -> int:
    """Processes torchrun started for this job (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def is_main() -> bool:
    """Whether this process writes files: rank 0 (always, without torchrun)."""
    return rank() == 0


_joined: bool | None = None  # join_process_group: None never joined, True joined, False joined and left


def join_process_group(device: torch.device) -> None:
    """Join torchrun's process group (NCCL for a CUDA device, gloo on CPU), once per process.

    A no-op without torchrun or when the caller already set up a group. The group is kept for further
    training or generation calls of the process (joining again after leaving can pick up the previous group's
    stale rendezvous keys from torchrun's store) and left by :func:`leave_process_group`: at the end of a
    synthmed command, else at interpreter exit.
    """
    global _joined
    if env_world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        return
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise SynthmedError(
            f"WORLD_SIZE is set but {missing} are not: start several processes with torchrun "
            "(torchrun --nproc_per_node N --no-python synthmed ...)"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    if _joined is None:
        atexit.register(leave_process_group)
    _joined = True


def leave_process_group(sync: bool = False) -> None:
    """Destroy the process group :func:`join_process_group` set up, if any.

    ``sync`` waits first until every rank gets here: a rank that tears down its gloo connections while
    another still uses them makes that one abort ("terminate called without an active exception"). Only on
    success: after an error the other ranks may never arrive.
    """
    global _joined
    if _joined and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()
    if _joined:
        _joined = False


@contextmanager
def torchrun_command() -> Iterator[None]:
    """Around a whole command: under torchrun, leave the process group at its end (in step on success)."""
    try:
        yield
    except BaseException:
        leave_process_group()
        raise
    leave_process_group(sync=True)


def barrier() -> None:
    if distributed():
        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, then on the other ranks: files it writes (data split, caches) are written once, by
    rank 0, and the others read them. If rank 0 fails, every rank raises its error."""
    if not distributed():
        return fn()
    if is_main():
        try:
            result = fn()
        except BaseException as exc:
            broadcast_object(f"{type(exc).__name__}: {exc}")
            raise
        broadcast_object(None)
        return result
    failed = broadcast_object(None)
    if failed is not None:
        raise SynthmedError(f"rank 0 failed: {failed}")
    return fn()


def step_seed(seed: int, step: int) -> int:
    """A seed derived from ``seed`` for step ``step`` (a training step, a generation retry): independent
    streams for every pair, reproducible from the pair alone."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
