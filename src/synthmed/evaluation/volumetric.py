"""3D evaluation: MAISI-style 2.5D FID over axial, coronal and sagittal slices, 3D MS-SSIM, memorisation.

The feature extractor is the same in-house 2D network as for images, trained on slices of the real
training volumes from all three views (the view is its class label, the rotation its self-supervised
task). FID is computed per view on the central slices and averaged, as MAISI reports it; per-view figures
go through exactly the 2D code path. Multi-contrast volumes keep their channels throughout (the extractor,
C2ST and segmenter see them jointly; sharpness and label intensities are also reported per channel); the
real sets are loaded with the synthetic set's channel count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmed.artifacts.manifest import MANIFEST, read_manifest
from synthmed.config import EvaluateConfig
from synthmed.data.volumes import NIFTI_SUFFIXES, VolumeConfig, load_volumes
from synthmed.errors import SynthmedError
from synthmed.evaluation.c2st import cnn_c2st, pooled_accuracy
from synthmed.evaluation.condition import (
    compare_intensity,
    condition_fidelity,
    intensity_stats,
    train_segmenter,
)
from synthmed.evaluation.features import ExtractorSettings, InHouseExtractor, trained_extractor
from synthmed.evaluation.sections import (
    SET_NAMES,
    default_cache_dir,
    diversity_section,
    fidelity_section,
    frd_section,
    phase,
    privacy_section,
    set_summary,
    sharpness_section,
    write_report,
)
from synthmed.evaluation.sets import ImageSet
from synthmed.evaluation.verdict import finish
from synthmed.evaluation.views import VIEWS, channels_side_by_side, three_view_slices, view_slices

#: Evaluation grid when neither the options nor the synthetic folder's manifest give one.
DEFAULT_VOLUME_SIZE = (64, 64, 64)


def is_volume_folder(root: Path) -> bool:
    """True when ``root`` (or its images/ folder) holds NIfTI files: evaluate it as 3D."""
    for folder in (root, root / "images", root / "imagesTr"):
        if folder.is_dir() and any(p.name.endswith(NIFTI_SUFFIXES) for p in folder.iterdir()):
            return True
    return False


def volume_grid(cfg: EvaluateConfig) -> dict[str, Any]:
    """The grid every set is resampled to, and where it comes from: volume_size / volume_spacing, else the
    size and spacing the synthetic folder's volumes were generated at (the rows of its manifest), else
    64 x 64 x 64 at each file's own spacing."""
    rows = [r for r in read_manifest(Path(cfg.synthetic) / MANIFEST) if r.get("size") and r.get("file")]
    sizes = sorted({tuple(r["size"]) for r in rows})
    spacings = sorted({tuple(r["spacing"]) for r in rows if r.get("spacing")})
    for name, found, given in (("size", sizes, cfg.volume_size), ("spacing", spacings, cfg.volume_spacing)):
        if given is None and len(found) > 1:
            raise SynthmedError(
                f"the synthetic volumes were generated at several {name}s {found}; give --volume-{name}",
                path=cfg.synthetic,
            )
    size = cfg.volume_size or (sizes[0] if sizes else DEFAULT_VOLUME_SIZE)
    spacing = cfg.volume_spacing or (spacings[0] if spacings else None)

    def origin(given: object, found: list) -> str:
        return "option" if given is not None else "synthetic manifest" if found else "default"

    return {
        "size": list(size),
        "spacing": list(spacing) if spacing else None,
        "size_from": origin(cfg.volume_size, sizes),
        "spacing_from": origin(cfg.volume_spacing, spacings),
    }


def load_volume_sets(cfg: EvaluateConfig) -> tuple[dict[str, ImageSet], dict[str, torch.Tensor | None]]:
    """The three sets as (N, C, X, Y, Z) volumes, and their label maps (None where a set has none)."""
    grid = volume_grid(cfg)
    spacing = tuple(grid["spacing"]) if grid["spacing"] else None
    vcfg = VolumeConfig(size=tuple(grid["size"]), spacing=spacing, modality=cfg.modality)
    if cfg.real is None or cfg.holdout is None:
        raise SynthmedError("3D evaluation needs --real and --holdout folders of volumes", field="real")
    roots = {"synthetic": cfg.synthetic, "train": cfg.real, "holdout": cfg.holdout}
    sets, label_maps = {}, {}
    channels: int | None = None  # the real sets at the synthetic set's
    for name, root in roots.items():
        loaded = load_volumes(Path(root), vcfg, require_labels=cfg.masks, channels=channels)
        channels = channels or loaded.images.shape[1]
        sets[name] = ImageSet(name, Path(root), loaded.images, None, [], loaded.keys, loaded.skipped)
        label_maps[name] = loaded.labels
    return {n: sets[n] for n in SET_NAMES}, {n: label_maps[n] for n in SET_NAMES}


def label_map_section(
    sets: dict[str, ImageSet], label_maps: dict[str, torch.Tensor | None], cfg: EvaluateConfig
) -> dict[str, Any]:
    """Condition fidelity per label: a binary (one-vs-rest) 3D segmenter per label value of the training
    label maps, scored on synthetic volumes vs their label maps and on real holdout pairs (the ceiling)."""
    maps = {n: m for n, m in label_maps.items() if m is not None and len(m) >= 2}
    missing = [n for n in label_maps if n not in maps]
    if missing:
        return {"not_computed": f"fewer than 2 volumes with label maps in the {', '.join(missing)} set(s)"}
    values = sorted(set(torch.unique(maps["train"]).tolist()) - {0})
    images = {n: s.images for n, s in sets.items()}  # every contrast: the segmenter takes C channels
    per_label = {}
    for value in values:
        masks = {n: (m == value).to(torch.uint8) for n, m in maps.items()}
        segmenter = train_segmenter(
            images["train"], masks["train"], steps=cfg.segmenter_steps, batch_size=4, seed=cfg.seed
        )
        per_label[f"label_{value}"] = condition_fidelity(
            segmenter,
            images["synthetic"],
            masks["synthetic"],
            images["holdout"],
            masks["holdout"],
            seed=cfg.seed,
        )
    names = {"background": 0} | {f"label_{v}": v for v in values}
    tests = [
        compare_intensity(
            intensity_stats(sets["train"].images[:, c : c + 1], maps["train"], names),
            intensity_stats(sets["synthetic"].images[:, c : c + 1], maps["synthetic"], names),
        )
        for c in range(sets["train"].images.shape[1])
    ]
    intensity = {"ks_test": tests[0]} | ({"per_channel": tests} if len(tests) > 1 else {})
    about: dict[str, Any] = {"steps": cfg.segmenter_steps, "train_volumes": len(sets["train"])}
    about["image_channels"] = int(sets["train"].images.shape[1])
    return {"labels": per_label, "intensity": intensity, "segmenter": about}


def view_extractor(
    slices: dict[str, torch.Tensor], cfg: EvaluateConfig
) -> tuple[InHouseExtractor, dict[str, Any]]:
    """The in-house extractor trained on training slices of all views, the view being the class."""
    images = torch.cat([slices[v] for v in VIEWS])
    labels = torch.cat([torch.full((len(slices[v]),), i, dtype=torch.int64) for i, v in enumerate(VIEWS)])
    settings = ExtractorSettings(steps=cfg.extractor_steps, seed=cfg.seed)
    return trained_extractor(images, labels, list(VIEWS), settings, default_cache_dir(cfg))


def view_mean(fidelity: dict[str, Any], key: str = "fid") -> dict[str, Any]:
    """Mean of a figure over the three views (for FID: MAISI's 2.5D FID), synthetic and real floor."""
    out: dict[str, Any] = {}
    for side in ("synthetic", "real_floor"):
        values = [fidelity[v][side][key]["value"] for v in VIEWS if key in fidelity[v].get(side, {})]
        out[side] = float(np.mean(values)) if len(values) == len(VIEWS) else None
    return out


def volume_features(extractor: InHouseExtractor, slices: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """One vector per volume: its slices' mean feature in each view, concatenated."""
    return torch.cat(
        [extractor.features(slices[v]).reshape(n, -1, extractor_dim(extractor)).mean(1) for v in VIEWS], 1
    )


def extractor_dim(extractor: InHouseExtractor) -> int:
    return extractor.rotation_head.in_features


def central_views(sets: dict[str, ImageSet], size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per view, each set's central slice of every volume (one per volume: slices of one volume are not
    independent samples, which the C2ST's cross-validation needs)."""
    return {v: {n: view_slices(s.images, v, size=size, slices=1) for n, s in sets.items()} for v in VIEWS}


def view_measures(views: dict[str, dict[str, torch.Tensor]], cfg: EvaluateConfig) -> dict[str, Any]:
    """The C2ST (a CNN per view, pooled over the views), sharpness and FRD on the three central views;
    sharpness and FRD also on the three views together ("all")."""
    names = views[VIEWS[0]].keys()
    together = {n: torch.cat([views[v][n] for v in VIEWS]) for n in names}
    c2st, sharp, frd_views = {}, {}, {}
    for v, images in (views | {"all": together}).items():
        sets = {n: ImageSet(n, Path(), x, None, [], []) for n, x in images.items()}
        groups = {"all": {n: torch.arange(len(x)) for n, x in images.items()}}
        sharp[v] = sharpness_section(groups, sets, cfg)["all"]
        frd_views[v] = frd_section(groups, sets, cfg)["all"]
        if v != "all":
            c2st[v] = cnn_c2st(
                images["holdout"],
                images["synthetic"],
                folds=cfg.c2st_folds,
                steps=cfg.c2st_steps,
                seed=cfg.seed,
            )
    pooled = pooled_accuracy([c2st[v].get("all", {}) for v in VIEWS])
    return {"c2st": {"cnn": {"all": pooled} | c2st}, "sharpness": sharp, "frd": frd_views}


def evaluate_volumes(cfg: EvaluateConfig) -> Path:
    """The 3D report; each phase is told to ``phase_hook`` as it starts (the CLI's progress)."""
    timings: dict[str, float] = {}
    with phase(timings, "load"):
        sets, label_maps = load_volume_sets(cfg)
        slices = {
            n: three_view_slices(s.images, size=cfg.image_size, fraction=cfg.slice_fraction)
            for n, s in sets.items()
        }
    with phase(timings, "extractor"):
        extractor, info = view_extractor(slices["train"], cfg)
    fidelity: dict[str, Any] = {}
    with phase(timings, "fidelity"):
        for view in VIEWS:
            feats = {n: extractor.features(slices[n][view]) for n in SET_NAMES}
            groups = {view: {n: torch.arange(len(f)) for n, f in feats.items()}}
            fidelity |= fidelity_section(groups, feats, cfg)
    with phase(timings, "privacy"):
        vol_feats = {n: volume_features(extractor, slices[n], len(sets[n])) for n in SET_NAMES}
        privacy, pairs = privacy_section(sets, vol_feats, cfg)
    all_volumes = {"all": {n: torch.arange(len(s)) for n, s in sets.items()}}
    with phase(timings, "views"):  # C2ST, sharpness and FRD on the central slices
        views = view_measures(central_views(sets, cfg.image_size), cfg)
    with phase(timings, "diversity"):
        diversity = diversity_section(all_volumes, sets, cfg)
    with phase(timings, "condition_fidelity"):
        condition = (
            label_map_section(sets, label_maps, cfg)
            if cfg.masks
            else {"not_computed": "run with --masks to evaluate label maps"}
        )
    report = {
        "settings": cfg.model_dump(mode="json"),
        "reference": {"kind": "given folders", "real": str(cfg.real), "holdout": str(cfg.holdout)},
        "grid": volume_grid(cfg),
        "sets": {n: set_summary(s) for n, s in sets.items()},
        "extractor": info
        | {"kind": "in-house ResNet on slices of all three views", "feature_dim": extractor_dim(extractor)},
        "fidelity": fidelity,
        "fid_25d": view_mean(fidelity, "fid"),
        "recall_25d": view_mean(fidelity, "recall"),
        **views,
        "diversity": diversity,
        "privacy": privacy,
        "label_fidelity": {"not_computed": "volumes carry no class labels"},
        "condition_fidelity": condition,
        "timings_s": timings,
    }
    axial = {n: view_slices(s.images, "axial", size=cfg.image_size, slices=1) for n, s in sets.items()}
    # Thumbnails: several contrasts side by side.
    shown = {
        n: ImageSet(n, s.root, channels_side_by_side(axial[n]), None, [], s.sources) for n, s in sets.items()
    }
    return write_report(finish(report), shown, pairs, cfg.out)
