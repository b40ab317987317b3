"""The networks' architectures and the noise process, as the builders in synthmed.models take them."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from synthmed.config.base import Strict


class NetworkArch(Strict):
    """Fields and checks shared by the MONAI autoencoder and UNet constructors."""

    channels: list[int]
    num_res_blocks: int = Field(1, ge=1)
    attention_levels: list[bool]
    norm_num_groups: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check_levels(self) -> Self:
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per channels entry")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(
                f"every channel count must be divisible by norm_num_groups={self.norm_num_groups}"
            )
        return self


class AutoencoderArch(NetworkArch):
    channels: list[int] = [32, 64, 64]
    attention_levels: list[bool] = [False, False, False]
    latent_channels: int = Field(3, ge=1)
    with_nonlocal_attn: bool = False

    @model_validator(mode="after")
    def _check_depth(self) -> Self:
        if len(self.channels) not in (3, 4):
            raise ValueError("channels needs 3 levels (4x compression) or 4 levels (8x compression)")
        return self

    @property
    def compression(self) -> int:
        return 2 ** (len(self.channels) - 1)


class UNetArch(NetworkArch):
    channels: list[int] = [64, 128, 128]
    attention_levels: list[bool] = [False, True, True]
    num_head_channels: int = Field(32, ge=1)
    norm_num_groups: int = Field(32, ge=1)


class NoiseConfig(Strict):
    """The training noise process; generation builds its sampler from the same settings."""

    kind: Literal["ddpm", "rflow"] = "ddpm"
    num_train_timesteps: int = Field(1000, ge=10)
    schedule: Literal["linear_beta", "scaled_linear_beta", "cosine"] = "scaled_linear_beta"
    beta_start: float = Field(0.0015, gt=0)
    beta_end: float = Field(0.0195, gt=0)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
