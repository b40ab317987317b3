"""Training on real chest X-rays with the tiny preset: losses fall, checkpoints land, resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from synthmed.artifacts import checkpoint as ckpt
from synthmed.config import build_train_config
from synthmed.errors import SynthmedError
from synthmed.training.run import resolve_run_config, train

pytestmark = pytest.mark.slow


def _cfg(data: Path, run_dir: Path, **stage_overrides):
    values = {"preset": "tiny", "run_dir": str(run_dir), "data": {"source": str(data)}}
    for stage, fields in stage_overrides.items():
        values[stage] = fields
    return build_train_config(values)


def _log(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "log.jsonl").read_text().splitlines()]


def test_loss_decreases_and_checkpoints_written(tiny_run: Path) -> None:
    for stage, key in (("autoencoder", "loss_autoencoder"), ("diffusion", "loss_unet")):
        rows = [r[key] for r in _log(tiny_run / stage) if key in r]
        assert len(rows) >= 4
        first, last = sum(rows[:2]) / 2, sum(rows[-2:]) / 2
        assert last < first, f"{stage} loss did not decrease: {rows}"
        assert (tiny_run / stage / "last.pt").exists()
        assert (tiny_run / stage / "model.pt").exists()
        assert list((tiny_run / stage / "previews").glob("step_*.png"))
    state = ckpt.load(tiny_run / "diffusion" / "last.pt")
    assert {"step", "models", "ema", "optimizers", "lr_schedulers", "scaler", "rng", "extra"} <= state.keys()
    assert state["extra"]["scale_factor"] > 0
    assert state["extra"]["class_names"] == ["NORMAL", "PNEUMONIA"]
    split = json.loads((tiny_run / "split.json").read_text())
    assert {item["split"] for item in split["items"]} == {"train", "val", "holdout"}


def test_resume_after_sigkill_matches_uninterrupted_run(kermany_small: Path, tmp_path: Path) -> None:
    stages = {
        "autoencoder": {"steps": 8, "checkpoint_every": 2},
        # Long enough that the kill lands well before the end, even on a loaded machine.
        "diffusion": {"steps": 30, "checkpoint_every": 2},
    }
    reference = _cfg(kermany_small, tmp_path / "reference", **stages)
    train(reference, progress=False)

    killed = _cfg(kermany_small, tmp_path / "killed", **stages)
    killed.run_dir.mkdir()
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(killed.model_dump(mode="json")))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "synthmed", "train", "--config", str(config), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stage_dir = killed.run_dir / "diffusion"
    deadline = time.time() + 240
    while not list(stage_dir.glob("step_*.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed.run_dir / "diffusion" / "model.pt").exists(), "run finished before it was killed"

    train(resolve_run_config(None, killed.run_dir, resume=True), resume=True, progress=False)
    for stage in ("autoencoder", "diffusion"):
        a = ckpt.load(reference.run_dir / stage / "model.pt")
        b = ckpt.load(killed.run_dir / stage / "model.pt")
        assert a["step"] == b["step"] == getattr(reference, stage).steps
        for which in ("raw", "ema"):
            for name, tensor in a[which].items():
                assert torch.equal(tensor, b[which][name]), f"{stage} {which} {name} differs after resume"
    steps = [r["step"] for r in _log(killed.run_dir / "diffusion") if "loss_unet" in r]
    assert steps == sorted(set(steps)), "log rows of the killed run's lost steps were not dropped"


def test_same_seed_same_weights_and_refuses_to_overwrite(kermany_small: Path, tmp_path: Path) -> None:
    stages = {"autoencoder": {"steps": 3}, "diffusion": {"steps": 1}}
    cfg = _cfg(kermany_small, tmp_path / "a", **stages)
    train(cfg, ["autoencoder"], progress=False)
    again = _cfg(kermany_small, tmp_path / "b", **stages)
    train(again, ["autoencoder"], progress=False)
    wa = ckpt.load(cfg.run_dir / "autoencoder" / "model.pt")["raw"]
    wb = ckpt.load(again.run_dir / "autoencoder" / "model.pt")["raw"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # Asking for more steps on a finished stage without --resume must not silently restart it.
    longer = _cfg(kermany_small, tmp_path / "a", autoencoder={"steps": 5}, diffusion={"steps": 1})
    with pytest.raises(SynthmedError, match="--resume"):
        train(longer, ["autoencoder"], progress=False)


def test_resume_rejects_changed_architecture(tiny_run: Path) -> None:
    changed = build_train_config(
        {
            **yaml.safe_load((tiny_run / "config.yaml").read_text()),
            "autoencoder": {"arch": {"latent_channels": 4}},
        }
    )
    with pytest.raises(SynthmedError, match=r"autoencoder\.arch\.latent_channels"):
        resolve_run_config(changed, tiny_run, resume=True)


def test_diffusion_stage_needs_trained_autoencoder(kermany_small: Path, tmp_path: Path) -> None:
    cfg = _cfg(kermany_small, tmp_path / "run")
    with pytest.raises(SynthmedError, match=r"autoencoder.*model\.pt"):
        train(cfg, ["diffusion"], progress=False)
