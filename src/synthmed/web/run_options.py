"""The trained models a dashboard user may pick, and what each one offers (labels, ControlNets, samplers,
sizes), read from the run folder itself (config.yaml and metadata.json) so the configurator's form follows the
model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from synthmed.artifacts.run import RunDir
from synthmed.catalogue.models import TrainedModel
from synthmed.config import TrainConfig, read_run_config
from synthmed.errors import SynthmedError
from synthmed.sampling.rules import RunRules, run_samplers


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
        """Those of its noise process, and ``distilled`` once the run has a distilled stage."""
        return run_samplers(self.cfg)

    @property
    def unconditional(self) -> bool:
        """Trained with label dropout: it can sample without a label and use classifier-free guidance."""
        return self.cfg.diffusion.label_dropout > 0

    def distilled_steps(self) -> list[int]:
        """Step counts of the run's distilled students (none without a distilled stage)."""
        return RunDir(self.run_dir).distilled_steps()

    @property
    def decoders(self) -> tuple[str, ...]:
        """``full``, and ``lite`` once synthmed distill has made the run's lightweight decoder (2D)."""
        lite = (RunDir(self.run_dir).lite_decoder / "model.pt").is_file() and self.spatial_dims == 2
        return ("full", "lite") if lite else ("full",)

    def checks(self) -> RunRules:
        """The rules the run's Pipeline checks labels, guidance and sizes by, without its weights, so the
        form refuses exactly what generation would refuse."""
        return RunRules(self.cfg, list(self.class_names))


@lru_cache(maxsize=64)
def _read(
    run_dir: Path, _stamps: tuple[float, ...]
) -> tuple[TrainConfig, tuple[str, ...], tuple[str, ...], tuple | None]:
    """Cached per version of the run (``_stamps``: modification times of its weights and metadata)."""
    meta = RunDir(run_dir).metadata()
    return read_run_config(run_dir), tuple(meta.class_names), tuple(meta.controlnets), meta.spacing


def _stamps(run: RunDir) -> tuple[float, ...]:
    files = (run.weights("diffusion"), run.metadata_file)  # metadata.json changes with each ControlNet
    return tuple(f.stat().st_mtime if f.exists() else 0.0 for f in files)


def read_run(run_dir: Path, key: str) -> RunOptions:
    run = RunDir(run_dir)
    if not run.is_trained():
        raise SynthmedError("not a trained run (no config.yaml or diffusion/model.pt)", path=run_dir)
    return RunOptions(key, run_dir, *_read(run_dir, _stamps(run)))


def run_folders(session: Session, runs_dir: Path | None) -> dict[str, Path]:
    """Every trained run on offer by key: the catalogue's trained models and the runs in ``runs_dir`` (the
    folder itself or its sub-folders). A key is a digest of the resolved folder, so it names one folder."""
    found = [Path(d) for d in session.scalars(select(TrainedModel.run_dir).distinct())]
    if runs_dir is not None and runs_dir.is_dir():
        found += [runs_dir, *sorted(p for p in runs_dir.iterdir() if p.is_dir())]
    runs = {}
    for folder in found:
        folder = folder.resolve()
        if RunDir(folder).is_trained():
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
