"""``python -m benchmarks.run distill64``: distilled few-step generation (issue 23) against its teacher and
MONAI's DDPM-1000 recipe, all in one run on the same weights, Kermany 64 px.

- Distillation: ``synthmed distill`` on ``--run-dir`` (a trained v-prediction run, the generator issue's
  recipe) unless its students and lightweight decoder exist; its wall time is ``distill_minutes``, the sum of
  the parts timed when they were made (kept in the work folder; read back from the round logs, and said so,
  for parts made outside this benchmark).
- Rows: the teacher at its default sampler and steps (guidance 3), the students at 1, 2 and 4 steps
  (guidance 3, one network evaluation per step) with the autoencoder's decoder (``student``) and with the
  lightweight decoder (``student_lite``), and MONAI's tutorial recipe (``LatentDiffusionInferer``,
  DDPM 1000 steps, fp32, no guidance). Each: images/s with decoding (one timed batch after a warm-up;
  MONAI's from the timed generation itself), peak memory added, FID and recall (k = 5) in the in-house
  extractor's features trained on real Kermany training images, sharpness (mean |Laplacian|) as a ratio to the
  teacher's, and C2ST (linear probe on the same features, real vs generated; the real-vs-real floor beside).
- Decode cost: seconds per image of the autoencoder's decoder and of the lightweight one against one UNet
  pass at the row's batch, and the decoder's share of each row's generation time; the lightweight decoder's
  own check (PSNR and sharpness against the full decoder on validation latents) from its last validation.
- The default: the student row with the fewest steps that meets the quality targets (FID <= 1.1 x the
  teacher's, recall >= 0.95 x the teacher's, sharpness within 10% of the teacher's), the faster decoder on a
  tie; if none does, the one meeting most, then the lowest FID. ``headline`` holds its figures.

``--smoke`` trains a ``tiny`` v-prediction teacher on 16 Kermany images per class, distils it in a few steps
per round and measures everything at toy sizes: it proves the code path, not the claim, and writes
``<work-dir>/distill64_smoke.json`` (never benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.measure import PeakMemory, stepping_seconds, timed

HEADLINE = (
    "images_per_s",
    "fid",
    "teacher_fid",
    "recall",
    "teacher_recall",
    "sharpness_ratio",
    "distill_minutes",
)
STUDENT_STEPS = (1, 2, 4)
CLASSES = ("NORMAL", "PNEUMONIA")
DECODERS = ("full", "lite")
GUIDANCE = 3.0
SMOKE = {
    "images": 24,
    "batch": 8,
    "monai_images": 8,
    "teacher_steps": 4,
    "round_steps": 4,
    "distill_batch": 8,
    "decoder_steps": 4,
    "extractor_steps": 20,
    "permutations": 10,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir",
        default="runs/bench-train64",
        help="the trained teacher run (64 px Kermany, v-prediction)",
    )
    p.add_argument("--work-dir", default="runs/bench-distill64", help="caches; the smoke run's files")
    p.add_argument("--images", type=int, default=256, help="generated (and real) images per FID")
    p.add_argument("--batch", type=int, default=64, help="batch of generation and of the timed batches")
    p.add_argument("--monai-images", type=int, default=256, help="images of MONAI's DDPM-1000 row")
    p.add_argument("--teacher-steps", type=int, default=32, help="distill: the guidance student's steps")
    p.add_argument("--round-steps", type=int, default=400, help="distill: optimiser steps per round")
    p.add_argument("--distill-batch", type=int, default=32, help="distill: training batch")
    p.add_argument(
        "--decoder-steps", type=int, default=2000, help="distill: the lightweight decoder's optimiser steps"
    )
    p.add_argument(
        "--precision", default="bf16", choices=["fp32", "bf16"], help="of distillation and the synthmed rows"
    )
    p.add_argument("--extractor-steps", type=int, default=600, help="in-house extractor training steps")
    p.add_argument("--permutations", type=int, default=200, help="C2ST probe permutation test")
    p.add_argument("--smoke", action="store_true", help="toy sizes: proves the code path, not the claim")


def _sizes(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**(vars(args) | (SMOKE if args.smoke else {})))


def _smoke_teacher(work: Path, data: Path) -> Path:
    """A ``tiny`` v-prediction teacher on 16 real Kermany images per class (seconds on a CPU)."""
    from synthmed.config import build_train_config
    from synthmed.training.run import train

    images = work / "kermany16"
    if not images.is_dir():
        for cls in CLASSES:
            (images / cls).mkdir(parents=True)
            for src in sorted((data / "cxr-kermany" / "train" / cls).glob("*.jpeg"))[:16]:
                shutil.copy(src, images / cls / src.name)
    values = {
        "preset": "tiny",
        "run_dir": str(work / "teacher"),
        "data": {"source": str(images)},
        "autoencoder": {"steps": 40},
        "diffusion": {"steps": 60, "noise": {"prediction_type": "v_prediction"}, "snr_gamma": 5.0},
    }
    return train(build_train_config(values), progress=False)


def _distill(run_dir: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The students and lightweight decoder of the run (made now where missing) and the distillation's wall
    time: each part's minutes as timed when it was made in this benchmark, else from its logs."""
    from synthmed.artifacts.files import file_sha256
    from synthmed.artifacts.run import RunDir
    from synthmed.config import DistillConfig
    from synthmed.training.distill import distill

    run = RunDir(run_dir)
    record = work / f"distill-{file_sha256(run.weights('diffusion'))[:16]}.json"
    parts: dict[str, Any] = json.loads(record.read_text()) if record.is_file() else {}
    cfg = DistillConfig(
        run_dir=run_dir,
        teacher_steps=args.teacher_steps,
        steps=args.round_steps,
        decoder_steps=args.decoder_steps,
        batch_size=args.distill_batch,
        precision=args.precision,
    )
    had = {"students": bool(run.distilled_steps()), "decoder": (run.lite_decoder / "model.pt").is_file()}
    t0 = time.perf_counter()
    students = distill(cfg, resume=True, progress=not args.smoke)
    minutes = round((time.perf_counter() - t0) / 60, 2)
    made = [k for k, v in had.items() if not v]
    if made:
        parts["+".join(made)] = {"minutes": minutes, "source": "timed in this benchmark"}
    for part in [k for k, v in had.items() if v and not any(k in key.split("+") for key in parts)]:
        parts[part] = {"minutes": minutes_from_logs(run, part), "source": "its logs (made before)"}
    record.write_text(json.dumps(parts))
    total = round(sum(p["minutes"] for p in parts.values()), 2)
    return {
        "distill_minutes": total,
        "parts": parts,
        "students": students,
        "config": cfg.model_dump(mode="json"),
    }


def minutes_from_logs(run, part: str) -> float:
    """Training time of the students' rounds (or the lightweight decoder) from their logs: steps over the last
    logged steps/s."""
    logs = run.distilled.glob("steps-*/log.jsonl") if part == "students" else [run.lite_decoder / "log.jsonl"]
    return round(sum(stepping_seconds(log) for log in logs) / 60, 2)


def _generate(pipe, sampler: str, steps: int, decoder: str, n: int, batch: int) -> torch.Tensor:
    settings = {"steps": steps, "guidance": GUIDANCE, "sampler": sampler, "decoder": decoder}
    return torch.cat([pipe.generate(label=c, n=n // 2, batch_size=batch, **settings).images for c in CLASSES])


def _rate(pipe, sampler: str, steps: int, decoder: str, batch: int) -> dict[str, float]:
    """Images/s and peak MiB of one batch with decoding, after a warm-up batch."""
    seeds = list(range(batch))
    settings = {"steps": steps, "guidance": GUIDANCE, "sampler": sampler, "decoder": decoder}
    pipe.sample_batch(seeds, CLASSES[0], **settings)
    with PeakMemory(pipe.device) as memory:
        seconds = timed(lambda: pipe.sample_batch(seeds, CLASSES[0], **settings), pipe.device)
    return {"images_per_s": round(batch / seconds, 2), "peak_mib": memory.mib, "seconds_per_batch": seconds}


def _decode_cost(pipe, batch: int) -> dict[str, float]:
    """Seconds per image of decoding (full and lightweight) and of one UNet pass (conditional only) at
    ``batch``."""
    from synthmed.runtime import autocast

    z = torch.randn((batch, *pipe.latent_shape), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(batch, dtype=torch.long)
    t = torch.full((batch,), 500)
    cost = {}
    with torch.inference_mode():
        for decoder in DECODERS:
            pipe.decode(z, decoder)
            cost[decoder] = timed(lambda d=decoder: pipe.decode(z, d), pipe.device) / batch
        with autocast(pipe.device, pipe.dtype):
            pipe.unet(z, timesteps=t, class_labels=labels)
            unet = timed(lambda: pipe.unet(z, timesteps=t, class_labels=labels), pipe.device) / batch
    return {
        "decode_s_per_image": cost["full"],
        "lite_decode_s_per_image": cost["lite"],
        "unet_pass_s_per_image": unet,
        "decode_vs_unet_pass": cost["full"] / unet,
        "lite_decode_vs_unet_pass": cost["lite"] / unet,
    }


def _lite_check(run_dir: Path) -> dict[str, float]:
    """The lightweight decoder's last validation: PSNR (dB) and sharpness against the full decoder."""
    from synthmed.artifacts.run import RunDir

    rows = [
        json.loads(line) for line in (RunDir(run_dir).lite_decoder / "log.jsonl").read_text().splitlines()
    ]
    last = [r for r in rows if "val_psnr_vs_full" in r][-1]
    return {
        "step": last["step"],
        "psnr_vs_full": last["val_psnr_vs_full"],
        "sharpness_vs_full": last["val_sharpness_vs_full"],
    }


def _monai_images(pipe, n: int, batch: int) -> tuple[torch.Tensor, float, float]:
    """MONAI's tutorial sampler on the same weights: DDPM 1000 steps, fp32, no guidance, decoding included
    (images, images/s, peak MiB)."""
    import functools

    from monai.inferers import LatentDiffusionInferer

    from synthmed.models.builders import build_scheduler

    scheduler = build_scheduler(pipe.cfg.diffusion.noise)
    scheduler.set_timesteps(1000)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=pipe.scale_factor)
    out: list[torch.Tensor] = []

    def run() -> None:
        for c in CLASSES:
            for start in range(0, n // 2, batch):
                k = min(batch, n // 2 - start)
                g = torch.Generator().manual_seed(start)
                noise = torch.randn((k, *pipe.latent_shape), generator=g)
                # MONAI's inferer passes conditioning only as cross-attention context: bind the label here.
                unet = functools.partial(pipe.unet, class_labels=torch.full((k,), pipe.label_index(c)))
                images = inferer.sample(noise, pipe.autoencoder, unet, scheduler, verbose=False)
                out.append(images.float().clamp(0, 1))

    with torch.inference_mode(), PeakMemory(pipe.device) as memory:
        seconds = timed(run, pipe.device)
    return torch.cat(out), n / seconds, memory.mib


class Scorer:
    """FID, recall, sharpness and C2ST of generated images against one real sample, in one feature space."""

    def __init__(self, data: Path, image_size: int, n: int, args: argparse.Namespace, cache: Path) -> None:
        from synthmed.evaluation.features import ExtractorSettings, trained_extractor
        from synthmed.evaluation.sets import load_set

        real = load_set(
            "real", data / "cxr-kermany" / "train", image_size=image_size, max_images=2 * n, cache_dir=cache
        )
        order = torch.randperm(len(real.images), generator=torch.Generator().manual_seed(1))
        first, second = order[:n], order[n : 2 * n]
        settings = ExtractorSettings(steps=args.extractor_steps)
        self.extractor, _ = trained_extractor(
            real.images[first], real.labels[first], real.class_names, settings, cache
        )
        self.real = self.extractor.features(real.images[first])
        self.permutations = args.permutations
        self.floor = self.score(real.images[second])

    def score(self, images: torch.Tensor) -> dict[str, Any]:
        from synthmed.evaluation.c2st import probe_c2st
        from synthmed.evaluation.fidelity import fid, prdc
        from synthmed.evaluation.sharpness import laplacian_energy

        feats = self.extractor.features(images)
        c2st = probe_c2st(self.real, feats, folds=5, permutations=self.permutations, seed=0)
        return {
            "fid": round(fid(self.real, feats), 3),
            "recall": round(prdc(self.real, feats)["recall"], 3),
            "sharpness": float(laplacian_energy(images).mean()),
            "c2st_accuracy": c2st.get("accuracy"),
            "c2st_p": c2st.get("p_value"),
        } | ({"c2st_not_computed": c2st["not_computed"]} if "not_computed" in c2st else {})


def _rows(pipe, teacher: tuple[str, int], students: list[int], scorer: Scorer, args) -> list[dict[str, Any]]:
    """The teacher's and each student's rows (with each decoder): quality of ``images`` images, speed of one
    timed batch."""
    rows = []
    plan = [("teacher", *teacher, 2 * teacher[1], "full")]
    plan += [
        (role, "distilled", k, k, d)
        for role, d in (("student", "full"), ("student_lite", "lite"))
        for k in students
    ]
    for role, sampler, steps, nfe, decoder in plan:
        t0 = time.perf_counter()
        images = _generate(pipe, sampler, steps, decoder, args.images, args.batch)
        row = {"row": role, "sampler": sampler, "steps": steps, "nfe": nfe, "decoder": decoder}
        row |= scorer.score(images) | {"generate_seconds": round(time.perf_counter() - t0, 2)}
        row |= _rate(pipe, sampler, steps, decoder, args.batch)
        rows.append(row)
        print({k: v for k, v in row.items() if k != "seconds_per_batch"}, flush=True)
    return rows


def _meets(row: dict[str, Any], teacher: dict[str, Any]) -> dict[str, bool]:
    return {
        "fid_within_1.1x_teacher": row["fid"] <= 1.1 * teacher["fid"],
        "recall_0.95x_teacher": row["recall"] >= 0.95 * teacher["recall"],
        "sharpness_within_10pct": abs(row["sharpness_ratio"] - 1.0) <= 0.1,
        "images_per_s_100": row["images_per_s"] >= 100,
    }


def _choose(students: list[dict[str, Any]]) -> dict[str, Any]:
    quality = [r for r in students if all(v for k, v in r["meets"].items() if k != "images_per_s_100")]
    if quality:
        fastest = min(quality, key=lambda r: (r["steps"], -r["images_per_s"]))
        return fastest | {"meets_quality_targets": True}
    best = min(students, key=lambda r: (-sum(r["meets"].values()), r["fid"]))
    return best | {"meets_quality_targets": False}


def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    from synthmed import load

    args = _sizes(args)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    run_dir = _smoke_teacher(work, data) if args.smoke else Path(args.run_dir)
    if not (run_dir / "diffusion" / "model.pt").is_file():
        raise SystemExit(f"{run_dir} has no trained model: give --run-dir a trained run (issue 16's recipe)")
    distilled = _distill(run_dir, args, work)
    pipe = load(run_dir, precision=args.precision)
    teacher = (pipe.samplers[0], _default_steps(pipe.samplers[0]))
    scorer = Scorer(data, pipe.image_size, args.images, args, work / "cache")
    students = [k for k in STUDENT_STEPS if k in distilled["students"]]
    rows = _rows(pipe, teacher, students, scorer, args)
    monai, monai_rate, monai_mib = _monai_images(
        load(run_dir, precision="fp32"), args.monai_images, args.batch
    )
    rows.append(
        {
            "row": "monai_ddpm1000_fp32",
            "sampler": "ddpm (MONAI)",
            "steps": 1000,
            "nfe": 1000,
            "decoder": "full",
        }
        | scorer.score(monai)
        | {"images_per_s": round(monai_rate, 4), "peak_mib": monai_mib}
    )
    decode = _decode_cost(pipe, args.batch)
    for row in rows:
        row["sharpness_ratio"] = round(row["sharpness"] / rows[0]["sharpness"], 3)
        if "seconds_per_batch" in row:
            per_image = decode[
                "lite_decode_s_per_image" if row["decoder"] == "lite" else "decode_s_per_image"
            ]
            row["decode_share"] = round(min(per_image * args.batch / row.pop("seconds_per_batch"), 1.0), 3)
    student_rows = [r for r in rows if r["row"].startswith("student")]
    for row in student_rows:
        row["meets"] = _meets(row, rows[0])
    chosen = _choose(student_rows) if student_rows else None
    headline = None
    if chosen is not None:
        headline = {
            "images_per_s": chosen["images_per_s"],
            "fid": chosen["fid"],
            "teacher_fid": rows[0]["fid"],
            "recall": chosen["recall"],
            "teacher_recall": rows[0]["recall"],
            "sharpness_ratio": chosen["sharpness_ratio"],
            "distill_minutes": distilled["distill_minutes"],
        }
        assert tuple(headline) == HEADLINE
    return {
        "benchmark": "distill64",
        "smoke": args.smoke,
        "run_dir": str(run_dir),
        "precision": args.precision,
        "guidance": GUIDANCE,
        "images_per_fid": args.images,
        "distillation": distilled,
        "same_distribution_floor": scorer.floor,
        "decode_cost": {k: round(v, 6) for k, v in decode.items()},
        "lite_decoder_check": _lite_check(run_dir),
        "rows": rows,
        "default": chosen,
        "headline": headline,
    }


def _default_steps(sampler: str) -> int:
    from synthmed.models.builders import default_steps

    return default_steps(sampler)
