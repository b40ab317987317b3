"""A trained run loaded for sampling: the networks of its folder wired to a scheduler and the denoising
loop, like a diffusers pipeline. Folder generation (sampling.generate), editing and 3D volumes build on it.

Every image has its own seed; its starting noise depends on that seed alone. A manifest row records the
seeds of the batch it was drawn in, so :meth:`Pipeline.regenerate` replays that batch and returns the
image bit for bit (same device, precision and library versions).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, cast

import torch
import torch.nn.functional as F

from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.run import ControlNetMetadata, RunDir, RunMetadata
from synthmed.config import Condition, DecoderKind, TrainConfig, read_run_config
from synthmed.data.structure import read_condition_file
from synthmed.diffusion.sampler import Known, StepCallback, denoise, initial_noise, step_generators
from synthmed.diffusion.tiled import decode_latents
from synthmed.errors import SynthmedError
from synthmed.models.builders import (
    DISTILLED,
    build_scheduler,
    default_steps,
    use_sdpa,
)
from synthmed.models.conditioning import ConditionedUNet
from synthmed.models.slicewise import Autoencoder, label_control
from synthmed.models.trained import load_autoencoder, load_controlnet, load_unet
from synthmed.runtime import (
    PRECISION_NAMES,
    autocast,
    resolve_device,
    resolve_precision,
)
from synthmed.sampling import distilled
from synthmed.sampling.rules import RunRules, check_counts
from synthmed.version import __version__

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
    """A trained ControlNet, its weights' sha256 and what generation needs beside it (run metadata)."""

    model: torch.nn.Module
    sha256: str
    condition: Condition = "mask"
    meta: ControlNetMetadata = field(default_factory=ControlNetMetadata)


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


class Pipeline(RunRules):
    """A trained autoencoder + class-conditional UNet, ready to sample."""

    def __init__(
        self,
        run_dir: Path,
        cfg: TrainConfig,
        autoencoder: Autoencoder,
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
        self.students = distilled.Students(run_dir, cfg, hashes["diffusion_sha256"], device, checkpoint)
        self._lite: distilled.LiteDecoder | None = None

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        device: str = "auto",
        precision: str = "fp32",
        checkpoint: str = "ema",
        compile: bool = False,
    ) -> Self:
        """A trained run ready to sample. ``compile``: the UNet through ``torch.compile`` (a one-off compile
        of minutes on a CPU, then faster steps where the backend gains; results equal eager to rounding)."""
        run = RunDir(Path(run_dir))
        if not run.config.is_file():
            raise SynthmedError(
                "not a synthmed run directory (no config.yaml); train one with synthmed train", path=run.root
            )
        cfg = read_run_config(run.root)
        meta = run.metadata()
        dev = resolve_device(device)
        autoencoder = load_autoencoder(cfg, dev, checkpoint)
        unet: torch.nn.Module = load_unet(cfg, meta, dev, checkpoint)
        use_sdpa(unet, dev)
        use_sdpa(autoencoder, dev)
        if compile:
            unet = cast(torch.nn.Module, torch.compile(unet, dynamic=False))  # an OptimizedModule
        hashes = {
            "autoencoder_sha256": file_sha256(run.weights("autoencoder")),
            "diffusion_sha256": file_sha256(run.weights("diffusion")),
        }
        pipe = cls(
            run.root,
            cfg,
            autoencoder,
            unet,
            meta.scale_factor,
            list(meta.class_names),
            hashes,
            dev,
            resolve_precision(precision, dev),
            checkpoint,
            meta.spacing,
            _load_controlnets(cfg, meta, dev, checkpoint),
        )
        pipe.students.compile = compile
        return pipe

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
        decoder: DecoderKind = "full",
    ) -> torch.Tensor:
        """Images (len(seeds), 1, H, W) or, for 3D runs, volumes (len(seeds), 1, X, Y, Z) in [0, 1].

        2D: ``control`` makes a ControlNet follow a structure map; ``edit`` edits given images instead of
        generating from noise alone (inpainting, SDEdit); ``decoder`` lite: the run's lightweight decoder
        (synthmed distill) instead of the autoencoder's. Sampler and steps: the model's defaults."""
        if not seeds:
            raise SynthmedError("at least one seed is needed", field="count")
        sampler = sampler or self.samplers[0]
        steps = steps or default_steps(sampler)
        guidance = self.guidance(guidance)
        if callback is None and self.batch_hook is not None:
            callback = self.batch_hook(self, seeds)
        labels = torch.full((len(seeds),), self.label_index(label), dtype=torch.long, device=self.device)
        shape = self.latent_shape if volume is None else self.latent_shape_for(volume.size)
        noise = initial_noise(seeds, shape, self.device)
        if sampler == DISTILLED:
            z = self._distilled(noise, labels, steps, guidance, control, edit, callback, volume)
        else:  # the teacher
            z = self._denoised(
                noise, labels, seeds, steps, guidance, sampler, callback, volume, control, edit
            )
        return self.decode(z, decoder)

    def _denoised(
        self,
        noise: torch.Tensor,
        labels: torch.Tensor,
        seeds: list[int],
        steps: int,
        guidance: float,
        sampler: str,
        callback: StepCallback | None,
        volume: VolumeCondition | None,
        control: ImageCondition | None,
        edit: EditTarget | None,
    ) -> torch.Tensor:
        """The teacher's denoising loop with one of the noise process's samplers."""
        scheduler = build_scheduler(self.cfg.diffusion.noise, sampler, self.cfg.data.spatial_dims)
        amp = autocast(self.device, self.dtype)
        return denoise(
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

    def _distilled(
        self,
        noise: torch.Tensor,
        labels: torch.Tensor,
        steps: int,
        guidance: float,
        control: ImageCondition | None,
        edit: EditTarget | None,
        callback: StepCallback | None,
        volume: VolumeCondition | None,
    ) -> torch.Tensor:
        """A distilled student's steps (sampling.distilled), with the teacher's ControlNet if asked (for a
        rectified-flow run, conditioned as the teacher is: spacing and label map)."""
        if edit is not None:
            raise SynthmedError(
                "edits run with the teacher's samplers, not the distilled one", field="sampler"
            )
        student = self.students.get(steps)
        amp = autocast(self.device, self.dtype)
        if self.cfg.diffusion.noise.kind == "rflow":
            student.check_guidance(guidance)
            net = self.denoiser(len(noise), volume, control, unet=student.model)
            return distilled.sample_flow(
                net, noise, labels, cfg=self.cfg, steps=steps, autocast=amp, callback=callback
            )
        bind = None
        if control is not None:
            cn = self.require_controlnet(control.condition)
            maps = control.maps.to(self.device, torch.float32)
            bind = distilled.with_controlnet(cn.model, maps, control.scale)
        return distilled.sample(
            student,
            noise,
            labels,
            cfg=self.cfg,
            steps=steps,
            guidance=guidance,
            autocast=amp,
            bind=bind,
            callback=callback,
        )

    def lite_decoder(self) -> distilled.LiteDecoder:
        """The run's lightweight decoder, loaded when first asked for."""
        if self._lite is None:
            sha = self.hashes["autoencoder_sha256"]
            self._lite = distilled.load_lite(self.cfg, sha, self.device, self.checkpoint)
        return self._lite

    def decode(self, z: torch.Tensor, decoder: DecoderKind = "full") -> torch.Tensor:
        """Clean scaled latents to images (3D: volumes) in [0, 1], float32 on the CPU, with the autoencoder's
        decoder or (``lite``) the run's lightweight one."""
        z = z / self.scale_factor
        with autocast(self.device, self.dtype):
            if decoder == "lite":
                images = self.lite_decoder().model(z)
            elif self.cfg.data.volume is None:
                images = decode_latents(self.autoencoder, z)
            else:  # volume by volume, tiled: memory bounded by one tile whatever the batch and volume size
                tiled = [
                    decode_latents(self.autoencoder, v[None], tile=self.tile_size, overlap=self.tile_overlap)
                    for v in z
                ]
                images = torch.cat(tiled)
        return images.float().clamp(0, 1).cpu()

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
            factor = self.cfg.latent_factors[0]
            region = F.max_pool2d(edit.region.to(self.device, torch.float32), factor)
        return Known(z, region, edit.strength, edit.resample)

    def denoiser(
        self,
        n: int,
        volume: VolumeCondition | None,
        control: ImageCondition | None = None,
        unet: torch.nn.Module | None = None,
    ) -> torch.nn.Module:
        """The UNet (or ``unet``: a distilled student) with a 3D batch's spacing and label maps, or a 2D
        batch's structure map, bound."""
        net = self.unet if unet is None else unet
        if self.cfg.data.volume is None:
            if volume is not None:
                raise SynthmedError("size, spacing and label maps apply to 3D models only", field="size")
            if control is None:
                return net
            cn = self.require_controlnet(control.condition)
            maps = control.maps.to(self.device, torch.float32)
            return ConditionedUNet(net, controlnet=cn.model, control=maps, scale=control.scale)
        if control is not None:
            raise SynthmedError("3D models follow label maps (--label-map), not 2D condition files")
        if volume is None:
            volume = VolumeCondition(self.default_spacing, self.cfg.data.volume.size)
        spacing = torch.tensor([volume.spacing], dtype=torch.float32, device=self.device).expand(n, 3)
        if volume.label_maps is None:
            return ConditionedUNet(net, spacing=spacing)
        cn = self.require_controlnet()
        maps = volume.label_maps.to(self.device)
        encoded = label_control(maps, cn.meta.num_labels, cn.meta.encoding, self.cfg.control_stretch)
        return ConditionedUNet(net, spacing, cn.model, encoded, volume.scale)

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
                path=RunDir(self.run_dir).controlnet(condition) / "model.pt",
            )
        return self.controlnets[condition]

    def manifest_row(
        self,
        seed: int,
        batch: list[int],
        label: str | None,
        steps: int | None,
        guidance: float | None,
        sampler: str | None,
        decoder: DecoderKind = "full",
    ) -> dict[str, Any]:
        """The provenance row of one image, with the sampling settings as resolved by the caller."""
        student: dict[str, Any] = {}
        if sampler == DISTILLED and steps:
            student = {"distilled_sha256": self.students.get(steps).sha256}
        if decoder == "lite":
            student |= {"decoder": "lite", "lite_decoder_sha256": self.lite_decoder().sha256}
        if self.cfg.image_channels > 1:  # grey rows stay as they were
            student |= {"channels": self.cfg.image_channels}
        return student | {
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
            "synthmed_version": __version__,
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
        decoder: DecoderKind = "full",
    ) -> Generated:
        """``n`` images of class ``label`` with seeds ``seed .. seed+n-1``; 2D runs with a ControlNet follow
        ``control`` (e.g. ``pipe.condition("mask.png")``); ``decoder`` as for :meth:`sample_batch`. Sampler
        and steps: the model's defaults."""
        sampler = sampler or self.samplers[0]
        steps = steps or default_steps(sampler)
        check_counts(n, steps, batch_size)
        self.label_index(label)
        guidance = self.guidance(guidance)
        images, rows = [], []
        for batch in self.batches(list(range(seed, seed + n)), batch_size):
            images.append(
                self.sample_batch(
                    batch,
                    label,
                    steps=steps,
                    guidance=guidance,
                    sampler=sampler,
                    control=control,
                    decoder=decoder,
                )
            )
            rows += [self.manifest_row(s, batch, label, steps, guidance, sampler, decoder) for s in batch]
            if on_batch is not None:
                on_batch(len(batch))
        return Generated(torch.cat(images), rows)

    def condition(self, path: Path, condition: Condition = "mask", scale: float = 1.0) -> ImageCondition:
        """A condition file (see data.structure.read_condition_file) for the ``condition`` ControlNet."""
        cn = self.require_controlnet(condition)
        maps = read_condition_file(Path(path), condition, self.cfg.data, cn.meta.edge_sigma)
        return ImageCondition(maps[None], condition, scale)

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
        self.check_student(row)
        decoder: DecoderKind = "lite" if row.get("decoder") == "lite" else "full"
        if decoder == "lite" and self.lite_decoder().sha256 != row.get("lite_decoder_sha256"):
            raise SynthmedError(
                "manifest row was made with another lightweight decoder (lite_decoder_sha256 differs)",
                field="lite_decoder_sha256",
            )
        return self.sample_batch(
            [int(s) for s in row["batch_seeds"]],
            row["label"],
            steps=int(row["steps"]),
            guidance=float(row["guidance"]),
            sampler=row["sampler"],
            control=self._replayed_condition(row),
            decoder=decoder,
        )

    def check_student(self, row: dict[str, Any]) -> None:
        """A distilled row is replayed only by the student it was made with."""
        student = self.students.get(int(row["steps"])) if row["sampler"] == DISTILLED else None
        if student is not None and student.sha256 != row.get("distilled_sha256"):
            raise SynthmedError(
                "manifest row was made with another distilled student (distilled_sha256 differs)",
                field="distilled_sha256",
            )

    def _replayed_condition(self, row: dict[str, Any]) -> ImageCondition | None:
        """The condition a manifest row was generated for; its file must still hold the same content."""
        if row.get("condition") is None:
            return None
        path = Path(row["condition_file"])
        if not path.is_file() or file_sha256(path) != row.get("condition_sha256"):
            raise SynthmedError("the row's condition file is missing or has changed since", path=path)
        if self.require_controlnet(row["condition"]).sha256 != row.get("controlnet_sha256"):
            raise SynthmedError("manifest row was made with another ControlNet", field="controlnet_sha256")
        return self.condition(path, row["condition"], float(row["conditioning_scale"]))


def _load_controlnets(
    cfg: TrainConfig, meta: RunMetadata, device: torch.device, which: str
) -> dict[str, ControlNetState]:
    """Every trained ControlNet of the run, by the condition it follows."""
    found = {}
    for condition, cn in meta.controlnets.items():
        model = use_sdpa(load_controlnet(cfg, meta, condition, device, which), device)
        sha256 = file_sha256(RunDir(cfg.run_dir).controlnet(condition) / "model.pt")
        found[condition] = ControlNetState(model, sha256, condition, cn)  # type: ignore[arg-type]
    return found
