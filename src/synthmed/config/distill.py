"""Everything ``synthmed distill`` needs: the distilled stage's rounds and optimisation settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from synthmed.config.train import StageConfig


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class DistillConfig(StageConfig):
    """Guidance distillation, then progressive distillation (Salimans & Ho 2022) by halving rounds.

    Round 1 teaches a student that takes the guidance scale as an input to match the guided teacher
    (two network evaluations per step) in one evaluation; it samples at ``teacher_steps``. Each further round
    halves the steps: a student of N steps learns one step from two of the previous student's, down to
    ``min_steps``. ``steps`` (and the other optimiser fields) apply to every round. Last, unless
    ``decoder_steps`` is 0, a lightweight decoder learns the run's autoencoder decoder (TAESD's idea), for
    ``generate --decoder lite`` when decoding costs more than the student's few steps.
    """

    run_dir: Path = Field(description="The trained run to distil (--run).")
    teacher_steps: int = Field(
        32, ge=2, le=1024, description="Steps of the guidance-distilled student, where halving starts."
    )
    min_steps: int = Field(1, ge=1, description="Fewest steps: halving stops at this student.")
    guidance_range: tuple[float, float] = Field(
        (1.0, 5.0), description="Guidance scales the student learns (drawn uniformly per item)."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = Field(
        None,
        description="Autocast of the rounds (default: the run's runtime.precision); bf16 is about twice as "
        "fast as fp32 on CPUs with AMX.",
    )
    steps: int = Field(400, ge=1, description="Optimiser steps of each round.")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    ema_decay: float = Field(0.995, ge=0.0, lt=1.0)
    decoder_steps: int = Field(
        2000, ge=0, description="Optimiser steps of the lightweight decoder (0: none is made)."
    )
    decoder_width: float = Field(
        0.5, gt=0.0, le=1.0, description="The lightweight decoder's channels as a share of the autoencoder's."
    )
    decoder_lr: float = Field(1e-3, gt=0, description="Its learning rate (it starts from scratch).")
    checkpoint_every: int = Field(100, ge=1)
    preview_every: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _halvings(self) -> DistillConfig:
        for name in ("teacher_steps", "min_steps"):
            if not _power_of_two(getattr(self, name)):
                raise ValueError(f"{name} must be a power of two (halving rounds), got {getattr(self, name)}")
        if self.min_steps > self.teacher_steps:
            raise ValueError(f"min_steps {self.min_steps} exceeds teacher_steps {self.teacher_steps}")
        lo, hi = self.guidance_range
        if not 0.0 <= lo <= hi:
            raise ValueError(f"guidance_range must be [low, high] with 0 <= low <= high, got {[lo, hi]}")
        return self

    def round_steps(self) -> list[int]:
        """Sampling steps of each round's student, first (guidance) to last."""
        out = [self.teacher_steps]
        while out[-1] > self.min_steps:
            out.append(out[-1] // 2)
        return out
