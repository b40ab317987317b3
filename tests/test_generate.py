"""Generation from a tiny model trained on real chest X-rays: seeds, manifest, guidance, labels, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import synthmed
from synthmed.artifacts.images import to_uint
from synthmed.cli import app
from synthmed.errors import SynthmedError

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def pipe(tiny_run: Path) -> synthmed.sampling.pipeline.Pipeline:
    return synthmed.load(tiny_run)


def test_reproducible_by_seed_and_batch_invariant_noise(pipe) -> None:
    a = pipe.generate(label="PNEUMONIA", n=3, steps=4, seed=5, batch_size=3).images
    b = pipe.generate(label="PNEUMONIA", n=3, steps=4, seed=5, batch_size=3).images
    assert torch.equal(a, b)
    c = pipe.generate(label="PNEUMONIA", n=3, steps=4, seed=6, batch_size=3).images
    assert not torch.equal(a, c)
    assert a.shape == (3, 1, 32, 32)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_each_image_depends_on_its_own_seed_alone(pipe, sampler: str) -> None:
    """An image is identical whatever batch it is drawn in: ancestral DDPM's step noise is per image too."""
    batch = pipe.sample_batch([11, 12, 13], "NORMAL", steps=4, sampler=sampler)
    for i, seed in enumerate([11, 12, 13]):
        alone = pipe.sample_batch([seed], "NORMAL", steps=4, sampler=sampler)
        assert torch.allclose(alone[0], batch[i], atol=1e-5), f"image {i} changed with its batch"
    swapped = pipe.sample_batch([13, 11], "NORMAL", steps=4, sampler=sampler)
    assert torch.allclose(swapped[1], batch[0], atol=1e-5)


def test_step_noise_is_independent_of_starting_noise() -> None:
    """The first ancestral step must not re-add an image's own starting noise (the broken-first-image bug)."""
    from synthmed.diffusion.sampler import batch_randn, initial_noise, step_generators

    seeds = [3, 4]
    start = initial_noise(seeds, (3, 8, 8), torch.device("cpu"))
    step = batch_randn(start.shape, step_generators(seeds, torch.device("cpu")), torch.device("cpu"))
    for i in range(len(seeds)):
        assert abs(float(torch.corrcoef(torch.stack([start[i].flatten(), step[i].flatten()]))[0, 1])) < 0.3


def test_guidance_and_label_change_output(pipe) -> None:
    base = pipe.generate(label="NORMAL", n=2, steps=4, guidance=3.0).images
    other_label = pipe.generate(label="PNEUMONIA", n=2, steps=4, guidance=3.0).images
    other_guidance = pipe.generate(label="NORMAL", n=2, steps=4, guidance=1.0).images
    assert (base - other_label).abs().max() > 1e-3
    assert (base - other_guidance).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["ddpm", "pndm"])
def test_other_monai_samplers(pipe, sampler: str) -> None:
    out = pipe.generate(label="NORMAL", n=2, steps=5, sampler=sampler)
    again = pipe.generate(label="NORMAL", n=2, steps=5, sampler=sampler)
    assert torch.equal(out.images, again.images)
    assert torch.isfinite(out.images).all()


def test_cli_generate_manifest_rows_regenerate_identical_images(tiny_run: Path, tmp_path: Path, pipe) -> None:
    out = tmp_path / "syn"
    args = [
        "generate",
        "--run",
        str(tiny_run),
        "--label",
        "PNEUMONIA",
        "--count",
        "5",
        "--steps",
        "4",
        "--guidance",
        "2.0",
        "--seed",
        "10",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [10, 11, 12, 13, 14]
    assert rows[4]["batch_seeds"] == [14]
    for key in ("label", "sampler", "steps", "guidance", "diffusion_sha256", "autoencoder_sha256", "file"):
        assert key in rows[0]
    for row in rows:
        png = np.asarray(Image.open(out / row["file"]))
        assert png.dtype == np.uint8 and png.shape == (32, 32)
        again = to_uint(pipe.regenerate(row), 8)
        assert np.array_equal(png, again), f"{row['file']} was not regenerated bit for bit"
    # The CLI replay command writes the same pixels.
    result = runner.invoke(
        app,
        [
            "regenerate",
            str(out / "manifest.jsonl"),
            "--file",
            rows[2]["file"],
            "--out",
            str(tmp_path / "again.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(out / rows[2]["file"]))
    )
    # Re-running the same command keeps finished images (an interrupted job continues) and adds none twice.
    assert runner.invoke(app, args).exit_code == 0
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 5
    # A job killed while appending its last row: the cut row is dropped and that image made again.
    manifest = out / "manifest.jsonl"
    manifest.write_text(manifest.read_text()[:-40])
    assert runner.invoke(app, args).exit_code == 0
    rows_after = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(r["seed"] for r in rows_after) == [10, 11, 12, 13, 14]


def test_sixteen_bit_png(tiny_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "generate",
            "--run",
            str(tiny_run),
            "--label",
            "NORMAL",
            "--count",
            "1",
            "--steps",
            "3",
            "--bit-depth",
            "16",
            "--out",
            str(tmp_path),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    png = np.asarray(Image.open(next(tmp_path.glob("NORMAL/*.png"))))
    assert png.dtype == np.uint16 or png.dtype == np.int32
    assert png.max() > 255


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label", "FRACTURE"], "unknown label 'FRACTURE'"),
        (["--label", "NORMAL", "--count", "0"], "count"),
        (["--label", "NORMAL", "--sampler", "euler"], "sampler"),
    ],
)
def test_cli_errors_exit_nonzero(tiny_run: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    result = runner.invoke(app, ["generate", "--run", str(tiny_run), "--out", str(tmp_path), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_checkpoint_is_a_clear_error(tiny_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "run"
    broken.mkdir()
    (broken / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    result = runner.invoke(
        app, ["generate", "--run", str(broken), "--label", "NORMAL", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "model.pt" in result.output and "checkpoint not found" in result.output
    with pytest.raises(SynthmedError, match="not a synthmed run directory"):
        synthmed.load(tmp_path / "nowhere")


def test_privacy_filter_records_its_verdict(tiny_run: Path, tmp_path: Path) -> None:
    from synthmed.artifacts.manifest import read_manifest

    out = tmp_path / "filtered"
    args = ["generate", "--run", str(tiny_run), "--label", "NORMAL", "--count", "3", "--steps", "3"]
    args += ["--out", str(out), "--privacy-filter", "--copy-percentile", "95", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_manifest(out / "manifest.jsonl")
    assert len([r for r in rows if r["file"]]) == 3
    for r in rows:
        assert r["privacy_filter"] == 95.0 and r["privacy"]["percentile"] == 95.0
        assert r["privacy"]["threshold"] > 0 and r["privacy"]["nearest_train"].endswith(".jpeg")
        assert r["privacy"]["flagged"] == ("dropped" in r)


def test_privacy_filter_replaces_dropped_images_and_resumes(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard's verdict is forced (even seeds are 'copies') to test the replacement bookkeeping."""
    from synthmed.artifacts.manifest import read_manifest
    from synthmed.config import GenerateConfig
    from synthmed.evaluation.privacy import CopyGuard
    from synthmed.sampling.generate import generate_to_folder

    real_check = CopyGuard.check
    calls: list[int] = []

    def every_other(self: CopyGuard, images: torch.Tensor) -> list[dict]:
        verdicts = real_check(self, images)
        calls.append(len(images))
        start = sum(calls) - len(images)
        return [v | {"flagged": (start + i) % 2 == 0} for i, v in enumerate(verdicts)]

    monkeypatch.setattr(CopyGuard, "check", every_other)
    out = tmp_path / "filtered"
    cfg = GenerateConfig(
        run_dir=tiny_run, out=out, label="NORMAL", count=3, steps=3, batch_size=2, privacy_filter=True
    )
    generate_to_folder(cfg, progress=False)
    rows = read_manifest(out / "manifest.jsonl")
    assert sorted(p.name for p in (out / "NORMAL").glob("*.png")) == [
        "syn_00000001.png",
        "syn_00000003.png",
        "syn_00000005.png",
    ]
    assert [r["seed"] for r in rows if r.get("dropped")] == [0, 2, 4]
    generate_to_folder(cfg, progress=False)  # nothing left to do: no new rows
    assert len(read_manifest(out / "manifest.jsonl")) == len(rows)
    with pytest.raises(SynthmedError, match="privacy_filter"):
        generate_to_folder(cfg.model_copy(update={"privacy_filter": False}), progress=False)
