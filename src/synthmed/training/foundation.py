"""The foundation 2D autoencoder: one compression network trained once on every modality this project has
real data for, shipped with the package and reused by new 2D runs (MAISI's approach).

Training images (never a holdout, validation or test image of any set):
- Kermany chest X-rays: the seed-0 train split of the official ``train`` folder (a user run with the default
  seed keeps its own holdout unseen by this network); the official ``test`` folder is never read;
- BUSI breast ultrasound: the seed-0 train split;
- MSD hippocampus T1 MRI: axial, coronal and sagittal slices of the seed-0 train split's volumes;
- the MNI152 2009 T1 template shipped with nilearn: slices of its left half's sagittal, and every other
  axial and coronal slice (the rest validates).

Every image is used at 64 px (the whole image, fitted and padded) and, for the 2D sets, also as random 64 px
crops of the image at 128 px, so the convolutional network sees the detail of larger images as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import AutoencoderKL
from monai.transforms import SpatialPad
from monai.utils import convert_to_tensor

from synthmed import data as data_stage
from synthmed.config import AutoencoderConfig, DataConfig, VolumeData
from synthmed.data.preprocess import FitResize
from synthmed.data.volume_sets import load_volume_split, prepare_volumes
from synthmed.data.volumes import open_volume
from synthmed.errors import SynthmedError
from synthmed.models.foundation import CARD_FILE, foundation_export

SIZE = 64
CROPS_PER_IMAGE = 2  # random 64 px crops of each 2D training image at 128 px
SLICE_STEP = 3  # every third slice of a hippocampus volume along each axis
MIN_SLICE_STD = 0.05  # slices this flat are mostly background


@dataclass
class ModalitySet:
    """One modality's training and validation images, (N, 1, 64, 64) in [0, 1]."""

    name: str
    train: torch.Tensor
    val: torch.Tensor


def _fit(slice_2d: np.ndarray) -> torch.Tensor:
    img = torch.from_numpy(np.ascontiguousarray(slice_2d, dtype=np.float32))[None]
    img = FitResize(SIZE, "longest")(img)
    return convert_to_tensor(SpatialPad((SIZE, SIZE), mode="constant", value=0.0)(img), track_meta=False)


def _random_crops(images: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    tops = torch.randint(0, h - SIZE + 1, (n, count), generator=g)
    lefts = torch.randint(0, w - SIZE + 1, (n, count), generator=g)
    crops = [
        images[i, :, t : t + SIZE, s : s + SIZE]
        for i in range(n)
        for t, s in zip(tops[i].tolist(), lefts[i].tolist(), strict=True)
    ]
    return torch.stack(crops)


def _folder_set(name: str, source: Path, cache: Path, seed: int) -> ModalitySet:
    """A 2D folder data set's train split (64 px whole + 128 px crops) and val split (64 px whole)."""
    out: dict[str, list[torch.Tensor]] = {"train": [], "val": []}
    for size in (SIZE, 2 * SIZE):
        cfg = DataConfig(source=source, image_size=size, allow_single_class=True)
        prepared = data_stage.prepare(cfg, seed, cache / f"{name}-split.json")
        for split in ("train", "val"):
            x, _ = data_stage.load_split_arrays(
                prepared.records, cfg, split, cache, class_names=prepared.class_names
            )
            if size == SIZE:
                out[split].append(x)
            elif split == "train":
                out[split].append(_random_crops(x, CROPS_PER_IMAGE, seed))
    return ModalitySet(name, torch.cat(out["train"]), torch.cat(out["val"]))


def _volume_slices(volumes: torch.Tensor) -> torch.Tensor:
    slices = []
    for vol in volumes[:, 0].numpy():
        for axis in range(3):
            for k in range(0, vol.shape[axis], SLICE_STEP):
                s = np.take(vol, k, axis=axis)
                if s.std() >= MIN_SLICE_STD:
                    slices.append(_fit(np.rot90(s)))
    return torch.stack(slices)


def _hippocampus_set(source: Path, cache: Path, seed: int) -> ModalitySet:
    volume = VolumeData(size=(48, 64, 48), spacing=(1.0, 1.0, 1.0))
    cfg = DataConfig(source=source, volume=volume)
    prepared = prepare_volumes(cfg, seed, cache / "hippocampus-split.json")
    train = load_volume_split(cfg, prepared, "train", cache)
    val = load_volume_split(cfg, prepared, "val", cache)
    return ModalitySet("hippocampus", _volume_slices(train.images), _volume_slices(val.images))


def mni152_path() -> Path:
    """nilearn's packaged MNI152 2009 T1 template (installed with nilearn, read offline)."""
    import nilearn.datasets

    path = (
        Path(nilearn.datasets.__file__).parent / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    if not path.exists():
        raise SynthmedError("nilearn's MNI152 template is missing; reinstall nilearn", path=path)
    return path


def _mni_set() -> ModalitySet:
    vol = np.asarray(open_volume(mni152_path()).get_fdata(), dtype=np.float32)
    lo, hi = np.percentile(vol, (0.5, 99.5))
    vol = np.clip((vol - lo) / (hi - lo), 0.0, 1.0)
    train: list[torch.Tensor] = []
    val: list[torch.Tensor] = []
    for axis in range(3):
        for k in range(vol.shape[axis]):
            s = np.take(vol, k, axis=axis)
            if s.std() < MIN_SLICE_STD:
                continue
            (train if k % 2 == 0 else val).append(_fit(np.rot90(s)))
    return ModalitySet("mni152", torch.stack(train), torch.stack(val))


def load_foundation_sets(data_root: Path, cache: Path, seed: int = 0) -> list[ModalitySet]:
    """Every modality's images (see the module docstring), loaded through the project's own readers."""
    root = Path(data_root)
    cache.mkdir(parents=True, exist_ok=True)
    return [
        _folder_set("kermany", root / "cxr-kermany" / "train", cache, seed),
        _folder_set("busi", root / "busi", cache, seed),
        _hippocampus_set(root / "hippocampus", cache, seed),
        _mni_set(),
    ]


MAX_REPEAT = 8


def mixed(sets: list[ModalitySet], split: str, per_set: int | None = None) -> torch.Tensor:
    """The sets' images of ``split`` interleaved (so the first validation items cover every modality).

    Training images of small sets are repeated (up to MAX_REPEAT times) towards a third of the largest set, so
    a few hundred template slices are not drowned by thousands of X-rays."""
    parts = [getattr(s, split)[:per_set] for s in sets]
    if split == "train":
        largest = max(len(p) for p in parts)
        parts = [p.repeat(min(MAX_REPEAT, max(1, round(largest / (3 * len(p))))), 1, 1, 1) for p in parts]
    longest = max(len(p) for p in parts)
    order = [p[i] for i in range(longest) for p in parts if i < len(p)]
    return torch.stack(order)


FOUNDATION_AUTOENCODER = AutoencoderConfig.model_validate(
    {
        "arch": {
            "channels": [32, 64, 128],
            "num_res_blocks": 1,
            "attention_levels": [False, False, False],
            "latent_channels": 4,
            "norm_num_groups": 16,
            "with_nonlocal_attn": False,
        },
        "steps": 20000,
        "batch_size": 32,
        "lr": 5e-4,
        "warmup_steps": 200,
        "kl_weight": 1e-6,
        "adv_weight": 0.02,
        "adv_start": 2000,
        "grad_weight": 1.0,
        "spectral_weight": 0.1,
        "checkpoint_every": 250,
        "preview_every": 1000,
        "log_every": 25,
    }
)

# Second phase: the encoder (and so the latent space) frozen, the decoder trained on with an adversarial loss
# (Stable Diffusion's VAE decoder fine-tune). The discriminator first learns alone against the reconstructions
# (disc_warmup); its loss then reaches the decoder with a fixed, small weight at twice the decoder's lr. With
# VQGAN's adaptive weight (0.5) the decoder outran the discriminator within 25 steps and the weight grew as
# the discriminator fell to chance (docs/performance.md). Posterior samples, not means, are decoded: the
# diffusion recipe's UNet learns posterior samples (diffusion.latents: sample).
FOUNDATION_DECODER = FOUNDATION_AUTOENCODER.model_copy(
    update={
        "steps": 6000,
        "lr": 2e-4,
        "warmup_steps": 100,
        "adv_weight": 0.05,
        "adv_start": 500,
        "disc_warmup": 500,
        "disc_lr_factor": 2.0,
    }
)
ENCODER_PARTS = ("encoder", "quant_conv_mu", "quant_conv_log_sigma")


def train_foundation(
    data_root: Path,
    out_dir: Path,
    cfg: AutoencoderConfig = FOUNDATION_AUTOENCODER,
    *,
    seed: int = 0,
    precision: str = "bf16",
    device: str = "auto",
    progress: bool = True,
    init: Path | None = None,
    stage: str = "autoencoder",
) -> Path:
    """Train (or resume) the foundation autoencoder in ``out_dir / stage``; returns the exported model.pt.

    ``init``: a first-phase checkpoint (its EMA weights and discriminator) or autoencoder weights (a
    safetensors file, e.g. the shipped ones; the discriminator then starts afresh) that start a decoder phase
    (FOUNDATION_DECODER) with the encoder frozen. ``device``: auto, cpu or cuda."""
    from synthmed.models.builders import build_autoencoder
    from synthmed.runtime import resolve_device, resolve_precision
    from synthmed.training.tasks import AutoencoderTask
    from synthmed.training.trainer import Trainer

    out_dir = Path(out_dir)
    sets = load_foundation_sets(data_root, out_dir / "cache", seed)
    for s in sets:
        print(f"{s.name}: {len(s.train)} training and {len(s.val)} validation images", flush=True)
    train, val = mixed(sets, "train"), mixed(sets, "val", per_set=64)
    torch_device = resolve_device(device)
    model = build_autoencoder(cfg.arch, 2)
    task = AutoencoderTask(model, cfg, train, val)
    if init is not None:
        _start_decoder_phase(task, init)
    trainer = Trainer(
        task,
        cfg,
        out_dir / stage,
        seed=seed,
        device=torch_device,
        dtype=resolve_precision(precision, torch_device),
        progress=progress,
    )
    return trainer.run(resume=(out_dir / stage / "last.pt").exists())


def _start_decoder_phase(task, init: Path) -> None:
    """Load ``init``'s autoencoder (and a checkpoint's discriminator) into ``task``; freeze the encoder."""
    from synthmed.artifacts import checkpoint as ckpt
    from synthmed.models.foundation import foundation_weights

    if init.suffix == ".safetensors":
        task.model.load_state_dict(foundation_weights(task.cfg.arch, init)[0])
    else:
        task.model.load_state_dict(ema_weights(init)[0])
        task.disc.load_state_dict(ckpt.load(init)["models"]["discriminator"])
    for part in ENCODER_PARTS:
        getattr(task.model, part).requires_grad_(False)


# --- shipping: reconstruction metrics per modality, the safetensors file and its model card -----------------
LICENCES = {
    "kermany": "CC BY 4.0; Kermany D. et al., Mendeley Data v2, 2018",
    "busi": "published openly; Al-Dhabyani W. et al., Data in Brief 28, 2020",
    "hippocampus": "CC BY-SA 4.0; Medical Segmentation Decathlon Task04 (Antonelli M. et al., 2022)",
    "mni152": "ICBM 2009 template (Fonov V. et al., NeuroImage 2011), as packaged by nilearn; attribution",
}


@torch.inference_mode()
def reconstruction_metrics(model: AutoencoderKL, images: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """L1, PSNR and SSIM of the posterior-mean reconstruction of ``images`` (N, 1, H, W) in [0, 1], and how
    much detail it keeps: reconstruction / real mean |Laplacian| and share of power above half Nyquist."""
    from monai.metrics import PSNRMetric, SSIMMetric

    from synthmed.evaluation.sharpness import high_frequency_share, laplacian_energy

    recon = torch.cat(
        [
            model.decode(model.encode(images[i : i + batch])[0]).float().clamp(0, 1)
            for i in range(0, len(images), batch)
        ]
    )
    return {
        "images": len(images),
        "l1": float((recon - images).abs().mean()),
        "psnr": float(torch.as_tensor(PSNRMetric(max_val=1.0)(recon, images)).mean()),
        "ssim": float(torch.as_tensor(SSIMMetric(spatial_dims=2, data_range=1.0)(recon, images)).mean()),
        "sharpness_ratio": float(laplacian_energy(recon).mean() / laplacian_energy(images).mean()),
        "high_frequency_ratio": float(
            high_frequency_share(recon).mean() / high_frequency_share(images).mean()
        ),
    }


def ema_weights(checkpoint: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The EMA weights of a training checkpoint (last.pt / step_*.pt) and its step."""
    from synthmed.artifacts import checkpoint as ckpt

    state = ckpt.load(checkpoint)
    prefix = "module."
    weights = {k[len(prefix) :]: v for k, v in state["ema"].items() if k.startswith(prefix)}
    return weights, int(state["step"])


def _phase(cfg: AutoencoderConfig, steps: int) -> dict:
    keys = (
        "kl_weight",
        "adv_weight",
        "adv_start",
        "disc_warmup",
        "adv_adaptive",
        "disc_lr_factor",
        "decode_mean",
        "grad_weight",
        "spectral_weight",
    )
    return {"steps": steps, "lr": cfg.lr, "losses": {k: getattr(cfg, k) for k in keys}}


def export_foundation(
    checkpoint: Path,
    data_root: Path,
    cache: Path,
    out_dir: Path,
    encoder_steps: int | None = None,
    notes: tuple[str, ...] = (),
) -> dict:
    """Measure a checkpoint's EMA weights on every modality's validation images and write them as the shipped
    foundation autoencoder (safetensors and its JSON record) in ``out_dir``; returns the record.

    ``encoder_steps``: ``checkpoint`` is of the decoder phase, started from first-phase weights of this step.
    ``notes``: what a reader of the model card should know about how these weights were trained."""
    from synthmed.models.builders import build_autoencoder

    weights, step = ema_weights(checkpoint)
    cfg = FOUNDATION_AUTOENCODER
    model = build_autoencoder(cfg.arch, 2)
    model.load_state_dict(weights)
    model.eval()
    sets = load_foundation_sets(data_root, cache)
    metrics = {s.name: reconstruction_metrics(model, s.val) for s in sets}
    phases = {"autoencoder": _phase(cfg, step)}
    if encoder_steps is not None:
        phases = {
            "autoencoder": _phase(cfg, encoder_steps),
            "decoder": _phase(FOUNDATION_DECODER, step),
        }
    card = {
        "arch": cfg.arch.model_dump(),
        "steps": sum(p["steps"] for p in phases.values()),
        "phases": phases,
        "notes": list(notes),
        "image_size": SIZE,
        "training": {"batch_size": cfg.batch_size, "precision": "bf16 autocast, CPU"},
        "data": {
            s.name: {"train": len(s.train), "val": len(s.val), "licence": LICENCES[s.name]} for s in sets
        },
        "metrics_val": metrics,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    foundation_export(weights, card, out_dir).chmod(0o644)  # safetensors writes 0600; the file ships
    record = json.loads((out_dir / CARD_FILE).read_text())
    (out_dir / "MODEL_CARD.md").write_text(model_card(record))
    return record


def _phases(record: dict) -> dict:
    """The record's training phases; records written before phases existed had one, described flat."""
    if "phases" in record:
        return record["phases"]
    return {
        "autoencoder": {"steps": record["steps"], "lr": record["training"]["lr"], "losses": record["losses"]}
    }


def model_card(record: dict) -> str:
    """MODEL_CARD.md of the shipped weights, written from their JSON record (so the two never disagree)."""
    arch = record["arch"]
    rows = "\n".join(
        f"| {name} | {d['train']} | {d['val']} | {d['licence']} |" for name, d in record["data"].items()
    )
    metrics = "\n".join(
        f"| {name} | {m['images']} | {m['l1']:.4f} | {m['psnr']:.2f} | {m['ssim']:.3f} | "
        f"{m['sharpness_ratio']:.2f} | {m['high_frequency_ratio']:.2f} |"
        for name, m in record["metrics_val"].items()
    )
    notes = "\n".join(f"- {n}" for n in record.get("notes", []))
    phases = "\n".join(
        f"| {name} | {p['steps']} | {p['lr']} | "
        + ", ".join(f"{k} {v}" for k, v in p["losses"].items() if v not in (0, 0.0, False))
        + " |"
        for name, p in _phases(record).items()
    )
    return f"""# synthmed foundation autoencoder (2D, greyscale, 64 px)

`{record["file"]}` (sha256 `{record["sha256"]}`) is a MONAI `AutoencoderKL`:
channels {arch["channels"]}, {arch["latent_channels"]} latent channels, 4x downsampling
({record["image_size"]} px images -> 16x16 latents), {record["parameters"]:,} parameters. New 2D greyscale
runs use it by default (`autoencoder.source: foundation`) and train only their diffusion UNet;
`autoencoder.source: train` trains a run's own autoencoder instead.
Written by `synthmed.training.foundation.export_foundation` with `{CARD_FILE}`; do not edit by hand.

## Training
{record["steps"]} steps of batch {record["training"]["batch_size"]}, AdamW, {record["training"]["precision"]};
weights are the exponential moving average. Losses: L1 + KL and the weights below (MONAI
PatchDiscriminator, least squares; adaptive: VQGAN's weight,
the adversarial gradient at the decoder's last layer = adv_weight x the reconstruction's; gradient-L1;
Fourier-amplitude MSE). The decoder phase, if listed, trains only the decoder: the encoder, and so the
latent space, stay those of the first phase. No pretrained network and no downloaded weights were used.
Recipe and data loading: `src/synthmed/training/foundation.py`.

| phase | steps | lr | losses |
|---|---|---|---|
{phases}

## Data (never a holdout, validation or test image; splits: the project's seed-0 split of each set)
| set | training images | validation images | licence and citation |
|---|---|---|---|
{rows}

Training images are 64 px whole images and, for the 2D sets, random 64 px crops of the image at 128 px.

## Reconstruction of the validation images (posterior mean)
| set | images | L1 | PSNR (dB) | SSIM | sharpness ratio | high-frequency ratio |
|---|---|---|---|---|---|---|
{metrics}

Sharpness ratio: mean |Laplacian| of the reconstructions / of the real images; high-frequency ratio: the same
for the share of spectral power above half Nyquist. 1.0 keeps all detail.

## Notes
{notes or "None."}

## Limits
Greyscale only; trained at 64 px (it runs at any size divisible by 4, but detail at larger sizes is
untested); modalities other than chest X-ray, breast ultrasound and T1 brain MRI are unseen.
"""
