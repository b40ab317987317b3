"""The benchmark's data: real train/validation/test and synthetic sets, subsampling and the leak check.

Every training set is a `Labelled`: images, integer class labels and the per-image training target
(the label again for classification, the mask for segmentation), so the subsampling and mixing code is
shared by both tasks. Real sets are folders of class folders or an .npz (its train split for training, its
test split for testing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from synthmed.artifacts.manifest import MANIFEST, read_manifest
from synthmed.config import AugmentationConfig, DataConfig, read_run_config
from synthmed.data.integrity import near_pairs, pixel_hash, skip_summary
from synthmed.data.loading import ItemReader, load_real_split
from synthmed.data.masks import load_image_mask_pairs
from synthmed.data.sources import Record, source_kind
from synthmed.data.splits import read_split_file
from synthmed.data.volumes import VolumeConfig, load_volumes
from synthmed.errors import SynthmedError
from synthmed.evaluation.sections import default_cache_dir
from synthmed.evaluation.sets import ImageSet, load_set
from synthmed.evaluation.volumetric import is_volume_folder

log = logging.getLogger(__name__)

#: How the leak check compares images.
LEAK_METHOD = "normalised pixel hash of the decoded images (synthmed.data.integrity), not file bytes"


@dataclass
class Labelled:
    """(N, 1, *spatial) images (2D or 3D), their class indices and training targets (labels, or masks of
    the images' shape); ``sources`` names each image's file where known (for what selection drops)."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: torch.Tensor) -> Labelled:
        sources = [self.sources[i] for i in idx.tolist()] if self.sources else []
        return Labelled(self.images[idx], self.labels[idx], self.targets[idx], sources)

    def concat(self, other: Labelled) -> Labelled:
        return Labelled(
            torch.cat([self.images, other.images]),
            torch.cat([self.labels, other.labels]),
            torch.cat([self.targets, other.targets]),
            self.sources + other.sources if self.sources and other.sources else [],
        )


@dataclass
class Hashed:
    """The test images' pixel hashes, by source (relative to ``root``), for the leak check."""

    root: Path
    sources: list[str]
    phash: list[str]
    sha256: list[str]  # file or array hashes (none for 3D volumes)


def _load(name: str, root: Path, cfg: AugmentationConfig) -> ImageSet:
    if not Path(root).is_dir():
        raise SynthmedError("folder not found", path=root)
    return load_set(
        name, root, image_size=cfg.image_size, resize_mode=cfg.resize_mode, cache_dir=default_cache_dir(cfg)
    )


def _load_real(
    name: str, source: Path, split: str, cfg: AugmentationConfig, channels: int | None
) -> tuple[ImageSet, Hashed]:
    """A real set, from a folder of class folders or the ``split`` of an .npz, at ``channels``."""
    if not Path(source).exists():
        raise SynthmedError("not found: give a folder of class folders or an .npz", path=source)
    if cfg.task == "segment" and source_kind(Path(source)) == "npz":
        raise SynthmedError(
            "an .npz holds no masks; --task segment needs image files with masks", path=source
        )
    dcfg = DataConfig(
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        clip_percentiles=(0.0, 100.0),
        channels=channels,
    )
    real = load_real_split(source, split, dcfg, default_cache_dir(cfg))
    records = real.loaded.records
    sources = [r.source for r in records]
    image_set = ImageSet(
        name,
        real.root,
        real.loaded.images,
        real.loaded.labels,
        real.class_names,
        sources,
        real.skipped,
        [r.sha256 for r in records],
    )
    return image_set, Hashed(real.root, sources, [str(r.phash) for r in records], [r.sha256 for r in records])


def _as_labelled(s: ImageSet, class_names: list[str], cfg: AugmentationConfig) -> Labelled:
    """Labels re-indexed into the real training classes; masks attached for segmentation."""
    if s.labels is None:
        raise SynthmedError(f"the {s.name} set needs class sub-folders (one per class)", path=s.root)
    unknown = sorted(set(s.class_names) - set(class_names))
    if unknown:
        raise SynthmedError(
            f"classes {unknown} of the {s.name} set are not among the real training classes {class_names}",
            path=s.root,
        )
    labels = torch.tensor([class_names.index(s.class_names[i]) for i in s.labels.tolist()])
    if cfg.task == "classify":
        return Labelled(s.images, labels, labels, list(s.sources))
    dcfg = DataConfig(source=s.root, image_size=cfg.image_size, resize_mode=cfg.resize_mode)
    pairs = load_image_mask_pairs([s.root / src for src in s.sources], dcfg)
    if len(pairs.sources) < 2:
        raise SynthmedError(f"fewer than 2 images of the {s.name} set have a <stem>_mask file", path=s.root)
    row = {str(s.root / src): i for i, src in enumerate(s.sources)}
    keep = torch.tensor([row[src] for src in pairs.sources])
    if pairs.skipped:
        label_of = {src: class_names[int(labels[i])] for src, i in row.items()}
        skipped = [replace(x, label=label_of.get(x.source)) for x in pairs.skipped]
        kept = [label_of[src] for src in pairs.sources]
        log.warning("%s set, images with masks: %s", s.name, skip_summary(kept, skipped, class_names))
    sources = [str(Path(src).relative_to(s.root)) for src in pairs.sources]
    return Labelled(pairs.images, labels[keep], pairs.masks, sources)


@dataclass
class Sets:
    class_names: list[str]
    train: Labelled
    val: Labelled
    test: Labelled
    synthetic: Labelled
    test_hashes: Hashed

    def class_index(self, name: str, field: str) -> int:
        """Index of the real training class ``name`` given in config ``field``, or a SynthmedError."""
        if name not in self.class_names:
            raise SynthmedError(f"'{name}' is not a real training class {self.class_names}", field=field)
        return self.class_names.index(name)


def _volumes(name: str, root: Path, cfg: AugmentationConfig) -> tuple[Hashed, Labelled]:
    """3D volumes with label maps; the segmentation target is the foreground (every label > 0)."""
    if not Path(root).is_dir():
        raise SynthmedError("folder not found", path=root)
    loaded = load_volumes(Path(root), VolumeConfig(size=cfg.volume_size), require_labels=True)
    if len(loaded) < 2:
        raise SynthmedError(f"fewer than 2 volumes with a label map in the {name} set", path=root)
    assert loaded.labels is not None  # require_labels
    labels = torch.zeros(len(loaded), dtype=torch.int64)  # one class: volumes carry no diagnosis label
    targets = (loaded.labels > 0).to(torch.uint8)
    return Hashed(Path(root), loaded.keys, loaded.phash, []), Labelled(loaded.images, labels, targets)


def _real_sets(cfg: AugmentationConfig) -> tuple[list[str], Labelled, Labelled, Labelled, Hashed]:
    """(class names, real train, real test, synthetic, the test images' hashes), 2D or 3D."""
    if is_volume_folder(Path(cfg.real_train)):
        if cfg.task != "segment":
            raise SynthmedError("3D volumes carry no class labels: use --task segment", field="task")
        (_, train), (test_hashes, test) = (
            _volumes(n, r, cfg) for n, r in (("real-train", cfg.real_train), ("real-test", cfg.real_test))
        )
        synthetic = _volumes("synthetic", cfg.synthetic, cfg)[1] if cfg.synthetic else _none(train)
        return ["volume"], train, test, synthetic, test_hashes
    synthetic_set = _load("synthetic", cfg.synthetic, cfg) if cfg.synthetic else None
    # the real sets as the synthetic one (grey or colour); without one, as the data config decides
    channels = synthetic_set.images.shape[1] if synthetic_set else None
    real, _ = _load_real("real-train", cfg.real_train, "train", cfg, channels)
    names = real.class_names
    test_set, test_hashes = _load_real("real-test", cfg.real_test, "holdout", cfg, channels)
    train = _as_labelled(real, names, cfg)
    synthetic = _as_labelled(synthetic_set, names, cfg) if synthetic_set else _none(train)
    return names, train, _as_labelled(test_set, names, cfg), synthetic, test_hashes


def _none(like: Labelled) -> Labelled:
    """The empty synthetic set of a run without one (only arms that use no synthetic image run)."""
    return like.take(torch.zeros(0, dtype=torch.int64))


def load_sets(cfg: AugmentationConfig) -> Sets:
    """Real train (split into train and a stratified validation part), real test and synthetic sets.

    With minority subsampling the validation part gets the same prevalence as the training runs: a team
    with a rare class has few validation images of it too, and arms are chosen on this split."""
    names, train_all, test, synthetic, test_hashes = _real_sets(cfg)
    val_idx = stratified_fraction(train_all.labels, cfg.val_fraction, cfg.seed)
    is_val = torch.zeros(len(train_all), dtype=torch.bool)
    is_val[val_idx] = True
    sets = Sets(
        class_names=names,
        train=train_all.take(torch.nonzero(~is_val).flatten()),
        val=train_all.take(val_idx),
        test=test,
        synthetic=synthetic,
        test_hashes=test_hashes,
    )
    if cfg.minority_class is not None and cfg.minority_fraction is not None:
        minority = sets.class_index(cfg.minority_class, "minority_class")
        keep = subsample_minority(sets.val.labels, minority, cfg.minority_fraction, cfg.seed)
        sets.val = sets.val.take(keep)
    return sets


def stratified_fraction(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random ``fraction`` of each class (at least one image per class)."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        n = max(1, round(len(idx) * fraction))
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    return torch.cat(keep).sort().values


def subsample_minority(labels: torch.Tensor, minority: int, prevalence: float, seed: int) -> torch.Tensor:
    """Sorted indices keeping every other-class image and enough ``minority`` images for ``prevalence``."""
    others = torch.nonzero(labels != minority).flatten()
    pool = torch.nonzero(labels == minority).flatten()
    wanted = max(1, round(prevalence / (1 - prevalence) * len(others)))
    if wanted > len(pool):
        raise SynthmedError(
            f"prevalence {prevalence} needs {wanted} images of the minority class but the real training "
            f"split has {len(pool)}; choose a smaller minority_fraction",
            field="minority_fraction",
        )
    chosen = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:wanted]]
    return torch.cat([others, chosen]).sort().values


def real_subset(sets: Sets, cfg: AugmentationConfig, fraction: float, seed: int) -> Labelled:
    """The real training images of one run: minority subsampling first, then the scarcity fraction."""
    train = sets.train
    if cfg.minority_class is not None and cfg.minority_fraction is not None:  # set together (validated)
        minority = sets.class_index(cfg.minority_class, "minority_class")
        train = train.take(subsample_minority(train.labels, minority, cfg.minority_fraction, seed))
    return train if fraction >= 1.0 else train.take(stratified_fraction(train.labels, fraction, seed))


def synthetic_subset(synthetic: Labelled, n: int, seed: int) -> Labelled:
    """A seeded random ``n`` synthetic images (all of them when the pool is smaller)."""
    gen = torch.Generator().manual_seed(seed)
    return synthetic.take(torch.randperm(len(synthetic), generator=gen)[:n].sort().values)


def leak_check(test: Hashed, synthetic_root: Path | None) -> dict[str, Any]:
    """Refuse a test image whose bytes, or decoded and normalised pixels, match an image of the generator's
    train or val split (per the synthetic folder's manifest), so exported or re-encoded copies are caught
    too. When that cannot be checked the result says "not checked" and why."""
    if synthetic_root is None:
        return _not_checked("no synthetic set, so no generator whose training images the test could share")
    rows = read_manifest(Path(synthetic_root) / MANIFEST)
    run_dirs = sorted({str(r["run_dir"]) for r in rows if r.get("run_dir")})
    if not run_dirs:
        return _not_checked("the synthetic folder has no manifest.jsonl naming the generator's run (run_dir)")
    for run_dir in run_dirs:
        split_file = Path(run_dir) / "split.json"
        if not split_file.is_file():
            return _not_checked(f"run {run_dir} has no split.json")
        seen = [r for r in read_split_file(split_file).records if r.split in ("train", "val")]
        row_of = {r.sha256: j for j, r in enumerate(seen)}
        _refuse([(i, row_of[h]) for i, h in enumerate(test.sha256) if h in row_of], test, seen, run_dir)
        seen, why = _with_pixel_hashes(Path(run_dir), seen)
        if why is not None:
            return _not_checked(f"run {run_dir}: {why}")
        _refuse(near_pairs(test.phash, [str(r.phash) for r in seen]), test, seen, run_dir)
    return {"checked": True, "runs": run_dirs, "n_test_files": len(test.sources), "method": LEAK_METHOD}


def _refuse(leaked: list[tuple[int, int]], test: Hashed, seen: list[Record], run_dir: str) -> None:
    if leaked:
        i, j = leaked[0]
        raise SynthmedError(
            f"{len({i for i, _ in leaked})} test images were in the generator's {seen[j].split} split (same "
            f"decoded pixels), e.g. {test.sources[i]} (= {seen[j].source} of run {run_dir}); test on images "
            "the generator never saw, e.g. its holdout split",
            path=test.root / test.sources[i],
        )


def _not_checked(why: str) -> dict[str, Any]:
    return {"checked": False, "reason": f"not checked: {why}", "method": LEAK_METHOD}


def _with_pixel_hashes(run_dir: Path, seen: list[Record]) -> tuple[list[Record], str | None]:
    """``seen`` with pixel hashes, or why there are none: a split file made before pixel hashes existed has
    them computed from the run's data source."""
    if all(r.phash for r in seen):
        return seen, None
    try:
        cfg = read_run_config(run_dir)
        if cfg.data.volume is not None:
            return [], "its split.json predates pixel hashes (3D); make the split again to check"
        reader = ItemReader(cfg.data)
        return [replace(r, phash=pixel_hash(reader.read(r))) for r in seen], None
    except SynthmedError as exc:
        return [], f"its split.json predates pixel hashes and its training images cannot be read ({exc})"
