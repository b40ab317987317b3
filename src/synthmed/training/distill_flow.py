"""Progressive distillation of a rectified-flow model (the 3D recipe: spacing-conditioned UNet, label-map
ControlNet, no classifier-free guidance).

The teacher samples with Euler steps on an evenly spaced grid from pure noise to the clean latent (MONAI's
RFlowScheduler), and the grid of 2N steps holds the grid of N. A student of N steps, initialised from its
teacher (the run's UNet for the first round, then the previous student), learns the velocity whose one Euler
step from x_t lands where the teacher's two steps land (Salimans & Ho's halving, in rectified-flow form; for
an even grid it is the mean of the teacher's two velocities). The run's ControlNet stays attached, frozen, to
teacher and student alike, with each training volume's own label map and spacing, so the student learns to
follow label maps as the teacher does: a distillation with the ControlNet attached, not a transfer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synthmed.artifacts.images import save_grid
from synthmed.config import DistillConfig, TrainConfig
from synthmed.diffusion import distilled as dd
from synthmed.models.conditioning import ConditionedUNet, Encoding
from synthmed.models.slicewise import label_control
from synthmed.training.tasks import VAL_VOLUMES, LatentSet, as_images, draw_latents, global_randn


@dataclass
class LabelControl:
    """The run's frozen label-map ControlNet and how its label maps become its input."""

    model: nn.Module
    num_labels: int
    encoding: Encoding
    stretch: int

    def maps(self, label_maps: torch.Tensor) -> torch.Tensor:
        return label_control(label_maps, self.num_labels, self.encoding, self.stretch)


class FlowDistillTask:
    """One halving round: ``student`` learns one Euler step from two of ``teacher``'s."""

    def __init__(
        self,
        steps: int,
        teacher: nn.Module,
        student: nn.Module,
        data: tuple[LatentSet, LatentSet],
        train_cfg: TrainConfig,
        decode: Callable[[torch.Tensor], torch.Tensor],
        extra: dict[str, Any],
        control: LabelControl | None,
    ) -> None:
        self.steps, self.name = steps, f"distilled-steps-{steps}"
        self.teacher = teacher.eval().requires_grad_(False)
        self.model = self.net = student
        self.train, self.val = data
        self.num_items = len(self.train.latents)
        self.T = train_cfg.diffusion.noise.num_train_timesteps
        self.latents = train_cfg.diffusion.latents
        self.scale_factor = float(extra["scale_factor"])
        self.decode, self.extra, self.control = decode, extra, control
        if control is not None:
            control.model.eval().requires_grad_(False)

    def trainables(self) -> dict[str, nn.Module]:
        return {"student": self.model}

    def _bound(self, net: nn.Module, items: LatentSet, index: torch.Tensor) -> nn.Module:
        """``net`` with items ``index``'s spacings and (with a ControlNet) label maps bound."""
        spacing = items.spacings[index] if items.spacings is not None else None
        if self.control is None or items.label_maps is None:
            return ConditionedUNet(net, spacing)
        return ConditionedUNet(net, spacing, self.control.model, self.control.maps(items.label_maps[index]))

    def _points(self, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The student's step t -> s number ``i`` and the teacher's midpoint, per item."""
        fine = dd.flow_grid(2 * self.steps, self.T).to(i.device)
        return fine[2 * i], fine[2 * i + 1], fine[2 * i + 2]

    def _noised(self, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        share = t.float().view(-1, *([1] * (z.ndim - 1))) / self.T
        return (1 - share) * z + share * noise  # MONAI RFlowScheduler.add_noise, with float timesteps

    @torch.no_grad()
    def _target(self, teacher: nn.Module, x: torch.Tensor, i: torch.Tensor, labels: torch.Tensor) -> tuple:
        """(x_t's timestep, the velocity of one step landing where the teacher's two steps land)."""
        t, mid, s = self._points(i)
        v = teacher(x, timesteps=t, class_labels=labels).float()
        x_mid, _ = dd.flow_step(v, x, t, mid, self.T)
        v = teacher(x_mid, timesteps=mid, class_labels=labels).float()
        x_s, _ = dd.flow_step(v, x_mid, mid, s, self.T)
        return t, dd.flow_two_step_target(x, x_s, t, s, self.T)

    def losses(
        self, index: torch.Tensor, step: int, part: slice = slice(None)
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        n, mine = len(index), index[part]
        z = draw_latents(self.train.latents[mine], n, part, self.latents) * self.scale_factor
        noise = global_randn(n, part, z)
        i = torch.randint(0, self.steps, (n,), device=z.device)[part]
        x = self._noised(z, noise, self._points(i)[0])
        labels = self.train.labels[mine]
        t, target = self._target(self._bound(self.teacher, self.train, mine), x, i, labels)
        pred = self._bound(self.net, self.train, mine)(x, timesteps=t, class_labels=labels).float()
        return {"student": F.mse_loss(pred, target)}, {}

    @torch.inference_mode()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Velocity error against the round's teacher at fixed noise, over every step of the round's grid."""
        index = torch.arange(min(VAL_VOLUMES, len(self.val.latents)))
        z = self.val.latents[index, 0] * self.scale_factor
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0)).to(z.device)
        i = (torch.arange(len(z)) % self.steps).to(z.device)
        x = self._noised(z, noise, self._points(i)[0])
        labels = self.val.labels[index]
        t, target = self._target(self._bound(self.teacher, self.val, index), x, i, labels)
        pred = self._bound(model, self.val, index)(x, timesteps=t, class_labels=labels).float()
        return {"v_mse": F.mse_loss(pred, target).item()}

    @torch.inference_mode()
    def preview(self, model: nn.Module, path: Path, count: int = 4) -> None:
        """Central axial slices of samples in the round's steps for the first validation label maps."""
        index = torch.arange(min(count, len(self.val.latents)))
        net = self._bound(model, self.val, index)
        labels = self.val.labels[index]
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(self.val.latents[index, 0].shape, generator=g).to(labels.device)
        z = dd.sample_flow(lambda x, t: net(x, timesteps=t, class_labels=labels), noise, self.T, self.steps)
        save_grid(as_images(self.decode(z / self.scale_factor)), path, ncols=len(index))

    def extra_state(self) -> dict[str, Any]:
        return self.extra | {"steps": self.steps, "round": "halving"}


def flow_rounds(cfg: DistillConfig) -> list[int]:
    """Students of a rectified-flow teacher: it needs no guidance round, so halving starts from the teacher
    itself at ``teacher_steps``."""
    return cfg.round_steps()[1:]
