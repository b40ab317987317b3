"""The 3D autoencoder recipes on real hippocampus MRI (issue 25, item 1): the 3D AutoencoderKL with the
adversarial (3D PatchDiscriminator), gradient and spectral losses, and volumes encoded slice by slice with the
shipped 2D foundation autoencoder under a 3D UNet and ControlNet."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.manifest import read_manifest
from synthmed.config import PRESETS, GenerateConfig, VolumeConfig, build_train_config
from synthmed.data.volumes import discover_volumes, load_volume_pair
from synthmed.diffusion.tiled import decode_latents
from synthmed.errors import SynthmedError
from synthmed.models import foundation
from synthmed.models.slicewise import SliceWiseAutoencoder
from synthmed.sampling.generate import generate_to_folder
from synthmed.training.run import train

KEYS = [f"hippocampus_{n:03d}" for n in (1, 3, 4, 6, 7, 8)]
FOUNDATION_ARCH = PRESETS["small64"]["autoencoder"]["arch"]


@pytest.fixture(scope="module")
def pairs(msd_pairs) -> Path:
    return msd_pairs(KEYS)


def _volume(pairs: Path, size: tuple[int, int, int]) -> torch.Tensor:
    pair = discover_volumes(pairs, require_labels=True).pairs[0]
    return load_volume_pair(pair, VolumeConfig(size=size))[0][None]


def test_3d_autoencoder_trains_with_adversarial_gradient_spectral_losses(pairs: Path, tmp_path: Path) -> None:
    stage = {"steps": 4, "batch_size": 2, "preview_every": 4, "log_every": 1}
    losses = {"adv_weight": 0.1, "grad_weight": 1.0, "spectral_weight": 0.5, "disc_channels": 8}
    values = {"preset": "tiny3d", "run_dir": str(tmp_path / "run"), "data": {"source": str(pairs)}}
    run = train(build_train_config(values | {"autoencoder": stage | losses}), ["autoencoder"], progress=False)
    rows = [json.loads(r) for r in (run / "autoencoder" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_autoencoder" in r]
    assert len(steps) == 4
    for row in steps:  # every loss term is computed and finite, the discriminator optimised beside the AE
        for key in ("l1", "kl", "grad", "spectral", "adv_g", "loss_discriminator"):
            assert np.isfinite(row[key]) and row[key] > 0, (key, row)
    (val,) = [r for r in rows if "val_l1" in r]  # the blur it adds, measured in 3D too
    assert 0 < val["val_sharpness"] < 10 and val["val_l1"] > 0
    last = ckpt.load(run / "autoencoder" / "last.pt")
    disc = last["models"]["discriminator"]
    assert any(v.ndim == 5 for v in disc.values())  # a 3D PatchDiscriminator (Conv3d kernels)
    assert last["optimizers"]["discriminator"]["state"]  # and it was stepped


def test_slicewise_foundation_autoencoder_keeps_every_slice(pairs: Path) -> None:
    ae2d = foundation.load_foundation_autoencoder(foundation.AutoencoderArch.model_validate(FOUNDATION_ARCH))
    wrapper = SliceWiseAutoencoder(ae2d).eval()
    x = _volume(pairs, (32, 48, 32))
    with torch.inference_mode():
        mu, sigma = wrapper.encode(x)
        assert mu.shape == sigma.shape == (1, 4, 8, 12, 32)  # in-plane 4x, every axial slice kept
        # slice k of the latent is the 2D encoding of axial slice k
        assert torch.allclose(mu[..., 5], ae2d.encode(x[..., 5])[0], atol=1e-5)
        recon = wrapper.decode(mu).clamp(0, 1)
        tiled = decode_latents(wrapper, mu, tile=6, overlap=0.25)  # anisotropic zoom (4, 4, 1) per axis
    assert recon.shape == tiled.shape == x.shape
    # Sharper than the crudest 4x in-plane compression, a box average (measured 0.053 vs 0.073 here)
    blurred = F.interpolate(F.avg_pool3d(x, (4, 4, 1)), size=x.shape[2:], mode="trilinear")
    l1, l1_blur = float((recon - x).abs().mean()), float((blurred - x).abs().mean())
    assert l1 < 0.8 * l1_blur, (l1, l1_blur)
    assert torch.equal(tiled.clamp(0, 1), recon)


def test_slicewise_run_trains_unet_and_controlnet_on_slice_latents(pairs: Path, tmp_path: Path) -> None:
    stage = {"steps": 3, "batch_size": 2, "preview_every": 3}
    values = {
        "preset": "tiny3d",
        "run_dir": str(tmp_path / "run"),
        "data": {"source": str(pairs), "volume": {"size": [16, 32, 8]}},
        "autoencoder": {"source": "foundation", "arch": FOUNDATION_ARCH},
        "diffusion": stage,
        "controlnet": stage,
    }
    cfg = build_train_config(values)
    assert cfg.latent_factors == (4, 4, 1) and cfg.control_stretch == 4
    run = train(cfg, progress=False)
    assert ckpt.load(run / "autoencoder" / "model.pt")["extra"]["source"] == "foundation"
    (cache,) = (run / "diffusion").glob("latents-*.pt")
    assert ckpt.load(cache)["train"].shape[2:] == (4, 4, 8, 8)  # (C, X/4, Y/4, Z)
    out = tmp_path / "gen"
    generate_to_folder(GenerateConfig(run_dir=run, out=out, count=1, steps=2, qc_retries=0), progress=False)
    (row,) = read_manifest(out / "manifest.jsonl")
    image, label = nib.load(out / row["file"]), nib.load(out / row["label_file"])
    assert image.shape == label.shape == (16, 32, 8)
    assert np.asarray(image.dataobj).std() > 0


def test_slicewise_sizes_are_checked_per_axis() -> None:
    values = {"preset": "tiny3d", "autoencoder": {"source": "foundation", "arch": FOUNDATION_ARCH}}
    build_train_config(values | {"data": {"volume": {"size": [16, 16, 6]}}})  # Z only needs the UNet's 2
    with pytest.raises(SynthmedError, match=r"divisible by \(8, 8, 2\) per axis"):
        build_train_config(values | {"data": {"volume": {"size": [12, 16, 6]}}})
    with pytest.raises(SynthmedError, match=r"autoencoder\.arch differs from the foundation"):
        cfg = build_train_config({"preset": "tiny3d", "autoencoder": {"source": "foundation"}})
        foundation.foundation_weights(cfg.autoencoder.arch)


def test_train_says_the_expected_time_of_every_stage_before_the_first(pairs: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from synthmed.cli import app

    config = tmp_path / "c.yaml"
    stage = "{steps: 4, batch_size: 2, preview_every: 4}"
    config.write_text(
        f"preset: tiny3d\nrun_dir: {tmp_path / 'run'}\ndata: {{source: {pairs}}}\n"
        f"autoencoder: {stage}\ndiffusion: {stage}\ncontrolnet: {stage}\n"
    )
    result = CliRunner().invoke(app, ["train", "-c", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    (said,) = [i for i, line in enumerate(lines) if line.startswith("expected training time on this machine")]
    for name in ("autoencoder 4 steps ~", "diffusion 4 steps ~", "controlnet 4 steps ~", "; total ~"):
        assert name in lines[said], lines[said]
    first_stage = next(i for i, line in enumerate(lines) if line.startswith("autoencoder: 4 steps take"))
    assert said < first_stage  # before the long part, not after it
    again = CliRunner().invoke(app, ["train", "--run", str(tmp_path / "run"), "--resume", "--no-progress"])
    assert again.exit_code == 0 and "expected training time" not in again.output  # nothing left to train
