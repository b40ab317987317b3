"""128 and 256 px presets: foundation latents folded 2x2 into channels (diffusion.latent_patch) so the UNet
runs at small64's cost; the ControlNet, editing and the lightweight decoder work on the folded latents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.config import AutoencoderArch, build_train_config
from synthmed.errors import SynthmedError
from synthmed.models import foundation
from synthmed.models.distilled import build_lite_decoder
from synthmed.models.patched import PatchedAutoencoder

SMALL_UNET = {"channels": [16, 32], "attention_levels": [False, True], "num_head_channels": 8}


def test_128_and_256_px_presets_fold_latents_to_small64s_grid() -> None:
    for preset, size, grid in (("small128", 128, 16), ("small256", 256, 32)):
        cfg = build_train_config({"preset": preset})
        assert cfg.data.image_size == size and cfg.autoencoder.source == "foundation"
        assert cfg.latent_factors == (size // grid,) * 2 and cfg.latent_channels == 16
    colour = build_train_config({"preset": "small128", "data": {"channels": 3}})
    assert colour.channelwise and colour.latent_channels == 48  # 4 latents x 3 channels x 2 x 2
    with pytest.raises(SynthmedError, match=r"8x smaller.*log2\(8\) \+ 1"):
        build_train_config({"preset": "small128", "controlnet": {"embedding_channels": [8, 16, 32]}})
    with pytest.raises(SynthmedError, match="divisible by 32"):
        build_train_config({"preset": "small128", "data": {"image_size": 80}})
    with pytest.raises(SynthmedError, match="latent_patch folds 2D latents"):
        build_train_config({"preset": "small3d", "diffusion": {"latent_patch": 2}})


def test_folded_latents_decode_to_what_the_autoencoder_decodes() -> None:
    arch = AutoencoderArch.model_validate(foundation.shipped_card()["arch"])
    autoencoder = foundation.load_foundation_autoencoder(arch)
    folded = PatchedAutoencoder(autoencoder, 2)
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        mu, sigma = folded.encode(images)
        plain = autoencoder.encode(images)[0]
        assert mu.shape == sigma.shape == (2, 16, 4, 4)
        assert torch.equal(mu[:, ::4, 0, 0], plain[:, :, 0, 0])  # channel-major: each channel's 2x2 block
        assert torch.equal(folded.decode(mu), autoencoder.decode(plain))
        lite = build_lite_decoder(arch, 0.5, 1, 16, patch=2)
        assert lite(mu).shape == images.shape


@pytest.mark.slow
def test_small128_trains_generates_and_edits_on_folded_latents(busi_small: Path, tmp_path: Path) -> None:
    """small128's recipe at 32 px (a 2x2 grid of 16-channel latent cells) with a mask ControlNet: the mask
    condition reaches the folded grid, a manifest row replays bit for bit, an edit keeps every pixel
    outside its region."""
    import synthmed
    from synthmed.artifacts.manifest import read_manifest
    from synthmed.config import GenerateConfig
    from synthmed.sampling.editing import edit_image
    from synthmed.sampling.generate import generate_to_folder
    from synthmed.training.run import train

    values = {
        "preset": "small128",
        "run_dir": str(tmp_path / "run"),
        "data": {"source": str(busi_small), "image_size": 32},
        "diffusion": {"arch": SMALL_UNET | {"norm_num_groups": 8}, "steps": 6, "batch_size": 8},
        "controlnet": {"steps": 4, "batch_size": 8},
    }
    train(build_train_config(values), ["autoencoder", "diffusion", "controlnet"], progress=False)
    pipe = synthmed.load(tmp_path / "run")
    mask = sorted((busi_small / "malignant" / "mask").glob("*_mask.png"))[0]
    where = {"run_dir": tmp_path / "run", "out": tmp_path / "syn"}
    cfg = GenerateConfig(**where, label="malignant", count=2, steps=3, condition_file=mask)
    out = generate_to_folder(cfg)
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == 2 and rows[0]["condition"] == "mask"
    replayed = pipe.regenerate(rows[1])
    assert np.array_equal(np.round(replayed[0].numpy() * 255), np.asarray(Image.open(out / rows[1]["file"])))

    image = tmp_path / "scan.png"  # an ultrasound of another size than the run's: edited at its own size
    scan = Image.open(sorted((busi_small / "benign" / "images").glob("*.png"))[0])
    scan.convert("L").resize((48, 40)).save(image)
    pixels = np.asarray(Image.open(image))
    region = np.zeros(pixels.shape, np.uint8)
    region[10:26, 12:30] = 255
    result = edit_image(pipe, "remove", image, region, label="benign", steps=3)
    inside = region > 0
    assert result.image.shape == pixels.shape
    assert np.array_equal(result.image[~inside], pixels[~inside].astype(np.float32))  # bit for bit
    assert np.abs(result.image[inside] - pixels[inside]).mean() > 1.0
