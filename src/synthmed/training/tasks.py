"""The training stages as trainer tasks: the autoencoder and the class-conditional latent diffusion UNet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL
from monai.networks.schedulers import RFlowScheduler
from torch import nn

from synthmed.artifacts.images import save_grid
from synthmed.artifacts.run import controlnet_stage_dir
from synthmed.config import AutoencoderConfig, ControlNetConfig, DiffusionConfig
from synthmed.diffusion.sampler import denoise, initial_noise
from synthmed.evaluation.sharpness import laplacian_energy
from synthmed.evaluation.views import channels_side_by_side, view_slices
from synthmed.models.builders import (
    build_controlnet,
    build_discriminator,
    build_scheduler,
    build_unet,
    init_controlnet_from_unet,
    noise_process,
)
from synthmed.models.conditioning import ConditionedUNet, encoding_channels
from synthmed.models.local import load_local_network
from synthmed.models.slicewise import Autoencoder, label_control

VAL_ITEMS = 64  # validation batch: enough for a stable curve, cheap on a CPU
VAL_VOLUMES = 8  # 3D: full-resolution autoencoder activations of 64 volumes would take gigabytes


@dataclass
class LatentSet:
    """Encoded items of one split: (N, 2, C, *spatial) latent mean and sigma, (N,) class indices; for 3D the
    (N, 3) voxel spacings in mm and (N, 1, X, Y, Z) int64 label maps; for a 2D ControlNet the (N, 1, H, W)
    float32 structure maps it follows."""

    latents: torch.Tensor
    labels: torch.Tensor
    spacings: torch.Tensor | None = None
    label_maps: torch.Tensor | None = None
    controls: torch.Tensor | None = None


def as_images(x: torch.Tensor) -> torch.Tensor:
    """2D batches as they are; 3D volumes as their central axial slices, upright (for preview grids), the
    channels (contrasts) of each side by side as one grey image."""
    if x.ndim == 4:
        return x
    return channels_side_by_side(view_slices(x.float(), "axial", size=max(x.shape[2:4]), slices=1))


def global_randn(n: int, part: slice, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, which holds rows ``part`` of a global batch of ``n`` items.

    Under torchrun every process draws the noise of the whole global batch (same seed on every rank) and keeps
    its own rows, so N processes use exactly the numbers one process would; with one process this is
    ``torch.randn_like(like)``.
    """
    return torch.randn((n, *like.shape[1:]), dtype=like.dtype, device=like.device)[part]


def gradient_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between the finite-difference gradients of ``x`` and ``y`` along every spatial axis.

    Written by hand: MONAI has no image-gradient loss, and these are three lines of tensor slicing.
    """
    dims = range(2, x.ndim)
    return torch.stack([F.l1_loss(torch.diff(x, dim=d), torch.diff(y, dim=d)) for d in dims]).mean()


def spectral_loss(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """MSE between the Fourier amplitudes of ``x`` and ``y`` over the spatial axes (as MONAI's JukeboxLoss).

    Written here because JukeboxLoss takes ``torch.abs`` of the spectrum, whose gradient is NaN where an
    amplitude is exactly 0: measured, one such coefficient of a bf16 reconstruction at step 807 of the
    foundation autoencoder turned every weight into NaN. ``eps`` keeps the square root differentiable.
    """
    dims = tuple(range(2, x.ndim))

    def amplitude(t: torch.Tensor) -> torch.Tensor:
        f = torch.fft.rfftn(t.float(), dim=dims, norm="ortho")
        return (f.real.pow(2) + f.imag.pow(2) + eps).sqrt()

    return F.mse_loss(amplitude(x), amplitude(y))


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence to N(0, I), summed over latent elements, averaged over the batch (MONAI LDM recipe)."""
    dims = list(range(1, z_mu.ndim))
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1, dim=dims)
    return kl.mean()


class LocalPerceptualLoss(nn.Module):
    """LPIPS-style distance on a user-supplied feature network read from a local file.

    MONAI's PerceptualLoss fetches its weights from torch.hub or needs torchvision; synthmed must never
    download, so the network comes from a file: a ``torch.export`` program (``.pt2``, saved with dynamic batch
    and spatial dims) or a TorchScript module. It takes (B, 3, H, W) in [0, 1] and returns a tensor or a list
    of feature maps; channels are unit-normalised as in LPIPS, without learned layer weights.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.net = load_local_network(path, "perceptual network")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net(x.repeat(1, 3, 1, 1)), self.net(y.repeat(1, 3, 1, 1))
        fx, fy = (fx, fy) if isinstance(fx, list | tuple) else ([fx], [fy])
        dist = [
            (F.normalize(a, dim=1) - F.normalize(b, dim=1)).pow(2).sum(1).mean()
            for a, b in zip(fx, fy, strict=True)
        ]
        return torch.stack(dist).mean()


class SampledAutoencoder(nn.Module):
    """The autoencoder's training forward, as MONAI's ``AutoencoderKL.forward`` (encode, sample, decode) but
    with the sampling noise drawn for the global batch (:func:`global_randn`).

    Under torchrun the trainer wraps this module in DistributedDataParallel, which averages the gradients of
    what runs inside its wrapper's forward: the task must call the autoencoder through one forward.
    """

    def __init__(self, model: AutoencoderKL, sample: bool = True) -> None:
        super().__init__()
        self.model, self.sample = model, sample

    def forward(
        self, x: torch.Tensor, n: int, part: slice
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_mu, z_sigma = self.model.encode(x)
        z = z_mu + global_randn(n, part, z_sigma) * z_sigma if self.sample else z_mu
        return self.model.decode(z), z_mu, z_sigma


class AutoencoderTask:
    name = "autoencoder"

    def __init__(
        self, model: AutoencoderKL, cfg: AutoencoderConfig, train: torch.Tensor, val: torch.Tensor
    ) -> None:
        self.model, self.cfg, self.train, self.val = model, cfg, train, val
        self.net: nn.Module = SampledAutoencoder(model, sample=not cfg.decode_mean)
        self.num_items = len(train)
        device = train.device
        dims = train.ndim - 2
        self.disc = (
            build_discriminator(cfg.disc_channels, cfg.disc_layers, dims, train.shape[1]).to(device)
            if cfg.adv_weight
            else None
        )
        self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        self.lr_scale = {"discriminator": cfg.disc_lr_factor}
        self.perceptual = (
            LocalPerceptualLoss(cfg.perceptual_weights).to(device) if cfg.perceptual_weights else None
        )

    def trainables(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.model} | ({"discriminator": self.disc} if self.disc is not None else {})

    def losses(
        self, index: torch.Tensor, step: int, part: slice = slice(None)
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        x = self.train[index[part]]
        recon, z_mu, z_sigma = self.net(x, len(index), part)
        recon = recon.float()
        l1 = F.l1_loss(recon, x)
        kl = kl_loss(z_mu.float(), z_sigma.float())
        loss = l1 + self.cfg.kl_weight * kl
        logs = {"l1": l1.item(), "kl": kl.item()}
        if self.perceptual is not None:
            perc = self.perceptual(recon, x)
            loss = loss + self.cfg.perceptual_weight * perc
            logs["perceptual"] = perc.item()
        if self.cfg.grad_weight:
            grad = gradient_l1(recon, x)
            loss = loss + self.cfg.grad_weight * grad
            logs["grad"] = grad.item()
        if self.cfg.spectral_weight:
            spec = spectral_loss(recon, x)
            loss = loss + self.cfg.spectral_weight * spec
            logs["spectral"] = spec.item()
        if self.disc is None or step < self.cfg.adv_start - self.cfg.disc_warmup:
            return {"autoencoder": loss}, logs
        losses, adv_logs = self._adversarial(x, recon, loss, step)
        return losses, logs | adv_logs

    def _adversarial(
        self, x: torch.Tensor, recon: torch.Tensor, rec: torch.Tensor, step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The discriminator's loss and, from adv_start (before it: its warm-up), the decoder's adversarial
        term. Real and reconstructed images pass the discriminator as one batch: given a batch each, it learns
        to tell the batches apart by its BatchNorm statistics, not the images (it then scores a blurred and a
        sharp image alike, one at a time), and teaches the decoder no detail."""
        assert self.disc is not None
        n, logs, losses = len(x), {}, {"autoencoder": rec}
        if step >= self.cfg.adv_start:
            gen_adv = self.adv_loss(
                self.disc(torch.cat([x, recon]))[-1][n:], target_is_real=True, for_discriminator=False
            )
            weight = self.cfg.adv_weight * (
                self._adaptive_weight(rec, gen_adv) if self.cfg.adv_adaptive else 1.0
            )
            losses["autoencoder"] = rec + weight * gen_adv
            logs = {"adv_g": gen_adv.item(), "adv_weight": float(weight)}
        scores = self.disc(torch.cat([x, recon.detach()]))[-1]
        fake = self.adv_loss(scores[n:], target_is_real=False, for_discriminator=True)
        real = self.adv_loss(scores[:n], target_is_real=True, for_discriminator=True)
        losses["discriminator"] = self.cfg.adv_weight * 0.5 * (fake + real)
        logs |= {"d_real": scores[:n].mean().item(), "d_fake": scores[n:].mean().item()}
        return losses, logs

    def _adaptive_weight(self, rec_loss: torch.Tensor, gen_adv: torch.Tensor) -> torch.Tensor:
        """||grad of rec_loss|| / ||grad of gen_adv|| at the decoder's last layer (VQGAN, Esser et al. 2021):
        the adversarial term then pulls as hard as adv_weight x the reconstruction terms, whatever their
        scales. Written here because neither MONAI nor diffusers exposes it as a function."""
        last = cast(nn.ModuleList, self.model.decoder.blocks)[-1].get_parameter("conv.weight")
        g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(gen_adv, last, retain_graph=True)[0]
        return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(max=1e4).detach()

    @torch.inference_mode()
    def _reconstruct(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        autoencoder = cast(AutoencoderKL, model)  # the trainer hands back this task's model (or its EMA copy)
        z_mu, _ = autoencoder.encode(x)
        return autoencoder.decode(z_mu).float()

    def validate(self, model: nn.Module) -> dict[str, float]:
        x = self.val[: VAL_ITEMS if self.val.ndim == 4 else VAL_VOLUMES]
        recon = self._reconstruct(model, x)
        metrics = {"l1": F.l1_loss(recon, x).item()}
        # The blur an autoencoder adds: reconstructed / real mean |Laplacian| (3D: central axial slices)
        real, fake = as_images(x), as_images(recon.clamp(0, 1))
        metrics["sharpness"] = (laplacian_energy(fake).mean() / laplacian_energy(real).mean()).item()
        return metrics

    def preview(self, model: nn.Module, path: Path) -> None:
        x = self.val[:8]
        recon = self._reconstruct(model, x).clamp(0, 1)
        save_grid(torch.cat([as_images(x), as_images(recon)]), path, ncols=len(x))

    def extra_state(self) -> dict[str, Any]:
        return {}


@torch.inference_mode()
def encode_dataset(autoencoder: Autoencoder, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Latent (mu, sigma) of every image or volume, stacked on a new dim 1: (N, 2, C, *latent_spatial)."""
    out = []
    for i in range(0, len(images), batch_size):
        mu, sigma = autoencoder.encode(images[i : i + batch_size])
        out.append(torch.stack([mu.float(), sigma.float()], dim=1))
    return torch.cat(out)


def draw_latents(stats: torch.Tensor, n: int, part: slice, kind: str) -> torch.Tensor:
    """Clean latents of encoded items (N, 2, C, ...) of a global batch of ``n``: drawn from the posterior
    (``kind`` sample) or its mean (mean)."""
    if kind == "mean":
        return stats[:, 0]
    return stats[:, 0] + stats[:, 1] * global_randn(n, part, stats[:, 0])


def latent_scale_factor(
    latents: torch.Tensor, samples: int, seed: int, posterior_mean: bool = False
) -> float:
    """1 / std of training latents as the UNet sees them (sampled, or the posterior mean), so the diffusion
    model gets unit-variance inputs (MONAI/MAISI)."""
    g = torch.Generator().manual_seed(seed)
    sub = latents[torch.randperm(len(latents), generator=g)[:samples]].cpu()
    z = sub[:, 0] + (0.0 if posterior_mean else sub[:, 1] * torch.randn(sub[:, 0].shape, generator=g))
    return float(1.0 / z.std())


class DiffusionTask:
    """The class-conditional latent diffusion UNet (2D), or MAISI's spacing-conditioned one (3D)."""

    name = "diffusion"
    trainable = "unet"

    def __init__(
        self,
        cfg: DiffusionConfig,
        autoencoder: Autoencoder,
        train: LatentSet,
        val: LatentSet,
        class_names: list[str],
        scale_factor: float,
    ) -> None:
        self.cfg, self.autoencoder, self.class_names = cfg, autoencoder.eval(), class_names
        self.train, self.val = train, val
        self.num_items = len(train.latents)
        self.scale_factor = scale_factor
        self.null_label = len(class_names)
        self.spatial_dims = train.latents.ndim - 3
        self.unet: nn.Module = build_unet(
            cfg.arch, train.latents.shape[2], len(class_names), self.spatial_dims
        )
        self.model: nn.Module = self.unet.to(train.latents.device)
        self.net: nn.Module = self.model
        self.scheduler = noise_process(cfg.noise, self.spatial_dims)

    def denoiser(self, model: nn.Module, items: LatentSet, index: torch.Tensor) -> nn.Module:
        """``model`` as the loss and the sampler call it, with items ``index``'s spacings bound (3D)."""
        if items.spacings is None:
            return model
        return ConditionedUNet(model, spacing=items.spacings[index])

    def trainables(self) -> dict[str, nn.Module]:
        return {self.trainable: self.model}

    def _noisy(
        self, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noised input and regression target for the configured noise process and prediction type."""
        x_t = self.scheduler.add_noise(z, noise, t)
        if self.cfg.noise.kind == "rflow":
            return x_t, z - noise
        target = {"epsilon": noise, "sample": z}.get(self.cfg.noise.prediction_type)
        if target is None:
            target = self.scheduler.get_velocity(z, noise, t)
        return x_t, target

    def _timesteps(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """Training timesteps of a global batch of ``n`` latents shaped like ``z``."""
        if isinstance(self.scheduler, RFlowScheduler):
            return self.scheduler.sample_timesteps(z[:1].expand(n, *z.shape[1:]))
        return torch.randint(0, self.cfg.noise.num_train_timesteps, (n,), device=z.device)

    def losses(
        self, index: torch.Tensor, step: int, part: slice = slice(None)
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Loss on items ``index[part]`` of the global batch ``index``; the step's random numbers are drawn
        for the whole global batch and sliced (see :func:`global_randn`)."""
        n, mine = len(index), index[part]
        z = draw_latents(self.train.latents[mine], n, part, self.cfg.latents) * self.scale_factor
        noise = global_randn(n, part, z)
        t = self._timesteps(z, n)[part]
        labels = self.train.labels[mine].clone()
        labels[torch.rand(n, device=labels.device)[part] < self.cfg.label_dropout] = self.null_label
        x_t, target = self._noisy(z, noise, t)
        pred = self.denoiser(self.net, self.train, mine)(x_t, timesteps=t, class_labels=labels).float()
        if self.cfg.snr_gamma is None:
            return {self.trainable: F.mse_loss(pred, target)}, {}
        per_item = (pred - target).pow(2).flatten(1).mean(1)
        return {self.trainable: (per_item * self._min_snr_weight(t)).mean()}, {}

    def _min_snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weights (Hang et al. 2023) of timesteps ``t`` for the configured prediction type.

        Written out (three lines) because diffusers' compute_snr takes a diffusers scheduler, not MONAI's."""
        alpha_bar = self.scheduler.alphas_cumprod.to(t.device)[t]
        snr = alpha_bar / (1.0 - alpha_bar)
        clipped = snr.clamp(max=self.cfg.snr_gamma)
        divisor = {"epsilon": snr, "v_prediction": snr + 1.0, "sample": torch.ones_like(snr)}
        return clipped / divisor[self.cfg.noise.prediction_type]

    @torch.inference_mode()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """MSE at fixed noise and evenly spread timesteps on validation latents: comparable across steps."""
        g = torch.Generator().manual_seed(0)
        index = torch.arange(min(VAL_ITEMS, len(self.val.latents)))
        z = self.val.latents[index, 0] * self.scale_factor
        noise = torch.randn(z.shape, generator=g).to(z.device)
        t = torch.linspace(0, self.cfg.noise.num_train_timesteps - 1, len(z)).long().to(z.device)
        x_t, target = self._noisy(z, noise, t)
        pred = self.denoiser(model, self.val, index)(x_t, timesteps=t, class_labels=self.val.labels[index])
        return {"mse": F.mse_loss(pred.float(), target).item()}

    def _sample(self, net: nn.Module, labels: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
        """Decoded samples in [0, 1] with the stage's default sampler (DDIM, or rflow for rflow models)."""
        shape = tuple(self.val.latents.shape[2:])
        noise = initial_noise(list(range(len(labels))), shape, labels.device)
        sampler = build_scheduler(
            self.cfg.noise, "rflow" if self.cfg.noise.kind == "rflow" else "ddim", self.spatial_dims
        )
        z = denoise(net, sampler, noise, labels, null_label=self.null_label, steps=steps, guidance=guidance)
        return self.autoencoder.decode(z / self.scale_factor).float().clamp(0, 1)

    @torch.inference_mode()
    def preview(self, model: nn.Module, path: Path, per_class: int = 6, steps: int = 25) -> None:
        """One row of samples per class (25 steps, guidance 3); 3D at the first validation item's spacing."""
        labels = torch.arange(len(self.class_names)).repeat_interleave(per_class).to(self.val.labels.device)
        net = self.denoiser(model, self.val, torch.zeros(len(labels), dtype=torch.long))
        save_grid(as_images(self._sample(net, labels, steps, 3.0)), path, ncols=per_class)

    def extra_state(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"scale_factor": self.scale_factor, "class_names": self.class_names}
        if self.train.spacings is not None:  # 3D: generation's default spacing
            extra["spacing"] = self.train.spacings.median(dim=0).values.tolist()
        return extra


class ControlNetTask(DiffusionTask):
    """A ControlNet trained against the frozen diffusion UNet: on encoded 3D label maps (MAISI's second stage)
    or on 2D structure maps (masks, edges)."""

    trainable = "controlnet"

    def __init__(
        self,
        cfg: ControlNetConfig,
        diffusion_cfg: DiffusionConfig,
        autoencoder: Autoencoder,
        unet: nn.Module,
        train: LatentSet,
        val: LatentSet,
        class_names: list[str],
        scale_factor: float,
        extra: dict[str, Any],
        control_stretch: int = 1,
    ) -> None:
        """``extra`` is saved in model.pt for generation: the condition, and for 3D ``num_labels`` and the
        per-label intensity bounds of the quality check (``quality_bounds``). ``control_stretch``: label maps
        repeated along Z for slice-wise latents (``TrainConfig.control_stretch``)."""
        super().__init__(diffusion_cfg, autoencoder, train, val, class_names, scale_factor)
        self.name = controlnet_stage_dir(cfg.condition)
        self.cn_cfg, self.extra, self.control_stretch = cfg, extra, control_stretch
        self.num_labels: int = extra.get("num_labels", 2)
        self.unet = unet.eval().requires_grad_(False)
        if train.controls is not None:  # 2D: precomputed structure maps
            channels = train.controls.shape[1]
        else:
            channels = encoding_channels(self.num_labels, cfg.encoding)
        latent_channels = train.latents.shape[2]
        controlnet = build_controlnet(
            diffusion_cfg.arch, cfg, latent_channels, len(class_names), channels, self.spatial_dims
        )
        init_controlnet_from_unet(controlnet, unet)
        self.model = self.net = controlnet.to(train.latents.device)

    def control(self, items: LatentSet, index: torch.Tensor) -> torch.Tensor:
        if items.controls is not None:
            return items.controls[index]
        assert items.label_maps is not None
        return label_control(
            items.label_maps[index], self.num_labels, self.cn_cfg.encoding, self.control_stretch
        )

    def denoiser(self, model: nn.Module, items: LatentSet, index: torch.Tensor) -> nn.Module:
        spacing = items.spacings[index] if items.spacings is not None else None
        return ConditionedUNet(self.unet, spacing, controlnet=model, control=self.control(items, index))

    @torch.inference_mode()
    def preview(self, model: nn.Module, path: Path, count: int = 6, steps: int = 25) -> None:
        """Samples for the first validation maps (top row) with those maps below them."""
        index = torch.arange(min(count, len(self.val.latents)))
        guidance = 3.0 if self.cfg.label_dropout > 0 else 1.0
        images = self._sample(self.denoiser(model, self.val, index), self.val.labels[index], steps, guidance)
        if self.val.controls is not None:
            maps = self.val.controls[index, :1]
        else:
            assert self.val.label_maps is not None
            maps = self.val.label_maps[index].float() / (self.num_labels - 1)
        if images.ndim == 5:  # volumes: the map beside each contrast
            maps = maps.expand(-1, images.shape[1], *maps.shape[2:])
        shown, maps = as_images(images), as_images(maps)
        maps = maps.expand(-1, shown.shape[1], *maps.shape[2:])  # grey maps beside colour images
        save_grid(torch.cat([shown, maps]), path, ncols=len(index))

    def extra_state(self) -> dict[str, Any]:
        return super().extra_state() | self.extra | {"condition": self.cn_cfg.condition}
