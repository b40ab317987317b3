"""Samplers from ``diffusers`` for DDPM-trained models: the high-order few-step solvers DPM-Solver++ and
UniPC, and ancestral DDPM sampling.

MONAI has no high-order solver, and its ``DDPMScheduler.step`` is right only when every training timestep
is visited (it uses the one-step beta of ``t`` and the variance to ``t - 1``): with fewer steps it gives noise
(measured: FID 107 at 50 steps where 1000 steps give 2.4). diffusers' schedulers are maintained, compute
strided steps correctly, work on plain tensors and take the trained noise schedule as ``trained_betas``, so
they are used rather than re-implemented. This adapter gives
them the MONAI scheduler interface the shared denoising loop calls (``set_timesteps``, ``timesteps``,
``step`` returning (previous sample, predicted clean sample), ``add_noise``).
"""

from __future__ import annotations

from typing import Any

import torch

#: Multistep solvers keep a history of model outputs: a step must not be repeated (no RePaint resampling).
MULTISTEP = frozenset({"pndm", "dpmsolver", "unipc"})


class DiffusersSolver:
    """``dpmsolver`` (DPM-Solver++ 2M, data prediction), ``unipc`` (UniPC, order 2) or ``ddpm`` (ancestral
    sampling, any number of steps from t = 999 down) on given betas."""

    def __init__(self, name: str, betas: torch.Tensor, prediction_type: str) -> None:
        # Imported here: diffusers takes seconds to import and only these samplers need it.
        from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

        args = {
            "num_train_timesteps": len(betas),
            "trained_betas": betas.double().numpy(),
            "prediction_type": prediction_type,
        }
        # diffusers' schedulers share set_timesteps, timesteps and step without a typed common base.
        self.inner: Any
        if name == "dpmsolver":
            self.inner = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **args)
        elif name == "unipc":
            self.inner = UniPCMultistepScheduler(solver_order=2, **args)
        elif name == "ddpm":
            self.inner = DDPMScheduler(clip_sample=False, timestep_spacing="trailing", **args)
        else:
            raise ValueError(f"unknown diffusers solver {name!r}")
        self.stochastic = name == "ddpm"
        self.prediction_type = prediction_type
        self.alphas_cumprod = torch.cumprod(1.0 - betas.double(), dim=0).float()

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.inner.set_timesteps(num_inference_steps)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.inner.timesteps

    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        x: torch.Tensor,
        generators: list[torch.Generator] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``generators``: one per batch item (diffusers draws item i's variance noise from generators[i])."""
        clean = self.predicted_clean(model_output, t, x)
        extra = {"generator": generators} if self.stochastic else {}
        return self.inner.step(model_output, t, x, **extra).prev_sample, clean

    def predicted_clean(self, model_output: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0 from the network output at ``t`` (for progress callbacks and inpainting)."""
        alpha = self.alphas_cumprod[int(t)].to(x.device)
        if self.prediction_type == "epsilon":
            return (x - (1 - alpha).sqrt() * model_output) / alpha.sqrt()
        if self.prediction_type == "v_prediction":
            return alpha.sqrt() * x - (1 - alpha).sqrt() * model_output
        return model_output

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The forward process at ``timesteps`` (N,), as MONAI's DDPM schedulers compute it."""
        alpha = self.alphas_cumprod.to(original.device)[timesteps.long()]
        alpha = alpha.reshape(-1, *([1] * (original.ndim - 1)))
        return alpha.sqrt() * original + (1 - alpha).sqrt() * noise
