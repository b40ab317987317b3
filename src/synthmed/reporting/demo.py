"""`synthmed demo`: the whole pipeline on real MRI that ships with nilearn, offline, in about ten minutes.

The data are slices of the MNI152 2009c T1 template (an average of 152 adult brain MRIs, distributed inside
the nilearn wheel), written as a folder of PNGs per plane (axial / coronal / sagittal); the plane is the
class label. The demo then runs the same code a user runs on their own folder: ingest, train the
class-conditional diffusion model on the shipped foundation autoencoder, generate, report.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from synthmed.artifacts.images import save_png
from synthmed.config import GenerateConfig, TrainConfig, build_train_config
from synthmed.data.volumes import open_volume
from synthmed.errors import SynthmedError
from synthmed.reporting.report import write_report
from synthmed.sampling.generate import generate_to_folder
from synthmed.training.run import train

TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}
CITATION = (
    "MNI ICBM152 2009c nonlinear symmetric T1 template (Fonov et al., NeuroImage 2011; "
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, McGill University), "
    "as distributed with nilearn."
)

# Budgets measured on 2 CPU cores (see README): the real demo fits in about ten minutes, quick in seconds.
# The real demo uses the shipped foundation autoencoder (the small64 default) and trains only the UNet.
DEMO_SETTINGS = {
    "preset": "small64",
    "diffusion": {"steps": 1500, "batch_size": 32, "checkpoint_every": 250, "preview_every": 500},
    "runtime": {"precision": "bf16"},
}
QUICK_SETTINGS = {
    "preset": "tiny",
    "autoencoder": {"steps": 6, "checkpoint_every": 3, "preview_every": 6},
    "diffusion": {"steps": 6, "checkpoint_every": 3, "preview_every": 6},
}


def template_path() -> Path:
    import nilearn

    path = Path(nilearn.__file__).parent / "datasets" / "data" / TEMPLATE
    if not path.is_file():
        raise SynthmedError(
            "the MNI152 template is missing from this nilearn installation; reinstall nilearn", path=path
        )
    return path


def write_slices(out: Path, every: int = 1) -> dict[str, int]:
    """Every ``every``-th slice through the brain (the central 80% of its extent) as 8-bit PNGs per plane."""
    volume = np.asarray(open_volume(template_path()).dataobj, dtype=np.float32)
    volume /= volume.max()
    counts = {}
    for plane, axis in PLANES.items():
        extent = np.nonzero(volume.max(axis=tuple(a for a in range(3) if a != axis)) > 0.1)[0]
        lo, hi = extent.min(), extent.max()
        margin = (hi - lo) // 10
        indices = range(lo + margin, hi - margin + 1, every)
        for i in indices:
            # Rotate so that superior/anterior is up, as a radiologist would view the slice.
            save_png(np.rot90(np.take(volume, i, axis=axis)), out / plane / f"{plane}_{i:03d}.png")
        counts[plane] = len(indices)
    return counts


def run_demo(out: Path, quick: bool = False, progress: bool = True) -> Path:
    """Slice the template, train, generate and write ``out/report.html``; returns the report path."""
    t0 = time.perf_counter()
    counts = write_slices(out / "data", every=6 if quick else 1)
    settings = QUICK_SETTINGS if quick else DEMO_SETTINGS
    cfg: TrainConfig = build_train_config(
        {**settings, "run_dir": str(out / "run"), "data": {"source": str(out / "data")}}, source="demo"
    )
    train(cfg, resume=(out / "run" / "config.yaml").exists(), progress=progress)
    t_train = time.perf_counter() - t0
    synthetic = out / "synthetic"
    shutil.rmtree(synthetic, ignore_errors=True)  # the demo's own images: regenerated with today's settings
    per_class = 4 if quick else 12
    for plane in PLANES:
        generate_to_folder(
            GenerateConfig(
                run_dir=cfg.run_dir,
                out=synthetic,
                label=plane,
                count=per_class,
                guidance=3.0,
                seed=0,
            ),
            progress=progress,
        )
    facts = {
        "data": f"{sum(counts.values())} slices of the MNI152 T1 template ({counts})",
        "preset": cfg.preset,
        "image size": cfg.data.image_size,
        "autoencoder": "shipped foundation autoencoder (not trained here)"
        if cfg.autoencoder.source == "foundation"
        else f"trained here, {cfg.autoencoder.steps} steps",
        "diffusion steps": cfg.diffusion.steps,
        "sampler": "DDIM, 25 steps, guidance 3.0",
        "training time (s)": round(t_train, 1),
        "total time (s)": round(time.perf_counter() - t0, 1),
    }
    notes = (
        f"<p>Synthetic brain MRI slices from a class-conditional latent diffusion model trained by "
        f"<code>synthmed demo</code> on this machine; the class is the slice plane. Data: {CITATION} "
        "The template is one (averaged) brain, so the model learns its slices, not a population: a real "
        "data set of many patients is what synthmed is for.</p>"
    )
    return write_report(
        cfg,
        synthetic,
        out / "report.html",
        title="synthmed demo: MNI152 brain MRI slices",
        notes=notes,
        facts=facts,
    )
