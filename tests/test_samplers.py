"""Every sampler of a DDPM-trained model (MONAI's DDIM, DDPM, PNDM; diffusers' DPM-Solver++ and UniPC) on a
tiny model trained on real chest X-rays: shapes, seeds, and the diffusers adapter's arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import synthmed
from synthmed.config import NoiseConfig
from synthmed.errors import SynthmedError
from synthmed.models.builders import SAMPLERS_FOR, build_scheduler, use_sdpa
from synthmed.models.solvers import DiffusersSolver

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipe(tiny_run: Path):
    return synthmed.load(tiny_run)


@pytest.mark.parametrize("sampler", SAMPLERS_FOR["ddpm"])
def test_every_sampler_gives_seeded_images(pipe, sampler: str) -> None:
    a = pipe.sample_batch([3, 4], "PNEUMONIA", steps=5, sampler=sampler)
    assert a.shape == (2, 1, 32, 32) and torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, pipe.sample_batch([3, 4], "PNEUMONIA", steps=5, sampler=sampler))
    if sampler != "ddpm":  # deterministic samplers: an image depends on its seed, not on its batch
        alone = pipe.sample_batch([4], "PNEUMONIA", steps=5, sampler=sampler)
        assert torch.allclose(a[1:], alone, atol=1e-4)
    assert not torch.equal(a, pipe.sample_batch([5, 6], "PNEUMONIA", steps=5, sampler=sampler))


@pytest.mark.parametrize("sampler", ["dpmsolver", "unipc"])
def test_high_order_solvers_converge_to_the_same_images(pipe, sampler: str) -> None:
    """At 50 steps DPM-Solver++/UniPC and DDIM solve the same ODE: their images agree far better than
    images of another seed do."""
    ddim = pipe.sample_batch([0, 1], "NORMAL", steps=50, sampler="ddim")
    other = pipe.sample_batch([0, 1], "NORMAL", steps=50, sampler=sampler)
    other_seed = pipe.sample_batch([2, 3], "NORMAL", steps=50, sampler="ddim")
    assert (ddim - other).abs().mean() < 0.25 * (ddim - other_seed).abs().mean()


def test_diffusers_adapter_uses_the_trained_schedule() -> None:
    noise_cfg = NoiseConfig()
    monai = build_scheduler(noise_cfg, "ddpm")
    solver = build_scheduler(noise_cfg, "dpmsolver")
    assert isinstance(solver, DiffusersSolver)
    assert torch.allclose(solver.alphas_cumprod, monai.alphas_cumprod.float(), atol=1e-6)
    x0, eps = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    t = torch.tensor([10, 500, 900])
    x_t = solver.add_noise(x0, eps, t)
    assert torch.allclose(x_t, monai.add_noise(x0, eps, t), atol=1e-5)
    for i in range(3):  # epsilon prediction: the clean estimate from the true noise is the clean sample
        assert torch.allclose(
            solver.predicted_clean(eps[i : i + 1], t[i], x_t[i : i + 1]), x0[i : i + 1], atol=1e-3
        )
    solver.set_timesteps(10)
    assert len(solver.timesteps) == 10 and solver.timesteps[0] > solver.timesteps[-1]


def test_solvers_are_refused_for_rectified_flow_models() -> None:
    with pytest.raises(SynthmedError, match="does not fit a model trained with 'rflow'"):
        build_scheduler(NoiseConfig(kind="rflow"), "dpmsolver")


def test_sdpa_attention_is_switched_on_for_cuda_only_and_computes_the_same(pipe) -> None:
    """use_sdpa flips MONAI's attention blocks to scaled_dot_product_attention for a CUDA device (the flag
    is set without touching a GPU) and leaves them alone on the CPU; both paths give the same outputs."""
    import copy

    from monai.networks.blocks import SABlock

    unet = copy.deepcopy(pipe.unet).float().eval()
    blocks = [m for m in unet.modules() if isinstance(m, SABlock)]
    assert blocks and not any(b.use_flash_attention for b in blocks)
    use_sdpa(unet, torch.device("cpu"))
    assert not any(b.use_flash_attention for b in blocks)
    x, t = torch.randn(2, *pipe.latent_shape), torch.tensor([10, 500])
    labels = torch.tensor([0, 1])
    with torch.inference_mode():
        plain = unet(x, timesteps=t, class_labels=labels)
        use_sdpa(unet, torch.device("cuda"))
        assert all(b.use_flash_attention for b in blocks)
        fused = unet(x, timesteps=t, class_labels=labels)
    assert torch.allclose(plain, fused, atol=1e-5)
