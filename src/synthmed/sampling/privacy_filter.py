"""`synthmed generate --privacy-filter`: the copy guard for a run, built from its own training split."""

from __future__ import annotations

from pathlib import Path

from synthmed.config import TrainConfig
from synthmed.data.loading import Loaded, load_cached
from synthmed.data.splits import read_split_file
from synthmed.errors import SynthmedError
from synthmed.evaluation.privacy import CopyGuard


def copy_guard_for_run(run_dir: Path, cfg: TrainConfig, percentile: float) -> CopyGuard:
    """Training images of the run against its holdout split (or, if that is empty, its validation split).

    The training images come from the run's cache; holdout images are read from the data source once.
    """
    split = read_split_file(run_dir / "split.json")

    def images(name: str) -> Loaded:
        chosen = [r for r in split.records if r.split == name]
        return load_cached(chosen, cfg.data, name, run_dir / "cache", split.class_names)

    train = images("train")
    reference = images("holdout")
    if len(reference.images) == 0:
        reference = images("val")
    if len(train.images) == 0 or len(reference.images) < 2:
        raise SynthmedError(
            "the privacy filter needs training images and at least 2 holdout (or validation) images in the "
            "run's split",
            path=run_dir / "split.json",
        )
    return CopyGuard(train.images, reference.images, [r.source for r in train.records], percentile)
