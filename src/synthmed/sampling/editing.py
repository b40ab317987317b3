"""Edit real 2D images with a trained run (``synthmed edit``): insert a lesion, remove an artefact or implant,
harmonise an image to another site's or class's look.

Insertion and removal are inpainting by latent blending with RePaint resampling (``sampler.Known``): the
class-conditional model regenerates only the latent cells under the region while the rest follows the input,
and each step is repeated ``resample`` times so the new content adapts to its surroundings. Chosen over a
dedicated inpainting UNet because it needs no extra training: any run can edit. A mask ControlNet, when the
run has one, shapes the new content: insertion follows the region as the lesion mask (so the region is the
new lesion's annotation), removal follows an empty mask (no lesion). Harmonisation is SDEdit: the input is
noised to ``strength`` of the schedule and denoised towards the target label.

The edit runs at model resolution on the preprocessed image; the result is mapped back onto the input's
pixel grid and intensity scale, and only pixels inside the region are replaced. Outside the region the
output is the input, bit for bit (tolerance 0); harmonisation replaces the whole image (at model
resolution, enlarged back to the input's size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from monai.transforms import Resize
from PIL import Image
from scipy.ndimage import binary_dilation

from synthmed.artifacts.files import atomic_write, file_sha256
from synthmed.config import DataConfig, EditConfig
from synthmed.data.masks import check_binary_mask, resize_mask
from synthmed.data.preprocess import FitResize, preprocess
from synthmed.data.readers import read_channels
from synthmed.errors import SynthmedError
from synthmed.models.solvers import MULTISTEP
from synthmed.sampling.pipeline import EditTarget, ImageCondition, Pipeline

DEFAULT_STRENGTH = {"insert": 1.0, "remove": 1.0, "harmonize": 0.5}


@dataclass
class EditResult:
    """An edited image on the input's grid, the same at model resolution, and the edited region."""

    image: np.ndarray  # (H, W) or colour (H, W, C) float32, the input's intensity scale
    model_image: torch.Tensor  # (C, S, S) in [0, 1]
    model_input: torch.Tensor  # (C, S, S) in [0, 1]: the preprocessed input
    region: np.ndarray  # (H, W) uint8 {0, 1}: the pixels replaced (insert: the new lesion's mask)
    row: dict[str, Any]  # provenance


@dataclass(frozen=True)
class Placement:
    """Where an (H, W) image lies in the S x S model grid: ``source`` (rows, cols) of the input maps onto
    ``target`` of the grid, as ``preprocess`` places it (pad: whole image into a centred box; crop: the
    central square onto the whole grid; stretch: whole onto whole)."""

    source: tuple[slice, slice]
    target: tuple[slice, slice]


def placement(shape: tuple[int, int], size: int, resize_mode: str) -> Placement:
    h, w = shape
    full = (slice(0, h), slice(0, w))
    grid = (slice(0, size), slice(0, size))
    if resize_mode == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return Placement((slice(top, top + side), slice(left, left + side)), grid)
    if resize_mode == "pad":
        th, tw = FitResize(size, "longest").target_shape(h, w)
        top, left = (size - th) // 2, (size - tw) // 2  # MONAI SpatialPad: the smaller half before
        return Placement(full, (slice(top, top + th), slice(left, left + tw)))
    return Placement(full, grid)


def to_input_grid(
    model_image: torch.Tensor, pixels: np.ndarray, region: np.ndarray, cfg: DataConfig
) -> np.ndarray:
    """``pixels`` (H, W) or colour (H, W, C) with the ``region`` pixels taken from ``model_image`` (C, S, S)
    in [0, 1], resampled onto the input grid and mapped back to the input's intensities (inverse of the
    percentile scaling, taken over all channels as ``preprocess`` takes it)."""
    place = placement(pixels.shape[:2], cfg.image_size, cfg.resize_mode)
    crop = model_image[:, place.target[0], place.target[1]].float()
    box = (place.source[0].stop - place.source[0].start, place.source[1].stop - place.source[1].start)
    shrinking = box[0] < crop.shape[-2] or box[1] < crop.shape[-1]
    resized = np.asarray(Resize(box, mode="area" if shrinking else "bilinear")(crop))
    values = resized[0] if pixels.ndim == 2 else resized.transpose(1, 2, 0)
    lo, hi = np.percentile(pixels.astype(np.float64), cfg.clip_percentiles)
    out = pixels.copy()
    inside = region[place.source].astype(bool)
    out[place.source][inside] = (lo + values * (hi - lo))[inside]
    return out


def _read(source: Path | np.ndarray, what: str, channels: int = 1) -> tuple[np.ndarray, str | None]:
    """Pixels float32, (H, W) for one channel or (H, W, C) (a grey image repeated into each), and the file's
    sha256 (None for an array given directly)."""
    if isinstance(source, np.ndarray):
        shape_ok = source.ndim == 2 if channels == 1 else source.shape[2:] == (channels,)
        if not shape_ok or not np.isfinite(source).all():
            want = "(H, W)" if channels == 1 else f"(H, W, {channels})"
            raise SynthmedError(f"{what} must be a finite {want} array, got shape {source.shape}", field=what)
        return source.astype(np.float32), None
    return read_channels(Path(source), channels), file_sha256(Path(source))


def _read_region(
    source: Path | np.ndarray, shape: tuple[int, int], what: str
) -> tuple[np.ndarray, str | None]:
    region, sha = _read(source, what)
    where = Path(source) if not isinstance(source, np.ndarray) else Path(f"<{what} array>")
    if region.shape != shape:
        raise SynthmedError(
            f"{what} is {region.shape[0]} x {region.shape[1]} (H x W) but the image is "
            f"{shape[0]} x {shape[1]}; draw it on the image it edits",
            path=where,
        )
    check_binary_mask(region, where)
    if not region.any():
        raise SynthmedError(f"{what} is empty: nothing to edit", path=where)
    return (region > 0).astype(np.uint8), sha


def _model_region(region: np.ndarray, cfg: DataConfig, shape: tuple[int, int], what: str) -> torch.Tensor:
    """The region on the model grid, grown by one pixel so it covers every input pixel it replaces."""
    place = placement(shape, cfg.image_size, cfg.resize_mode)
    outside = region.copy()
    outside[place.source] = 0
    if outside.any():
        raise SynthmedError(
            f"{what} reaches beyond the central square the model sees (resize_mode crop)", field=what
        )
    small = resize_mask(region, cfg)
    if not small.any():
        raise SynthmedError(
            f"{what} vanishes at the model's {cfg.image_size} px resolution; draw a larger region", field=what
        )
    return torch.from_numpy(binary_dilation(small, iterations=1).astype(np.float32))[None]


def edit_image(
    pipe: Pipeline,
    operation: str,
    image: Path | np.ndarray,
    region: Path | np.ndarray | None = None,
    *,
    label: str | None = None,
    strength: float | None = None,
    steps: int = 50,
    resample: int = 2,
    guidance: float | None = None,
    conditioning_scale: float = 1.0,
    seed: int = 0,
    sampler: str | None = None,
) -> EditResult:
    """One edit (see module docstring): ``insert`` (needs ``region`` and ``label``), ``remove`` (needs the
    artefact ``region``; ``label`` defaults to unconditional) or ``harmonize`` (``region`` optional)."""
    if operation not in DEFAULT_STRENGTH:
        raise SynthmedError(
            f"unknown edit '{operation}'; choose insert, remove or harmonize", field="operation"
        )
    if pipe.cfg.data.volume is not None:
        raise SynthmedError("editing works on 2D runs; this run is 3D", path=pipe.run_dir)
    if operation in ("insert", "remove") and region is None:
        raise SynthmedError(f"edit {operation} needs a region mask", field="region")
    if operation == "insert" and label is None:
        raise SynthmedError(
            f"edit insert needs the lesion's --label, one of {pipe.class_names}", field="label"
        )
    strength = DEFAULT_STRENGTH[operation] if strength is None else strength
    if not 0.0 <= strength <= 1.0:
        raise SynthmedError(f"strength must be within [0, 1], got {strength}", field="strength")
    if resample < 1 or steps < 1:
        raise SynthmedError("steps and resample must be at least 1", field="steps")
    cfg = pipe.cfg.data
    pixels, image_sha = _read(image, "image", pipe.cfg.image_channels)
    model_input = torch.from_numpy(preprocess(pixels, cfg))
    shape = pixels.shape[:2]
    if region is None:
        full, region_sha = np.ones(shape, np.uint8), None
        model_region = None
    else:
        full, region_sha = _read_region(region, shape, "region")
        model_region = _model_region(full, cfg, shape, "region")
    sampler = sampler or pipe.samplers[0]
    if sampler in MULTISTEP and resample > 1:  # their history of model outputs forbids repeating a step
        raise SynthmedError("resample > 1 needs a one-step sampler: ddim, ddpm or rflow", field="resample")
    control = _control(pipe, operation, full, conditioning_scale)
    edited = pipe.sample_batch(
        [seed],
        label,
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        control=control,
        edit=EditTarget(
            model_input[None], None if model_region is None else model_region[None], strength, resample
        ),
    )[0]
    if model_region is not None:  # outside the region the model-resolution result is the input too
        edited = model_region * edited + (1 - model_region) * model_input
    out = to_input_grid(edited, pixels, full, cfg)
    guidance = pipe.guidance(guidance)
    row = pipe.manifest_row(seed, [seed], pipe.resolve_label(label), steps, guidance, sampler) | {
        "operation": operation,
        "image_sha256": image_sha,
        "region_sha256": region_sha,
        "strength": strength,
        "resample": resample,
        "conditioning_scale": conditioning_scale if control is not None else None,
        "controlnet_sha256": pipe.require_controlnet().sha256 if control is not None else None,
        "max_abs_change_outside_region": float(np.abs(out - pixels)[full == 0].max(initial=0.0)),
        "region_fraction": float(full.mean()),
    }
    return EditResult(out, edited, model_input, full, row)


def _control(pipe: Pipeline, operation: str, region: np.ndarray, scale: float) -> ImageCondition | None:
    """Insertion follows the region as the lesion mask, removal an empty mask (with a mask ControlNet)."""
    if operation == "harmonize" or pipe.controlnet is None or scale == 0:
        return None
    maps = torch.zeros(1, 1, pipe.image_size, pipe.image_size)
    if operation == "insert":
        maps[0, 0] = torch.from_numpy(resize_mask(region, pipe.cfg.data).astype(np.float32))
    return ImageCondition(maps, "mask", scale)


def save_edit(result: EditResult, out: Path) -> list[Path]:
    """Write the edited image (.png: the input's 8/16-bit integers; .tif: float32), ``<stem>.json`` with its
    provenance and, for insertions, the new lesion mask ``<stem>_mask.png``; returns the files written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise SynthmedError("the output must be a .png or .tif file", path=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_image(result.image, out, suffix)
    written = [out]
    if result.row["operation"] == "insert":
        mask_path = out.with_name(f"{out.stem}_mask.png")
        _atomic_save(Image.fromarray(result.region * 255), mask_path)
        written.append(mask_path)
    meta = out.with_suffix(".json")
    meta.write_text(json.dumps(result.row, indent=1))
    return [*written, meta]


def _write_image(image: np.ndarray, out: Path, suffix: str) -> None:
    if suffix != ".png" and image.ndim == 3:  # Pillow has no float colour mode
        with atomic_write(out) as tmp:
            tifffile.imwrite(
                tmp, image.astype(np.float32), photometric="rgb" if image.shape[2] == 3 else None
            )
        return
    if suffix != ".png":
        _atomic_save(Image.fromarray(image.astype(np.float32)), out)
        return
    rounded = np.round(image)
    for dtype in (np.uint8,) if image.ndim == 3 else (np.uint8, np.uint16):  # PNG colour: 8 bits here
        if rounded.min() >= 0 and rounded.max() <= np.iinfo(dtype).max:
            _atomic_save(Image.fromarray(rounded.astype(dtype)), out)
            return
    raise SynthmedError("the input's values do not fit a 16-bit PNG; write a .tif instead", path=out)


def _atomic_save(img: Image.Image, path: Path) -> None:
    with atomic_write(path) as tmp:
        img.save(tmp, format="TIFF" if path.suffix.lower() in (".tif", ".tiff") else "PNG")


class EditingPipeline(Pipeline):
    """The Pipeline that ``synthmed.load`` returns: generation, plus :func:`edit_image` as a method."""

    def edit(
        self, operation: str, image: Path | np.ndarray, region: Any = None, **options: Any
    ) -> EditResult:
        """`synthmed edit` in Python: insert / remove / harmonize, see :func:`edit_image`."""
        return edit_image(self, operation, image, region, **options)


def edit_from_config(cfg: EditConfig) -> list[Path]:
    """`synthmed edit`: load the run, edit, write the outputs."""
    pipe = Pipeline.load(cfg.run_dir, device=cfg.device, precision=cfg.precision, checkpoint=cfg.checkpoint)
    result = edit_image(
        pipe,
        cfg.operation,
        cfg.image,
        cfg.region,
        label=cfg.label,
        strength=cfg.strength,
        steps=cfg.steps,
        resample=cfg.resample,
        guidance=cfg.guidance,
        conditioning_scale=cfg.conditioning_scale,
        seed=cfg.seed,
        sampler=cfg.sampler,
    )
    return save_edit(result, cfg.out)
