"""Segmentation with free annotations: image + mask pairs from a run's mask ControlNet, for lesion masks
drawn from the run's own training masks and deformed (seeded random affine + elastic, downstream.deform),
as the 3D path does with label maps.

Mask ``i`` comes from seed ``seed + i``: that seed picks a training mask and deforms it; the image is
generated for it, with the class of the training image the mask belongs to. A deformation that pushes a
lesion out of the image is drawn again with another seed, recorded. Output: ``out/<label>/syn_<seed>.png``
with ``syn_<seed>_mask.png`` beside it (what ``benchmark-augmentation --task segment`` reads) and a
``manifest.jsonl`` row per image naming the run (so the benchmark's leak check works), the source mask and
its deformation seed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.images import save_png
from synthmed.artifacts.manifest import MANIFEST, append_rows, file_name
from synthmed.config import read_run_config
from synthmed.data.masks import load_image_mask_pairs
from synthmed.data.sources import source_root
from synthmed.data.splits import read_split_file
from synthmed.downstream.deform import deform_mask
from synthmed.errors import SynthmedError
from synthmed.models.builders import default_steps
from synthmed.sampling.pipeline import ImageCondition, Pipeline

log = logging.getLogger(__name__)

#: Tries before a mask whose deformation keeps losing its lesion is used undeformed (recorded).
DRAW_TRIES = 5


def training_masks(run_dir: Path) -> tuple[torch.Tensor, list[str], list[str], list[dict[str, str]]]:
    """(N, 1, S, S) masks of the run's training split at the run's size, their classes and sources, and
    the training images left out (no mask file, unreadable or malformed mask) with the reason."""
    cfg = read_run_config(run_dir)
    if cfg.data.source is None:
        raise SynthmedError("the run names no data source", path=run_dir / "config.yaml")
    root = source_root(Path(cfg.data.source))
    records = [r for r in read_split_file(run_dir / "split.json").records if r.split == "train"]
    pairs = load_image_mask_pairs([root / r.source for r in records], cfg.data)
    if not len(pairs.sources):
        raise SynthmedError("no training image of the run has a mask", path=run_dir / "split.json")
    label = {str(root / r.source): r.label for r in records}
    skipped = [{"source": x.source, "reason": x.reason} for x in pairs.skipped]
    if skipped:
        log.warning(
            "%d training images of %s have no usable mask and are not drawn from", len(skipped), run_dir
        )
    sources = [str(Path(s).relative_to(root)) for s in pairs.sources]
    return pairs.masks, [label[s] for s in pairs.sources], sources, skipped


def draw_masks(masks: torch.Tensor, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` drawn and deformed masks: {"index" (training mask), "seed", "mask", "redrawn"}."""
    draws = []
    for i in range(count):
        s = seed + i
        for attempt in range(DRAW_TRIES):
            s_try = s + attempt * count
            j = int(np.random.default_rng(s_try).integers(len(masks)))
            mask = deform_mask(masks[j], s_try)
            if mask.any() or not masks[j].any():
                break
        else:  # every deformation lost the lesion: keep it undeformed
            mask, s_try = masks[j].clone(), -1
        draws.append({"index": j, "seed": s, "deform_seed": s_try, "mask": mask, "redrawn": attempt})
    return draws


def generate_pairs(
    run_dir: Path,
    out: Path,
    count: int,
    *,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    batch_size: int = 16,
    precision: str = "fp32",
    device: str = "auto",
    scale: float = 1.0,
) -> dict[str, Any]:
    """Generate ``count`` image + mask pairs into ``out``; returns counts per class and redraws."""
    pipe = Pipeline.load(run_dir, device=device, precision=precision)
    controlnet = pipe.require_controlnet("mask")
    masks, labels, sources, skipped = training_masks(Path(run_dir))
    sampler = sampler or pipe.samplers[0]
    steps = steps or default_steps(sampler)
    guidance = pipe.guidance(guidance)
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in draw_masks(masks, count, seed):
        by_label[labels[d["index"]]].append(d)
    for label, draws in by_label.items():
        for start in range(0, len(draws), batch_size):
            batch = draws[start : start + batch_size]
            seeds = [d["seed"] for d in batch]
            control = ImageCondition(torch.stack([d["mask"].float() for d in batch]), "mask", scale)
            images = pipe.sample_batch(
                seeds, label, steps=steps, guidance=guidance, sampler=sampler, control=control
            )
            rows = []
            for d, image in zip(batch, images, strict=True):
                row = pipe.manifest_row(d["seed"], seeds, label, steps, guidance, sampler)
                extra = {"controlnet_sha256": controlnet.sha256, "conditioning_scale": scale}
                rows.append(row | _save(out, label, d, image, sources) | extra)
            append_rows(out / MANIFEST, rows)
    return {
        "count": count,
        "per_class": {k: len(v) for k, v in sorted(by_label.items())},
        "redrawn": sum(d["redrawn"] > 0 for v in by_label.values() for d in v),
        "undeformed": sum(d["deform_seed"] < 0 for v in by_label.values() for d in v),
        "training_masks": len(masks),
        "training_images_without_mask": skipped,
    }


def _save(
    out: Path, label: str, d: dict[str, Any], image: torch.Tensor, sources: list[str]
) -> dict[str, Any]:
    name = file_name(label, d["seed"])
    mask_name = str(Path(name).with_name(f"{Path(name).stem}_mask.png"))
    save_png(image, out / name)
    save_png(d["mask"].float(), out / mask_name)
    return {
        "file": name,
        "sha256": file_sha256(out / name),
        "annotation": mask_name,
        "condition": "mask",
        "condition_area": round(float(d["mask"].float().mean()), 6),
        "mask_source": sources[d["index"]],
        "mask_deform_seed": d["deform_seed"],
        "mask_redrawn": d["redrawn"],
    }
