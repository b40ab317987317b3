"""The shipped foundation autoencoder (new 2D runs train only the UNet) and the diffusion recipe's parts:
min-SNR weighting and the cosine learning-rate decay."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.artifacts import checkpoint as ckpt
from synthmed.config import AutoencoderArch, StageConfig, build_train_config
from synthmed.errors import SynthmedError
from synthmed.models import foundation
from synthmed.training.foundation import reconstruction_metrics
from synthmed.training.trainer import lr_factor

TINY_UNET = {
    "arch": {
        "channels": [16, 32],
        "attention_levels": [False, True],
        "num_head_channels": 8,
        "norm_num_groups": 8,
    },
    "batch_size": 8,
    "log_every": 2,
    "checkpoint_every": 4,
    "preview_every": 4,
}


def _arch() -> AutoencoderArch:
    return AutoencoderArch.model_validate(foundation.shipped_card()["arch"])


def _xrays(kermany: Path, n: int = 16) -> torch.Tensor:
    files = sorted((kermany / "test" / "NORMAL").glob("*.jpeg"))[:n]
    arrays = [np.asarray(Image.open(f).convert("L").resize((64, 64)), np.float32) for f in files]
    return torch.from_numpy(np.stack(arrays))[:, None] / 255.0


def test_shipped_autoencoder_reconstructs_unseen_xrays(kermany: Path) -> None:
    """Kermany's official test folder is never in its training data."""
    model = foundation.load_foundation_autoencoder(_arch())
    metrics = reconstruction_metrics(model, _xrays(kermany))
    assert metrics["psnr"] > 24.0 and metrics["ssim"] > 0.75
    assert foundation.shipped_card()["metrics_val"]["kermany"]["images"] > 100


@pytest.fixture
def weights_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(foundation.WEIGHTS_DIR, tmp_path / "weights")
    monkeypatch.setattr(foundation, "WEIGHTS_DIR", tmp_path / "weights")
    return tmp_path / "weights" / foundation.WEIGHTS_FILE


def test_missing_truncated_or_foreign_weights_are_named(weights_copy: Path) -> None:
    data = weights_copy.read_bytes()
    weights_copy.write_bytes(data[: len(data) // 2])
    with pytest.raises(SynthmedError, match="sha256") as err:
        foundation.foundation_weights(_arch())
    assert str(weights_copy) in str(err.value) and "source: train" in str(err.value)
    weights_copy.unlink()
    with pytest.raises(SynthmedError, match="missing") as err:
        foundation.foundation_weights(_arch())
    assert str(weights_copy) in str(err.value)
    other = _arch().model_copy(update={"latent_channels": 3})
    weights_copy.write_bytes(data)
    with pytest.raises(SynthmedError, match=r"autoencoder\.arch"):
        foundation.foundation_weights(other)


def test_a_local_weights_file_must_be_safetensors_of_this_arch(tmp_path: Path) -> None:
    bad = tmp_path / "ae.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(SynthmedError, match="safetensors") as err:
        foundation.foundation_weights(_arch(), bad)
    assert str(bad) in str(err.value)
    small = AutoencoderArch(channels=[8, 16, 16], latent_channels=4, norm_num_groups=4)
    with pytest.raises(SynthmedError, match="not a 2D greyscale AutoencoderKL"):
        foundation.foundation_weights(small, foundation.WEIGHTS_DIR / foundation.WEIGHTS_FILE)


def test_config_takes_foundation_for_volumes_and_refuses_weights_without_it(tmp_path: Path) -> None:
    cfg = build_train_config({"preset": "small3d"})  # slice-wise: test_volume_autoencoders
    assert cfg.slicewise and cfg.latent_factors == (4, 4, 1) and cfg.autoencoder.arch == _arch()
    with pytest.raises(SynthmedError, match="set source: foundation"):
        build_train_config({"preset": "tiny", "autoencoder": {"weights": str(tmp_path / "x.safetensors")}})
    with pytest.raises(SynthmedError, match=r"image_size 60 must be divisible by 16.*use 64"):
        build_train_config({"data": {"image_size": 60}})
    with pytest.raises(SynthmedError, match="snr_gamma"):
        build_train_config({"preset": "tiny", "diffusion": {"noise": {"kind": "rflow"}, "snr_gamma": 5.0}})


@pytest.mark.slow
def test_default_run_trains_only_the_unet_on_the_shipped_autoencoder(kermany_folder, tmp_path: Path) -> None:
    from synthmed.config import GenerateConfig
    from synthmed.sampling.generate import generate_to_folder
    from synthmed.training.run import train

    cfg = build_train_config(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"source": str(kermany_folder(6)), "image_size": 32},
            "diffusion": {**TINY_UNET, "steps": 4},
        }
    )
    assert cfg.preset == "small64" and cfg.autoencoder.source == "foundation"
    train(cfg, progress=False)
    installed = ckpt.load(tmp_path / "run" / "autoencoder" / "model.pt")
    assert installed["extra"]["sha256"] == foundation.shipped_card()["sha256"]
    assert not (tmp_path / "run" / "autoencoder" / "last.pt").exists()  # nothing trained there
    out = generate_to_folder(
        GenerateConfig(run_dir=cfg.run_dir, out=tmp_path / "syn", label="NORMAL", count=2)
    )
    assert len(list(out.glob("NORMAL/*.png"))) == 2
    train(cfg, progress=False, resume=True)  # a resumed run finds the same autoencoder in place

    # weights shipped later (another sha256) never replace the copy a trained UNet learnt the latents of
    path = tmp_path / "run" / "autoencoder" / "model.pt"
    ckpt.atomic_save(installed | {"extra": installed["extra"] | {"sha256": "0" * 64}}, path)
    train(cfg, progress=False, resume=True)
    assert ckpt.load(path)["extra"]["sha256"] == "0" * 64


def test_min_snr_weights_follow_the_prediction_type(kermany_folder, tmp_path: Path) -> None:
    from synthmed.training import run as training

    cfg = build_train_config(
        {
            "preset": "tiny",
            "run_dir": str(tmp_path / "run"),
            "data": {"source": str(kermany_folder(4))},
            "autoencoder": {"steps": 2},
            "diffusion": {"noise": {"prediction_type": "v_prediction"}, "snr_gamma": 5.0, "steps": 2},
        }
    )
    training.train(cfg, stages=["autoencoder"], progress=False)
    task = training._diffusion_task(
        cfg, training.load_training_data(cfg, torch.device("cpu")), torch.device("cpu")
    )
    t = torch.tensor([0, 100, 500, 999])
    alpha_bar = task.scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    expected = snr.clamp(max=5.0) / (snr + 1)
    assert torch.allclose(task._min_snr_weight(t), expected)
    w = task._min_snr_weight(t)
    assert w[0] < 0.01 < w[2] and w.max() <= 1.0  # the easy low-noise steps count least
    loss, _ = task.losses(torch.arange(4), step=0)
    assert math.isfinite(float(loss["unet"]))


def test_cosine_decay_ends_at_its_final_share() -> None:
    cfg = StageConfig(steps=1000, warmup_steps=100, lr_decay="cosine", lr_final=0.1)
    f = lr_factor(cfg)
    assert f(0) == pytest.approx(0.01) and f(99) == pytest.approx(1.0)
    assert f(100) == pytest.approx(1.0) and f(550) == pytest.approx(0.55) and f(1000) == pytest.approx(0.1)
    assert lr_factor(StageConfig(steps=1000))(999) == 1.0


def _tiny_task(adaptive: bool, kermany: Path, **extra: float):
    from synthmed.config import AutoencoderConfig
    from synthmed.models.builders import build_autoencoder
    from synthmed.training.tasks import AutoencoderTask

    arch = {
        "channels": [8, 8, 16],
        "attention_levels": [False] * 3,
        "latent_channels": 2,
        "norm_num_groups": 4,
    }
    cfg = AutoencoderConfig.model_validate(
        {
            "arch": arch,
            "adv_weight": 0.5,
            "adv_adaptive": adaptive,
            "disc_channels": 8,
            "batch_size": 4,
            **extra,
        }
    )
    torch.manual_seed(0)
    x = _xrays(kermany, 8)
    return AutoencoderTask(build_autoencoder(cfg.arch, 2), cfg, x, x)


def test_adaptive_adversarial_weight_matches_the_reconstruction_gradient(kermany: Path) -> None:
    """VQGAN's rule: the weighted adversarial gradient at the decoder's last layer is adv_weight x the
    reconstruction loss's, whatever the two losses' scales."""
    task = _tiny_task(True, kermany)
    recon = task.model(task.train[:4])[0]
    rec = (recon - task.train[:4]).abs().mean()
    adv = 100.0 * (task.disc(recon)[-1] - 1).pow(2).mean()
    weight = task._adaptive_weight(rec, adv)
    last = task.model.decoder.blocks[-1].conv.weight
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0].norm()
    g_adv = torch.autograd.grad(weight * adv, last)[0].norm()
    assert g_adv == pytest.approx(float(g_rec), rel=1e-3)
    logs = task.losses(torch.arange(4), step=0)[1]
    assert logs["adv_weight"] > 0 and logs["adv_weight"] != 0.5


def test_decoder_phase_freezes_the_encoder_and_takes_over_the_discriminator(
    kermany: Path, tmp_path: Path
) -> None:
    from synthmed.training.foundation import ENCODER_PARTS, _start_decoder_phase

    first = _tiny_task(False, kermany)
    state = {
        "ema": {f"module.{k}": v + 0.01 for k, v in first.model.state_dict().items()},
        "models": {"discriminator": first.disc.state_dict()},
        "step": 7,
    }
    ckpt.atomic_save(state, tmp_path / "step.pt")
    task = _tiny_task(True, kermany)
    _start_decoder_phase(task, tmp_path / "step.pt")
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, state["ema"][f"module.{k}"])
    for k, v in task.disc.state_dict().items():
        assert torch.equal(v, state["models"]["discriminator"][k])
    loss = task.losses(torch.arange(4), step=0)[0]["autoencoder"]
    loss.backward()
    for name, p in task.model.named_parameters():
        frozen = name.split(".")[0] in ENCODER_PARTS
        assert (p.grad is None) == frozen, name


def test_decoder_phase_starts_from_safetensors_weights_with_a_fresh_discriminator(
    kermany: Path, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    from synthmed.training.foundation import ENCODER_PARTS, _start_decoder_phase

    weights = {k: v + 0.01 for k, v in _tiny_task(False, kermany).model.state_dict().items()}
    save_file(weights, tmp_path / "ae.safetensors")
    task = _tiny_task(True, kermany)
    fresh = {k: v.clone() for k, v in task.disc.state_dict().items()}
    _start_decoder_phase(task, tmp_path / "ae.safetensors")
    assert all(torch.equal(v, weights[k]) for k, v in task.model.state_dict().items())
    assert all(torch.equal(v, fresh[k]) for k, v in task.disc.state_dict().items())
    assert not any(p.requires_grad for part in ENCODER_PARTS for p in getattr(task.model, part).parameters())


def test_discriminator_warms_up_before_its_loss_reaches_the_decoder(kermany: Path) -> None:
    task = _tiny_task(False, kermany, adv_start=3, disc_warmup=2)
    assert "discriminator" not in task.losses(torch.arange(4), step=0)[0]
    losses, logs = task.losses(torch.arange(4), step=1)
    assert "discriminator" in losses and "adv_g" not in logs
    losses["autoencoder"].backward()
    assert all(p.grad is None for p in task.disc.parameters())  # the decoder's loss has no adversarial term
    losses, logs = task.losses(torch.arange(4), step=3)
    assert {"autoencoder", "discriminator"} <= set(losses) and "adv_g" in logs


def test_discriminator_learns_to_tell_blurred_reconstructions(kermany: Path) -> None:
    """Real and reconstructed images share the discriminator's batch. With a batch each, it learned to tell
    the batches apart through its BatchNorm statistics: judged image by image (eval mode) it scored a blurred
    and a sharp X-ray alike (gap 0.04 here), so its gradient taught the decoder no detail."""
    import torch.nn.functional as F

    task = _tiny_task(False, kermany)
    task.train = _xrays(kermany, 64)
    kernel = torch.ones(1, 1, 3, 3) / 9

    def blurred(x: torch.Tensor, n: int, part: slice):
        zeros = torch.zeros(len(x), 2, 16, 16)
        return F.conv2d(x, kernel, padding=1), zeros, zeros + 1

    task.net = blurred
    opt = torch.optim.AdamW(task.disc.parameters(), lr=2e-4)
    torch.manual_seed(0)
    for step in range(100):
        losses, _ = task.losses(torch.randperm(64)[:16], step)
        opt.zero_grad()
        losses["discriminator"].backward()
        opt.step()
    task.disc.eval()
    with torch.no_grad():
        x = task.train[:16]
        gap = task.disc(x)[-1].mean() - task.disc(blurred(x, 16, slice(None))[0])[-1].mean()
    assert gap > 0.3


def test_discriminator_lr_factor_sets_its_optimiser(kermany: Path, tmp_path: Path) -> None:
    from synthmed.training.trainer import Trainer

    task = _tiny_task(True, kermany, disc_lr_factor=4.0, lr=1e-4)
    trainer = Trainer(
        task, task.cfg, tmp_path, seed=0, device=torch.device("cpu"), dtype=None, progress=False
    )
    lrs = {name: opt.param_groups[0]["initial_lr"] for name, opt in trainer.optimizers.items()}
    assert lrs == {"autoencoder": pytest.approx(1e-4), "discriminator": pytest.approx(4e-4)}


def test_decode_mean_trains_the_decoder_on_posterior_means(kermany: Path) -> None:
    x = _xrays(kermany, 4)
    for decode_mean in (False, True):
        task = _tiny_task(False, kermany, decode_mean=decode_mean)
        with torch.no_grad():
            recon = task.net(x, 4, slice(None))[0]
            of_mean = task.model.decode(task.model.encode(x)[0])
        assert torch.equal(recon, of_mean) == decode_mean


def test_model_card_lists_every_training_phase() -> None:
    from synthmed.training.foundation import FOUNDATION_AUTOENCODER, FOUNDATION_DECODER, _phase, model_card

    record = {k: v for k, v in foundation.shipped_card().items() if k != "phases"}
    flat = record | {  # a record from before phases: one phase, described flat
        "steps": 7,
        "losses": {"kl_weight": 1e-6},
        "training": record["training"] | {"lr": 5e-4},
    }
    assert "| autoencoder | 7 | 0.0005 | kl_weight 1e-06 |" in model_card(flat)
    record |= {
        "phases": {
            "autoencoder": _phase(FOUNDATION_AUTOENCODER, 10),
            "decoder": _phase(FOUNDATION_DECODER, 5),
        }
    }
    record |= {"notes": ["the decoder phase was stopped early"]}
    card = model_card(record)
    assert "| decoder | 5 | 0.0002 |" in card and "disc_warmup 500" in card
    assert "- the decoder phase was stopped early" in card
