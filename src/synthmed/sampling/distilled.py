"""The ``distilled`` sampler: a run's distilled students (``synthmed distill``) loaded and run for a
Pipeline. A student samples in the step count it was distilled for, one network evaluation per step with the
guidance scale as its input; the teacher's 2D ControlNets sit in front of it as in front of the teacher.
Also the run's lightweight decoder (``--decoder lite``), which stands in for the autoencoder's decoder."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.run import RunDir
from synthmed.config import TrainConfig
from synthmed.diffusion import distilled
from synthmed.diffusion.sampler import StepCallback
from synthmed.errors import SynthmedError
from synthmed.models.builders import noise_process, use_sdpa
from synthmed.models.conditioning import ConditionedUNet
from synthmed.models.distilled import BoundGuidance, load_lite_decoder, load_student
from synthmed.sampling.rules import check_distilled_steps


@dataclass
class Student:
    """A distilled student, its weights' sha256 and the guidance scales it learnt."""

    model: torch.nn.Module
    sha256: str
    guidance_range: tuple[float, float]

    def check_guidance(self, guidance: float) -> None:
        lo, hi = self.guidance_range
        if not lo <= guidance <= hi:
            raise SynthmedError(
                f"guidance {guidance} is outside the range the student was distilled for ({lo} to {hi}); "
                "choose one inside it, or distil again with a wider guidance_range",
                field="guidance",
            )


@dataclass
class Students:
    """The students of one run, each loaded when first asked for."""

    run_dir: Path
    cfg: TrainConfig
    diffusion_sha256: str  # of the teacher the Pipeline loaded: a student of other weights is refused
    device: torch.device
    checkpoint: str = "ema"
    compile: bool = False

    def __post_init__(self) -> None:
        self._loaded: dict[int, Student] = {}

    def get(self, steps: int) -> Student:
        if steps not in self._loaded:
            self._loaded[steps] = self._load(steps)
        return self._loaded[steps]

    def _load(self, steps: int) -> Student:
        run = RunDir(self.run_dir)
        check_distilled_steps(run.distilled_steps(), steps, self.run_dir)
        path = run.student(steps) / "model.pt"
        model, extra = load_student(self.cfg, run.metadata(), path, self.device, self.checkpoint)
        if extra.get("teacher_sha256") != self.diffusion_sha256:
            raise SynthmedError(
                "the distilled student was made from other diffusion weights than the run holds now; delete "
                "the distilled folder and run synthmed distill again",
                path=path,
            )
        net: torch.nn.Module = use_sdpa(model, self.device)
        if self.compile:
            net = cast(torch.nn.Module, torch.compile(net, dynamic=False))
        lo, hi = extra["guidance_range"]
        return Student(net, file_sha256(path), (float(lo), float(hi)))


@dataclass
class LiteDecoder:
    """The run's lightweight decoder and its weights' sha256."""

    model: torch.nn.Module
    sha256: str


def load_lite(
    cfg: TrainConfig, autoencoder_sha256: str, device: torch.device, checkpoint: str
) -> LiteDecoder:
    """The lightweight decoder of the run ``cfg`` belongs to; refused where there is none or it was distilled
    from other autoencoder weights than the run holds now."""
    if cfg.data.volume is not None:
        raise SynthmedError(
            "3D runs have no lightweight decoder; decode with --decoder full", field="decoder"
        )
    path = RunDir(cfg.run_dir).lite_decoder / "model.pt"
    if not path.is_file():
        raise SynthmedError(
            f"this run has no lightweight decoder; make one with synthmed distill --run {cfg.run_dir}",
            field="decoder",
        )
    model, extra = load_lite_decoder(cfg, path, device, checkpoint)
    if extra.get("teacher_sha256") != autoencoder_sha256:
        raise SynthmedError(
            "the lightweight decoder was made from other autoencoder weights than the run holds now; delete "
            "distilled/decoder and run synthmed distill again",
            path=path,
        )
    return LiteDecoder(model, file_sha256(path))


def sample(
    student: Student,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    cfg: TrainConfig,
    steps: int,
    guidance: float,
    autocast: AbstractContextManager,
    bind: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Clean latents from ``noise`` in ``steps`` student steps of a v-prediction student; ``bind`` puts a
    ControlNet in front."""
    student.check_guidance(guidance)
    net: torch.nn.Module = BoundGuidance(student.model, guidance)
    if bind is not None:
        net = bind(net)
    alphas = noise_process(cfg.diffusion.noise).alphas_cumprod

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast:
            return net(x, timesteps=t, class_labels=labels)

    return distilled.sample(predict, noise, alphas, steps, callback=callback)


def sample_flow(
    net: torch.nn.Module,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    cfg: TrainConfig,
    steps: int,
    autocast: AbstractContextManager,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Clean latents from ``noise`` in ``steps`` Euler steps of a rectified-flow student; ``net`` is the
    student with its conditioning (spacing, label-map ControlNet) bound."""

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast:
            return net(x, timesteps=t, class_labels=labels)

    T = cfg.diffusion.noise.num_train_timesteps
    return distilled.sample_flow(predict, noise, T, steps, callback=callback)


def with_controlnet(controlnet: torch.nn.Module, maps: torch.Tensor, scale: float):
    """``bind`` for :func:`sample`: the teacher's ControlNet on ``maps`` in front of the student."""
    return lambda net: ConditionedUNet(net, controlnet=controlnet, control=maps, scale=scale)
