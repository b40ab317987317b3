"""One trainer for every stage: optimisers, EMA, mixed precision, checkpoints, exact resume, logs, previews.

A stage is a :class:`Task` (autoencoder, diffusion, later ControlNet and 3D); the trainer owns the loop.
All randomness of step ``k`` is drawn from generators seeded with ``(seed, k)`` and the data order of an
epoch from ``(seed, epoch)``, so a run resumed from a checkpoint replays exactly the steps it would have
taken uninterrupted.

Under torchrun (several processes) every rank computes the same global batch of step ``k`` and the same
random numbers for it, and trains on its own contiguous part of it; the stage's network is wrapped in
DistributedDataParallel, which averages the gradients, so one step equals a single-process step on the
global batch (up to floating-point summation order). Rank 0 alone writes checkpoints, logs and previews.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from synthmed import runtime
from synthmed.artifacts import checkpoint as ckpt
from synthmed.config import StageConfig
from synthmed.errors import SynthmedError
from synthmed.models.builders import use_sdpa
from synthmed.progress import progress_bar
from synthmed.runtime import autocast, step_seed
from synthmed.training.rng import rng_state, set_rng_state


class Task(Protocol):
    """What a training stage provides to the trainer."""

    name: str
    # What losses() calls for the network's forward pass: ``model`` or a module holding it. Under torchrun
    # the trainer replaces it by its DistributedDataParallel wrapper.
    net: nn.Module
    num_items: int  # training items; the trainer draws index batches from range(num_items)

    @property
    def model(self) -> nn.Module:
        """The network whose EMA is kept and exported."""

    def trainables(self) -> dict[str, nn.Module]:
        """Modules with one optimiser each; losses() returns a loss per key (backward in this order)."""

    def losses(
        self, index: torch.Tensor, step: int, part: slice
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Losses to optimise and scalars to log for training items ``index[part]``: ``index`` is the global
        batch of the step and ``part`` this process's share of it (all of it without torchrun). Random
        numbers are drawn for the whole global batch and sliced, so the processes together see the numbers
        of a single-process step."""

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Deterministic validation metrics for ``model`` (the EMA copy)."""

    def preview(self, model: nn.Module, path: Path) -> None:
        """Write a preview image grid for ``model`` to ``path``."""

    def extra_state(self) -> dict[str, Any]:
        """Task state beyond the weights (e.g. the latent scale factor), saved with every checkpoint."""


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of step ``step``: epochs are seeded permutations; the incomplete tail batch is dropped."""
    batch_size = min(batch_size, num_items)
    per_epoch = num_items // batch_size
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_items)
    return torch.from_numpy(perm[pos * batch_size : (pos + 1) * batch_size])


def ema_with_warmup(decay: float):
    """EMA whose decay ramps up as min(decay, (1 + n) / (10 + n)) (diffusers' EMAModel warm-up).

    torch's get_ema_multi_avg_fn uses a fixed decay, which leaves the average dominated by the random
    initial weights for the first ~1/(1 - decay) steps: useless for short CPU runs.
    """

    def update(
        ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor
    ) -> None:
        n = float(num_averaged)
        torch._foreach_lerp_(ema_params, params, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return update


def lr_factor(cfg: StageConfig):
    """Linear warm-up, then a constant lr or a cosine decay to ``lr_final`` x lr at the last step."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_decay == "none":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.lr_final + (1.0 - cfg.lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class Trainer:
    def __init__(
        self,
        task: Task,
        cfg: StageConfig,
        stage_dir: Path,
        *,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        progress: bool = True,
        tensorboard: bool = False,
        on_step: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.task, self.cfg, self.dir, self.seed = task, cfg, Path(stage_dir), seed
        self.device, self.dtype = device, dtype
        self.world, self.main = runtime.world_size(), runtime.is_main()
        self.show_progress = progress and self.main
        self.part = self._shard()
        for module in task.trainables().values():
            use_sdpa(module, device)
            if self.world > 1 and device.type == "cuda":  # discriminator BatchNorm: global batch statistics
                nn.SyncBatchNorm.convert_sync_batchnorm(module)
        scale = getattr(task, "lr_scale", {})  # per-module lr multiples (the autoencoder's discriminator)
        self.optimizers = {
            name: torch.optim.AdamW(
                module.parameters(), lr=cfg.lr * scale.get(name, 1.0), weight_decay=cfg.weight_decay
            )
            for name, module in task.trainables().items()
        }
        self.lr_schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
            for name, opt in self.optimizers.items()
        }
        # GradScaler is only needed (and only enabled) for fp16 on CUDA.
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=dtype == torch.float16 and device.type == "cuda"
        )
        self.ema = AveragedModel(task.model, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True)
        self.step = 0
        self.tb = _tensorboard(self.dir) if tensorboard and self.main else None
        self.on_step = on_step  # called as on_step(stage, step, steps) after every step (a job's progress)
        self.average_by_hand: list[str] = []
        if self.world > 1:
            self._distribute()

    # --- several processes -------------------------------------------------------------------------------
    def _shard(self) -> slice:
        """This rank's part of every global batch (the config's batch_size, or all items if fewer)."""
        global_batch = min(self.cfg.batch_size, self.task.num_items)
        field = f"{self.task.name.split('-')[0]}.batch_size"
        if global_batch % self.world:
            fewer = f" (all {global_batch} training items)" if global_batch < self.cfg.batch_size else ""
            raise SynthmedError(
                f"the global batch of {global_batch}{fewer} does not divide among the {self.world} torchrun "
                "processes, which each take an equal part of it; choose a multiple of the process count",
                field=field,
            )
        per = global_batch // self.world
        return slice(runtime.rank() * per, (runtime.rank() + 1) * per)

    def _distribute(self) -> None:
        """Wrap the task's network in DistributedDataParallel (gradients averaged during backward).

        A trainable outside that forward, the autoencoder's PatchGAN discriminator, has its gradients averaged
        by hand after its backward instead: it runs three times per step, once inside the autoencoder's loss
        graph, which DDP's one-forward-one-backward bookkeeping cannot follow.
        """
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.task.net = DistributedDataParallel(self.task.net, device_ids=ids)
        wrapped = {id(p) for p in self.task.net.parameters()}
        self.average_by_hand = [
            name
            for name, module in self.task.trainables().items()
            if any(p.requires_grad and id(p) not in wrapped for p in module.parameters())
        ]

    def _average_gradients(self, module: nn.Module) -> None:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for g, new in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(new.view_as(g))

    def _reported(self, losses: dict[str, torch.Tensor], logs: dict[str, float]) -> dict[str, float]:
        """The step's losses and logged scalars, averaged over the ranks: those of the global batch."""
        row = {f"loss_{k}": v.detach().float() for k, v in losses.items()}
        if self.world == 1:
            return {k: v.item() for k, v in row.items()} | logs
        keys = [*row, *logs]
        values = torch.stack([*row.values(), *(torch.tensor(float(v)) for v in logs.values())])
        values = values.to(self.device, torch.float64)
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world).tolist(), strict=True))

    # --- checkpoints -------------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.dir / "last.pt"

    @property
    def model_path(self) -> Path:
        return self.dir / "model.pt"

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "models": {n: m.state_dict() for n, m in self.task.trainables().items()},
            "ema": self.ema.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "lr_schedulers": {n: s.state_dict() for n, s in self.lr_schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "extra": self.task.extra_state(),
        }

    def save_checkpoint(self) -> None:
        if not self.main:
            return
        state = self._state()
        ckpt.atomic_save(state, self.last_path)
        ckpt.atomic_save(state, self.dir / f"step_{self.step:07d}.pt")
        periodic = sorted(self.dir.glob("step_*.pt"))
        for old in periodic[: -self.cfg.keep_checkpoints]:
            old.unlink()

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        state = ckpt.load(path, self.device)
        try:
            for name, module in self.task.trainables().items():
                module.load_state_dict(state["models"][name])
            self.ema.load_state_dict(state["ema"])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            for name, sched in self.lr_schedulers.items():
                sched.load_state_dict(state["lr_schedulers"][name])
        except (KeyError, RuntimeError) as exc:
            raise SynthmedError(
                f"checkpoint does not match this config's model ({exc}); resume with the run's own "
                "config.yaml or start a new run_dir",
                path=path,
            ) from exc
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        return state

    def export(self) -> Path:
        """Weights for generation: EMA and raw copies of the main model, written atomically (by rank 0)."""
        if not self.main:
            return self.model_path
        ema_weights = self.ema.module.state_dict()
        ckpt.atomic_save(
            {
                "step": self.step,
                "ema": ema_weights,
                "raw": self.task.model.state_dict(),
                "extra": self.task.extra_state(),
            },
            self.model_path,
        )
        return self.model_path

    # --- logging -----------------------------------------------------------------------------------------
    def _log(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self.tb.add_scalar(f"{self.task.name}/{key}", value, row["step"])

    def _clean_after_kill(self) -> None:
        """Drop log rows of the killed run's lost steps (and a half-written line) and stale temp files."""
        for tmp in self.dir.glob(".*.tmp*"):
            tmp.unlink()
        log = self.dir / "log.jsonl"
        if log.exists():
            kept = [ln for ln in log.read_text().splitlines() if _row_step(ln) <= self.step]
            log.write_text("".join(r + "\n" for r in kept))

    def _evaluate(self) -> None:
        if not self.main:  # the others go on: the next step's gradient all-reduce waits for rank 0
            return
        self.ema.module.eval()
        metrics = self.task.validate(self.ema.module)
        self.task.preview(self.ema.module, self.dir / "previews" / f"step_{self.step:07d}.png")
        self._log({"step": self.step, **{f"val_{k}": v for k, v in metrics.items()}})

    # --- the loop ----------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        torch.manual_seed(step_seed(self.seed, self.step))  # dropout, timesteps, noise of this step
        for module in self.task.trainables().values():
            module.train()
        index = batch_indices(self.task.num_items, self.cfg.batch_size, self.seed, self.step)
        with autocast(self.device, self.dtype):
            losses, logs = self.task.losses(index, self.step, self.part)
        reported = self._reported(losses, logs)
        for name, loss in losses.items():
            if not math.isfinite(reported[f"loss_{name}"]):  # the same verdict on every rank
                raise SynthmedError(
                    f"{name} loss became {reported[f'loss_{name}']} at step {self.step}; lower lr or check "
                    "the data (last good checkpoint kept)",
                    field=f"{self.task.name}.lr",
                )
            opt = self.optimizers[name]
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if name in self.average_by_hand:
                self._average_gradients(self.task.trainables()[name])
            if self.cfg.grad_clip:
                self.scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(self.task.trainables()[name].parameters(), self.cfg.grad_clip)
            self.scaler.step(opt)
            self.lr_schedulers[name].step()
        self.scaler.update()
        self.ema.update_parameters(self.task.model)
        self.step += 1
        return reported

    def run(self, resume: bool = False) -> Path:
        """Train to ``cfg.steps``, checkpointing on the way; returns the exported weights' path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.last_path.exists():
            if not resume:
                raise SynthmedError(
                    "this stage already has a checkpoint; pass --resume to continue it, or use a new run_dir",
                    path=self.last_path,
                )
            self.load_checkpoint(self.last_path)  # every rank
            if self.main:
                self._clean_after_kill()
        total = self.cfg.steps
        with progress_bar(self.task.name, total, completed=self.step, enabled=self.show_progress) as bar:
            t0, done = time.perf_counter(), 0
            while self.step < total:
                logs = self.train_step()
                done += 1
                rate = done / (time.perf_counter() - t0)
                loss_txt = " ".join(f"{k[5:]}={v:.4f}" for k, v in logs.items() if k.startswith("loss_"))
                bar.show(self.step, loss_txt)
                if self.step % self.cfg.log_every == 0 or self.step == total:
                    lr = self.lr_schedulers[next(iter(self.lr_schedulers))].get_last_lr()[0]
                    self._log({"step": self.step, **logs, "lr": lr, "steps_per_s": rate})
                if self.step % self.cfg.checkpoint_every == 0 and self.step < total:
                    self.save_checkpoint()
                if self.step % self.cfg.preview_every == 0 or self.step == total:
                    self._evaluate()
                if self.on_step is not None:  # after the checkpoint: a job stopped here resumes from it
                    self.on_step(self.task.name, self.step, total)
        self.save_checkpoint()
        path = self.export()
        runtime.barrier()  # the next stage reads model.pt on every rank
        return path


def _row_step(line: str) -> float:
    """Step of a log row; a line cut short by a kill counts as past every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def _tensorboard(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise SynthmedError(
            "runtime.tensorboard is on but tensorboard is not installed; pip install 'synthmed[tensorboard]'",
            field="runtime.tensorboard",
        ) from exc
    return SummaryWriter(str(log_dir / "tensorboard"))
