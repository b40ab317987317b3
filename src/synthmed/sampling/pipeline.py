"""Load a trained run and generate labelled images with a provenance manifest (``synthmed generate``).

Every image has its own seed; its starting noise depends on that seed alone. A manifest row records the
seeds of the batch it was drawn in, so :meth:`Pipeline.regenerate` replays that batch and returns the
image bit for bit (same device, precision and library versions).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import synthmed
from synthmed.config import Condition, GenerateConfig, TrainConfig, build_train_config, read_yaml
from synthmed.data.structure import read_condition_file
from synthmed.errors import SynthmedError
from synthmed.models.builders import (
    SAMPLERS_FOR,
    build_autoencoder,
    build_controlnet,
    build_scheduler,
    default_steps,
    use_sdpa,
)
from synthmed.models.conditioning import ConditionedUNet
from synthmed.reporting.images import save_png
from synthmed.runtime import (
    PRECISION_NAMES,
    all_gather_objects,
    autocast,
    is_main,
    join_process_group,
    main_first,
    rank,
    resolve_device,
    resolve_precision,
    world_size,
)
from synthmed.sampling.label_maps import encode_labels, encoding_channels
from synthmed.sampling.privacy_filter import copy_guard_for_run
from synthmed.sampling.sampler import Known, StepCallback, denoise, initial_noise, step_generators
from synthmed.sampling.tiled import decode_latents
from synthmed.training import checkpoint as ckpt
from synthmed.training.run import load_unet
from synthmed.training.tasks import controlnet_stage_dir

MANIFEST = "manifest.jsonl"
# Settings that must agree for an existing image in an output folder to count as already generated.
SETTINGS = ("label", "sampler", "steps", "guidance", "checkpoint", "precision", "diffusion_sha256")
CONDITION_SETTINGS = ("condition", "condition_sha256", "conditioning_scale", "controlnet_sha256")
# Called with the pipeline and a batch's seeds before the batch is sampled; returns its step callback.
BatchHook = Callable[["Pipeline", list[int]], StepCallback]


@dataclass
class VolumeCondition:
    """What a 3D batch is generated for: voxel spacing (mm) and size, and label maps for the ControlNet."""

    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    label_maps: torch.Tensor | None = None  # (B, 1, *size) int64
    scale: float = 1.0  # ControlNet strength


@dataclass
class ControlNetState:
    """A trained ControlNet and what generation needs beside it (label encoding and quality bounds: 3D)."""

    model: torch.nn.Module
    sha256: str
    condition: Condition = "mask"
    edge_sigma: float = 1.5
    num_labels: int = 2
    encoding: str = "onehot"
    quality_bounds: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class ImageCondition:
    """2D: the structure map a batch follows through the ControlNet trained on ``condition``."""

    maps: torch.Tensor  # (1 or B, 1, S, S) float32, as read by data.structure.read_condition_file
    condition: Condition = "mask"
    scale: float = 1.0


@dataclass
class EditTarget:
    """2D edit of existing images (see sampler.Known): inpaint ``region`` and/or SDEdit at ``strength``."""

    images: torch.Tensor  # (B, 1, S, S) in [0, 1], preprocessed like training images
    region: torch.Tensor | None = None  # (B, 1, S, S) {0, 1}: 1 = regenerate; None = the whole image
    strength: float = 1.0
    resample: int = 1


@dataclass
class Generated:
    images: torch.Tensor  # (N, 1, H, W) in [0, 1], float32, on CPU
    rows: list[dict[str, Any]]  # one manifest row per image (without the file name)


class Pipeline:
    """A trained autoencoder + class-conditional UNet, ready to sample."""

    def __init__(
        self,
        run_dir: Path,
        cfg: TrainConfig,
        autoencoder: torch.nn.Module,
        unet: torch.nn.Module,
        scale_factor: float,
        class_names: list[str],
        hashes: dict[str, str],
        device: torch.device,
        dtype: torch.dtype,
        checkpoint: str,
        spacing: tuple[float, float, float] | None = None,
        controlnets: dict[str, ControlNetState] | None = None,
    ) -> None:
        """3D runs add ``spacing`` (the default voxel spacing, mm); ``controlnets``: the trained ControlNets
        by condition."""
        self.run_dir, self.cfg, self.autoencoder, self.unet = run_dir, cfg, autoencoder, unet
        self.scale_factor, self.class_names, self.hashes = scale_factor, class_names, hashes
        self.device, self.dtype, self.checkpoint = device, dtype, checkpoint
        self.spacing, self.controlnets = spacing, controlnets or {}
        self.tile_size: int | None = 32  # 3D decoding tile (latent voxels) and overlap
        self.tile_overlap = 0.25
        self.batch_hook: BatchHook | None = None  # a job's live view (synthmed.jobs.runner)

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        device: str = "auto",
        precision: str = "fp32",
        checkpoint: str = "ema",
        compile: bool = False,
    ) -> Pipeline:
        """A trained run ready to sample. ``compile``: the UNet through ``torch.compile`` (a one-off compile
        of minutes on a CPU, then faster steps where the backend gains; results equal eager to rounding)."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise SynthmedError(
                "not a synthmed run directory (no config.yaml); train one with synthmed train", path=run_dir
            )
        cfg = build_train_config(read_yaml(run_dir / "config.yaml"), source=str(run_dir / "config.yaml"))
        cfg = cfg.model_copy(update={"run_dir": run_dir})
        dev = resolve_device(device)
        ae_path, unet_path = run_dir / "autoencoder" / "model.pt", run_dir / "diffusion" / "model.pt"
        autoencoder = build_autoencoder(cfg.autoencoder.arch, cfg.data.spatial_dims).to(dev)
        ckpt.load_exported(autoencoder, ae_path, checkpoint)
        unet, state = load_unet(cfg, dev, checkpoint)
        use_sdpa(unet, dev)
        use_sdpa(autoencoder, dev)
        if compile:
            unet = torch.compile(unet, dynamic=False)
        class_names = list(state["extra"]["class_names"])
        hashes = {
            "autoencoder_sha256": ckpt.file_sha256(ae_path),
            "diffusion_sha256": ckpt.file_sha256(unet_path),
        }
        spacing = state["extra"].get("spacing")
        return cls(
            run_dir,
            cfg,
            autoencoder.eval(),
            unet,
            float(state["extra"]["scale_factor"]),
            class_names,
            hashes,
            dev,
            resolve_precision(precision, dev),
            checkpoint,
            tuple(spacing) if spacing else None,
            _load_controlnets(cfg, len(class_names), dev, checkpoint),
        )

    @property
    def image_size(self) -> int:
        return self.cfg.data.image_size

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """2D: the latent of one image; 3D: of one volume at the training size."""
        vol = self.cfg.data.volume
        spatial = vol.size if vol is not None else (self.image_size, self.image_size)
        return self.latent_shape_for(spatial)

    def latent_shape_for(self, size: tuple[int, ...]) -> tuple[int, ...]:
        arch = self.cfg.autoencoder.arch
        divisor = arch.compression * 2 ** (len(self.cfg.diffusion.arch.channels) - 1)
        bad = [s for s in size if s % divisor]
        if bad:
            raise SynthmedError(
                f"size {tuple(size)}: every side must be a multiple of {divisor} for this model", field="size"
            )
        return (arch.latent_channels, *(s // arch.compression for s in size))

    @property
    def samplers(self) -> tuple[str, ...]:
        return SAMPLERS_FOR[self.cfg.diffusion.noise.kind]

    def resolve_label(self, label: str | None) -> str | None:
        """``label``, or for None: unconditional, or the only class of a model never trained without labels
        (its 'no label' token was never learnt)."""
        if label is not None or self.cfg.diffusion.label_dropout > 0:
            return label
        if len(self.class_names) == 1:
            return self.class_names[0]
        raise SynthmedError(
            f"this model was trained without label dropout, so it cannot sample without a label; choose one "
            f"of {self.class_names}",
            field="label",
        )

    def label_index(self, label: str | None) -> int:
        """Index of ``label``; None means unconditional (the classifier-free 'no label' token)."""
        label = self.resolve_label(label)
        if label is None:
            return len(self.class_names)
        if label not in self.class_names:
            raise SynthmedError(
                f"unknown label '{label}'; this model knows {self.class_names}", field="label"
            )
        return self.class_names.index(label)

    @torch.inference_mode()
    def sample_batch(
        self,
        seeds: list[int],
        label: str | None,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        callback: StepCallback | None = None,
        volume: VolumeCondition | None = None,
        control: ImageCondition | None = None,
        edit: EditTarget | None = None,
    ) -> torch.Tensor:
        """Images (len(seeds), 1, H, W) or, for 3D runs, volumes (len(seeds), 1, X, Y, Z) in [0, 1].

        2D: ``control`` makes a ControlNet follow a structure map; ``edit`` edits given images instead of
        generating from noise alone (inpainting, SDEdit). Sampler and steps: the model's defaults."""
        if not seeds:
            raise SynthmedError("at least one seed is needed", field="count")
        sampler = sampler or self.samplers[0]
        steps = steps or default_steps(sampler)
        guidance = self.guidance(guidance)
        if callback is None and self.batch_hook is not None:
            callback = self.batch_hook(self, seeds)
        scheduler = build_scheduler(self.cfg.diffusion.noise, sampler, self.cfg.data.spatial_dims)
        labels = torch.full((len(seeds),), self.label_index(label), dtype=torch.long, device=self.device)
        shape = self.latent_shape if volume is None else self.latent_shape_for(volume.size)
        noise = initial_noise(seeds, shape, self.device)
        amp = autocast(self.device, self.dtype)
        z = denoise(
            self.denoiser(len(seeds), volume, control),
            scheduler,
            noise,
            labels,
            null_label=len(self.class_names),
            steps=steps,
            guidance=guidance,
            generators=step_generators(seeds, self.device),
            autocast=amp,
            callback=callback,
            known=None if edit is None else self._known(edit, len(seeds), amp),
        )
        z = z / self.scale_factor
        with amp:
            if self.cfg.data.volume is None:
                images = decode_latents(self.autoencoder, z)
            else:  # volume by volume, tiled: memory bounded by one tile whatever the batch and volume size
                tiled = [
                    decode_latents(self.autoencoder, v[None], tile=self.tile_size, overlap=self.tile_overlap)
                    for v in z
                ]
                images = torch.cat(tiled)
        return images.float().clamp(0, 1).cpu()

    def guidance(self, value: float | None) -> float:
        """``value`` checked, or the default: 3, or 1 for a model without an unconditional branch."""
        has_unconditional = self.cfg.diffusion.label_dropout > 0
        if value is None:
            return 3.0 if has_unconditional else 1.0
        if value != 1.0 and not has_unconditional:
            raise SynthmedError(
                "this model was trained without label dropout, so classifier-free guidance has no "
                "unconditional prediction to use; use guidance 1",
                field="guidance",
            )
        return value

    def _known(self, edit: EditTarget, n: int, amp: AbstractContextManager) -> Known:
        """The edited images' clean latents and the latent cells to regenerate (any region pixel in one)."""
        if edit.images.shape[0] != n or edit.images.shape[-2:] != (self.image_size, self.image_size):
            raise SynthmedError(
                f"edit needs {n} images of {self.image_size} x {self.image_size} pixels, got "
                f"{tuple(edit.images.shape)}",
                field="image",
            )
        with amp:
            z = self.autoencoder.encode(edit.images.to(self.device))[0].float() * self.scale_factor
        region = None
        if edit.region is not None:
            factor = self.cfg.autoencoder.arch.compression
            region = F.max_pool2d(edit.region.to(self.device, torch.float32), factor)
        return Known(z, region, edit.strength, edit.resample)

    def denoiser(
        self, n: int, volume: VolumeCondition | None, control: ImageCondition | None = None
    ) -> torch.nn.Module:
        """The UNet with a 3D batch's spacing and label maps, or a 2D batch's structure map, bound."""
        if self.cfg.data.volume is None:
            if volume is not None:
                raise SynthmedError("size, spacing and label maps apply to 3D models only", field="size")
            if control is None:
                return self.unet
            cn = self.require_controlnet(control.condition)
            maps = control.maps.to(self.device, torch.float32)
            return ConditionedUNet(self.unet, controlnet=cn.model, control=maps, scale=control.scale)
        if control is not None:
            raise SynthmedError("3D models follow label maps (--label-map), not 2D condition files")
        if volume is None:
            volume = VolumeCondition(self.default_spacing, self.cfg.data.volume.size)
        spacing = torch.tensor([volume.spacing], dtype=torch.float32, device=self.device).expand(n, 3)
        if volume.label_maps is None:
            return ConditionedUNet(self.unet, spacing=spacing)
        cn = self.require_controlnet()
        control = encode_labels(volume.label_maps.to(self.device), cn.num_labels, cn.encoding)  # type: ignore[arg-type]
        return ConditionedUNet(self.unet, spacing, cn.model, control, volume.scale)

    @property
    def default_spacing(self) -> tuple[float, float, float]:
        vol = self.cfg.data.volume
        assert vol is not None
        return vol.spacing or self.spacing or (1.0, 1.0, 1.0)

    @property
    def controlnet(self) -> ControlNetState | None:
        """The mask (3D: label-map) ControlNet, if trained."""
        return self.controlnets.get("mask")

    def require_controlnet(self, condition: Condition = "mask") -> ControlNetState:
        if condition not in self.controlnets:
            what = "label-map" if self.cfg.data.volume is not None else condition
            raise SynthmedError(
                f"this run has no trained {what} ControlNet; train it with synthmed train controlnet"
                + ("" if condition == "mask" else f" --condition {condition}"),
                path=self.run_dir / controlnet_stage_dir(condition) / "model.pt",
            )
        return self.controlnets[condition]

    def manifest_row(
        self, seed: int, batch: list[int], label: str | None, steps: int, guidance: float, sampler: str
    ) -> dict[str, Any]:
        return {
            "label": label,
            "seed": seed,
            "batch_seeds": batch,
            "sampler": sampler,
            "steps": steps,
            "guidance": guidance,
            "checkpoint": self.checkpoint,
            "precision": PRECISION_NAMES[self.dtype],
            "device": self.device.type,
            "image_size": self.image_size,
            "run_dir": str(self.run_dir.resolve()),
            **self.hashes,
            "synthmed_version": synthmed.__version__,
            "torch_version": torch.__version__,
            "machine": platform.machine(),
        }

    def batches(self, seeds: list[int], batch_size: int) -> Iterator[list[int]]:
        for i in range(0, len(seeds), batch_size):
            yield seeds[i : i + batch_size]

    def generate(
        self,
        label: str | None = None,
        n: int = 16,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        sampler: str | None = None,
        batch_size: int = 16,
        on_batch: Callable[[int], None] | None = None,
        control: ImageCondition | None = None,
    ) -> Generated:
        """``n`` images of class ``label`` with seeds ``seed .. seed+n-1``; 2D runs with a ControlNet follow
        ``control`` (e.g. ``pipe.condition("mask.png")``). Sampler and steps: the model's defaults."""
        sampler = sampler or self.samplers[0]
        steps = steps or default_steps(sampler)
        _check_counts(n, steps, batch_size)
        self.label_index(label)
        guidance = self.guidance(guidance)
        images, rows = [], []
        for batch in self.batches(list(range(seed, seed + n)), batch_size):
            images.append(
                self.sample_batch(
                    batch, label, steps=steps, guidance=guidance, sampler=sampler, control=control
                )
            )
            rows += [self.manifest_row(s, batch, label, steps, guidance, sampler) for s in batch]
            if on_batch is not None:
                on_batch(len(batch))
        return Generated(torch.cat(images), rows)

    def condition(self, path: Path, condition: Condition = "mask", scale: float = 1.0) -> ImageCondition:
        """A condition file (see data.structure.read_condition_file) for the ``condition`` ControlNet."""
        cn = self.require_controlnet(condition)
        maps = read_condition_file(Path(path), condition, self.cfg.data, cn.edge_sigma)
        return ImageCondition(maps[None], condition, scale)

    def edit(self, operation: str, image: Any, region: Any = None, **options: Any) -> Any:
        """`synthmed edit` in Python: insert / remove / harmonize, see sampling.editing.edit_image."""
        from synthmed.sampling.editing import edit_image  # that module builds on this one

        return edit_image(self, operation, image, region, **options)

    def regenerate(self, row: dict[str, Any]) -> torch.Tensor:
        """Re-create one manifest row's image, (1, H, W), bit for bit on the same device and precision."""
        return self.regenerate_batch(row)[[int(s) for s in row["batch_seeds"]].index(int(row["seed"]))]

    def regenerate_batch(self, row: dict[str, Any]) -> torch.Tensor:
        """Re-create the whole batch a manifest row's image was drawn in, (B, 1, H, W) in the order of its
        ``batch_seeds``: every image of that batch for the cost of one."""
        if self.cfg.data.volume is not None:
            raise SynthmedError("3D rows are replayed by synthmed.sampling.volumes.regenerate_volume")
        for key in ("autoencoder_sha256", "diffusion_sha256"):
            if row.get(key) != self.hashes[key]:
                raise SynthmedError(f"manifest row was made with other weights ({key} differs)", field=key)
        return self.sample_batch(
            [int(s) for s in row["batch_seeds"]],
            row["label"],
            steps=int(row["steps"]),
            guidance=float(row["guidance"]),
            sampler=row["sampler"],
            control=self._replayed_condition(row),
        )

    def _replayed_condition(self, row: dict[str, Any]) -> ImageCondition | None:
        """The condition a manifest row was generated for; its file must still hold the same content."""
        if row.get("condition") is None:
            return None
        path = Path(row["condition_file"])
        if not path.is_file() or ckpt.file_sha256(path) != row.get("condition_sha256"):
            raise SynthmedError("the row's condition file is missing or has changed since", path=path)
        if self.require_controlnet(row["condition"]).sha256 != row.get("controlnet_sha256"):
            raise SynthmedError("manifest row was made with another ControlNet", field="controlnet_sha256")
        return self.condition(path, row["condition"], float(row["conditioning_scale"]))


def _load_controlnets(
    cfg: TrainConfig, num_classes: int, device: torch.device, which: str
) -> dict[str, ControlNetState]:
    """Every trained ControlNet of the run, by the condition it follows."""
    found = {}
    for condition in get_args(Condition):
        path = cfg.run_dir / controlnet_stage_dir(condition) / "model.pt"
        if not path.exists():
            continue
        state = ckpt.load(path, device)
        extra = state["extra"]
        num_labels, encoding = int(extra.get("num_labels", 2)), str(extra.get("encoding", "onehot"))
        channels = 1 if cfg.data.volume is None else encoding_channels(num_labels, encoding)  # type: ignore[arg-type]
        model = build_controlnet(
            cfg.diffusion.arch,
            cfg.controlnet,
            cfg.autoencoder.arch.latent_channels,
            num_classes,
            channels,
            cfg.data.spatial_dims,
        ).to(device)
        use_sdpa(model, device)
        ckpt.load_exported(model, path, which, state)
        found[condition] = ControlNetState(
            model.eval(),
            ckpt.file_sha256(path),
            condition,
            float(extra.get("edge_sigma", 1.5)),
            num_labels,
            encoding,
            dict(extra.get("quality_bounds", {})),
        )
    return found


def _check_counts(n: int, steps: int, batch_size: int) -> None:
    if n <= 0:
        raise SynthmedError(f"count must be at least 1, got {n}", field="count")
    if steps <= 0:
        raise SynthmedError(f"steps must be at least 1, got {steps}", field="steps")
    if batch_size <= 0:
        raise SynthmedError(f"batch_size must be at least 1, got {batch_size}", field="batch_size")


def read_manifest(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SynthmedError(f"line {i} is not JSON ({exc.msg})", path=path) from exc
    return rows


def drop_cut_last_line(manifest: Path) -> None:
    """A job killed while appending leaves a partial last row: drop it (its image is regenerated)."""
    if not manifest.exists():
        return
    text = manifest.read_text()
    if not text or text.endswith("\n"):
        return
    kept = text[: text.rfind("\n") + 1]
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    tmp.write_text(kept)
    os.replace(tmp, manifest)


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
        control = pipe.condition(cfg.condition_file, cfg.condition or "mask", cfg.conditioning_scale)
        maps, condition = control.maps[0], control.condition
        if condition == "mask" and not maps.any():
            warnings.warn(
                f"{cfg.condition_file}: the mask is empty, so images are generated without a lesion",
                stacklevel=2,
            )
        info = {
            "condition": condition,
            "condition_file": str(cfg.condition_file),
            "condition_sha256": ckpt.file_sha256(cfg.condition_file),
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


def file_name(label: str | None, seed: int) -> str:
    return f"{label or 'unconditional'}/syn_{seed:08d}.png"


def generate_to_folder(
    cfg: GenerateConfig, progress: bool = True, batch_hook: BatchHook | None = None
) -> Path:
    """Write PNGs under ``out/<label>/`` (readable back as a class-folder data set) plus manifest.jsonl.
    ``batch_hook`` watches every batch's denoising steps (see Pipeline.batch_hook).

    Seeds are tried in order from ``cfg.seed``. With the privacy filter, an image closer to a training
    image than real holdout images are is dropped (a manifest row records it, without a file) and the
    next seed takes its place. An interrupted run is continued: seeds already in the manifest with the
    same settings are not drawn again.

    Under torchrun (several processes) the batches a single process would draw are dealt out in turn: rank r
    generates batches r, r + N, r + 2N, ... (the seeds at positions p with (p // batch_size) % N == r), so
    every image is made in the same batch as in a single process, and the folder is the same image for image.
    Each rank writes its own images; rank 0 alone writes the manifest.
    """
    _check_counts(cfg.count, cfg.steps or 1, cfg.batch_size)
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
    sampler = cfg.sampler or pipe.samplers[0]
    if sampler not in pipe.samplers:
        raise SynthmedError(
            f"unknown sampler '{sampler}' for this model; choose one of {list(pipe.samplers)}",
            field="sampler",
        )
    resolved = {
        "sampler": sampler,
        "steps": cfg.steps or default_steps(sampler),
        "guidance": pipe.guidance(cfg.guidance),
        "label": pipe.resolve_label(cfg.label),
    }
    cfg = cfg.model_copy(update=resolved)
    if pipe.cfg.data.volume is not None:
        from synthmed.sampling.volumes import generate_volumes  # that module builds on this one

        if cfg.condition_file is not None or cfg.condition is not None:
            raise SynthmedError("3D runs follow label maps: use --label-map", field="condition_file")
        if world_size() > 1:
            raise SynthmedError(
                "3D generation is not split across torchrun processes; run synthmed generate without torchrun"
            )
        return generate_volumes(pipe, cfg, progress)
    given_3d = [f for f in ("size", "spacing", "label_map") if getattr(cfg, f) is not None]
    if given_3d:
        raise SynthmedError(f"{given_3d} apply to 3D runs only; this run is 2D", field=given_3d[0])
    if cfg.privacy_filter and world_size() > 1:
        raise SynthmedError(
            "the privacy filter replaces dropped images with the next seeds, one batch after another, so "
            "it does not split across torchrun processes; run generate --privacy-filter without torchrun",
            field="privacy_filter",
        )
    ann = Annotation.from_config(pipe, cfg)
    guard = copy_guard_for_run(pipe.run_dir, pipe.cfg, cfg.copy_percentile) if cfg.privacy_filter else None
    manifest = cfg.out / MANIFEST

    def open_folder() -> list[dict[str, Any]]:
        if is_main():
            cfg.out.mkdir(parents=True, exist_ok=True)
            drop_cut_last_line(manifest)
        return read_manifest(manifest)

    existing = {(r.get("label"), r.get("seed")): r for r in main_first(open_folder)}
    # Without the filter nothing is dropped, so exactly seeds seed .. seed+count-1 are used.
    candidates = range(cfg.seed, cfg.seed + (2 * cfg.count if guard else cfg.count))
    status = {s: _already_done(existing, pipe, cfg, s, ann) for s in candidates}
    kept = sum(v == "kept" for v in status.values())
    if guard is None:
        todo = [s for s in candidates if status[s] is None]
        with progress_bar(progress and is_main(), cfg.count, kept) as advance:
            _generate_dealt(cfg, pipe, manifest, todo, ann, advance)
        return cfg.out
    pending = iter([s for s in candidates if status[s] is None])
    with progress_bar(progress, cfg.count, kept) as advance:
        while kept < cfg.count:
            batch = list(itertools.islice(pending, min(cfg.batch_size, cfg.count - kept)))
            if not batch:
                raise _too_many_dropped(cfg)
            images = pipe.sample_batch(
                batch,
                cfg.label,
                steps=cfg.steps,
                guidance=cfg.guidance,
                sampler=sampler,
                control=ann.control if ann else None,
            )
            rows = _save_batch(cfg, pipe, batch, images, guard.check(images), ann)
            _append_rows(manifest, rows)
            newly = sum(row["file"] is not None for row in rows)
            kept += newly
            advance(newly)
    return cfg.out


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
            control = ann.control if ann else None
            images = pipe.sample_batch(
                batch, cfg.label, steps=cfg.steps, guidance=cfg.guidance, sampler=cfg.sampler, control=control
            )
            rows = _save_batch(cfg, pipe, batch, images, [None] * len(batch), ann)
        round_rows = [row for part in all_gather_objects(rows) for row in part]
        if is_main():
            _append_rows(manifest, round_rows)
        advance(len(round_rows))


@contextmanager
def progress_bar(enabled: bool, total: int, completed: int = 0) -> Iterator[Callable[[int], None]]:
    """A Rich bar for generation; yields ``advance(n)``."""
    with Progress(
        TextColumn("[bold]generate"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    ) as bar:
        task = bar.add_task("generate", total=total, completed=completed)
        yield lambda n=1: bar.advance(task, n)


def _too_many_dropped(cfg: GenerateConfig) -> SynthmedError:
    return SynthmedError(
        f"the privacy filter dropped more than {cfg.count} of {2 * cfg.count} candidates: the model "
        "reproduces its training images; retrain with more data or fewer steps, or inspect with synthmed "
        "evaluate",
        path=cfg.out,
    )


def _wanted(pipe: Pipeline, cfg: GenerateConfig, seed: int, ann: Annotation | None) -> dict[str, Any]:
    row = pipe.manifest_row(seed, [], cfg.label, cfg.steps, cfg.guidance, cfg.sampler)
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
    keys = (*SETTINGS, "bit_depth", "privacy_filter", *CONDITION_SETTINGS)
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
    verdicts: list[dict[str, Any] | None],
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
            row["sha256"] = ckpt.file_sha256(cfg.out / row["file"])  # the catalogue checks the file by it
            if ann is not None:
                row["annotation"] = ann.save(cfg.out, row["file"])
        rows.append(row | {"created": created})
    return rows


def _append_rows(manifest: Path, rows: list[dict[str, Any]]) -> None:
    with open(manifest, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
