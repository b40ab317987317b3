"""`synthmed train`: prepare the data split, then train the autoencoder and the diffusion UNet in a run dir
(its layout: synthmed.artifacts.run). After each stage metadata.json is written from the exported weights.

Under torchrun (several processes, see runtime.join_process_group) rank 0 prepares the data and caches first
and the other ranks then read them; rank 0 alone writes config.yaml and every file of the stages.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console

from synthmed import data as data_stage
from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.run import STAGE_CONFIG, RunDir, controlnet_stage_dir
from synthmed.config import (
    ControlNetConfig,
    TrainConfig,
    read_run_config,
    read_yaml,
    save_yaml,
)
from synthmed.data.augment import affine_copies
from synthmed.data.integrity import require_kept_classes, skip_summary
from synthmed.data.masks import load_image_mask_pairs
from synthmed.data.sources import Record, require_source, source_kind, source_root
from synthmed.data.structure import structure_maps
from synthmed.data.volume_sets import channel_names, load_volume_split, prepare_volumes
from synthmed.errors import SynthmedError
from synthmed.evaluation.quality import channel_bounds
from synthmed.models.builders import build_autoencoder
from synthmed.models.foundation import foundation_weights
from synthmed.models.slicewise import Autoencoder
from synthmed.models.trained import load_autoencoder, load_unet
from synthmed.runtime import (
    barrier,
    is_main,
    join_process_group,
    main_first,
    resolve_device,
    resolve_precision,
    set_threads,
)
from synthmed.training.tasks import (
    AutoencoderTask,
    ControlNetTask,
    DiffusionTask,
    LatentSet,
    encode_dataset,
    latent_scale_factor,
)
from synthmed.training.trainer import Trainer

STAGES = ("autoencoder", "diffusion", "controlnet")
# Fields that may change in a resumed run (and runtime.*); any other change would train a different model.
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "preview_every", "log_every"}
# A run may hold several ControlNets (one per condition), each trained later with its own settings: these are
# checked against the stage folder's own copy (STAGE_CONFIG), not the run's config.yaml.

console = Console(stderr=True)


@dataclass
class TrainingData:
    """Images (2D) or volumes (3D, with voxel spacings and label maps) of the train and val splits."""

    class_names: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    train_spacings: torch.Tensor | None = None
    val_spacings: torch.Tensor | None = None
    train_maps: torch.Tensor | None = None
    val_maps: torch.Tensor | None = None
    num_labels: int | None = None
    train_keys: list[str] | None = None
    records: list[Record] | None = None  # 2D: every record with its split (mask ControlNet pairs)


#: Called as before_stages(cfg, stages, data, device) once the data are loaded, before the first stage.
BeforeStages = Callable[[TrainConfig, Sequence[str], TrainingData, torch.device], None]


def default_stages(cfg: TrainConfig) -> tuple[str, ...]:
    """`synthmed train all`: the autoencoder and diffusion UNet, plus the label-map ControlNet for 3D."""
    return STAGES if cfg.data.volume is not None else STAGES[:2]


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of fields that differ, ignoring those a resumed run may change."""
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if key in RESUMABLE_CHANGES or f"{prefix}{key}" in ("runtime", "controlnet"):
            continue
        if (
            f"{prefix}{key}" in ("data.channels", "data.channel_names") and b is None
        ):  # resolved from the data
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def check_against_saved(cfg: TrainConfig, resume: bool) -> None:
    """Refuse a config that would silently train a different model in an existing run directory."""
    saved_path = RunDir(cfg.run_dir).config
    if not saved_path.exists():
        return
    saved = read_run_config(cfg.run_dir)
    changed = _diff(saved.model_dump(mode="json"), cfg.model_dump(mode="json"))
    if changed:
        fix = "resume with the saved config" if resume else "choose a new run_dir"
        raise SynthmedError(
            f"the config differs from the run's saved config.yaml in {sorted(changed)}; {fix}",
            path=saved_path,
        )


def resolve_run_config(cfg: TrainConfig | None, run_dir: Path | None, resume: bool) -> TrainConfig:
    """The config to train with: the given one (checked against a saved one), or the run's saved config."""
    run_dir = Path(run_dir) if run_dir else (cfg.run_dir if cfg else None)
    if run_dir is None:
        raise SynthmedError("give --config or --run", field="run_dir")
    if cfg is None:
        if not RunDir(run_dir).config.exists():
            raise SynthmedError("no config.yaml in this run directory; give --config", path=run_dir)
        return read_run_config(run_dir)
    cfg = cfg.model_copy(update={"run_dir": run_dir})
    check_against_saved(cfg, resume)
    return cfg


def load_training_data(cfg: TrainConfig, device: torch.device) -> TrainingData:
    if cfg.data.source is None:
        raise SynthmedError(
            "no data source: set data.source (or --data) to a folder, .npz or CSV file", field="data.source"
        )
    if cfg.data.volume is not None:
        return _load_volume_data(cfg, device)
    prepared = data_stage.prepare(cfg.data, cfg.seed, cfg.run_dir / "split.json")
    if cfg.data.channels is None:  # resolved once on every split's images, kept in config.yaml
        cfg.data.channels = data_stage.image_channels([r.channels for r in prepared.records])
    if cfg.data.channels not in (1, 3):
        raise SynthmedError(
            f"the images have {cfg.data.channels} channels; generated 2D images are grey or RGB PNGs, so "
            "training takes 1 or 3: set data.channels to 1 (grey) or 3 (colour)",
            field="data.channels",
        )
    cache = cfg.run_dir / "cache"
    arrays = {
        split: data_stage.load_split_arrays(
            prepared.records, cfg.data, split, cache, class_names=prepared.class_names
        )
        for split in ("train", "val")
    }
    train_x, train_y = arrays["train"]
    val_x, val_y = arrays["val"]
    if len(train_x) == 0:
        raise SynthmedError("the training split is empty", path=cfg.data.source)
    if len(val_x) == 0:  # tiny data sets: validate on a few training images rather than not at all
        val_x, val_y = train_x[:8], train_y[:8]
    return TrainingData(
        prepared.class_names,
        train_x.to(device),
        train_y.to(device),
        val_x.to(device),
        val_y.to(device),
        records=prepared.records,
    )


def _load_volume_data(cfg: TrainConfig, device: torch.device) -> TrainingData:
    assert cfg.data.volume is not None
    prepared = prepare_volumes(cfg.data, cfg.seed, cfg.run_dir / "split.json")
    for skipped in prepared.skipped:
        console.print(f"skipped {skipped.source}: {skipped.reason}", highlight=False, soft_wrap=True)
    _resolve_volume_channels(cfg, prepared.records)
    cache = cfg.run_dir / "cache"
    train = load_volume_split(cfg.data, prepared, "train", cache, augment=True)
    val = load_volume_split(cfg.data, prepared, "val", cache)
    if len(val.keys) == 0:  # tiny data sets: validate on a few training volumes rather than not at all
        val = train
    num_labels = cfg.data.volume.num_labels or int(train.label_maps.max()) + 1
    too_high = int(max(train.label_maps.max(), val.label_maps.max()))
    if too_high >= num_labels:
        raise SynthmedError(
            f"the label maps hold label {too_high} but data.volume.num_labels is {num_labels}",
            field="data.volume.num_labels",
        )
    return TrainingData(
        prepared.class_names,
        train.images.to(device),
        train.classes.to(device),
        val.images.to(device),
        val.classes.to(device),
        train.spacings.to(device),
        val.spacings.to(device),
        train.label_maps.to(device),
        val.label_maps.to(device),
        max(num_labels, 2),
        train.keys,
    )


def _resolve_volume_channels(cfg: TrainConfig, records: Sequence[Record]) -> None:
    """``data.channels`` (and for several, ``data.channel_names``) from the checked volumes, kept in
    config.yaml; prepare_volumes left out the volumes of another count."""
    cfg.data.channels = cfg.data.channels or (records[0].channels if records else 1)
    if cfg.data.channels == 1:
        return
    found = channel_names(cfg.data) or [str(c) for c in range(cfg.data.channels)]
    given = cfg.data.channel_names
    if given is not None and given != found:
        raise SynthmedError(
            f"data.channel_names {given} differ from the data's channels {found}; remove data.channel_names "
            "(it is resolved from the contrast folders) or rename the folders",
            field="data.channel_names",
        )
    if len(found) != cfg.data.channels:
        found = [str(c) for c in range(cfg.data.channels)]
    cfg.data.channel_names = found


def stage_dir(cfg: TrainConfig, stage: str) -> Path:
    """A stage's folder in the run; each ControlNet condition has its own."""
    return RunDir(cfg.run_dir).stage(
        controlnet_stage_dir(cfg.controlnet.condition) if stage == "controlnet" else stage
    )


def _stage_done(folder: Path, steps: int) -> bool:
    model = folder / "model.pt"
    return model.exists() and int(ckpt.load(model)["step"]) >= steps


def _trainer(
    task,
    stage_cfg,
    cfg: TrainConfig,
    device: torch.device,
    progress: bool,
    on_step: Callable[[str, int, int], None] | None = None,
) -> Trainer:
    dtype = resolve_precision(cfg.runtime.precision, device)
    return Trainer(
        task,
        stage_cfg,
        cfg.run_dir / task.name,
        seed=cfg.seed,
        device=device,
        dtype=dtype,
        progress=progress,
        tensorboard=cfg.runtime.tensorboard,
        on_step=on_step,
    )


def _latents(
    cfg: TrainConfig, autoencoder: Autoencoder, data: TrainingData
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode the training and validation images once; cached beside the diffusion stage by AE weights."""
    run = RunDir(cfg.run_dir)
    path = run.latents(file_sha256(run.weights("autoencoder")))
    if path.exists():
        cached = ckpt.load(path)
        return cached["train"].to(data.train_images.device), cached["val"].to(data.train_images.device)
    batch = 64 if cfg.data.volume is None else 2  # 3D activations are large
    train = encode_dataset(autoencoder, data.train_images, batch)
    val = encode_dataset(autoencoder, data.val_images, batch)
    if is_main():
        ckpt.atomic_save({"train": train.cpu(), "val": val.cpu()}, path)
    return train, val


def train(
    cfg: TrainConfig,
    stages: Sequence[str] | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[str, int, int], None] | None = None,
    before_stages: BeforeStages | None = None,
) -> Path:
    """Train the requested stages in order (default: `default_stages`); returns the run directory.
    ``on_step(stage, step, steps)`` follows every optimiser step (a job's progress); ``before_stages`` is
    called once the data are loaded, before the first stage (the CLI's time estimate, training.estimate)."""
    stages = default_stages(cfg) if stages is None else stages
    for stage in stages:
        if stage not in STAGES:
            raise SynthmedError(f"unknown stage '{stage}'; choose from {list(STAGES)}", field="stage")
    set_threads(cfg.runtime.num_threads)
    device = resolve_device(cfg.runtime.device)
    join_process_group(device)
    with _quiet_unless_main():
        _train_stages(cfg, stages, device, resume, progress, on_step, before_stages)
    return cfg.run_dir


@contextmanager
def _quiet_unless_main() -> Iterator[None]:
    """Under torchrun only rank 0 prints."""
    quiet = console.quiet
    console.quiet = quiet or not is_main()
    try:
        yield
    finally:
        console.quiet = quiet


def _prepare_run(cfg: TrainConfig, device: torch.device) -> TrainingData:
    """Write config.yaml (rank 0) and load the data (rank 0 first: it writes split.json and caches)."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if is_main():
        save_yaml(cfg, RunDir(cfg.run_dir).config)
    data = load_training_data(cfg, device)
    if is_main():  # again, with data.channels resolved from the data
        save_yaml(cfg, RunDir(cfg.run_dir).config)
    return data


def _train_stages(
    cfg: TrainConfig,
    stages: Sequence[str],
    device: torch.device,
    resume: bool,
    progress: bool,
    on_step: Callable[[str, int, int], None] | None = None,
    before_stages: BeforeStages | None = None,
) -> None:
    check_against_saved(cfg, resume)
    data = main_first(lambda: _prepare_run(cfg, device))
    items = "images" if cfg.data.volume is None else "volumes (spacing copies included)"
    console.print(
        f"[bold]{cfg.run_dir}[/]: {len(data.train_images)} training and {len(data.val_images)} "
        f"validation {items}, classes {data.class_names}, device {device}"
    )
    if before_stages is not None:
        before_stages(cfg, stages, data, device)
    for stage in stages:
        stage_cfg = getattr(cfg, stage)
        if stage == "autoencoder" and cfg.autoencoder.source == "foundation":
            _install_foundation(cfg)
            continue
        if _stage_done(stage_dir(cfg, stage), stage_cfg.steps):
            console.print(f"{stage}: already trained to {stage_cfg.steps} steps, skipped")
            continue
        if stage == "controlnet":
            _check_controlnet_config(cfg, resume)
        # Rank 0 first: it writes the latent cache (and 3D label-map candidates) the others then read.
        task = main_first(functools.partial(_stage_task, cfg, stage, data, device))
        _trainer(task, stage_cfg, cfg, device, progress, on_step).run(resume=resume)
        if is_main() and stage != "autoencoder":
            RunDir(cfg.run_dir).write_metadata()


def _install_foundation(cfg: TrainConfig) -> None:
    """Put the shipped (or given) pretrained autoencoder in the run as its autoencoder stage's weights, so
    every later stage, generation and provenance check reads it like a trained one."""
    state, sha = foundation_weights(cfg.autoencoder.arch, cfg.autoencoder.weights)
    path = stage_dir(cfg, "autoencoder") / "model.pt"
    name = cfg.autoencoder.weights or "the shipped foundation autoencoder"
    installed = ckpt.load(path).get("extra", {}).get("sha256") if path.exists() else None
    if installed == sha:
        console.print(f"autoencoder: {name} already in the run, not trained")
        return
    later = [s for s in ("diffusion", "controlnet") if (stage_dir(cfg, s) / "last.pt").exists()]
    if installed is not None and later:  # the UNet learnt the run's latents: swapping the decoder breaks it
        console.print(
            f"autoencoder: kept the run's copy (sha256 {installed[:12]}), which its {' and '.join(later)} "
            f"stage was trained on; {name} is now sha256 {sha[:12]}: train a new run_dir to use it",
            style="yellow",
        )
        return
    if is_main():
        extra = {"source": "foundation", "weights": str(name), "sha256": sha}
        ckpt.atomic_save({"step": 0, "ema": state, "raw": state, "extra": extra}, path)
    barrier()
    console.print(f"autoencoder: {name} (sha256 {sha[:12]}), not trained")


def _stage_task(
    cfg: TrainConfig, stage: str, data: TrainingData, device: torch.device
) -> AutoencoderTask | DiffusionTask:
    torch.manual_seed(cfg.seed)  # identical initial weights for identical configs (and on every rank)
    if stage == "autoencoder":
        model = build_autoencoder(cfg.autoencoder.arch, cfg.data.spatial_dims, cfg.image_channels).to(device)
        return AutoencoderTask(model, cfg.autoencoder, data.train_images, data.val_images)
    if stage == "diffusion":
        return _diffusion_task(cfg, data, device)
    task = _controlnet_task(cfg, data, device)
    stage_dir(cfg, stage).mkdir(parents=True, exist_ok=True)
    if is_main():
        save_yaml(cfg.controlnet, stage_dir(cfg, stage) / STAGE_CONFIG)
    return task


def _check_controlnet_config(cfg: TrainConfig, resume: bool) -> None:
    """Refuse to continue a ControlNet with other settings than it was started with."""
    path = stage_dir(cfg, "controlnet") / STAGE_CONFIG
    if path.exists() and (path.parent / "last.pt").exists():
        saved = ControlNetConfig.model_validate(read_yaml(path))
        changed = _diff(saved.model_dump(mode="json"), cfg.controlnet.model_dump(mode="json"), "controlnet.")
        if changed:
            fix = "resume with the saved settings" if resume else "choose a new run_dir"
            raise SynthmedError(f"the ControlNet was started with other {sorted(changed)}; {fix}", path=path)


def _latent_sets(
    cfg: TrainConfig, data: TrainingData, device: torch.device
) -> tuple[Autoencoder, LatentSet, LatentSet, float]:
    """The frozen autoencoder, both splits encoded, and the latent scale factor."""
    autoencoder = load_autoencoder(cfg, device)
    for p in autoencoder.parameters():
        p.requires_grad_(False)
    train_lat, val_lat = _latents(cfg, autoencoder, data)
    mean = cfg.diffusion.latents == "mean"
    scale = latent_scale_factor(train_lat, cfg.diffusion.scale_factor_samples, cfg.seed, posterior_mean=mean)
    train = LatentSet(train_lat, data.train_labels, data.train_spacings, data.train_maps)
    val = LatentSet(val_lat, data.val_labels, data.val_spacings, data.val_maps)
    return autoencoder, train, val, scale


def _augmented(cfg: TrainConfig, autoencoder: Autoencoder, data: TrainingData, train: LatentSet) -> LatentSet:
    """``train`` with diffusion.augment's copies of every training image appended, encoded once (cached by
    the autoencoder weights, the settings and the seed)."""
    aug = cfg.diffusion.augment
    run = RunDir(cfg.run_dir)
    key = f"{file_sha256(run.weights('autoencoder'))}|{aug.model_dump_json()}|{cfg.seed}"
    path = run.latents(hashlib.sha256(key.encode()).hexdigest())
    if path.exists():
        extra = ckpt.load(path)["train"].to(train.latents.device)
    else:
        images = affine_copies(
            data.train_images.cpu(), aug.copies, cfg.seed, aug.rotate_deg, aug.scale, aug.translate
        )
        extra = encode_dataset(autoencoder, images.to(data.train_images.device))
        if is_main():
            ckpt.atomic_save({"train": extra.cpu()}, path)
    console.print(f"diffusion: {aug.copies} augmented copies of each of {len(train.latents)} training images")
    return LatentSet(torch.cat([train.latents, extra]), train.labels.repeat(aug.copies + 1))


def _diffusion_task(cfg: TrainConfig, data: TrainingData, device: torch.device) -> DiffusionTask:
    autoencoder, train, val, scale = _latent_sets(cfg, data, device)
    if cfg.diffusion.augment.copies:
        train = _augmented(cfg, autoencoder, data, train)
    torch.manual_seed(cfg.seed)
    return DiffusionTask(cfg.diffusion, autoencoder, train, val, data.class_names, scale)


def _save_candidates(cfg: TrainConfig, data: TrainingData) -> None:
    """The training label maps at the data's own spacing (spacing-augmented copies come after them), with
    their classes, so generation draws a label map of the class it generates."""
    assert data.train_maps is not None and data.train_spacings is not None and data.train_keys is not None
    assert cfg.data.volume is not None
    n = len(data.train_keys) // (1 + len(cfg.data.volume.train_spacings or []))  # spacing-major blocks
    spacing = data.train_spacings[:n].median(dim=0).values.tolist()
    maps = data.train_maps[:n].cpu()
    maps = maps.to(torch.uint8 if int(maps.max()) < 256 else torch.int16)  # small on disk
    classes = data.train_labels[:n].cpu()
    state = {"label_maps": maps, "keys": data.train_keys[:n], "spacing": spacing, "classes": classes}
    if is_main():
        ckpt.atomic_save(state, RunDir(cfg.run_dir).candidates)


def _controlnet_task(cfg: TrainConfig, data: TrainingData, device: torch.device) -> ControlNetTask:
    autoencoder, train, val, _ = _latent_sets(cfg, data, device)
    meta = RunDir(cfg.run_dir).metadata()
    unet = load_unet(cfg, meta, device)
    if cfg.data.volume is None:
        train, val = _structure_sets(cfg, data, autoencoder, device)
        extra: dict = {"edge_sigma": cfg.controlnet.edge_sigma}
    else:
        assert data.train_maps is not None and data.num_labels is not None
        _save_candidates(cfg, data)
        # The generation quality check's bounds (MAISI): per-label median intensities of the training volumes.
        bounds = channel_bounds(data.train_images.cpu(), data.train_maps.cpu(), data.num_labels)
        as_json = [{str(k): [float(lo), float(hi)] for k, (lo, hi) in b.items()} for b in bounds]
        extra = {
            "num_labels": data.num_labels,
            "encoding": cfg.controlnet.encoding,
            "quality_bounds": as_json[0],
        }
        if len(as_json) > 1:  # contrasts: each channel its own bounds
            extra["channel_quality_bounds"] = as_json
    torch.manual_seed(cfg.seed)
    return ControlNetTask(
        cfg.controlnet,
        cfg.diffusion,
        autoencoder,
        unet,
        train,
        val,
        data.class_names,
        meta.scale_factor,
        extra,
        cfg.control_stretch,
    )


def _structure_sets(
    cfg: TrainConfig, data: TrainingData, autoencoder: Autoencoder, device: torch.device
) -> tuple[LatentSet, LatentSet]:
    """2D ControlNet data: each split's latents with the structure maps to follow. Edges are computed from
    the training images; masks come from the mask files (images without one are left out and listed)."""
    condition, sigma = cfg.controlnet.condition, cfg.controlnet.edge_sigma
    if condition != "mask":
        train_lat, val_lat = _latents(cfg, autoencoder, data)
        train_maps = structure_maps(data.train_images, condition, sigma).to(device)
        val_maps = structure_maps(data.val_images, condition, sigma).to(device)
        return (
            LatentSet(train_lat, data.train_labels, controls=train_maps),
            LatentSet(val_lat, data.val_labels, controls=val_maps),
        )
    train = _mask_set(cfg, data, "train", autoencoder, device)
    val = _mask_set(cfg, data, "val", autoencoder, device)
    if len(val.latents) == 0:  # tiny data sets: validate on a few training pairs rather than not at all
        val = LatentSet(train.latents[:8], train.labels[:8], controls=train.controls[:8])  # type: ignore[index]
    return train, val


def _mask_set(
    cfg: TrainConfig, data: TrainingData, split: str, autoencoder: Autoencoder, device: torch.device
) -> LatentSet:
    """One split's images that have masks (or belong to ``controlnet.empty_mask_classes``), encoded."""
    assert data.records is not None
    if source_kind(require_source(cfg.data)) == "npz":
        raise SynthmedError(
            "the mask ControlNet needs image files with <stem>_mask.png masks; a .npz holds none",
            field="data.source",
        )
    unknown = sorted(set(cfg.controlnet.empty_mask_classes) - set(data.class_names))
    if unknown:
        raise SynthmedError(
            f"controlnet.empty_mask_classes names {unknown}, not classes of this data set {data.class_names}",
            field="controlnet.empty_mask_classes",
        )
    root = source_root(require_source(cfg.data))
    records = [r for r in data.records if r.split == split]
    paths = [root / r.source for r in records]
    empty = [p for p, r in zip(paths, records, strict=True) if r.label in cfg.controlnet.empty_mask_classes]
    pairs = load_image_mask_pairs(paths, cfg.data, lesion_free=empty)
    label_of = {str(p): r.label for p, r in zip(paths, records, strict=True)}
    kept = [label_of[s] for s in pairs.sources]
    for skipped in pairs.skipped:
        console.print(f"controlnet {split}: skipped {skipped.source}: {skipped.reason}", highlight=False)
    if pairs.skipped:
        labelled = [replace(s, label=label_of.get(s.source)) for s in pairs.skipped]
        console.print(
            f"controlnet {split}: {skip_summary(kept, labelled, data.class_names)}", highlight=False
        )
    if split == "train" and not pairs.sources:
        raise SynthmedError(
            "no training image has a mask file (<stem>_mask.png beside it or in a sibling mask/ folder); "
            "set controlnet.empty_mask_classes for lesion-free classes",
            path=cfg.data.source,
        )
    if split == "train":  # a class losing every mask pair is an error, not a silently smaller ControlNet
        hint = " (a mask beside each image), set controlnet.empty_mask_classes for lesion-free classes"
        require_kept_classes(
            label_of.values(), kept, cfg.data.skip_empty_classes, "image", cfg.data.source, hint
        )
    labels = torch.tensor([data.class_names.index(label) for label in kept], dtype=torch.int64)
    latents = encode_dataset(autoencoder, pairs.images.to(device))
    return LatentSet(latents, labels.to(device), controls=pairs.masks.float().to(device))
