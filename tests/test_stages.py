"""Optional training paths on real chest X-rays: adversarial + local perceptual loss, rectified flow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.export import Dim

import synthmed
from synthmed.artifacts import checkpoint as ckpt
from synthmed.config import build_train_config
from synthmed.errors import SynthmedError
from synthmed.training.run import train

pytestmark = pytest.mark.slow


class Features(nn.Module):
    """Stand-in for a user's local feature network (e.g. an exported RadImageNet ResNet): two conv stages."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        fa = torch.relu(self.a(x))
        return [fa, torch.relu(self.b(fa))]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_adversarial_and_local_perceptual_losses(kermany_small: Path, tmp_path: Path) -> None:
    weights = tmp_path / "features.pt2"
    dims = {0: Dim("batch"), 2: Dim("height", min=4), 3: Dim("width", min=4)}
    program = torch.export.export(Features(), (torch.rand(2, 3, 32, 32),), dynamic_shapes=(dims,))
    torch.export.save(program, str(weights))
    cfg = build_train_config(
        {
            "preset": "tiny",
            "run_dir": str(tmp_path / "run"),
            "data": {"source": str(kermany_small)},
            "autoencoder": {
                "steps": 4,
                "log_every": 1,
                "adv_weight": 0.1,
                "adv_start": 2,
                "perceptual_weights": str(weights),
            },
        }
    )
    train(cfg, ["autoencoder"], progress=False)
    rows = [r for r in _rows(cfg.run_dir / "autoencoder" / "log.jsonl") if "loss_autoencoder" in r]
    assert all("perceptual" in r for r in rows)
    assert (
        "loss_discriminator" not in rows[0] and "loss_discriminator" in rows[-1]
    )  # switched on at adv_start
    state = ckpt.load(cfg.run_dir / "autoencoder" / "last.pt")
    assert set(state["models"]) == {"autoencoder", "discriminator"}


def test_bad_perceptual_weights_file_is_named(kermany_small: Path, tmp_path: Path) -> None:
    bad = tmp_path / "not_a_network.pt2"
    bad.write_bytes(b"\x00garbage")
    cfg = build_train_config(
        {
            "preset": "tiny",
            "run_dir": str(tmp_path / "run"),
            "data": {"source": str(kermany_small)},
            "autoencoder": {"steps": 2, "perceptual_weights": str(bad)},
        }
    )
    with pytest.raises(SynthmedError, match="not_a_network"):
        train(cfg, ["autoencoder"], progress=False)


def test_rectified_flow_trains_and_samples(kermany_small: Path, tmp_path: Path) -> None:
    cfg = build_train_config(
        {
            "preset": "tiny",
            "run_dir": str(tmp_path / "run"),
            "data": {"source": str(kermany_small)},
            "autoencoder": {"steps": 4},
            "diffusion": {"steps": 4, "noise": {"kind": "rflow"}},
        }
    )
    train(cfg, progress=False)
    pipe = synthmed.load(cfg.run_dir)
    assert pipe.samplers == ("rflow",)
    a = pipe.generate(label="NORMAL", n=2, steps=5, sampler="rflow").images
    assert torch.equal(a, pipe.generate(label="NORMAL", n=2, steps=5, sampler="rflow").images)
    with pytest.raises(SynthmedError, match="sampler"):
        pipe.generate(label="NORMAL", n=1, steps=5, sampler="ddim")


def test_geometric_augmentation_adds_seeded_unflipped_copies(kermany: Path) -> None:
    from synthmed.data.augment import affine_copies

    files = sorted((kermany / "test" / "NORMAL").glob("*.jpeg"))[:4]
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("L").resize((64, 64)))) for f in files])
    x = x[:, None].float() / 255
    a = affine_copies(x, 2, seed=3, rotate_deg=5.0, scale=0.05, translate=0.03)
    assert a.shape == (8, 1, 64, 64) and torch.equal(a, affine_copies(x, 2, 3, 5.0, 0.05, 0.03))
    for k in range(2):
        for i in range(4):
            copy, same, mirrored = a[k * 4 + i].flatten(), x[i].flatten(), x[i].flip(-1).flatten()
            assert not torch.equal(copy, same)
            assert (
                torch.corrcoef(torch.stack([copy, same]))[0, 1]
                > torch.corrcoef(torch.stack([copy, mirrored]))[0, 1]
            )


def test_diffusion_stage_on_augmented_copies_and_posterior_means(kermany_small: Path, tmp_path: Path) -> None:
    from synthmed.artifacts.run import RunDir
    from synthmed.training.tasks import latent_scale_factor

    values = {
        "preset": "tiny",
        "run_dir": str(tmp_path / "run"),
        "data": {"source": str(kermany_small)},
        "autoencoder": {"steps": 2},
        "diffusion": {"steps": 2, "augment": {"copies": 2}, "latents": "mean"},
    }
    cfg = build_train_config(values)
    train(cfg, progress=False)
    latents = sorted((cfg.run_dir / "diffusion").glob("latents-*.pt"))
    sizes = sorted(len(ckpt.load(p)["train"]) for p in latents)
    assert len(latents) == 2 and sizes[1] == 2 * sizes[0]
    encoded = next(ckpt.load(p)["train"] for p in latents if len(ckpt.load(p)["train"]) == sizes[0])
    n = cfg.diffusion.scale_factor_samples
    mean = latent_scale_factor(encoded, n, cfg.seed, posterior_mean=True)
    assert RunDir(cfg.run_dir).metadata().scale_factor == pytest.approx(mean)
    assert mean != pytest.approx(latent_scale_factor(encoded, n, cfg.seed), rel=1e-4)
    volume = {"size": [16, 16, 16], "spacing": [1.0, 1.0, 1.0]}
    with pytest.raises(SynthmedError, match=r"diffusion\.augment is for 2D"):
        build_train_config({**values, "preset": "tiny3d", "data": {"source": "x", "volume": volume}})
