"""Tiled (sliding-window) VAE decoding: agreement with one-call decoding and no seams on a real MRI, exactness
when one tile covers the latent, 2D, inference mode / bf16 autocast, and input checks."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import AutoencoderKL

from synthmed.config import AutoencoderArch
from synthmed.data.volumes import VolumeConfig, load_volumes
from synthmed.diffusion.tiled import decode_latents
from synthmed.errors import SynthmedError
from synthmed.models.builders import build_autoencoder

ARCH = AutoencoderArch(
    channels=[8, 16, 16], attention_levels=[False] * 3, latent_channels=4, norm_num_groups=4
)
COMPRESSION = ARCH.compression
#: 6 latent voxels (24 output voxels) tile the (8, 12, 8) latent of a 32x48x32 volume on every axis.
TILE, OVERLAP = 6, 0.25
#: Tolerances as fractions of the untiled output's dynamic range. Measured over 3 seeds: mean |diff| 3.3-4.0%,
#: 99th percentile 13-15% (single voxels up to 40%). The difference is not blending error but the decoder's
#: GroupNorm, which normalises each tile with that tile's statistics rather than the whole volume's (pinning
#: them to the whole-volume statistics cut the mean difference from ~4.7% to ~1%); it shrinks as tiles grow.
MEAN_TOL, P99_TOL = 0.06, 0.25
#: Tiles must not show: the image's mean step across planes where tiles hand over, relative to other planes
#: between latent voxels, may exceed the untiled decode's by at most this factor. Measured 0.75-0.97x with
#: gaussian blending; hard-edged tiles (no overlap, constant weights) of 4 latent voxels give 4.9-8.5x.
SEAM_FACTOR = 1.25


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # These models are tiny: on a busy 2-core machine a second thread costs far more in waiting than it saves
    # (a 2D decode took 0.2 s with 2 threads, 0.5 ms with 1); one thread keeps this file at ~15 s, not ~45+.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_crops(x: torch.Tensor, n: int = 2, size: int = 24) -> torch.Tensor:
    crops = []
    for _ in range(n):
        vol = x[torch.randint(0, len(x), ()).item()]
        o = [torch.randint(0, s - size + 1, ()).item() for s in vol.shape[1:]]
        crops.append(vol[:, o[0] : o[0] + size, o[1] : o[1] + size, o[2] : o[2] + size])
    return torch.stack(crops)


def _fit(ae: AutoencoderKL, x: torch.Tensor, steps: int = 60) -> None:
    # Deterministic (mean-latent) L1 fit: enough for a decoder with real, non-random GroupNorm statistics.
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = _train_crops(x)
        loss = (ae.decode(ae.encode(batch)[0]) - batch).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()


@pytest.fixture(scope="module")
def hippo_latent(
    hippocampus: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[AutoencoderKL, torch.Tensor]:
    """A tiny 3D autoencoder fitted (~5 s) on 5 real hippocampus MRIs, and the latent of a 6th, held out."""
    root = tmp_path_factory.mktemp("hippocampus") / "images"
    root.mkdir()
    for src in sorted((hippocampus / "images").glob("*.nii.gz"))[:6]:
        shutil.copy(src, root / src.name)
    x = load_volumes(root.parent, VolumeConfig(size=(32, 48, 32))).images.float()
    torch.manual_seed(0)
    ae = build_autoencoder(ARCH, spatial_dims=3)
    _fit(ae, x[:-1])
    with torch.inference_mode():
        z = ae.encode(x[-1:])[0]
    return ae, z


def _handover_planes(n: int, tile: int, overlap: float) -> set[int]:
    """Latent planes (between voxel p-1 and p) where neighbouring windows' gaussian weights cross: midway
    between the window centres, using MONAI's own window placement."""
    roi = min(tile, n)
    step = roi if roi == n else max(int(roi * (1 - overlap)), 1)
    starts = sorted({s[0].start for s in dense_patch_slices((n,), (roi,), (step,))})
    mids = [(a + b + roi) / 2 for a, b in itertools.pairwise(starts)]
    return {int(m // 1) for m in mids} | {int(-(-m // 1)) for m in mids}


def _seam_ratio(y: torch.Tensor, latent: tuple[int, ...], tile: int, overlap: float) -> float:
    """Mean |step| of the image across hand-over planes over that across the other latent-voxel planes.

    The decoder's upsampling leaves a pattern with the compression's period: those are the fair baseline.
    """
    at, off = [], []
    for ax, n in enumerate(latent):
        steps = y.diff(dim=2 + ax).abs().movedim(2 + ax, 0)  # steps[i]: between output voxels i and i+1
        handover = _handover_planes(n, tile, overlap)
        for p in range(1, n):
            (at if p in handover else off).append(steps[p * COMPRESSION - 1].mean())
    return (torch.stack(at).mean() / torch.stack(off).mean()).item()


def test_tiled_decode_matches_untiled_without_seams(hippo_latent: tuple[AutoencoderKL, torch.Tensor]) -> None:
    ae, z = hippo_latent
    latent = tuple(z.shape[2:])
    full = decode_latents(ae, z)
    tiled = decode_latents(ae, z, tile=TILE, overlap=OVERLAP)
    assert tiled.shape == full.shape == (1, 1, 32, 48, 32) and tiled.dtype == torch.float32
    diff = (tiled - full).abs() / (full.max() - full.min())
    assert diff.mean() < MEAN_TOL, f"mean |tiled - untiled| is {diff.mean():.3f} of the range"
    assert diff.quantile(0.99) < P99_TOL, f"99th percentile |tiled - untiled| is {diff.quantile(0.99):.3f}"
    seams = _seam_ratio(tiled, latent, TILE, OVERLAP)
    assert seams < SEAM_FACTOR * _seam_ratio(full, latent, TILE, OVERLAP)


def test_seam_metric_sees_hard_tile_edges(hippo_latent: tuple[AutoencoderKL, torch.Tensor]) -> None:
    # The seam check above means something only if it flags tiles stitched without overlap or blending.
    ae, z = hippo_latent
    latent = tuple(z.shape[2:])
    with torch.no_grad():
        full = ae.decode(z)
        hard = SlidingWindowInferer(roi_size=(4, 4, 4), overlap=0, mode="constant")(z, ae.decode)
    assert _seam_ratio(hard, latent, 4, 0) > SEAM_FACTOR * _seam_ratio(full, latent, 4, 0)


@pytest.mark.parametrize("tile", [None, 12, 64])
def test_one_tile_is_exactly_untiled(
    hippo_latent: tuple[AutoencoderKL, torch.Tensor], tile: int | None
) -> None:
    ae, z = hippo_latent
    with torch.inference_mode():
        expected = ae.decode(z)
    assert torch.equal(decode_latents(ae, z, tile=tile), expected)


def _random_ae(spatial_dims: int) -> AutoencoderKL:
    torch.manual_seed(0)
    return build_autoencoder(ARCH, spatial_dims=spatial_dims).eval()


def test_2d_tiled_decode() -> None:
    ae = _random_ae(2)
    z = torch.randn(2, 4, 10, 14)
    tiled = decode_latents(ae, z, tile=6, overlap=0.5, out_device=torch.device("cpu"))
    assert tiled.shape == (2, 1, 40, 56) and tiled.dtype == torch.float32 and torch.isfinite(tiled).all()
    assert torch.equal(decode_latents(ae, z, tile=14), decode_latents(ae, z))


def test_inference_mode_and_bf16_autocast() -> None:
    ae = _random_ae(2)
    z = torch.randn(1, 4, 10, 10)
    ref = decode_latents(ae, z, tile=4)
    with torch.inference_mode():
        assert torch.equal(decode_latents(ae, z, tile=4), ref)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = decode_latents(ae, z, tile=4)
    # float32 stitching of bf16 tiles; bf16's 8-bit mantissa bounds the error.
    assert low.dtype == torch.float32 and not low.requires_grad
    assert (low - ref).abs().max() < 0.05 * (ref.max() - ref.min())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tile": 1}, "tile_size"),
        ({"tile": 0}, "tile_size"),
        ({"tile": 2.5}, "tile_size"),
        ({"tile": True}, "tile_size"),
        ({"tile": 4, "overlap": 1.0}, "tile_overlap"),
        ({"tile": 4, "overlap": -0.1}, "tile_overlap"),
        ({"tile": 4, "overlap": float("nan")}, "tile_overlap"),
    ],
)
def test_bad_tile_or_overlap(kwargs: dict, field: str) -> None:
    with pytest.raises(SynthmedError, match=field) as err:
        decode_latents(_random_ae(2), torch.zeros(1, 4, 8, 8), **kwargs)
    assert err.value.field == field


def test_bad_latent_shape() -> None:
    with pytest.raises(SynthmedError, match="latents"):
        decode_latents(_random_ae(2), torch.zeros(4, 8, 8))
