"""Distilled few-step generation (issue 23) on real BUSI ultrasound: guidance distillation, progressive
halving rounds with exact resume, the lightweight decoder, the distilled sampler with the teacher's mask
ControlNet, manifests and bit-exact regeneration, the dashboard's sampler list, and the errors users meet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import synthmed
from synthmed.artifacts import checkpoint as ckpt
from synthmed.cli import app
from synthmed.config import DistillConfig, build_train_config
from synthmed.diffusion import distilled as dd
from synthmed.errors import SynthmedError
from synthmed.models.builders import noise_process
from synthmed.models.distilled import GuidedUNet, build_lite_decoder, student_from_teacher
from synthmed.training.distill import distill
from synthmed.training.run import train
from synthmed.web.run_options import read_run

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
runner = CliRunner()
# Tiny rounds: 4-step guidance student, then 2 and 1 steps, then the lightweight decoder; 6 optimiser steps
# each, a checkpoint every 3.
ROUND = {
    "steps": 6,
    "decoder_steps": 6,
    "batch_size": 8,
    "checkpoint_every": 3,
    "preview_every": 6,
    "log_every": 2,
}


def _distill_cli(run: Path, *extra: str) -> str:
    """`synthmed distill` with the tiny rounds (from a YAML file, as a user would give them)."""
    config = run.parent / "distill.yaml"
    config.write_text(json.dumps(ROUND | {"teacher_steps": 4}))
    result = runner.invoke(
        app, ["distill", "--run", str(run), "--config", str(config), "--no-progress", *extra]
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def teacher(busi_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` with the v-prediction recipe on real BUSI images, with a mask ControlNet (not distilled)."""
    values = {
        "preset": "tiny",
        "run_dir": str(tmp_path_factory.mktemp("distill") / "teacher"),
        "data": {"source": str(busi_small)},
        "autoencoder": {"steps": 40},
        "diffusion": {"steps": 40, "noise": {"prediction_type": "v_prediction"}, "snr_gamma": 5.0},
        "controlnet": {"steps": 10},
    }
    return train(build_train_config(values), ["autoencoder", "diffusion", "controlnet"], progress=False)


@pytest.fixture(scope="module")
def student_run(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the teacher distilled by the CLI (the teacher itself stays undistilled)."""
    run = Path(shutil.copytree(teacher, tmp_path_factory.mktemp("distilled") / "run"))
    assert "done: distilled students of [1, 2, 4] steps" in _distill_cli(run)
    return run


def test_nested_grids_end_clean_and_a_new_student_predicts_as_its_teacher(teacher: Path) -> None:
    assert dd.grid(1, 1000).tolist() == [999, -1]
    assert dd.grid(4, 1000)[::2].tolist() == dd.grid(2, 1000).tolist()
    pipe = synthmed.load(teacher)
    student = student_from_teacher(pipe.unet).eval()
    x = torch.randn(4, *pipe.latent_shape, generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor([999, 500, 100, 0]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        expected = pipe.unet(x, timesteps=t, class_labels=labels)
        for w in (1.0, 4.0):
            assert torch.allclose(student(x, t, labels, torch.full((4,), w)), expected, atol=1e-5)
    # One DDIM step to the clean end returns the v-prediction's clean latent exactly.
    alphas = noise_process(pipe.cfg.diffusion.noise).alphas_cumprod
    x_s, x0 = dd.ddim_step(alphas, expected, x, t, torch.full((4,), -1))
    assert torch.allclose(x_s, x0)


def test_distill_trains_every_round_with_logs_previews_and_a_guidance_input(student_run: Path) -> None:
    for steps, kind in ((4, "guidance"), (2, "halving"), (1, "halving")):
        folder = student_run / "distilled" / f"steps-{steps}"
        state = ckpt.load(folder / "model.pt")
        assert state["step"] == 6 and state["extra"]["round"] == kind and state["extra"]["steps"] == steps
        rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        losses = [r["loss_student"] for r in rows if "loss_student" in r]
        assert len(losses) == 3 and np.isfinite(losses).all()
        assert any("val_v_mse" in r or "val_x0_mse" in r for r in rows)
        assert list((folder / "previews").glob("*.png"))
    # The guidance round moved the guidance branch off zero: the student's output depends on the scale.
    pipe = synthmed.load(student_run)
    student = pipe.students.get(4).model
    assert isinstance(student, GuidedUNet)
    x = torch.randn(2, *pipe.latent_shape, generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor([700, 300]), torch.tensor([0, 1])
    with torch.no_grad():
        low, high = (student(x, t, labels, torch.full((2,), w)) for w in (1.0, 5.0))
    assert not torch.allclose(low, high)
    # The lightweight decoder's round: its own stage, validated against the full decoder.
    folder = student_run / "distilled" / "decoder"
    state = ckpt.load(folder / "model.pt")
    assert state["step"] == 6 and state["extra"]["round"] == "decoder" and state["extra"]["width"] == 0.5
    assert state["extra"]["teacher_sha256"] == pipe.hashes["autoencoder_sha256"]
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert any(np.isfinite(r.get("val_psnr_vs_full", np.nan)) for r in rows)
    assert list((folder / "previews").glob("*.png"))
    # Run again: every round is finished, nothing is trained.
    assert "already trained, skipped" in _distill_cli(student_run)


def test_lite_decoder_has_the_autoencoders_levels_at_a_fraction_of_its_cost(teacher: Path) -> None:
    pipe = synthmed.load(teacher)
    arch = pipe.cfg.autoencoder.arch
    lite = build_lite_decoder(arch, 0.5, out_channels=1, latent_channels=arch.latent_channels).eval()
    z = torch.randn(2, *pipe.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert lite(z).shape == pipe.autoencoder.decode(z).shape
    full = sum(p.numel() for p in pipe.autoencoder.decoder.parameters())
    assert sum(p.numel() for p in lite.parameters()) < full / 2


def test_distillation_interrupted_mid_round_resumes_to_the_same_weights(
    teacher: Path, student_run: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(teacher, tmp_path / "run"))
    cfg = DistillConfig(run_dir=run, teacher_steps=4, **ROUND)

    def kill(stage: str, step: int, steps: int) -> None:
        if stage == "distilled-steps-2" and step == 4:  # after the checkpoint of step 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(cfg, progress=False, on_step=kill)
    assert not (run / "distilled" / "steps-2" / "model.pt").exists()
    with pytest.raises(SynthmedError, match="pass --resume"):
        distill(cfg, progress=False)
    assert distill(cfg, resume=True, progress=False) == [1, 2, 4]
    for steps in (4, 2, 1):
        ours = ckpt.load(run / "distilled" / f"steps-{steps}" / "model.pt")["ema"]
        uninterrupted = ckpt.load(student_run / "distilled" / f"steps-{steps}" / "model.pt")["ema"]
        assert all(torch.equal(ours[k], uninterrupted[k]) for k in ours), f"steps-{steps} differs"
    # Other settings than it was started with are refused, naming them.
    other = DistillConfig(run_dir=run, teacher_steps=8, **ROUND)
    with pytest.raises(SynthmedError, match=r"started with other \['teacher_steps'\]"):
        distill(other, resume=True, progress=False)
    longer = DistillConfig(run_dir=run, teacher_steps=4, **(ROUND | {"steps": 12}))
    with pytest.raises(SynthmedError, match=r"started with other \['steps'\]; resume with the saved"):
        distill(longer, resume=True, progress=False)


def test_generate_distilled_with_the_mask_controlnet_regenerates_bit_for_bit(
    student_run: Path, busi_small: Path, tmp_path: Path
) -> None:
    mask = sorted((busi_small / "malignant" / "mask").glob("*_mask.png"))[0]
    out = tmp_path / "syn"
    args = ["generate", "--run", str(student_run), "--label", "malignant", "--count", "3", "--steps", "2"]
    args += ["--sampler", "distilled", "--condition-file", str(mask), "--batch-size", "2", "--out", str(out)]
    args += ["--privacy-filter", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    kept = [r for r in rows if not r.get("dropped")]
    assert len(kept) == 3 and all(r["sampler"] == "distilled" and r["steps"] == 2 for r in rows)
    student_sha = synthmed.load(student_run).students.get(2).sha256
    assert {r["distilled_sha256"] for r in rows} == {student_sha}
    assert all(r["condition"] == "mask" and r["privacy_filter"] == 99.0 and "privacy" in r for r in rows)
    for row in kept:
        assert (out / row["file"].replace(".png", "_mask.png")).exists()
        again = tmp_path / "again.png"
        replay = runner.invoke(
            app,
            ["regenerate", str(out / "manifest.jsonl"), "--file", row["file"], "--out", str(again)],
        )
        assert replay.exit_code == 0, replay.output
        assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out / row["file"])))
    # The ControlNet acts on the student: at scale 0 the same seeds give other images.
    pipe = synthmed.load(student_run)
    control = pipe.condition(mask)
    with_cn = pipe.sample_batch([0, 1], "malignant", steps=2, sampler="distilled", control=control)
    control.scale = 0.0
    without = pipe.sample_batch([0, 1], "malignant", steps=2, sampler="distilled", control=control)
    assert not torch.equal(with_cn, without)


def test_generate_with_the_lite_decoder_records_it_and_regenerates_bit_for_bit(
    student_run: Path, tmp_path: Path
) -> None:
    def generate(out: Path, *extra: str) -> list[dict]:
        args = ["generate", "--run", str(student_run), "--label", "benign", "--count", "2", "--steps", "1"]
        args += ["--sampler", "distilled", "--out", str(out), "--no-progress", *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]

    lite_rows = generate(tmp_path / "lite", "--decoder", "lite")
    full_rows = generate(tmp_path / "full")
    sha = synthmed.load(student_run).lite_decoder().sha256
    assert {(r["decoder"], r["lite_decoder_sha256"]) for r in lite_rows} == {("lite", sha)}
    assert all("decoder" not in r and "lite_decoder_sha256" not in r for r in full_rows)
    lite, full = (
        np.asarray(Image.open(d / rows[0]["file"]))
        for d, rows in ((tmp_path / "lite", lite_rows), (tmp_path / "full", full_rows))
    )
    assert lite.shape == full.shape and not np.array_equal(lite, full)  # same latents, other decoder
    again = tmp_path / "again.png"
    replay = runner.invoke(
        app,
        [
            "regenerate",
            str(tmp_path / "lite" / "manifest.jsonl"),
            "--file",
            lite_rows[0]["file"],
            "--out",
            str(again),
        ],
    )
    assert replay.exit_code == 0, replay.output
    assert np.array_equal(np.asarray(Image.open(again)), lite)
    # A row made with another lightweight decoder is refused, naming the field.
    with pytest.raises(SynthmedError, match="another lightweight decoder") as info:
        synthmed.load(student_run).regenerate(lite_rows[0] | {"lite_decoder_sha256": "0" * 64})
    assert info.value.field == "lite_decoder_sha256"
    # Continuing the folder with the other decoder is refused: the settings differ.
    args = ["generate", "--run", str(student_run), "--label", "benign", "--count", "2", "--steps", "1"]
    result = runner.invoke(
        app, [*args, "--sampler", "distilled", "--out", str(tmp_path / "lite"), "--no-progress"]
    )
    assert result.exit_code != 0 and "other settings" in result.output


def test_dashboard_offers_distilled_and_lite_only_once_distilled(teacher: Path, student_run: Path) -> None:
    assert "distilled" not in read_run(teacher, "a").samplers
    assert read_run(teacher, "a").decoders == ("full",)
    run = read_run(student_run, "b")
    assert run.samplers[0] == "ddim" and run.samplers[-1] == "distilled"
    assert run.distilled_steps() == [1, 2, 4] and run.decoders == ("full", "lite")


def test_distilled_sampler_errors_name_the_fix(teacher: Path, student_run: Path, tiny_run: Path) -> None:
    def generate(run: Path, *extra: str) -> str:
        args = ["generate", "--run", str(run), "--label", "benign", "--sampler", "distilled", *extra]
        result = runner.invoke(app, [*args, "--out", str(run.parent / "x"), "--no-progress"])
        assert result.exit_code != 0
        return " ".join(result.output.split())

    assert f"this run has no distilled stage; add one with synthmed distill --run {teacher}" in generate(
        teacher
    )
    assert "no distilled student samples in 3 steps; this run has students for [1, 2, 4] steps" in generate(
        student_run, "--steps", "3"
    )
    assert "guidance 9.0 is outside the range the student was distilled for (1.0 to 5.0)" in generate(
        student_run, "--steps", "1", "--guidance", "9"
    )
    assert f"this run has no lightweight decoder; make one with synthmed distill --run {teacher}" in generate(
        teacher, "--sampler", "ddim", "--decoder", "lite"
    )
    # An epsilon-prediction run cannot be distilled by this sampler's maths: the field is named.
    result = runner.invoke(app, ["distill", "--run", str(tiny_run), "--no-progress"])
    assert result.exit_code != 0
    assert "diffusion.noise.prediction_type" in result.output and "v_prediction" in result.output
    result = runner.invoke(app, ["distill", "--run", str(teacher), "--teacher-steps", "6"])
    assert result.exit_code != 0 and "teacher_steps must be a power of two" in result.output


def test_distill64_smoke_run_end_to_end(data_root: Path, tmp_path: Path) -> None:
    """The benchmark script on a tiny teacher: every row, the decode cost and the issue's headline keys,
    written to its work folder only."""
    env = os.environ | {"SYNTHMED_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.run", "distill64", "--smoke", "--work-dir", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "distill64_smoke.json").read_text())
    assert list(result["headline"]) == [
        "images_per_s",
        "fid",
        "teacher_fid",
        "recall",
        "teacher_recall",
        "sharpness_ratio",
        "distill_minutes",
    ]
    rows = {(r["row"], r["steps"]) for r in result["rows"]}
    students = {(role, k) for role in ("student", "student_lite") for k in (1, 2, 4)}
    assert rows == {("teacher", 25), ("monai_ddpm1000_fp32", 1000)} | students
    assert {r["decoder"] for r in result["rows"] if r["row"] == "student_lite"} == {"lite"}
    assert result["rows"][0]["sampler"] == "ddim" and result["rows"][1]["nfe"] == 1
    assert all(r["images_per_s"] > 0 and r["fid"] >= 0 for r in result["rows"])
    assert result["decode_cost"]["decode_s_per_image"] > 0 and result["distillation"]["students"] == [1, 2, 4]
    assert result["decode_cost"]["lite_decode_s_per_image"] > 0
    assert np.isfinite(result["lite_decoder_check"]["psnr_vs_full"])
    parts = result["distillation"]["parts"]
    assert (
        list(parts) == ["students+decoder"]
        and parts["students+decoder"]["source"] == "timed in this benchmark"
    )
    assert (
        result["default"]["row"].startswith("student")
        and result["headline"]["fid"] == result["default"]["fid"]
    )
    assert not (REPO / "benchmarks" / "results" / "distill64_smoke.json").exists()
