"""Build MONAI networks and noise schedulers from synthmed config objects."""

from __future__ import annotations

import torch
from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi
from monai.networks.blocks import CrossAttentionBlock, SABlock
from monai.networks.nets import AutoencoderKL, ControlNet, DiffusionModelUNet, PatchDiscriminator
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler, RFlowScheduler
from torch import nn

from synthmed.config import AutoencoderArch, ControlNetConfig, NoiseConfig, UNetArch
from synthmed.errors import SynthmedError
from synthmed.models.solvers import DiffusersSolver

# The first sampler of a kind is its default. ddim at 25 steps: on the 64 px chest X-ray model, ancestral
# ddpm at 10 steps (the FID-only choice before) kept recall at 0.46, ddim 25 reached 0.88 with FID alike
# (issue 16's measurements; benchmarks/sampling.py, docs/performance.md).
SAMPLERS_FOR = {"ddpm": ("ddim", "ddpm", "dpmsolver", "unipc", "pndm"), "rflow": ("rflow",)}
DEFAULT_STEPS = {"ddpm": 10, "rflow": 30, "distilled": 4}  # any other sampler: 25
#: A run's distilled students (synthmed distill), offered beside the samplers of its noise process.
DISTILLED = "distilled"
#: What denoising runs with: MONAI's schedulers, or diffusers' solvers on the betas the model was trained on.
Sampler = DDPMScheduler | DDIMScheduler | PNDMScheduler | RFlowScheduler | DiffusersSolver


def default_steps(sampler: str) -> int:
    return DEFAULT_STEPS.get(sampler, 25)


def build_autoencoder(arch: AutoencoderArch, spatial_dims: int = 2, channels: int = 1) -> AutoencoderKL:
    return AutoencoderKL(
        spatial_dims=spatial_dims,
        in_channels=channels,
        out_channels=channels,
        channels=tuple(arch.channels),
        num_res_blocks=(arch.num_res_blocks,) * len(arch.channels),
        attention_levels=tuple(arch.attention_levels),
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.norm_num_groups,
        with_encoder_nonlocal_attn=arch.with_nonlocal_attn,
        with_decoder_nonlocal_attn=arch.with_nonlocal_attn,
        include_fc=False,
    )


def _unet_args(arch: UNetArch, latent_channels: int, num_classes: int, spatial_dims: int) -> dict:
    # One extra class embedding is the "no label" token used for classifier-free guidance.
    return {
        "spatial_dims": spatial_dims,
        "in_channels": latent_channels,
        "num_res_blocks": arch.num_res_blocks,
        "attention_levels": tuple(arch.attention_levels),
        "num_head_channels": arch.num_head_channels,
        "norm_num_groups": arch.norm_num_groups,
        "num_class_embeds": num_classes + 1,
        "include_fc": False,
    }


def use_sdpa(model: nn.Module, device: torch.device) -> nn.Module:
    """On CUDA, MONAI's attention blocks through ``torch.nn.functional.scaled_dot_product_attention``
    (their ``use_flash_attention`` switch; same weights, fused memory-efficient kernels). Set after building
    because the builders do not know the device; on the CPU the plain path is kept (no gain measured)."""
    if device.type == "cuda":
        for module in model.modules():
            if isinstance(module, SABlock | CrossAttentionBlock):
                module.use_flash_attention = True
    return model


class MaisiUNet(DiffusionModelUNetMaisi):
    """MONAI's MAISI UNet with a ControlNet's down-block residuals added out of place. MONAI adds them in
    place, into activations its backward pass still needs, so a UNet trained with a ControlNet attached (a
    distilled 3D student) could not backpropagate; the sums, weights and outputs are MONAI's."""

    def _apply_down_blocks(self, h, emb, context, down_block_additional_residuals):  # type: ignore[no-untyped-def]
        h, samples = super()._apply_down_blocks(h, emb, context, None)
        if down_block_additional_residuals is not None:
            samples = [s + r for s, r in zip(samples, down_block_additional_residuals, strict=True)]
        return h, samples


def build_unet(
    arch: UNetArch, latent_channels: int, num_classes: int, spatial_dims: int = 2
) -> DiffusionModelUNet | DiffusionModelUNetMaisi:
    """2D: MONAI's class-conditional UNet. 3D: MONAI's MAISI UNet, which also takes the voxel spacing."""
    args = _unet_args(arch, latent_channels, num_classes, spatial_dims)
    if spatial_dims == 3:
        return MaisiUNet(
            out_channels=latent_channels,
            num_channels=tuple(arch.channels),
            include_spacing_input=True,
            **args,
        )
    return DiffusionModelUNet(out_channels=latent_channels, channels=tuple(arch.channels), **args)


def build_controlnet(
    arch: UNetArch,
    cfg: ControlNetConfig,
    latent_channels: int,
    num_classes: int,
    cond_channels: int,
    spatial_dims: int = 3,
) -> ControlNet | ControlNetMaisi:
    """MONAI's ControlNet mirroring the UNet's encoder, on a full-resolution structure map: the MAISI one for
    the 3D (spacing-conditioned) UNet, the plain one for the 2D class-conditional UNet."""
    args = _unet_args(arch, latent_channels, num_classes, spatial_dims) | {
        "conditioning_embedding_in_channels": cond_channels,
        "conditioning_embedding_num_channels": tuple(cfg.embedding_channels),
    }
    if spatial_dims == 2:
        return ControlNet(channels=tuple(arch.channels), **args)
    # Recomputation only pays off for GPU memory on large volumes.
    return ControlNetMaisi(num_channels=tuple(arch.channels), use_checkpointing=False, **args)


def init_controlnet_from_unet(controlnet: nn.Module, unet: nn.Module) -> int:
    """Copy the UNet's weights into the ControlNet's matching layers (the ControlNet recipe); returns how many
    tensors were copied (2D: the whole encoder). The MAISI UNet concatenates a spacing embedding to the time
    embedding, so its time-projection layers have other shapes than the ControlNet's and keep their fresh
    initialisation."""
    own = controlnet.state_dict()
    same = {k: v for k, v in unet.state_dict().items() if k in own and own[k].shape == v.shape}
    controlnet.load_state_dict(same, strict=False)
    return len(same)


def build_discriminator(
    channels: int, num_layers: int, spatial_dims: int = 2, in_channels: int = 1
) -> PatchDiscriminator:
    return PatchDiscriminator(
        spatial_dims=spatial_dims,
        num_layers_d=num_layers,
        channels=channels,
        in_channels=in_channels,
        out_channels=1,
    )


def _schedule_args(noise: NoiseConfig) -> dict:
    args: dict = {
        "num_train_timesteps": noise.num_train_timesteps,
        "schedule": noise.schedule,
        "prediction_type": noise.prediction_type,
    }
    if noise.schedule != "cosine":
        args |= {"beta_start": noise.beta_start, "beta_end": noise.beta_end}
    return args


def _rflow(noise: NoiseConfig, spatial_dims: int) -> RFlowScheduler:
    return RFlowScheduler(
        num_train_timesteps=noise.num_train_timesteps,
        use_discrete_timesteps=False,
        sample_method="logit-normal",
        spatial_dim=spatial_dims,
    )


def noise_process(noise: NoiseConfig, spatial_dims: int = 2) -> DDPMScheduler | RFlowScheduler:
    """The training scheduler: MONAI's forward process (add_noise, velocity targets, rflow timesteps)."""
    if noise.kind == "rflow":
        return _rflow(noise, spatial_dims)
    return DDPMScheduler(clip_sample=False, **_schedule_args(noise))


def build_scheduler(noise: NoiseConfig, sampler: str | None = None, spatial_dims: int = 2) -> Sampler:
    """The training scheduler (``sampler=None``) or a sampler compatible with how the model was trained."""
    if sampler is None:
        return noise_process(noise, spatial_dims)
    name = sampler.lower()
    allowed = SAMPLERS_FOR[noise.kind]
    if name not in allowed:
        raise SynthmedError(
            f"sampler '{sampler}' does not fit a model trained with '{noise.kind}'; "
            f"choose one of {list(allowed)}",
            field="sampler",
        )
    if name == "rflow":
        return _rflow(noise, spatial_dims)
    args = _schedule_args(noise)
    if name in ("dpmsolver", "unipc", "ddpm"):  # diffusers, on the exact betas MONAI trained with
        return DiffusersSolver(name, DDPMScheduler(**args).betas, noise.prediction_type)
    if name == "ddim":
        return DDIMScheduler(clip_sample=False, **args)
    return PNDMScheduler(skip_prk_steps=True, **args)
