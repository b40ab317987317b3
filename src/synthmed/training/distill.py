"""``synthmed distill``: a distilled stage added to a trained run, for generation in 1-4 network evaluations.

For a v-prediction DDPM model (the 2D recipe), round 1 (guidance distillation, Meng et al. 2023) teaches a
student that takes the guidance scale as an input the classifier-free guided teacher's v prediction (two
evaluations, conditional and unconditional) at every timestep, in one evaluation. Each further round
(progressive distillation, Salimans & Ho 2022) halves the steps: a student initialised from the previous one
learns to land, in one DDIM step, where the previous one lands in two; its loss is the clean-latent error
weighted by max(SNR, 1). Rounds go down to ``min_steps``; each is a trainer stage of its own in
``distilled/steps-<N>/`` (checkpoints, exact resume, log, previews), so an interrupted distillation resumes
inside the round it stopped in.

Rectified-flow models (the 3D recipe, no guidance) skip round 1 and halve in their own form, with the run's
label-map ControlNet attached (training.distill_flow). Training items are the run's own training latents,
noised to the round's timesteps; for guided models labels are dropped at the run's label-dropout rate, so the
student also samples without a label.

Last (``decoder_steps`` > 0), a lightweight decoder (``distilled/decoder/``) learns to map posterior samples
of the same training latents to what the run's autoencoder decoder makes of them; at one or two student steps
the full decoder costs more than the student, and ``generate --decoder lite`` uses this one instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.images import save_grid
from synthmed.artifacts.run import DISTILL_CONFIG, RunDir, RunMetadata
from synthmed.config import DistillConfig, StageConfig, TrainConfig, read_run_config, read_yaml, save_yaml
from synthmed.diffusion import distilled as dd
from synthmed.errors import SynthmedError
from synthmed.evaluation.sharpness import laplacian_energy
from synthmed.models.builders import noise_process
from synthmed.models.distilled import BoundGuidance, build_lite_decoder, load_student, student_from_teacher
from synthmed.models.slicewise import Autoencoder
from synthmed.models.trained import load_controlnet, load_unet
from synthmed.runtime import resolve_device, resolve_precision, set_threads
from synthmed.training.distill_flow import FlowDistillTask, LabelControl, flow_rounds
from synthmed.training.run import _diff, _latent_sets, load_training_data
from synthmed.training.tasks import VAL_ITEMS, LatentSet, draw_latents, global_randn, gradient_l1
from synthmed.training.trainer import Task, Trainer

console = Console(stderr=True)
Kind = Literal["guidance", "halving"]
PREVIEW_GUIDANCE = 3.0


class DistillTask:
    """One round: ``student`` (a GuidedUNet) learns ``teacher`` (the guided UNet, or the previous student)."""

    def __init__(
        self,
        cfg: DistillConfig,
        kind: Kind,
        steps: int,
        teacher: nn.Module,
        student: nn.Module,
        data: tuple[LatentSet, LatentSet],
        train_cfg: TrainConfig,
        decode: Callable[[torch.Tensor], torch.Tensor],
        extra: dict[str, Any],
    ) -> None:
        self.cfg, self.kind, self.steps = cfg, kind, steps
        self.name = f"distilled-steps-{steps}"
        self.teacher = teacher.eval().requires_grad_(False)
        self.model = self.net = student
        self.train, self.val = data
        self.num_items = len(self.train.latents)
        self.alphas = noise_process(train_cfg.diffusion.noise).alphas_cumprod.float()
        self.num_t = len(self.alphas)
        self.null_label = int(extra["null_label"])
        self.label_dropout = train_cfg.diffusion.label_dropout
        self.latents = train_cfg.diffusion.latents  # the teacher's training latents
        self.scale_factor = float(extra["scale_factor"])
        self.decode, self.extra = decode, extra

    def trainables(self) -> dict[str, nn.Module]:
        return {"student": self.model}

    def _items(self, index: torch.Tensor, part: slice, drop: bool) -> tuple[torch.Tensor, ...]:
        """Clean latents, noise, labels (some dropped) and guidance scales of items ``index[part]``."""
        n, mine = len(index), index[part]
        z = draw_latents(self.train.latents[mine], n, part, self.latents) * self.scale_factor
        noise = global_randn(n, part, z)
        labels = self.train.labels[mine].clone()
        if drop:
            labels[torch.rand(n, device=labels.device)[part] < self.label_dropout] = self.null_label
        lo, hi = self.cfg.guidance_range
        guidance = lo + (hi - lo) * torch.rand(n, device=z.device)[part]
        return z, noise, labels, guidance

    def _points(self, n: int, part: slice, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Halving rounds: a student step t -> s and the teacher's midpoint, per item."""
        fine = dd.grid(2 * self.steps, self.num_t).to(device)
        i = torch.randint(0, self.steps, (n,), device=device)[part]
        return fine[2 * i], fine[2 * i + 1], fine[2 * i + 2]

    def _target(self, x: torch.Tensor, t: torch.Tensor, mid: torch.Tensor, s: torch.Tensor, labels, w):
        """The clean latent whose one step from t lands where the teacher's two steps t -> mid -> s land."""
        v = self.teacher(x, t, labels, w).float()
        x_mid, _ = dd.ddim_step(self.alphas, v, x, t, mid)
        v = self.teacher(x_mid, mid, labels, w).float()
        x_s, _ = dd.ddim_step(self.alphas, v, x_mid, mid, s)
        return dd.two_step_target(self.alphas, x, x_s, t, s)

    def losses(
        self, index: torch.Tensor, step: int, part: slice = slice(None)
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        z, noise, labels, w = self._items(index, part, drop=True)
        n = len(index)
        if self.kind == "guidance":
            t = torch.randint(0, self.num_t, (n,), device=z.device)[part]
            a, sig = dd.alpha_sigma(self.alphas, t)
            x = a * z + sig * noise
            with torch.no_grad():
                target = dd.guided_v(self.teacher, x, t, labels, w, self.null_label)
            pred = self.net(x, t, labels, w).float()
            return {"student": F.mse_loss(pred, target)}, {}
        t, mid, s = self._points(n, part, z.device)
        a, sig = dd.alpha_sigma(self.alphas, t)
        x = a * z + sig * noise
        with torch.no_grad():
            target = self._target(x, t, mid, s, labels, w)
        x0 = a * x - sig * self.net(x, t, labels, w).float()
        weight = (a / sig).pow(2).clamp(min=1.0).flatten()  # truncated SNR (Salimans & Ho)
        per_item = (x0 - target).pow(2).flatten(1).mean(1)
        return {"student": (weight * per_item).mean()}, {}

    @torch.inference_mode()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Error against the teacher at fixed noise, timesteps spread over the round's grid, guidance 3."""
        g = torch.Generator().manual_seed(0)
        index = torch.arange(min(VAL_ITEMS, len(self.val.latents)))
        z = self.val.latents[index, 0] * self.scale_factor
        noise = torch.randn(z.shape, generator=g).to(z.device)
        labels = self.val.labels[index]
        w = torch.full((len(z),), self._preview_guidance(), device=z.device)
        if self.kind == "guidance":
            t = torch.linspace(0, self.num_t - 1, len(z)).long().to(z.device)
            a, sig = dd.alpha_sigma(self.alphas, t)
            x = a * z + sig * noise
            target = dd.guided_v(self.teacher, x, t, labels, w, self.null_label)
            return {"v_mse": F.mse_loss(model(x, t, labels, w).float(), target).item()}
        fine = dd.grid(2 * self.steps, self.num_t).to(z.device)
        i = torch.arange(len(z), device=z.device) % self.steps
        t, mid, s = fine[2 * i], fine[2 * i + 1], fine[2 * i + 2]
        a, sig = dd.alpha_sigma(self.alphas, t)
        x = a * z + sig * noise
        target = self._target(x, t, mid, s, labels, w)
        x0 = a * x - sig * model(x, t, labels, w).float()
        return {"x0_mse": F.mse_loss(x0, target).item()}

    def _preview_guidance(self) -> float:
        lo, hi = self.cfg.guidance_range
        return min(max(PREVIEW_GUIDANCE, lo), hi)

    @torch.inference_mode()
    def preview(self, model: nn.Module, path: Path, per_class: int = 6) -> None:
        """One row per class, sampled in the round's steps at guidance 3 (within the trained range)."""
        classes = self.null_label
        labels = torch.arange(classes).repeat_interleave(per_class).to(self.val.labels.device)
        shape = tuple(self.val.latents.shape[2:])
        g = torch.Generator().manual_seed(0)
        noise = torch.randn((len(labels), *shape), generator=g).to(labels.device)
        bound = BoundGuidance(model, self._preview_guidance())
        z = dd.sample(lambda x, t: bound(x, t, labels), noise, self.alphas, self.steps)
        save_grid(self.decode(z / self.scale_factor), path, ncols=per_class)

    def extra_state(self) -> dict[str, Any]:
        return self.extra | {"steps": self.steps, "round": self.kind}


class DecoderTask:
    """The lightweight decoder learns the autoencoder's decoder: L1 on its images plus L1 on their gradients
    (which keeps the edges a plain L1 would let it average away), at posterior samples of training latents."""

    name = "distilled-decoder"

    def __init__(
        self,
        lite: nn.Module,
        autoencoder: Autoencoder,
        data: tuple[LatentSet, LatentSet],
        extra: dict[str, Any],
    ) -> None:
        self.model = self.net = lite
        self.autoencoder = autoencoder.eval()
        self.train, self.val = data
        self.num_items = len(self.train.latents)
        self.extra = extra

    def trainables(self) -> dict[str, nn.Module]:
        return {"decoder": self.model}

    def losses(
        self, index: torch.Tensor, step: int, part: slice = slice(None)
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        z = draw_latents(self.train.latents[index[part]], len(index), part, "sample")
        with torch.no_grad():
            target = self.autoencoder.decode(z).float()
        out = self.net(z).float()
        l1, grad = F.l1_loss(out, target), gradient_l1(out, target)
        return {"decoder": l1 + grad}, {"l1": l1.item(), "grad_l1": grad.item()}

    @torch.inference_mode()
    def _pair(self, model: nn.Module, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The full and the lightweight decoder's images of the first validation latents (posterior means)."""
        z = self.val.latents[:count, 0]
        full = self.autoencoder.decode(z).float().clamp(0, 1)
        return full, model(z).float().clamp(0, 1)

    def validate(self, model: nn.Module) -> dict[str, float]:
        """PSNR against the full decoder's images and their sharpness ratio (lightweight / full)."""
        full, lite = self._pair(model, VAL_ITEMS)
        psnr = -10 * torch.log10(F.mse_loss(lite, full).clamp(min=1e-10))
        ratio = laplacian_energy(lite).mean() / laplacian_energy(full).mean()
        return {"psnr_vs_full": psnr.item(), "sharpness_vs_full": ratio.item()}

    def preview(self, model: nn.Module, path: Path) -> None:
        """The full decoder's images above the lightweight decoder's."""
        full, lite = self._pair(model, 8)
        save_grid(torch.cat([full, lite]), path, ncols=len(full))

    def extra_state(self) -> dict[str, Any]:
        return self.extra


def check_teacher(train_cfg: TrainConfig) -> None:
    """Distillation needs what its sampler assumes: a 2D v-prediction DDPM model with guidance, or a
    rectified-flow model (2D or 3D) without guidance."""
    noise = train_cfg.diffusion.noise
    if noise.kind == "rflow":
        if train_cfg.diffusion.label_dropout > 0:
            raise SynthmedError(
                "synthmed distill distils rectified-flow models without classifier-free guidance (the 3D "
                "recipe); this one was trained with label dropout: train it with diffusion.label_dropout 0",
                field="diffusion.label_dropout",
            )
        return
    if train_cfg.data.volume is not None:
        raise SynthmedError(
            "synthmed distill distils 3D runs in their rectified-flow form; this 3D run is ddpm: train it "
            "with diffusion.noise.kind rflow (the small3d recipe)",
            field="diffusion.noise.kind",
        )
    if noise.prediction_type != "v_prediction":
        raise SynthmedError(
            f"synthmed distill needs a v-prediction DDPM model (the small64 recipe); this run is "
            f"{noise.kind} with {noise.prediction_type}: train one with diffusion.noise.prediction_type: "
            "v_prediction",
            field="diffusion.noise.prediction_type",
        )
    if train_cfg.diffusion.label_dropout <= 0:
        raise SynthmedError(
            "this run was trained without label dropout, so it has no guided teacher to distil; train with "
            "diffusion.label_dropout > 0",
            field="diffusion.label_dropout",
        )


def _check_saved(cfg: DistillConfig, resume: bool) -> None:
    """Refuse to continue a distilled stage with other settings than it was started with."""
    path = RunDir(cfg.run_dir).distilled / DISTILL_CONFIG
    if not path.exists():
        return
    saved = DistillConfig.model_validate(read_yaml(path) | {"run_dir": str(cfg.run_dir)})
    changed = _diff(saved.model_dump(mode="json"), cfg.model_dump(mode="json"))
    # Unlike a training stage, more steps cannot be added later: the rounds after a longer one would keep
    # students distilled from its shorter version.
    changed += ["steps"] if saved.steps != cfg.steps else []
    if changed:
        fix = "resume with the saved settings" if resume else "delete the distilled folder to start again"
        raise SynthmedError(f"the distilled stage was started with other {sorted(changed)}; {fix}", path=path)


def distill(
    cfg: DistillConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[str, int, int], None] | None = None,
) -> list[int]:
    """Run every round that is not finished; returns the step counts of the students now in the run."""
    run = RunDir(cfg.run_dir)
    if not run.is_trained():
        raise SynthmedError(
            "not a trained run (no config.yaml or diffusion/model.pt); train it with synthmed train first",
            path=cfg.run_dir,
        )
    train_cfg = read_run_config(cfg.run_dir)
    check_teacher(train_cfg)
    _check_saved(cfg, resume)
    set_threads(train_cfg.runtime.num_threads)
    device = resolve_device(train_cfg.runtime.device)
    teacher_sha = file_sha256(run.weights("diffusion"))
    flow = train_cfg.diffusion.noise.kind == "rflow"
    rounds = flow_rounds(cfg) if flow else cfg.round_steps()
    ae_sha = file_sha256(run.weights("autoencoder"))
    decoder_done = _decoder_done(cfg, train_cfg, run, ae_sha)
    if decoder_done and all(_round_done(run.student(n), cfg.steps, teacher_sha) for n in rounds):
        console.print(f"distilled: students of {rounds} steps already trained, skipped")
        return run.distilled_steps()
    run.distilled.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg.model_copy(update={"run_dir": Path(".")}), run.distilled / DISTILL_CONFIG)
    data = load_training_data(train_cfg, device)
    autoencoder, train, val, _ = _latent_sets(train_cfg, data, device)
    meta = run.metadata()
    extra = {
        "teacher_sha256": teacher_sha,
        "teacher_steps": cfg.teacher_steps,
        "guidance_range": [1.0, 1.0] if flow else list(cfg.guidance_range),
        "null_label": len(meta.class_names),
        "scale_factor": meta.scale_factor,
    }

    def decode(z: torch.Tensor) -> torch.Tensor:
        return autoencoder.decode(z).float().clamp(0, 1)

    dtype = resolve_precision(cfg.precision or train_cfg.runtime.precision, device)

    def fit(task: Task, stage: StageConfig, folder: Path) -> None:
        trainer = Trainer(
            task,
            stage,
            folder,
            seed=train_cfg.seed,
            device=device,
            dtype=dtype,
            progress=progress,
            on_step=on_step,
        )
        trainer.run(resume=resume)

    control = _label_control(train_cfg, meta, device) if flow else None
    teacher: nn.Module = load_unet(train_cfg, meta, device)
    for k, steps in enumerate(rounds):
        folder = run.student(steps)
        if not _round_done(folder, cfg.steps, teacher_sha):
            torch.manual_seed(train_cfg.seed)
            task: Task
            if flow:
                student = copy.deepcopy(teacher).to(device)
                task = FlowDistillTask(
                    steps, teacher, student, (train, val), train_cfg, decode, extra, control
                )
            else:
                student = student_from_teacher(teacher) if k == 0 else copy.deepcopy(teacher)
                kind: Kind = "guidance" if k == 0 else "halving"
                task = DistillTask(
                    cfg, kind, steps, teacher, student.to(device), (train, val), train_cfg, decode, extra
                )
            fit(task, cfg, folder)
        else:
            console.print(f"distilled: the {steps}-step student is already trained, skipped")
        teacher, _ = load_student(train_cfg, meta, folder / "model.pt", device)
    if not decoder_done:
        _distil_decoder(cfg, train_cfg, autoencoder, (train, val), ae_sha, fit)
    return run.distilled_steps()


def _decoder_done(cfg: DistillConfig, train_cfg: TrainConfig, run: RunDir, ae_sha: str) -> bool:
    """Whether the lightweight decoder is made or not asked for (3D runs have none: said so)."""
    if not cfg.decoder_steps:
        return True
    if train_cfg.data.volume is not None:
        console.print("distilled: no lightweight decoder for 3D runs (2D only); decoder_steps ignored")
        return True
    return _round_done(run.lite_decoder, cfg.decoder_steps, ae_sha)


def _label_control(train_cfg: TrainConfig, meta: RunMetadata, device: torch.device) -> LabelControl | None:
    """The run's label-map ControlNet (3D) for the rectified-flow rounds to keep attached; None without."""
    if train_cfg.data.volume is None or "mask" not in meta.controlnets:
        return None
    cn = meta.controlnets["mask"]
    model = load_controlnet(train_cfg, meta, "mask", device)
    return LabelControl(model, cn.num_labels, cn.encoding, train_cfg.control_stretch)


def _distil_decoder(
    cfg: DistillConfig,
    train_cfg: TrainConfig,
    autoencoder: Autoencoder,
    data: tuple[LatentSet, LatentSet],
    ae_sha: str,
    fit: Callable[[Task, StageConfig, Path], None],
) -> None:
    """The lightweight decoder's round (``distilled/decoder/``), a trainer stage like the students'."""
    with torch.inference_mode():
        out_channels = autoencoder.decode(data[1].latents[:1, 0]).shape[1]
    torch.manual_seed(train_cfg.seed)
    device = data[1].latents.device
    arch, latents = train_cfg.autoencoder.arch, train_cfg.latent_channels
    patch = train_cfg.diffusion.latent_patch
    lite = build_lite_decoder(arch, cfg.decoder_width, out_channels, latents, patch=patch).to(device)
    extra = {
        "teacher_sha256": ae_sha,
        "width": cfg.decoder_width,
        "out_channels": out_channels,
        "round": "decoder",
    }
    stage = cfg.model_copy(update={"steps": cfg.decoder_steps, "lr": cfg.decoder_lr})
    fit(DecoderTask(lite, autoencoder, data, extra), stage, RunDir(cfg.run_dir).lite_decoder)


def _round_done(folder: Path, steps: int, teacher_sha: str) -> bool:
    """A round is done when it exported weights for ``steps`` optimiser steps of today's teacher (for the
    lightweight decoder: of today's autoencoder)."""
    path = folder / "model.pt"
    if not path.is_file():
        return False
    state = ckpt.load(path)
    if state["extra"].get("teacher_sha256") != teacher_sha:
        raise SynthmedError(
            "the distilled stage was made from other weights than the run holds now; delete the distilled "
            "folder and run synthmed distill again",
            path=path,
        )
    return int(state["step"]) >= steps
