"""``synthmed generate``: a trained run's images written to a folder with their provenance manifest.

2D images are PNGs under ``out/<label>/`` (readable back as a class-folder data set); 3D runs go to
sampling.volumes. Seeds are tried in order from ``cfg.seed``. With the privacy filter, an image closer to a
training image than real holdout images are is dropped (a manifest row records it, without a file) and the
next seed takes its place. An interrupted run is continued: seeds already in the manifest with the same
settings are not drawn again.

Under torchrun (several processes) the batches a single process would draw are dealt out in turn: rank r
generates batches r, r + N, r + 2N, ... (the seeds at positions p with (p // batch_size) % N == r), so every
image is made in the same batch as in a single process, and the folder is the same image for image. Each rank
writes its own images; rank 0 alone writes the manifest.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.images import save_png
from synthmed.artifacts.manifest import (
    CONDITION_SETTINGS,
    MANIFEST,
    SETTINGS,
    append_rows,
    drop_cut_last_line,
    file_name,
    read_manifest,
)
from synthmed.config import GenerateConfig
from synthmed.errors import SynthmedError
from synthmed.evaluation.privacy import CopyGuard
from synthmed.models.builders import DISTILLED, default_steps
from synthmed.progress import progress_bar
from synthmed.runtime import (
    all_gather_objects,
    is_main,
    join_process_group,
    main_first,
    rank,
    resolve_device,
    world_size,
)
from synthmed.sampling.pipeline import BatchHook, ImageCondition, Pipeline
from synthmed.sampling.privacy_filter import copy_guard_for_run
from synthmed.sampling.rules import check_counts, check_distilled_steps
from synthmed.sampling.volumes import generate_volumes


@dataclass
class Annotation:
    """2D generation from a condition file: the ControlNet input, its manifest fields, and the annotation
    written beside every image (masks as ``<stem>_mask.png``, which evaluation and segmentation read;
    edge maps in a ``conditions/`` sub-folder, which data discovery skips)."""

    control: ImageCondition
    info: dict[str, Any]

    @classmethod
    def from_config(cls, pipe: Pipeline, cfg: GenerateConfig) -> Annotation | None:
        if cfg.condition_file is None:
            if cfg.condition is not None:
                raise SynthmedError("--condition needs --condition-file", field="condition")
            return None
        control = pipe.condition(cfg.condition_file, cfg.condition or "mask", cfg.scale)
        maps, condition = control.maps[0], control.condition
        if condition == "mask" and not maps.any():
            warnings.warn(
                f"{cfg.condition_file}: the mask is empty, so images are generated without a lesion",
                stacklevel=2,
            )
        info = {
            "condition": condition,
            "condition_file": str(cfg.condition_file),
            "condition_sha256": file_sha256(cfg.condition_file),
            "conditioning_scale": cfg.conditioning_scale,
            "controlnet_sha256": pipe.require_controlnet(condition).sha256,
            "condition_area": round(float(maps.gt(0.5).float().mean()), 6),
        }
        return cls(control, info)

    def save(self, out: Path, image_file: str) -> str:
        """Write the structure map for the image at ``out / image_file``; returns its relative path."""
        image = Path(image_file)
        if self.control.condition == "mask":
            path = image.with_name(f"{image.stem}_mask.png")
        else:
            path = image.parent / "conditions" / f"{image.stem}_{self.control.condition}.png"
        save_png(self.control.maps[0], out / path)
        return str(path)


def generate_to_folder(
    cfg: GenerateConfig, progress: bool = True, batch_hook: BatchHook | None = None
) -> Path:
    """Generate ``cfg.count`` images (3D: volumes) into ``cfg.out`` with their manifest (see the module
    docstring). ``batch_hook`` watches every batch's denoising steps (see Pipeline.batch_hook)."""
    check_counts(cfg.count, cfg.steps or 1, cfg.batch_size)
    join_process_group(resolve_device(cfg.device))
    pipe = Pipeline.load(
        cfg.run_dir,
        device=cfg.device,
        precision=cfg.precision,
        checkpoint=cfg.checkpoint,
        compile=cfg.compile,
    )
    pipe.label_index(cfg.label)
    pipe.batch_hook = batch_hook
    cfg = _resolved(pipe, cfg)
    if pipe.cfg.data.volume is not None:
        _check_volume_settings(cfg)
        return generate_volumes(pipe, cfg, progress)
    _check_image_settings(cfg)
    ann = Annotation.from_config(pipe, cfg)
    if cfg.privacy_filter:
        _generate_filtered(pipe, cfg, ann, progress)
    else:
        _generate_images(pipe, cfg, ann, progress)
    return cfg.out


#: The 3D label-map ControlNet's default strength: the best of 1, 2 and 4 on the validation label maps of a
#: hippocampus run (benchmarks/label3d.py, results/label3d.json: condition Dice 0.567, 0.606, 0.574 after
#: 600 ControlNet steps; 0.708 of the real ceiling on the holdout maps at 2).
LABEL_MAP_SCALE = 2.0


def _resolved(pipe: Pipeline, cfg: GenerateConfig) -> GenerateConfig:
    """``cfg`` with the model's defaults filled in: sampler, steps, guidance, label, conditioning scale."""
    sampler = cfg.sampler or pipe.samplers[0]
    if sampler == DISTILLED:  # which students exist, or how to make them
        check_distilled_steps(pipe.distilled_steps(), cfg.steps or default_steps(sampler), pipe.run_dir)
    if sampler not in pipe.samplers:
        raise SynthmedError(
            f"unknown sampler '{sampler}' for this model; choose one of {list(pipe.samplers)}",
            field="sampler",
        )
    if cfg.decoder == "lite":  # it exists and was made from this run's autoencoder
        pipe.lite_decoder()
    if pipe.cfg.image_channels > 1 and cfg.bit_depth != 8:
        raise SynthmedError(
            "colour images are written as 8-bit RGB PNGs; use --bit-depth 8", field="bit_depth"
        )
    volume = pipe.cfg.data.volume is not None
    resolved = {
        "conditioning_scale": cfg.conditioning_scale
        if cfg.conditioning_scale is not None
        else (LABEL_MAP_SCALE if volume else 1.0),
        "sampler": sampler,
        "steps": cfg.steps or default_steps(sampler),
        "guidance": pipe.guidance(cfg.guidance),
        "label": pipe.resolve_label(cfg.label),
    }
    return cfg.model_copy(update=resolved)


def _check_volume_settings(cfg: GenerateConfig) -> None:
    if cfg.decoder != "full":
        raise SynthmedError(
            "3D runs have no lightweight decoder; decode with --decoder full", field="decoder"
        )
    if cfg.condition_file is not None or cfg.condition is not None:
        raise SynthmedError("3D runs follow label maps: use --label-map", field="condition_file")
    if world_size() > 1:
        raise SynthmedError(
            "3D generation is not split across torchrun processes; run synthmed generate without torchrun"
        )


def _check_image_settings(cfg: GenerateConfig) -> None:
    given_3d = [f for f in ("size", "spacing", "label_map") if getattr(cfg, f) is not None]
    if given_3d:
        raise SynthmedError(f"{given_3d} apply to 3D runs only; this run is 2D", field=given_3d[0])
    if cfg.privacy_filter and world_size() > 1:
        raise SynthmedError(
            "the privacy filter replaces dropped images with the next seeds, one batch after another, so "
            "it does not split across torchrun processes; run generate --privacy-filter without torchrun",
            field="privacy_filter",
        )


def _open_folder(
    pipe: Pipeline, cfg: GenerateConfig, ann: Annotation | None, span: int
) -> dict[int, str | None]:
    """The status of seeds ``seed .. seed + span - 1`` in the output folder (see :func:`_already_done`);
    rank 0 creates the folder and repairs a cut manifest first."""
    manifest = cfg.out / MANIFEST

    def rows() -> list[dict[str, Any]]:
        if is_main():
            cfg.out.mkdir(parents=True, exist_ok=True)
            drop_cut_last_line(manifest)
        return read_manifest(manifest)

    existing = {(r.get("label"), r.get("seed")): r for r in main_first(rows)}
    return {s: _already_done(existing, pipe, cfg, s, ann) for s in range(cfg.seed, cfg.seed + span)}


def _generate_images(pipe: Pipeline, cfg: GenerateConfig, ann: Annotation | None, progress: bool) -> None:
    """Without the filter nothing is dropped, so exactly seeds seed .. seed+count-1 are used."""
    status = _open_folder(pipe, cfg, ann, cfg.count)
    kept = sum(v == "kept" for v in status.values())
    todo = [s for s, v in status.items() if v is None]
    with progress_bar("generate", cfg.count, completed=kept, enabled=progress and is_main()) as bar:
        _generate_dealt(cfg, pipe, cfg.out / MANIFEST, todo, ann, bar.advance)


def _generate_filtered(pipe: Pipeline, cfg: GenerateConfig, ann: Annotation | None, progress: bool) -> None:
    """With the privacy filter: batch after batch until ``count`` images are kept, from at most twice as
    many seeds."""
    guard = copy_guard_for_run(pipe.run_dir, pipe.cfg, cfg.copy_percentile)
    status = _open_folder(pipe, cfg, ann, 2 * cfg.count)
    kept = sum(v == "kept" for v in status.values())
    pending = iter([s for s, v in status.items() if v is None])
    with progress_bar("generate", cfg.count, completed=kept, enabled=progress) as bar:
        while kept < cfg.count:
            batch = list(itertools.islice(pending, min(cfg.batch_size, cfg.count - kept)))
            if not batch:
                raise _too_many_dropped(cfg)
            newly = _filtered_batch(pipe, cfg, ann, guard, batch)
            kept += newly
            bar.advance(newly)


def _filtered_batch(
    pipe: Pipeline, cfg: GenerateConfig, ann: Annotation | None, guard: CopyGuard, batch: list[int]
) -> int:
    """Sample ``batch``, save the images the guard lets through, record every seed; returns the kept count."""
    images = _sample(pipe, cfg, batch, ann)
    rows = _save_batch(cfg, pipe, batch, images, guard.check(images), ann)
    append_rows(cfg.out / MANIFEST, rows)
    return sum(row["file"] is not None for row in rows)


def _generate_dealt(
    cfg: GenerateConfig,
    pipe: Pipeline,
    manifest: Path,
    seeds: list[int],
    ann: Annotation | None,
    advance: Callable[[int], None],
) -> None:
    """Generate ``seeds`` in the batches of ``cfg.batch_size`` a single process draws; with N processes rank
    r takes batches r, r + N, ... . After each round of N batches rank 0 appends their rows in batch order."""
    batches = [seeds[i : i + cfg.batch_size] for i in range(0, len(seeds), cfg.batch_size)]
    world = world_size()
    for first in range(0, len(batches), world):
        rows: list[dict[str, Any]] = []
        if first + rank() < len(batches):
            batch = batches[first + rank()]
            images = _sample(pipe, cfg, batch, ann)
            rows = _save_batch(cfg, pipe, batch, images, [None] * len(batch), ann)
        round_rows = [row for part in all_gather_objects(rows) for row in part]
        if is_main():
            append_rows(manifest, round_rows)
        advance(len(round_rows))


def _sample(pipe: Pipeline, cfg: GenerateConfig, batch: list[int], ann: Annotation | None) -> torch.Tensor:
    """One batch of images with the resolved settings of ``cfg`` (and the annotation's condition)."""
    return pipe.sample_batch(
        batch,
        cfg.label,
        steps=cfg.steps,
        guidance=cfg.guidance,
        sampler=cfg.sampler,
        control=ann.control if ann else None,
        decoder=cfg.decoder,
    )


def _too_many_dropped(cfg: GenerateConfig) -> SynthmedError:
    return SynthmedError(
        f"the privacy filter dropped more than {cfg.count} of {2 * cfg.count} candidates: the model "
        "reproduces its training images; retrain with more data or fewer steps, or inspect with synthmed "
        "evaluate",
        path=cfg.out,
    )


def _wanted(pipe: Pipeline, cfg: GenerateConfig, seed: int, ann: Annotation | None) -> dict[str, Any]:
    row = pipe.manifest_row(seed, [], cfg.label, cfg.steps, cfg.guidance, cfg.sampler, cfg.decoder)
    row |= {"bit_depth": cfg.bit_depth, "privacy_filter": _filter_setting(cfg)}
    return row | (ann.info if ann else {})


def _filter_setting(cfg: GenerateConfig) -> float | None:
    return cfg.copy_percentile if cfg.privacy_filter else None


def _already_done(
    existing: dict[tuple[Any, Any], dict[str, Any]],
    pipe: Pipeline,
    cfg: GenerateConfig,
    seed: int,
    ann: Annotation | None,
) -> str | None:
    """ "kept" or "dropped" when the manifest already has this seed with the same settings, else None."""
    row = existing.get((cfg.label, seed))
    if row is None:
        return None
    if row.get("dropped") is None and not (cfg.out / row["file"]).exists():
        return None
    wanted = _wanted(pipe, cfg, seed, ann)
    # distilled_sha256, lite_decoder_sha256: rows of the distilled sampler or lightweight decoder only
    keys = (
        *SETTINGS,
        "distilled_sha256",
        "decoder",
        "lite_decoder_sha256",
        "bit_depth",
        "privacy_filter",
        *CONDITION_SETTINGS,
    )
    differing = [k for k in keys if row.get(k) != wanted.get(k)]
    if differing:
        raise SynthmedError(
            f"seed {seed} of label {cfg.label!r} was already generated there with other settings "
            f"({differing}); choose another --out or --seed",
            path=cfg.out,
        )
    return "dropped" if row.get("dropped") else "kept"


def _save_batch(
    cfg: GenerateConfig,
    pipe: Pipeline,
    batch: list[int],
    images: torch.Tensor,
    verdicts: Sequence[dict[str, Any] | None],
    ann: Annotation | None,
) -> list[dict[str, Any]]:
    """Save the batch's images that passed; returns every seed's manifest row (file None if dropped)."""
    created = datetime.now(UTC).isoformat(timespec="seconds")
    rows = []
    for seed, image, verdict in zip(batch, images, verdicts, strict=True):
        row: dict[str, Any] = {"file": None} | _wanted(pipe, cfg, seed, ann) | {"batch_seeds": batch}
        if verdict is not None:
            row["privacy"] = verdict
        if verdict is not None and verdict["flagged"]:
            row["dropped"] = "privacy: closer to a training image than the holdout threshold"
        else:
            row["file"] = file_name(cfg.label, seed)
            save_png(image, cfg.out / row["file"], cfg.bit_depth)
            row["sha256"] = file_sha256(cfg.out / row["file"])  # the catalogue checks the file by it
            if ann is not None:
                row["annotation"] = ann.save(cfg.out, row["file"])
        rows.append(row | {"created": created})
    return rows
