"""Config objects: presets, YAML overrides, errors that name the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi
from monai.networks.nets import DiffusionModelUNet
from typer.testing import CliRunner

from synthmed.cli import app
from synthmed.config import PRESETS, build_train_config, load_train_config
from synthmed.errors import SynthmedError
from synthmed.models.builders import build_autoencoder, build_scheduler, build_unet


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_monai_networks(preset: str) -> None:
    cfg = build_train_config({"preset": preset})
    dims = cfg.data.spatial_dims
    if dims == 2:
        assert cfg.data.image_size == PRESETS[preset]["data"]["image_size"]
    else:  # 3D presets: MAISI's 4x VAE to 4 latent channels, the spacing-conditioned MAISI UNet
        assert list(cfg.data.volume.size) == PRESETS[preset]["data"]["volume"]["size"]
        assert cfg.autoencoder.arch.latent_channels == 4
    ae = build_autoencoder(cfg.autoencoder.arch, dims)
    unet = build_unet(
        cfg.diffusion.arch, cfg.autoencoder.arch.latent_channels, num_classes=3, spatial_dims=dims
    )
    expected = DiffusionModelUNet if dims == 2 else DiffusionModelUNetMaisi  # 3D: MaisiUNet, a subclass
    assert type(ae).__name__ == "AutoencoderKL" and isinstance(unet, expected)
    assert cfg.autoencoder.arch.compression in (4, 8)


def test_yaml_overrides_preset(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nseed: 7\ndiffusion:\n  steps: 3\n  arch:\n    channels: [8, 16]\n")
    cfg = load_train_config(path)
    assert cfg.seed == 7 and cfg.diffusion.steps == 3 and cfg.diffusion.arch.channels == [8, 16]
    assert cfg.autoencoder.arch.channels == PRESETS["tiny"]["autoencoder"]["arch"]["channels"]


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("autoencoder:\n  arch:\n    chanels: [8, 16]\n", "autoencoder.arch.chanels"),
        ("diffusion:\n  lr: -1\n", "diffusion.lr"),
        ("data:\n  image_size: big\n", "data.image_size"),
        ("data:\n  clip_percentiles: [99, 1]\n", "data"),
        ("autoencoder:\n  arch:\n    channels: [8, 16, 16, 16, 16]\n", "autoencoder.arch"),
        ("preset: huge\n", "preset"),
    ],
)
def test_errors_name_the_bad_field(tmp_path: Path, yaml_text: str, field: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(SynthmedError) as info:
        load_train_config(path)
    assert field in str(info.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(SynthmedError, match=r"bad\.yaml"):
        load_train_config(bad)
    with pytest.raises(SynthmedError, match="not found"):
        load_train_config(tmp_path / "missing.yaml")


def test_sampler_must_fit_the_training_noise() -> None:
    cfg = build_train_config({"preset": "tiny"})
    assert type(build_scheduler(cfg.diffusion.noise, "ddim")).__name__ == "DDIMScheduler"
    with pytest.raises(SynthmedError, match="sampler"):
        build_scheduler(cfg.diffusion.noise, "rflow")


def test_cli_reports_config_error_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("diffusion:\n  stepz: 3\n")
    result = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert result.exit_code == 2
    assert "diffusion.stepz" in result.output and "Traceback" not in result.output
