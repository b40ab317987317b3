"""What a trained run accepts when sampling, from its config and class names alone: labels, guidance, sizes,
samplers. The Pipeline checks its requests with these rules; the web app's form checks with them, without
loading any weights, that generation would accept what it sends."""

from __future__ import annotations

from dataclasses import dataclass

from synthmed.artifacts.run import RunDir
from synthmed.config import TrainConfig
from synthmed.errors import SynthmedError
from synthmed.models.builders import DISTILLED, SAMPLERS_FOR


@dataclass(eq=False)  # a Pipeline is one; pipelines compare and hash by identity
class RunRules:
    cfg: TrainConfig
    class_names: list[str]

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
        factors = self.cfg.latent_factors
        unet = 2 ** (len(self.cfg.diffusion.arch.channels) - 1)
        divisors = tuple(f * unet for f in factors)
        if any(s % d for s, d in zip(size, divisors, strict=True)):
            need = divisors[0] if len(set(divisors)) == 1 else divisors
            what = "every side" if len(set(divisors)) == 1 else "the sides"
            raise SynthmedError(
                f"size {tuple(size)}: {what} must be a multiple of {need} for this model", field="size"
            )
        latent = (s // f for s, f in zip(size, factors, strict=True))
        return (self.cfg.latent_channels, *latent)

    @property
    def samplers(self) -> tuple[str, ...]:
        """The noise process's samplers (the first is the default), then ``distilled`` if the run has a
        distilled stage."""
        return run_samplers(self.cfg)

    def distilled_steps(self) -> list[int]:
        return RunDir(self.cfg.run_dir).distilled_steps()

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


def run_samplers(cfg: TrainConfig) -> tuple[str, ...]:
    own = SAMPLERS_FOR[cfg.diffusion.noise.kind]
    return (*own, DISTILLED) if RunDir(cfg.run_dir).distilled_steps() else own


def check_distilled_steps(available: list[int], steps: int, run_dir: object) -> None:
    """``steps`` must be one a distilled student was trained for."""
    if not available:
        raise SynthmedError(
            f"this run has no distilled stage; add one with synthmed distill --run {run_dir}", field="sampler"
        )
    if steps not in available:
        raise SynthmedError(
            f"no distilled student samples in {steps} steps; this run has students for {available} steps "
            "(--steps)",
            field="steps",
        )


def check_counts(n: int, steps: int, batch_size: int) -> None:
    if n <= 0:
        raise SynthmedError(f"count must be at least 1, got {n}", field="count")
    if steps <= 0:
        raise SynthmedError(f"steps must be at least 1, got {steps}", field="steps")
    if batch_size <= 0:
        raise SynthmedError(f"batch_size must be at least 1, got {batch_size}", field="batch_size")
