"""torchrun: 2 CPU processes (gloo) train and generate as one process would, on real chest X-rays.

The module fixture starts this file under torchrun (``python -m torch.distributed.run --standalone``); each
worker trains two runs of the ``tiny`` preset (one of them stopped half-way and resumed) and generates images,
recording every file it writes. The single-process reference runs in the test process, like the workers with
one thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.artifacts.manifest import read_manifest
from synthmed.config import GenerateConfig, TrainConfig, build_train_config
from synthmed.errors import SynthmedError
from synthmed.runtime import torchrun_command
from synthmed.sampling import generate as generation
from synthmed.sampling.generate import generate_to_folder
from synthmed.training import trainer as trainer_module
from synthmed.training.run import train

pytestmark = pytest.mark.slow

STEPS = 6  # per stage; the resumed run stops its diffusion stage at HALF and continues
HALF = 3
# Largest weight difference allowed between 2 processes and 1: the same steps up to float summation order
# (observed 1.5e-5 after 6 Adam steps at lr 2e-3). A rank training on the wrong half of the batch, or
# gradients not averaged, moves weights by ~lr per step: 2e-2 here.
TOL = 5e-4
CPU = torch.device("cpu")


def _cfg(data: Path, run_dir: Path, diffusion_steps: int = STEPS) -> TrainConfig:
    stage = {"checkpoint_every": 2, "preview_every": 100}
    return build_train_config(
        {
            "preset": "tiny",  # batch_size 8: 4 per process
            "run_dir": str(run_dir),
            "data": {"source": str(data)},
            "runtime": {"num_threads": 1},
            "autoencoder": stage | {"steps": STEPS},
            "diffusion": stage | {"steps": diffusion_steps, "log_every": 1},
        }
    )


def _generate_cfg(run_dir: Path, out: Path) -> GenerateConfig:
    # 7 images in batches of 2: 4 batches, rank 0 takes the 1st and 3rd, rank 1 the 2nd and the last (1 image)
    return GenerateConfig(run_dir=run_dir, out=out, label="PNEUMONIA", count=7, steps=3, batch_size=2)


# --- the torchrun worker ---------------------------------------------------------------------------------
def _write_recorder(root: Path, written: list[str], on: dict[str, bool]):
    """An audit hook noting every file under ``root`` opened for writing, renamed onto or removed."""
    prefix = str(root)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not on["recording"]:
            return
        path = None
        if event == "open" and isinstance(args[0], str | os.PathLike):
            mode, flags = args[1], args[2]
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else None
            if writes or (mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                path = args[0]
        elif event in ("os.rename", "os.remove"):
            path = args[1] if event == "os.rename" else args[0]
        if isinstance(path, str | os.PathLike) and str(path).startswith(prefix):
            written.append(str(path))

    return hook


def _worker(data: Path, root: Path) -> None:
    written: list[str] = []
    on = {"recording": True}
    sys.addaudithook(_write_recorder(root, written, on))
    with torchrun_command():
        train(_cfg(data, root / "ddp"), progress=False)
        train(_cfg(data, root / "resumed", diffusion_steps=HALF), progress=False)
        train(_cfg(data, root / "resumed"), progress=False, resume=True)
        generate_to_folder(_generate_cfg(root / "ddp", root / "generated-ddp"), progress=False)
    on["recording"] = False
    (root / f"writes-rank{os.environ['RANK']}.json").write_text(json.dumps(written))


# --- the tests -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(kermany_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, __file__, str(kermany_small), str(root)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    threads = torch.get_num_threads()
    try:  # the single-process reference, with one thread like each worker
        train(_cfg(kermany_small, root / "single"), progress=False)
        generate_to_folder(_generate_cfg(root / "ddp", root / "generated-single"), progress=False)
    finally:
        torch.set_num_threads(threads)
    return root


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_train_like_one_with_the_global_batch(runs: Path) -> None:
    for stage in ("autoencoder", "diffusion"):
        one = torch.load(runs / "single" / stage / "model.pt", weights_only=True)
        two = torch.load(runs / "ddp" / stage / "model.pt", weights_only=True)
        assert one["step"] == two["step"] == STEPS
        for which in ("raw", "ema"):
            diff = _max_diff(one[which], two[which])
            print(f"{stage} {which}: max |2 processes - 1 process| = {diff:.2e}")
            assert diff < TOL, f"{stage} {which} weights differ by {diff:.2e}"
    # The logged losses are those of the global batch (averaged over the ranks).
    one, two = (
        _log(runs / "single" / "diffusion" / "log.jsonl"),
        _log(runs / "ddp" / "diffusion" / "log.jsonl"),
    )
    assert [r["step"] for r in one] == [r["step"] for r in two]
    losses = [(a["loss_unet"], b["loss_unet"]) for a, b in zip(one, two, strict=True) if "loss_unet" in a]
    assert len(losses) == STEPS
    assert np.allclose(*zip(*losses, strict=True), rtol=1e-4)


def test_only_rank_0_writes_run_files(runs: Path) -> None:
    rank0 = json.loads((runs / "writes-rank0.json").read_text())
    rank1 = json.loads((runs / "writes-rank1.json").read_text())
    for run in ("ddp", "resumed"):
        for name in ("config.yaml", "split.json", "autoencoder/last.pt", "diffusion/model.pt"):
            assert str(runs / run / name) in rank0
    assert any(p.endswith("log.jsonl") for p in rank0)
    assert any("/cache/" in p for p in rank0)
    assert str(runs / "generated-ddp" / "manifest.jsonl") in rank0
    # Rank 1 wrote the images of its own batches (seeds 2, 3 and 6; through temporary files) and nothing else.
    own = {runs / "generated-ddp" / "PNEUMONIA" / f"syn_{s:08d}.png" for s in (2, 3, 6)}
    assert {_without_tmp(Path(p)) for p in rank1} == own, rank1


def _without_tmp(path: Path) -> Path:
    """The file an atomic write's temporary file ``.<name>.tmp<pid>`` becomes."""
    if path.name.startswith(".") and ".tmp" in path.name:
        return path.with_name(path.name[1:].rsplit(".tmp", 1)[0])
    return path


def test_two_process_resume_matches_uninterrupted_run(runs: Path) -> None:
    resumed = torch.load(runs / "resumed" / "diffusion" / "model.pt", weights_only=True)
    straight = torch.load(runs / "ddp" / "diffusion" / "model.pt", weights_only=True)
    assert resumed["step"] == straight["step"] == STEPS
    for which in ("raw", "ema"):
        assert _max_diff(resumed[which], straight[which]) == 0.0
    steps = [r["step"] for r in _log(runs / "resumed" / "diffusion" / "log.jsonl") if "loss_unet" in r]
    assert steps == list(range(1, STEPS + 1))


def test_sharded_generation_equals_single_process(runs: Path) -> None:
    one, two = runs / "generated-single", runs / "generated-ddp"
    files = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(files) == 7
    assert sorted(p.relative_to(two) for p in two.rglob("*.png")) == files
    for name in files:
        assert np.array_equal(np.asarray(Image.open(one / name)), np.asarray(Image.open(two / name))), name

    def rows(folder: Path) -> list[dict]:
        manifest = read_manifest(folder / "manifest.jsonl")
        return [{k: v for k, v in r.items() if k != "created"} for r in manifest]

    assert sorted(rows(one), key=lambda r: r["seed"]) == sorted(rows(two), key=lambda r: r["seed"])
    # The batches of a single process, in its order: rank 0 appends each round's rows in batch order.
    batches = [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5], [6]]
    assert [(r["seed"], r["batch_seeds"]) for r in rows(two)] == list(enumerate(batches))


def test_batch_size_must_divide_among_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_module.runtime, "world_size", lambda: 2)
    task = SimpleNamespace(name="diffusion", num_items=24)
    cfg = build_train_config({"preset": "tiny", "diffusion": {"batch_size": 5}}).diffusion
    message = r"diffusion\.batch_size: the global batch of 5 does not divide among the 2 torchrun processes"
    with pytest.raises(SynthmedError, match=message):
        trainer_module.Trainer(task, cfg, Path("unused"), seed=0, device=CPU, dtype=torch.float32)


def test_privacy_filter_refused_under_torchrun(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generation, "world_size", lambda: 2)
    cfg = _generate_cfg(runs / "single", runs / "filtered").model_copy(update={"privacy_filter": True})
    with pytest.raises(SynthmedError, match=r"privacy filter .* torchrun"):
        generate_to_folder(cfg, progress=False)


if __name__ == "__main__":  # a torchrun worker (see the runs fixture)
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
