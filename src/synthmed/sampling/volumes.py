"""3D generation to a folder (``synthmed generate`` on a 3D run): paired image and label map NIfTI files,
2.5D previews, the quality check with re-tries, and the provenance manifest.

Each output has a base seed (``seed .. seed+count-1``). Its label map is the given ``--label-map`` or one
drawn by that seed from the run's candidate label maps (the training label maps, MAISI's mask database),
optionally deformed. A volume failing the quality check (a structure's median intensity outside the
training range) is generated again for the same label map with a derived seed, up to ``qc_retries`` times;
the manifest records every attempt. An interrupted job continues where it stopped.

Output layout (readable back by `synthmed.data.volumes.discover_volumes`, flat layout)::

    OUT/syn_<seed>_image.nii.gz   float32 in [0, 1], affine with the requested spacing; several channels
                                  (contrasts): a 4D NIfTI (X, Y, Z, C)
    OUT/syn_<seed>_label.nii.gz   uint8/int16 label map on the same grid (when a label map conditions it)
    OUT/previews/syn_<seed>.png   axial | coronal | sagittal mid-slices with the labels overlaid (one row
                                  per channel)
    OUT/manifest.jsonl
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing
from monai.utils import convert_to_tensor

from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.manifest import MANIFEST, SETTINGS, append_rows, drop_cut_last_line, read_manifest
from synthmed.artifacts.run import RunDir
from synthmed.config import GenerateConfig
from synthmed.data.volumes import VolumeConfig, load_label_map, save_nifti
from synthmed.errors import SynthmedError
from synthmed.evaluation.previews import save_three_view_preview
from synthmed.evaluation.quality import check_channels
from synthmed.models.conditioning import check_label_range
from synthmed.progress import progress_bar
from synthmed.runtime import step_seed
from synthmed.sampling.label_maps import CandidateLabelMaps, check_crop, fit, keeping_size, lost_shares
from synthmed.sampling.pipeline import Pipeline, VolumeCondition

# Settings that must agree for an existing volume in an output folder to count as already generated.
RESUME_SETTINGS = (
    *SETTINGS,
    "distilled_sha256",
    "size",
    "spacing",
    "conditioning_scale",
    "label_map_source",
    "augment_label_maps",
)


@dataclass
class VolumeLabelMap:
    """One output's label map on the output grid, its affine and where it came from."""

    label_map: torch.Tensor | None  # (1, X, Y, Z) int64
    affine: np.ndarray
    provenance: dict[str, Any]


def centred_affine(spacing: tuple[float, ...], size: tuple[int, ...]) -> np.ndarray:
    """RAS affine with the given spacing whose grid is centred on the origin (no scanner position exists)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(size, spacing, strict=True)]
    return affine


class LabelMaps:
    """Where each output's label map comes from: a user file, the run's candidates, or none (image only)."""

    def __init__(
        self, pipe: Pipeline, cfg: GenerateConfig, size: tuple[int, int, int], spacing: tuple
    ) -> None:
        self.size, self.spacing, self.augment = size, spacing, cfg.augment_label_maps
        self.fixed: VolumeLabelMap | None = None
        self.candidates: CandidateLabelMaps | None = None
        self.source = "none"  # for the manifest: file sha256, "candidates" or "none"
        if cfg.label_map is not None:
            cn = pipe.require_controlnet()
            grid = VolumeConfig(size=size, spacing=spacing)
            label, affine = load_label_map(cfg.label_map, grid)
            check_label_range(label, cn.meta.num_labels, cfg.label_map)
            full = load_label_map(cfg.label_map, grid, crop=False)[0]
            check_crop(
                lost_shares(full, label), keeping_size([full]), size, cfg.max_label_loss, str(cfg.label_map)
            )
            info = {"file": str(cfg.label_map), "sha256": file_sha256(cfg.label_map)}
            self.fixed = VolumeLabelMap(label, affine, info)
            self.source = info["sha256"]
        elif pipe.controlnet is not None:
            state = ckpt.load(RunDir(pipe.run_dir).candidates)
            keep = torch.ones(len(state["keys"]), dtype=torch.bool)
            if cfg.label is not None:  # the label maps of the class being generated
                keep = state["classes"] == pipe.label_index(cfg.label)
            keys = [k for k, kept in zip(state["keys"], keep.tolist(), strict=True) if kept]
            self.candidates = CandidateLabelMaps(state["label_maps"][keep].long(), keys, state["spacing"])
            self.source = "candidates"
            self._check_candidate_crop(cfg.max_label_loss)

    def _check_candidate_crop(self, limit: float) -> None:
        """The training label maps, at the requested spacing, against a smaller requested size."""
        assert self.candidates is not None
        grid = np.array(self.candidates.labels.shape[2:]) * np.array(self.candidates.spacing) / self.spacing
        if all(g <= s for g, s in zip(grid, self.size, strict=True)):
            return  # every map fits: nothing can be cut
        full = [_resample(m, self.candidates.spacing, self.spacing) for m in self.candidates.labels]
        lost = lost_shares(torch.stack(full), torch.stack([fit(m, self.size) for m in full]))
        check_crop(lost, keeping_size(full), self.size, limit, "the run's training label maps")

    def for_seed(self, seed: int) -> VolumeLabelMap:
        if self.fixed is not None:
            return self.fixed
        affine = centred_affine(self.spacing, self.size)
        if self.candidates is None:
            return VolumeLabelMap(None, affine, {"none": "this run has no ControlNet: image only"})
        label, info = self.candidates.sample(seed, augment=self.augment)
        label = fit(_resample(label, self.candidates.spacing, self.spacing), self.size)
        return VolumeLabelMap(label, affine, {"candidate": info})


def _resample(label: torch.Tensor, source: tuple[float, ...], target: tuple[float, ...]) -> torch.Tensor:
    """A candidate map from its training spacing to the requested one (nearest: labels stay integers)."""
    if np.allclose(source, target):
        return label
    meta = MetaTensor(label.float(), affine=torch.diag(torch.tensor([*source, 1.0], dtype=torch.float64)))
    out = Spacing(pixdim=target, mode="nearest")(meta)
    return convert_to_tensor(out, track_meta=False).round().long()


def generate_volumes(pipe: Pipeline, cfg: GenerateConfig, progress: bool = True) -> Path:
    """`synthmed generate` for a loaded 3D run (sampler already resolved); see the module docstring."""
    vol = pipe.cfg.data.volume
    assert vol is not None
    if cfg.privacy_filter:
        raise SynthmedError("the privacy filter works on 2D images only", field="privacy_filter")
    pipe.tile_size, pipe.tile_overlap = cfg.tile_size, cfg.tile_overlap
    size = cfg.size or vol.size
    pipe.latent_shape_for(size)  # checks divisibility before any work
    spacing = cfg.spacing or pipe.default_spacing
    maps = LabelMaps(pipe, cfg, size, spacing)
    settings = _settings(pipe, cfg, size, spacing, maps)
    todo = _pending(cfg, settings)
    with progress_bar("generate", cfg.count, completed=cfg.count - len(todo), enabled=progress) as bar:
        for i in range(0, len(todo), cfg.batch_size):
            batch = todo[i : i + cfg.batch_size]
            conditions = [maps.for_seed(s) for s in batch]
            images = _sample(pipe, cfg, batch, conditions, size, spacing)
            for seed, image, cond in zip(batch, images, conditions, strict=True):
                image, attempts = _quality_checked(pipe, cfg, seed, image, cond, size, spacing)
                _write(cfg, seed, image, cond, settings | {"batch_seeds": batch, "attempts": attempts})
                bar.advance()
    failed = quality_failures(cfg)
    if failed and cfg.qc_strict:
        raise SynthmedError(
            f"{len(failed)} of {cfg.count} volumes failed the intensity quality check after "
            f"{cfg.qc_retries} retries and were not kept (--qc-strict; seeds {failed}); more --qc-retries, "
            "a longer-trained run, or other label maps",
            path=cfg.out,
        )
    return cfg.out


def quality_failures(cfg: GenerateConfig) -> list[int]:
    """Base seeds of this request whose volume failed the quality check after every retry (kept, or under
    ``qc_strict`` dropped), from the output folder's manifest."""
    seeds = range(cfg.seed, cfg.seed + cfg.count)
    rows = {r["seed"]: r for r in read_manifest(cfg.out / MANIFEST) if r.get("seed") in seeds}
    return sorted(s for s, r in rows.items() if (r.get("quality") or {}).get("passed") is False)


def regenerate_volume(
    pipe: Pipeline, row: dict[str, Any]
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
    """Re-create one manifest row's volume (C, X, Y, Z), its affine and the label map it was generated for
    (None without a ControlNet), bit for bit on the same device and precision: the same label map (file
    checked by hash, or the same candidate and deformation) and seeds."""
    for key in ("autoencoder_sha256", "diffusion_sha256", "controlnet_sha256"):
        have = (
            pipe.controlnet.sha256 if key == "controlnet_sha256" and pipe.controlnet else pipe.hashes.get(key)
        )
        if row.get(key) != have:
            raise SynthmedError(f"manifest row was made with other weights ({key} differs)", field=key)
    pipe.check_student(row)
    source = row["label_map"].get("file")
    cfg = GenerateConfig(
        run_dir=pipe.run_dir,
        out=pipe.run_dir,  # unused: nothing is written
        label=row["label"],
        steps=row["steps"],
        guidance=row["guidance"],
        sampler=row["sampler"],
        label_map=Path(source) if source else None,
        augment_label_maps=row["augment_label_maps"],
        conditioning_scale=row["conditioning_scale"],
        tile_size=row["tile_size"],
        tile_overlap=row["tile_overlap"],
    )
    size, spacing = tuple(row["size"]), tuple(row["spacing"])
    pipe.tile_size, pipe.tile_overlap = cfg.tile_size, cfg.tile_overlap
    maps = LabelMaps(pipe, cfg, size, spacing)
    if maps.source != row["label_map_source"]:
        raise SynthmedError(
            "the label map file changed since the row was written (sha256 differs)", path=source
        )
    seed, batch = int(row["seed"]), [int(s) for s in row["batch_seeds"]]
    retried = int(row["image_seed"]) != seed  # a retry was drawn alone, for its base seed's label map
    conditions = [maps.for_seed(seed)] if retried else [maps.for_seed(s) for s in batch]
    images = _sample(pipe, cfg, batch, conditions, size, spacing)
    mine = conditions[0 if retried else batch.index(seed)]
    return images[batch.index(int(row["image_seed"]))], mine.affine, mine.label_map


def label_file_beside(image: Path) -> Path:
    """Where a volume's label map goes: ``x.nii.gz`` -> ``x_label.nii.gz`` (``x_image.nii.gz`` too)."""
    name = image.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
    stem = stem.removesuffix("_image")
    return image.with_name(f"{stem}_label.nii.gz")


def label_dtype(label_map: torch.Tensor) -> type:
    """The smallest integer type that holds the labels exactly."""
    return np.uint8 if int(label_map.max()) < 256 else np.int16


def _pending(cfg: GenerateConfig, settings: dict[str, Any]) -> list[int]:
    """Seeds still to generate; finished ones of an interrupted run with the same settings are kept."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    manifest = cfg.out / MANIFEST
    drop_cut_last_line(manifest)
    done = set()
    for row in read_manifest(manifest):
        if not (cfg.out / str(row.get("file"))).exists() or row.get("label") != cfg.label:
            continue
        differing = [k for k in RESUME_SETTINGS if row.get(k) != settings.get(k)]
        if differing and row["seed"] in range(cfg.seed, cfg.seed + cfg.count):
            raise SynthmedError(
                f"seed {row['seed']} was already generated there with other settings ({differing}); "
                "choose another --out or --seed",
                path=cfg.out,
            )
        done.add(row["seed"])
    return [s for s in range(cfg.seed, cfg.seed + cfg.count) if s not in done]


def _sample(
    pipe: Pipeline,
    cfg: GenerateConfig,
    seeds: list[int],
    conditions: list[VolumeLabelMap],
    size: tuple[int, int, int],
    spacing: tuple,
) -> torch.Tensor:
    label_maps = None
    if conditions[0].label_map is not None:
        label_maps = torch.stack([c.label_map for c in conditions if c.label_map is not None])
    volume = VolumeCondition(spacing, size, label_maps, cfg.scale)
    return pipe.sample_batch(
        seeds, cfg.label, steps=cfg.steps, guidance=cfg.guidance, sampler=str(cfg.sampler), volume=volume
    )


def _quality_checked(
    pipe: Pipeline,
    cfg: GenerateConfig,
    seed: int,
    image: torch.Tensor,
    cond: VolumeLabelMap,
    size: tuple[int, int, int],
    spacing: tuple,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The first image (this one, then retries with derived seeds) that passes, else the last tried."""
    if cond.label_map is None or pipe.controlnet is None:
        return image, [{"seed": seed, "quality": None}]
    bounds = pipe.controlnet.meta.bounds_per_channel()
    attempts: list[dict[str, Any]] = [
        {"seed": seed, "quality": check_channels(image, cond.label_map, bounds)}
    ]
    for k in range(1, cfg.qc_retries + 1):
        if attempts[-1]["quality"]["passed"]:
            break
        retry = step_seed(seed, k)
        image = _sample(pipe, cfg, [retry], [cond], size, spacing)[0]
        attempts.append({"seed": retry, "quality": check_channels(image, cond.label_map, bounds)})
    return image, attempts


def _settings(
    pipe: Pipeline, cfg: GenerateConfig, size: tuple, spacing: tuple, maps: LabelMaps
) -> dict[str, Any]:
    row = pipe.manifest_row(cfg.seed, [], cfg.label, cfg.steps, cfg.guidance, str(cfg.sampler))
    row.pop("image_size")
    extra: dict[str, Any] = {"size": list(size), "spacing": list(spacing), "conditioning_scale": cfg.scale}
    extra |= {"label_map_source": maps.source, "augment_label_maps": cfg.augment_label_maps}
    extra |= {"tile_size": cfg.tile_size, "tile_overlap": cfg.tile_overlap, "qc_retries": cfg.qc_retries}
    if pipe.controlnet is not None:
        extra["controlnet_sha256"] = pipe.controlnet.sha256
    if pipe.cfg.image_channels > 1:  # a 4D NIfTI (X, Y, Z, C): what each channel is (nnU-Net export)
        extra["channel_names"] = pipe.cfg.data.channel_names
    return row | extra


def _write(
    cfg: GenerateConfig, seed: int, image: torch.Tensor, cond: VolumeLabelMap, row: dict[str, Any]
) -> None:
    stem = f"syn_{seed:08d}"
    row = row | {"seed": seed, "file": f"{stem}_image.nii.gz", "label_file": None}
    row |= {"image_seed": row["attempts"][-1]["seed"], "label_map": cond.provenance}
    if row["image_seed"] != seed:  # a quality-check retry was drawn alone
        row["batch_seeds"] = [row["image_seed"]]
    row["quality"] = row["attempts"][-1]["quality"]
    row["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    if cfg.qc_strict and row["quality"] is not None and not row["quality"]["passed"]:
        tries = len(row["attempts"])
        row |= {"file": None, "dropped": f"quality: failed the intensity check in all {tries} attempts"}
        append_rows(cfg.out / MANIFEST, [row])
        return
    save_nifti(image, cond.affine, cfg.out / row["file"], dtype=np.float32)
    row["sha256"] = file_sha256(cfg.out / row["file"])  # the catalogue checks the file by it
    if cond.label_map is not None:
        row["label_file"] = f"{stem}_label.nii.gz"
        dtype = label_dtype(cond.label_map)
        save_nifti(cond.label_map, cond.affine, cfg.out / row["label_file"], dtype=dtype)
    row["preview"] = f"previews/{stem}.png"
    save_three_view_preview(image, cond.label_map, cfg.out / row["preview"])
    append_rows(cfg.out / MANIFEST, [row])
