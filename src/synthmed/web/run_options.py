"""The trained models a dashboard user may pick, and what each one offers (labels, ControlNets, samplers,
sizes), read from the run folder itself so the configurator's form follows the model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import get_args

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from synthmed.catalogue.models import TrainedModel
from synthmed.config import Condition, TrainConfig, build_train_config, read_yaml
from synthmed.errors import SynthmedError
from synthmed.models.builders import SAMPLERS_FOR
from synthmed.sampling.pipeline import Pipeline
from synthmed.training import checkpoint as ckpt
from synthmed.training.tasks import controlnet_stage_dir


@dataclass(frozen=True)
class RunOptions:
    """One trained run as the configurator offers it; ``key`` is what the browser sends (never a path)."""

    key: str
    run_dir: Path
    cfg: TrainConfig
    class_names: tuple[str, ...]
    conditions: tuple[str, ...]  # trained ControlNets (3D: "mask", the label-map ControlNet)
    spacing: tuple[float, float, float] | None  # 3D: the default voxel spacing

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def spatial_dims(self) -> int:
        return self.cfg.data.spatial_dims

    @property
    def samplers(self) -> tuple[str, ...]:
        return SAMPLERS_FOR[self.cfg.diffusion.noise.kind]

    @property
    def unconditional(self) -> bool:
        """Trained with label dropout: it can sample without a label and use classifier-free guidance."""
        return self.cfg.diffusion.label_dropout > 0

    def checks(self) -> Pipeline:
        """The run's Pipeline without weights: only its checks of labels, guidance and sizes are used, so the
        form refuses exactly what generation would refuse."""
        return Pipeline(
            self.run_dir,
            self.cfg,
            None,  # type: ignore[arg-type]  # no autoencoder
            None,  # type: ignore[arg-type]  # no UNet
            1.0,
            list(self.class_names),
            {},
            torch.device("cpu"),
            torch.float32,
            "ema",
            self.spacing,
        )


def _is_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and (folder / "diffusion" / "model.pt").is_file()


@lru_cache(maxsize=64)
def _read(run_dir: Path, _stamp: float) -> tuple[TrainConfig, tuple[str, ...], tuple[str, ...], tuple | None]:
    """Cached per version of the weights (``_stamp``: their modification time)."""
    cfg = build_train_config(read_yaml(run_dir / "config.yaml"), source=str(run_dir / "config.yaml"))
    cfg = cfg.model_copy(update={"run_dir": run_dir})
    extra = ckpt.load(run_dir / "diffusion" / "model.pt")["extra"]
    conditions = tuple(
        c for c in get_args(Condition) if (run_dir / controlnet_stage_dir(c) / "model.pt").is_file()
    )
    spacing = extra.get("spacing")
    return cfg, tuple(extra["class_names"]), conditions, tuple(spacing) if spacing else None


def read_run(run_dir: Path, key: str) -> RunOptions:
    if not _is_run(run_dir):
        raise SynthmedError("not a trained run (no config.yaml or diffusion/model.pt)", path=run_dir)
    stamp = (run_dir / "diffusion" / "model.pt").stat().st_mtime
    return RunOptions(key, run_dir, *_read(run_dir, stamp))


def run_folders(session: Session, runs_dir: Path | None) -> dict[str, Path]:
    """Every trained run on offer by key: the catalogue's trained models and the runs in ``runs_dir`` (the
    folder itself or its sub-folders). A key is a digest of the resolved folder, so it names one folder."""
    found = [Path(d) for d in session.scalars(select(TrainedModel.run_dir).distinct())]
    if runs_dir is not None and runs_dir.is_dir():
        found += [runs_dir, *sorted(p for p in runs_dir.iterdir() if p.is_dir())]
    runs = {}
    for folder in found:
        folder = folder.resolve()
        if _is_run(folder):
            runs[hashlib.sha256(str(folder).encode()).hexdigest()[:16]] = folder
    return runs


def available_runs(session: Session, runs_dir: Path | None) -> list[RunOptions]:
    """The runs on offer that can be read (a damaged run is left out of the list, not an error page)."""
    runs = []
    for key, folder in run_folders(session, runs_dir).items():
        try:
            runs.append(read_run(folder, key))
        except SynthmedError:
            continue
    return sorted(runs, key=lambda r: r.name)


def find_run(session: Session, runs_dir: Path | None, key: str) -> RunOptions:
    folder = run_folders(session, runs_dir).get(key)
    if folder is None:
        raise SynthmedError("unknown model: pick one from the list on the dashboard", field="model")
    return read_run(folder, key)
