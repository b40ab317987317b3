"""Feature extractors for the metrics: trained in-house on the real training set, or read from a local file.

Published FID/KID use ImageNet Inception or RadImageNet features, which would have to be downloaded and
are far from most users' images anyway. The in-house extractor is a small MONAI ResNet trained on the
real training images only, with two heads: the class label (when the set has two or more classes) and,
always, which of four 90-degree rotations was applied (self-supervised, Gidaris et al. 2018), so it learns
anatomy-level features even without labels. It is cached by a hash of the images, labels and settings.
A user-supplied `.pt2`/TorchScript network (e.g. a RadImageNet ResNet-50 exported locally) can replace it
for the feature-space metrics, for comparability with published numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from torch import nn

from synthmed.artifacts.checkpoint import atomic_save
from synthmed.errors import SynthmedError
from synthmed.models.local import load_local_network

log = logging.getLogger(__name__)

#: Bump when the architecture or training recipe changes, so stale cached extractors are never reused.
EXTRACTOR_VERSION = 1
ROTATIONS = 4


@dataclass(frozen=True)
class ExtractorSettings:
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    widths: tuple[int, ...] = (16, 32, 64, 128)
    seed: int = 0
    flip: bool = False  # left-right flips: off for the extractor, on for the downstream classifier
    jitter: bool = True  # contrast/brightness/noise jitter: off for C2ST, where those are the signal


class InHouseExtractor(nn.Module):
    """ResNet backbone (global-average-pooled features) with a rotation head and an optional class head."""

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...],
        full_resolution_stem: bool = False,
        in_channels: int = 1,
    ) -> None:
        """``full_resolution_stem``: a 3x3 stride-1 first convolution and no max-pooling (ResNet's 7x7
        stride-2 stem and pooling discard the finest detail, which is what tells blurred images apart).
        ``in_channels``: the images' channels (3 for colour), seen jointly by the first convolution."""
        super().__init__()
        stem: dict[str, Any] = (
            {"conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": True} if full_resolution_stem else {}
        )
        self.backbone = ResNet(
            block="basic",
            layers=[1] * len(widths),
            block_inplanes=list(widths),
            spatial_dims=2,
            n_input_channels=in_channels,
            feed_forward=False,
            **stem,
        )
        self.rotation_head = nn.Linear(widths[-1], ROTATIONS)
        self.class_head = nn.Linear(widths[-1], num_classes) if num_classes >= 2 else None

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.eval()
        return torch.cat([self.backbone(b) for b in images.split(batch_size)]).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class index per image; only for an extractor trained with labels."""
        if self.class_head is None:
            raise SynthmedError("this feature extractor was trained without class labels")
        self.eval()
        return torch.cat([self.class_head(self.backbone(b)).argmax(1) for b in images.split(batch_size)])


class LocalExtractor:
    """A user's pretrained network from a local file, fed (B, 3, size, size) images in [0, 1] (grey images
    repeated into the three channels, colour ones as they are).

    The file must include any input normalisation it expects. Spatial outputs are global-average-pooled;
    with a list of outputs the last one is used.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.net = load_local_network(path, "feature extractor")
        self.size = size

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        out = []
        for b in images.split(batch_size):
            x = F.interpolate(b, size=(self.size, self.size), mode="bilinear", antialias=True)
            y = self.net(x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x)
            y = y[-1] if isinstance(y, list | tuple) else y
            out.append(y.flatten(2).mean(2) if y.ndim > 2 else y)
        return torch.cat(out).float()


def _augment(
    x: torch.Tensor, gen: torch.Generator, flip: bool, jitter: bool = True, shift: int = 4
) -> torch.Tensor:
    """Random translation (reflect-padded crop), with ``jitter`` contrast/brightness jitter and a little
    noise and, with ``flip``, random left-right flips."""
    n, _, h, w = x.shape
    if flip:
        flipped = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (shift, shift, shift, shift), mode="reflect")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=gen).tolist()
    x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if not jitter:
        return x
    gain = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    bias = 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    return (x * gain + bias + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def _rotate(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.randint(0, ROTATIONS, (x.shape[0],), generator=gen)
    rotated = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k, strict=True)])
    return rotated, k


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights: a class head must not learn 'always the majority class'."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).float()
    return counts.sum() / (num_classes * counts)


#: (augmented image batch, its labels or None, the loop's generator) -> loss, run under bf16 autocast.
BatchLoss = Callable[[torch.Tensor, torch.Tensor | None, torch.Generator], torch.Tensor]


def train_loop(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    settings: ExtractorSettings,
    batch_loss: BatchLoss,
    on_step: Callable[[int], None] | None = None,
) -> list[dict[str, float]]:
    """The classifier training loop shared by the extractor and the downstream benchmark.

    ``settings.steps`` AdamW steps with a one-cycle schedule on random batches of (N, 1, S, S) images,
    augmented by ``_augment``; ``on_step(step)`` runs after each step (e.g. validation for early
    stopping) and may switch the model to eval mode. Returns the loss log.
    """
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=settings.steps)
    history = []
    model.train()
    for step in range(settings.steps):
        idx = torch.randint(0, images.shape[0], (min(settings.batch_size, images.shape[0]),), generator=gen)
        x = _augment(images[idx], gen, settings.flip, settings.jitter)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # ~4x faster matmuls on this CPU class
            loss = batch_loss(x, labels[idx] if labels is not None else None, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == settings.steps - 1:
            history.append({"step": step, "loss": loss.item()})
        if on_step is not None:
            on_step(step)
            model.train()
    return history


def fit_extractor(
    images: torch.Tensor, labels: torch.Tensor | None, num_classes: int, settings: ExtractorSettings
) -> tuple[InHouseExtractor, list[dict[str, float]]]:
    """Train on (N, C, S, S) real images (and class indices); returns the model and its loss log."""
    torch.manual_seed(settings.seed)
    model = InHouseExtractor(
        num_classes if labels is not None else 0, settings.widths, in_channels=images.shape[1]
    )
    weights = class_weights(labels, num_classes) if labels is not None else None

    def batch_loss(x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        rotated, k = _rotate(x, gen)
        loss = F.cross_entropy(model.rotation_head(model.backbone(rotated)).float(), k)
        if model.class_head is not None and y is not None:
            loss = loss + F.cross_entropy(model.class_head(model.backbone(x)).float(), y, weight=weights)
        return loss

    history = train_loop(model, images, labels, settings, batch_loss)
    return model.eval(), history


def _cache_key(
    images: torch.Tensor, labels: torch.Tensor | None, class_names: list[str], s: ExtractorSettings
) -> str:
    h = hashlib.sha256(json.dumps([EXTRACTOR_VERSION, class_names, asdict(s), list(images.shape)]).encode())
    h.update(images.contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.numpy().tobytes())
    return h.hexdigest()[:32]


def trained_extractor(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    class_names: list[str],
    settings: ExtractorSettings,
    cache_dir: Path | None,
) -> tuple[InHouseExtractor, dict[str, Any]]:
    """The in-house extractor for these training images: loaded from the cache, or trained and cached."""
    key = _cache_key(images, labels, class_names, settings)
    path = Path(cache_dir) / "extractors" / f"{key}.pt" if cache_dir is not None else None
    num_classes = len(class_names) if labels is not None else 0
    if path is not None and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model = InHouseExtractor(num_classes, settings.widths, in_channels=images.shape[1])
            model.load_state_dict(blob["state"])
            return model.eval(), {"cache": str(path), "cached": True, "history": blob["history"]}
        except Exception as exc:  # a damaged cache is retrained, never fatal
            log.warning("ignoring unreadable extractor cache %s (%s)", path, exc)
    model, history = fit_extractor(images, labels, num_classes, settings)
    info: dict[str, Any] = {"cache": str(path) if path else None, "cached": False, "history": history}
    if path is not None:
        atomic_save({"state": model.state_dict(), "history": history}, path)
    return model, info
