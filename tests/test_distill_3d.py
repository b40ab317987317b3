"""Distilled few-step generation of 3D volumes (issue 23) on real hippocampus MRI: progressive distillation
of the rectified-flow model with its label-map ControlNet attached, the nested Euler grids, generation and
bit-exact regeneration with a student, and the refusals."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import synthmed
from synthmed.artifacts import checkpoint as ckpt
from synthmed.cli import app
from synthmed.config import DistillConfig, build_train_config
from synthmed.diffusion import distilled as dd
from synthmed.errors import SynthmedError
from synthmed.sampling.pipeline import VolumeCondition
from synthmed.training.distill import distill
from synthmed.training.run import train

pytestmark = pytest.mark.slow
runner = CliRunner()
KEYS = [f"hippocampus_{n:03d}" for n in (1, 3, 4, 6, 7, 8, 11, 14)]
ROUND = {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "preview_every": 4, "log_every": 2}


@pytest.fixture(scope="module")
def run3d(msd_pairs: Callable[[Sequence[str]], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny3d (rectified flow, label-map ControlNet) on eight real image-label pairs."""
    stage = {"steps": 4, "batch_size": 2, "preview_every": 4}
    values = {
        "preset": "tiny3d",
        "run_dir": str(tmp_path_factory.mktemp("distill3d") / "teacher"),
        "data": {"source": str(msd_pairs(KEYS)), "val_fraction": 0.25},
        "autoencoder": stage,
        "diffusion": stage,
        "controlnet": stage,
    }
    return train(build_train_config(values), progress=False)


@pytest.fixture(scope="module")
def students3d(run3d: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = Path(shutil.copytree(run3d, tmp_path_factory.mktemp("students3d") / "run"))
    cfg = DistillConfig(run_dir=run, teacher_steps=4, **ROUND)
    assert distill(cfg, progress=False) == [1, 2]
    return run


def test_flow_grids_nest_and_one_euler_step_is_monais() -> None:
    assert dd.flow_grid(2, 1000).tolist() == [1000.0, 500.0, 0.0]
    assert dd.flow_grid(4, 1000)[::2].tolist() == dd.flow_grid(2, 1000).tolist()
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 3, 4, 4, 4, generator=g)
    t, s = torch.tensor([1000.0, 500.0]), torch.tensor([500.0, 0.0])
    x_s, _ = dd.flow_step(v, x, t, s, 1000)
    assert torch.allclose(x_s, x + 0.5 * v)
    # Two teacher steps of equal length: the distillation target is their mean velocity.
    v2 = torch.randn(2, 3, 4, 4, 4, generator=g)
    x_mid, _ = dd.flow_step(v, x, t, (t + s) / 2, 1000)
    x_end, _ = dd.flow_step(v2, x_mid, (t + s) / 2, s, 1000)
    assert torch.allclose(dd.flow_two_step_target(x, x_end, t, s, 1000), (v + v2) / 2, atol=1e-5)


def test_3d_distillation_halves_from_the_teacher_with_the_controlnet_attached(
    run3d: Path, students3d: Path
) -> None:
    assert not (students3d / "distilled" / "steps-4").exists()  # the teacher itself samples in 4 steps
    teacher_sha = synthmed.load(run3d).hashes["diffusion_sha256"]
    for steps in (2, 1):
        folder = students3d / "distilled" / f"steps-{steps}"
        state = ckpt.load(folder / "model.pt")
        assert state["step"] == 4 and state["extra"]["round"] == "halving"
        assert state["extra"]["teacher_sha256"] == teacher_sha and state["extra"]["guidance_range"] == [
            1.0,
            1.0,
        ]
        rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        assert any(np.isfinite(r.get("val_v_mse", np.nan)) for r in rows)
        assert list((folder / "previews").glob("*.png"))
    assert not (students3d / "distilled" / "decoder").exists()  # 2D only, and said so


def test_generate_3d_with_a_student_follows_the_label_map_and_regenerates(
    students3d: Path, tmp_path: Path
) -> None:
    out = tmp_path / "vol"
    args = ["generate", "--run", str(students3d), "--count", "2", "--sampler", "distilled", "--steps", "1"]
    result = runner.invoke(app, [*args, "--out", str(out), "--no-progress", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    sha = synthmed.load(students3d).students.get(1).sha256
    assert {(r["sampler"], r["steps"], r["distilled_sha256"]) for r in rows} == {("distilled", 1, sha)}
    again = tmp_path / "again.nii.gz"
    replay = runner.invoke(
        app, ["regenerate", str(out / "manifest.jsonl"), "--file", rows[0]["file"], "--out", str(again)]
    )
    assert replay.exit_code == 0, replay.output
    assert np.array_equal(nib.load(again).get_fdata(), nib.load(out / rows[0]["file"]).get_fdata())
    # The ControlNet acts on the student: the same seeds at conditioning scale 0 give other volumes.
    pipe = synthmed.load(students3d)
    size = pipe.cfg.data.volume.size
    maps = torch.zeros((1, 1, *size), dtype=torch.long)
    maps[..., 4:12, 4:12, 4:12] = 1
    spacing = pipe.default_spacing
    with_cn = pipe.sample_batch(
        [0], None, steps=1, sampler="distilled", volume=VolumeCondition(spacing, size, maps)
    )
    without = pipe.sample_batch(
        [0], None, steps=1, sampler="distilled", volume=VolumeCondition(spacing, size, maps, 0.0)
    )
    assert not torch.equal(with_cn, without)


def test_3d_distillation_refusals(run3d: Path, students3d: Path, tmp_path: Path) -> None:
    pipe = synthmed.load(students3d)
    with pytest.raises(SynthmedError, match="no distilled student samples in 4 steps"):
        pipe.sample_batch([0], None, steps=4, sampler="distilled")
    row = {"sampler": "distilled", "steps": 1, "distilled_sha256": "0" * 64}
    with pytest.raises(SynthmedError, match="another distilled student"):
        pipe.check_student(row)
    guided = tmp_path / "guided"
    shutil.copytree(run3d, guided)
    config = (guided / "config.yaml").read_text().replace("label_dropout: 0.0", "label_dropout: 0.1")
    (guided / "config.yaml").write_text(config)
    with pytest.raises(SynthmedError, match="without classifier-free guidance"):
        distill(DistillConfig(run_dir=guided, **ROUND), progress=False)
