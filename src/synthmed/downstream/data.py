"""The benchmark's data: real train/validation/test and synthetic sets, subsampling and the leak check.

Every training set is a `Labelled`: images, integer class labels and the per-image training target
(the label again for classification, the mask for segmentation), so the subsampling and mixing code is
shared by both tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthmed.config import AugmentationConfig, DataConfig
from synthmed.data.masks import load_image_mask_pairs
from synthmed.data.splits import read_split_file
from synthmed.data.volumes import VolumeConfig, load_volumes
from synthmed.errors import SynthmedError
from synthmed.evaluation.sections import default_cache_dir
from synthmed.evaluation.sets import ImageSet, load_set
from synthmed.evaluation.volumetric import is_volume_folder
from synthmed.sampling.pipeline import read_manifest


@dataclass
class Labelled:
    """(N, 1, *spatial) images (2D or 3D), their class indices and training targets (labels, or masks of
    the images' shape)."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: torch.Tensor) -> Labelled:
        return Labelled(self.images[idx], self.labels[idx], self.targets[idx])

    def concat(self, other: Labelled) -> Labelled:
        return Labelled(
            torch.cat([self.images, other.images]),
            torch.cat([self.labels, other.labels]),
            torch.cat([self.targets, other.targets]),
        )


def _load(name: str, root: Path, cfg: AugmentationConfig) -> ImageSet:
    if not Path(root).is_dir():
        raise SynthmedError("folder not found", path=root)
    return load_set(
        name, root, image_size=cfg.image_size, resize_mode=cfg.resize_mode, cache_dir=default_cache_dir(cfg)
    )


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
        return Labelled(s.images, labels, labels)
    dcfg = DataConfig(source=s.root, image_size=cfg.image_size, resize_mode=cfg.resize_mode)
    pairs = load_image_mask_pairs([s.root / src for src in s.sources], dcfg)
    if len(pairs.sources) < 2:
        raise SynthmedError(f"fewer than 2 images of the {s.name} set have a <stem>_mask file", path=s.root)
    row = {str(s.root / src): i for i, src in enumerate(s.sources)}
    keep = torch.tensor([row[src] for src in pairs.sources])
    return Labelled(pairs.images, labels[keep], pairs.masks)


@dataclass
class Sets:
    class_names: list[str]
    train: Labelled
    val: Labelled
    test: Labelled
    synthetic: Labelled
    test_set: ImageSet

    def class_index(self, name: str, field: str) -> int:
        """Index of the real training class ``name`` given in config ``field``, or a SynthmedError."""
        if name not in self.class_names:
            raise SynthmedError(f"'{name}' is not a real training class {self.class_names}", field=field)
        return self.class_names.index(name)


def _volumes(name: str, root: Path, cfg: AugmentationConfig) -> tuple[ImageSet, Labelled]:
    """3D volumes with label maps; the segmentation target is the foreground (every label > 0)."""
    if not Path(root).is_dir():
        raise SynthmedError("folder not found", path=root)
    loaded = load_volumes(Path(root), VolumeConfig(size=cfg.volume_size), require_labels=True)
    if len(loaded) < 2:
        raise SynthmedError(f"fewer than 2 volumes with a label map in the {name} set", path=root)
    labels = torch.zeros(len(loaded), dtype=torch.int64)  # one class: volumes carry no diagnosis label
    targets = (loaded.labels > 0).to(torch.uint8)
    image_set = ImageSet(name, Path(root), loaded.images, None, [], loaded.keys, loaded.skipped)
    return image_set, Labelled(loaded.images, labels, targets)


def _real_sets(cfg: AugmentationConfig) -> tuple[list[str], Labelled, Labelled, Labelled, ImageSet]:
    """(class names, real train, real test, synthetic, the test ImageSet), 2D or 3D."""
    if is_volume_folder(Path(cfg.real_train)):
        if cfg.task != "segment":
            raise SynthmedError("3D volumes carry no class labels: use --task segment", field="task")
        (_, train), (test_set, test), (_, synthetic) = (
            _volumes(n, r, cfg)
            for n, r in (
                ("real-train", cfg.real_train),
                ("real-test", cfg.real_test),
                ("synthetic", cfg.synthetic),
            )
        )
        return ["volume"], train, test, synthetic, test_set
    real = _load("real-train", cfg.real_train, cfg)
    if real.labels is None:
        raise SynthmedError("real training images need class sub-folders", path=cfg.real_train)
    names = real.class_names
    test_set = _load("real-test", cfg.real_test, cfg)
    synthetic = _as_labelled(_load("synthetic", cfg.synthetic, cfg), names, cfg)
    return names, _as_labelled(real, names, cfg), _as_labelled(test_set, names, cfg), synthetic, test_set


def load_sets(cfg: AugmentationConfig) -> Sets:
    """Real train (split into train and a stratified validation part), real test and synthetic sets."""
    names, train_all, test, synthetic, test_set = _real_sets(cfg)
    val_idx = stratified_fraction(train_all.labels, cfg.val_fraction, cfg.seed)
    is_val = torch.zeros(len(train_all), dtype=torch.bool)
    is_val[val_idx] = True
    return Sets(
        class_names=names,
        train=train_all.take(torch.nonzero(~is_val).flatten()),
        val=train_all.take(val_idx),
        test=test,
        synthetic=synthetic,
        test_set=test_set,
    )


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
    if cfg.minority_class is not None:
        minority = sets.class_index(cfg.minority_class, "minority_class")
        train = train.take(subsample_minority(train.labels, minority, cfg.minority_fraction, seed))
    return train if fraction >= 1.0 else train.take(stratified_fraction(train.labels, fraction, seed))


def synthetic_subset(synthetic: Labelled, n: int, seed: int) -> Labelled:
    """A seeded random ``n`` synthetic images (all of them when the pool is smaller)."""
    gen = torch.Generator().manual_seed(seed)
    return synthetic.take(torch.randperm(len(synthetic), generator=gen)[:n].sort().values)


def leak_check(test: ImageSet, synthetic_root: Path) -> dict[str, Any]:
    """Refuse a test image whose content was in the generator's train or val split (per the manifest)."""
    rows = read_manifest(Path(synthetic_root) / "manifest.jsonl")
    run_dirs = sorted({str(r["run_dir"]) for r in rows if r.get("run_dir")})
    if not run_dirs:
        return {"checked": False, "reason": "leak check not possible: no manifest with a run_dir"}
    if test.sha256 is None:
        return {"checked": False, "reason": "leak check not possible: 3D volumes carry no content hashes"}
    test_hashes = dict(zip(test.sha256, test.sources, strict=True))
    for run_dir in run_dirs:
        split = read_split_file(Path(run_dir) / "split.json")
        seen = {r.sha256: r for r in split.records if r.split in ("train", "val")}
        leaked = sorted(test_hashes.keys() & seen.keys())
        if leaked:
            r = seen[leaked[0]]
            raise SynthmedError(
                f"{len(leaked)} test images were in the generator's {r.split} split, e.g. "
                f"{test_hashes[leaked[0]]} (= {r.source} of run {run_dir}); test on images the generator "
                "never saw, e.g. its holdout split",
                path=test.root / test_hashes[leaked[0]],
            )
    return {"checked": True, "runs": run_dirs, "n_test_files": len(test_hashes), "reason": None}
