"""``python -m benchmarks.run training``: training throughput of synthmed's trainer against MONAI's tutorial
recipe, on the same networks, initial weights, batch sizes and data (the 64 px chest X-ray run of train64,
whose data cache and trained autoencoder it reuses; run train64 first).

- Diffusion stage. synthmed: the class-conditional UNet on latents encoded once and cached (each step
  samples z from the cached mean and sigma), bf16 autocast, one AdamW step with gradient clipping and EMA.
  Baseline: the MONAI latent diffusion tutorial loop: ``LatentDiffusionInferer`` encodes every batch through
  the frozen autoencoder, fp32, Adam, MSE to the noise.
- Autoencoder stage. synthmed: its autoencoder task (L1 + KL, the small64 preset has no adversarial
  term) under bf16 autocast with EMA. Baseline: the tutorial loop with the same losses in fp32.

Per stage and path: steps/s and images/s over ``--steps`` timed steps after ``--warmup`` steps, peak memory
added by the steps (warm-up included: that is when buffers are allocated), FLOPs of one training step
(forward and backward, ``torch.utils.flop_counter``) and the achieved FLOP/s as a fraction of the bf16
matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.measure import PeakMemory, matmul_peak, timed
from synthmed.config import build_train_config, read_yaml
from synthmed.runtime import resolve_device, resolve_precision
from synthmed.training.run import _stage_task, _trainer, load_training_data
from synthmed.training.tasks import kl_loss


def measure_steps(
    step: Callable[[], object], args: argparse.Namespace, device: torch.device, batch: int
) -> dict:
    with PeakMemory(device) as memory:  # from before the first step: its buffers are the working memory
        for _ in range(args.warmup):
            step()
        seconds = timed(lambda: [step() for _ in range(args.steps)], device)
    with FlopCounterMode(display=False) as counter:
        step()
    rate = args.steps / seconds
    return {
        "steps_per_s": round(rate, 3),
        "images_per_s": round(rate * batch, 1),
        "peak_mib": memory.mib,
        "gflop_per_step": round(counter.get_total_flops() / 1e9, 1),
        "achieved_tflop_s": round(counter.get_total_flops() * rate / 1e12, 4),
    }


def _diffusion_baseline(task, images: torch.Tensor, labels: torch.Tensor, cfg) -> Callable:
    """One step of MONAI's latent diffusion tutorial: encode the batch, noise it, predict the noise, fp32."""
    from monai.inferers import LatentDiffusionInferer

    unet = _fresh_copy(task.model)
    optimizer = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
    inferer = LatentDiffusionInferer(task.scheduler, scale_factor=task.scale_factor)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        index = torch.randint(0, len(images), (cfg.batch_size,), generator=g)
        x, y = images[index], labels[index]
        optimizer.zero_grad(set_to_none=True)
        noise = torch.randn((len(x), *task.train.latents.shape[2:]))
        t = torch.randint(0, task.scheduler.num_train_timesteps, (len(x),))
        # The inferer passes conditioning only as cross-attention context: bind the class labels here.
        pred = inferer(
            inputs=x,
            autoencoder_model=task.autoencoder,
            diffusion_model=functools.partial(unet, class_labels=y),
            noise=noise,
            timesteps=t,
        )
        F.mse_loss(pred.float(), noise.float()).backward()
        optimizer.step()

    return step


def _autoencoder_baseline(task, images: torch.Tensor, cfg) -> Callable:
    """One step of the tutorial's autoencoder loop (L1 + KL; no adversarial term, as in small64), fp32."""
    model = _fresh_copy(task.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        x = images[torch.randint(0, len(images), (cfg.batch_size,), generator=g)]
        optimizer.zero_grad(set_to_none=True)
        recon, z_mu, z_sigma = model(x)
        (F.l1_loss(recon, x) + cfg.kl_weight * kl_loss(z_mu, z_sigma)).backward()
        optimizer.step()

    return step


def _fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with the same initial weights, so both paths start alike."""
    import copy

    return copy.deepcopy(model).train()


def run(args: argparse.Namespace) -> dict:
    run_dir = Path(args.run_dir)
    if not (run_dir / "autoencoder" / "model.pt").is_file():
        raise SystemExit(
            f"{run_dir} has no trained autoencoder: run `python -m benchmarks.run train64` first"
        )
    cfg = build_train_config(read_yaml(run_dir / "config.yaml") | {"run_dir": str(run_dir)})
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    data = load_training_data(cfg, device)  # the run's cached, preprocessed images
    results: dict = {"precision": {"synthmed": str(dtype).removeprefix("torch."), "baseline": "float32"}}
    with tempfile.TemporaryDirectory() as scratch:
        runtime = cfg.runtime.model_copy(update={"precision": args.precision, "device": args.device})
        scratch_cfg = cfg.model_copy(update={"run_dir": Path(scratch), "runtime": runtime})
        for stage in ("autoencoder", "diffusion"):
            # Trainers write checkpoints into a scratch run; the task reads the real run's latent cache.
            task = _stage_task(cfg, stage, data, device)
            stage_cfg = getattr(cfg, stage)
            trainer = _trainer(task, stage_cfg, scratch_cfg, device, progress=False)
            if stage == "autoencoder":
                baseline = _autoencoder_baseline(task, data.train_images, stage_cfg)
            else:
                baseline = _diffusion_baseline(task, data.train_images, data.train_labels, stage_cfg)
            synthmed = measure_steps(trainer.train_step, args, device, stage_cfg.batch_size)
            base = measure_steps(baseline, args, device, stage_cfg.batch_size)
            results[stage] = {
                "batch": stage_cfg.batch_size,
                "synthmed": synthmed,
                "monai_tutorial_fp32": base,
                "speedup": round(synthmed["steps_per_s"] / base["steps_per_s"], 2),
            }
            print(stage, results[stage], flush=True)
    peak = matmul_peak(torch.bfloat16, device)
    results["bf16_matmul_peak_tflop_s"] = round(peak / 1e12, 3)
    for stage in ("autoencoder", "diffusion"):
        for path in ("synthmed", "monai_tutorial_fp32"):
            row = results[stage][path]
            row["fraction_of_bf16_peak"] = round(row["achieved_tflop_s"] * 1e12 / peak, 4)
    results["threads"] = torch.get_num_threads()
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/bench-train64", help="a train64 run (64 px Kermany)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per stage and path")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"], help="synthmed's path")
