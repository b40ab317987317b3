"""A reader study's settings (the admin form or a YAML file)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from synthmed.config.base import Strict


class StudyConfig(Strict):
    """A reader study: a seeded mix of real and synthetic samples shown to readers (admin form or YAML)."""

    name: str = Field(min_length=1, max_length=200)
    real_dataset: str = Field(min_length=1, description="Name of a catalogue data set of origin real.")
    synthetic_dataset: str = Field(min_length=1, description="Name of a data set of origin synthetic.")
    n_real: int = Field(gt=0, le=100_000, description="Real samples drawn with the seed.")
    n_synthetic: int = Field(gt=0, le=100_000, description="Synthetic samples drawn with the seed.")
    readers: list[str] = Field(min_length=1, description="User names of the readers (role reader).")
    kind: Literal["turing", "rating"] = Field(
        "turing", description="turing: forced choice real/synthetic + confidence; rating: Likert scales only."
    )
    likert: bool = Field(True, description="Ask realism, anatomy (and 3D slice consistency) with each item.")
    repeat_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="Fraction of items shown a second time (intra-reader consistency)."
    )
    image_size: int = Field(512, ge=64, le=2048, description="Every served image: this square, in pixels.")
    seed: int = Field(0, ge=0, description="Seed of the sample draw and of every reader's order.")

    @model_validator(mode="after")
    def _rating_needs_likert(self) -> Self:
        if self.kind == "rating" and not self.likert:
            raise ValueError("a rating study asks the Likert scales: set likert to true or kind to turing")
        if len(set(self.readers)) != len(self.readers):
            raise ValueError("readers: a user name is listed twice")
        return self
