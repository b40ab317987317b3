"""Segmentation masks paired with images by file name, read as binary {0, 1} and resized like their image.

Pairing follows the BUSI convention: ``<stem>_mask.<ext>`` plus ``<stem>_mask_<n>.<ext>`` for further
lesions, beside the image or in a sibling ``mask``/``masks`` folder of an ``images``/``image`` folder,
in any format the image readers take (PNG, GIF, TIFF, BMP, JPEG). Several files for one image are merged
(union). A mask file in a lossless format must be two-valued {0, v} (0/1, 0/255...): anything else is an
error rather than a guessed threshold. JPEG compression leaves grey levels along a mask's edges, so a JPEG
mask is thresholded at half its maximum, with a warning. An all-zero mask is valid (an image without
lesion, e.g. BUSI 'normal'). A mask that resizing breaks into many more pieces (thin vessels at a small
image size) is reported.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, Resize, Transform
from scipy import ndimage

from synthmed.config import DataConfig
from synthmed.data.enhance import Enhancement
from synthmed.data.preprocess import FitResize, PercentileScale, build_transform, preprocess
from synthmed.data.readers import IMAGE_EXTENSIONS, LOSSY_EXTENSIONS, read_channels, read_image, split_frame
from synthmed.data.sources import Skipped, handle_failure
from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)

_IMAGE_DIRS = frozenset({"images", "image"})
_MASK_DIRS = frozenset({"mask", "masks"})
#: A resized mask in more than this many times as many connected pieces as the original is reported.
FRAGMENTS = 2


@dataclass
class MaskPairs:
    """Preprocessed images with their aligned masks, and the images left out with the reason."""

    images: torch.Tensor  # (N, 1, S, S) float32 in [0, 1]
    masks: torch.Tensor  # (N, 1, S, S) uint8 in {0, 1}
    sources: list[str]  # the N image paths, in order
    skipped: list[Skipped] = field(default_factory=list)
    fragmented: list[tuple[str, int, int]] = field(default_factory=list)  # (image, pieces before, after)


def mask_folders(image: Path) -> list[Path]:
    """Folders searched for ``image``'s masks: its own, plus mask/masks siblings of an images folder."""
    folders = [image.parent]
    if image.parent.name.lower() in _IMAGE_DIRS:
        # Listing the parent (not guessing names) also finds 'Mask' or 'MASKS' on case-sensitive disks.
        siblings = _listdir(image.parent.parent)
        folders += sorted(p for p in siblings if p.is_dir() and p.name.lower() in _MASK_DIRS)
    return folders


def find_mask_files(image: Path) -> list[Path]:
    """Sorted mask files of ``image`` (``<stem>_mask.<ext>``, ``<stem>_mask_<n>.<ext>``); [] when none."""
    image = Path(image)
    # Stems like 'benign (1)' or 'scan [a]' are glob syntax, so match listed names with an escaped regex.
    name = re.compile(re.escape(image.stem) + r"_(?i:mask)(?:_\d+)?(\.[^.]+)")
    found = []
    for folder in mask_folders(image):
        for path in _listdir(folder):
            match = name.fullmatch(path.name)
            if match and match.group(1).lower() in IMAGE_EXTENSIONS and path.is_file():
                found.append(path)
    return sorted(found)


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise SynthmedError(f"cannot list folder ({exc.strerror or exc})", path=folder) from exc


def read_mask(paths: Sequence[Path], image_shape: tuple[int, int]) -> np.ndarray:
    """The union of the mask files ``paths`` as uint8 {0, 1} (H, W); each must match ``image_shape``."""
    if not paths:
        raise ValueError("read_mask needs at least one mask file")
    union = np.zeros(image_shape, dtype=bool)
    for path in paths:
        union |= _read_one_mask(Path(path), image_shape)
    return union.astype(np.uint8)


def _read_one_mask(path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    mask = read_image(path)
    if mask.shape != tuple(image_shape):
        raise SynthmedError(
            f"mask is {mask.shape[0]} x {mask.shape[1]} (H x W) but its image is "
            f"{image_shape[0]} x {image_shape[1]}; save the mask at its image's size "
            "(a size mismatch usually means the wrong image/mask pairing)",
            path=path,
        )
    if path.suffix.lower() in LOSSY_EXTENSIONS:
        return mask > mask.max() / 2  # compression's grey levels along the edges
    check_binary_mask(mask, path)
    return mask > 0


def check_binary_mask(mask: np.ndarray, path: Path) -> None:
    """A mask must hold two values {0, v} (or only one): a guessed threshold could move a lesion border."""
    values = np.unique(mask)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        raise SynthmedError(
            f"not a binary mask: {values.size} distinct values (from {values[0]:g} to {values[-1]:g}); "
            "save it as 0/255 or 0/1 in a lossless format such as PNG",
            path=path,
        )


class NearestFitResize(FitResize):
    """FitResize's crop and target shape, sampled nearest-neighbour so a mask stays binary and aligned.

    'nearest-exact' samples pixel centres like the image's area/bilinear resampling; torch's plain
    'nearest' picks the top-left source pixel and would shift the mask by up to half a source pixel.
    """

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.fit == "shortest":
            # FitResize to the short side crops its own centred square and resamples nothing.
            img = FitResize(min(img.shape[-2:]), "shortest")(img)
        return Resize(self.target_shape(*img.shape[-2:]), mode="nearest-exact")(img)


@functools.lru_cache(maxsize=16)
def build_mask_transform(size: int, resize_mode: str) -> Compose:
    """The image pipeline of ``build_transform`` without intensity steps, resampling nearest-neighbour."""
    return Compose(geometry_steps(build_transform(size, resize_mode, (0.0, 100.0))))


def geometry_steps(image_transform: Compose) -> list[Transform]:
    """The steps of an image pipeline that move pixels, for its masks: intensity scaling and enhancement
    (CLAHE, sharpening) are left out, since they would turn a binary mask into grey levels."""
    return [
        NearestFitResize(step.size, step.fit) if isinstance(step, FitResize) else step
        for step in image_transform.transforms
        if not isinstance(step, PercentileScale | Enhancement)
    ]


def resize_mask(mask: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """An (H, W) mask -> uint8 {0, 1} (S, S), with the geometry ``preprocess`` gives its image."""
    transform = build_mask_transform(cfg.image_size, cfg.resize_mode)
    out = transform(torch.from_numpy(np.asarray(mask, dtype=np.float32))[None])
    return (np.asarray(torch.as_tensor(out))[0] > 0.5).astype(np.uint8)


def pieces(mask: np.ndarray) -> int:
    """Connected pieces (8-connected) of a binary mask."""
    return int(ndimage.label(mask, structure=np.ones((3, 3)))[1])


def fragmentation(mask: np.ndarray, resized: np.ndarray) -> tuple[int, int] | None:
    """(pieces before, after) when resizing broke ``mask`` into more than FRAGMENTS times as many pieces."""
    before, after = pieces(mask), pieces(resized)
    return (before, after) if after > FRAGMENTS * max(before, 1) else None


def warn_fragmented(fragmented: Sequence[tuple[str, int, int]], size: int) -> None:
    if fragmented:
        source, before, after = max(fragmented, key=lambda f: f[2] / max(f[1], 1))
        log.warning(
            "%d mask(s) break into many more pieces when resized to %d px (e.g. %s: %d -> %d pieces): thin "
            "structures such as vessels do not survive this size; use a larger data.image_size",
            len(fragmented),
            size,
            source,
            before,
            after,
        )


def _warn_lossy(files: Sequence[Path]) -> None:
    lossy = [f for f in files if f.suffix.lower() in LOSSY_EXTENSIONS]
    if lossy:
        log.warning(
            "%d mask file(s) are JPEG (e.g. %s): lossy compression leaves grey levels along their edges, so "
            "they were thresholded at half their maximum and their edges may be off; save masks as PNG",
            len(lossy),
            lossy[0],
        )


def load_image_mask_pairs(
    images: Sequence[Path], cfg: DataConfig, lesion_free: Collection[Path] = ()
) -> MaskPairs:
    """Load ``images`` with their masks. Images without a mask file are skipped (a data set may label
    only some images), except those in ``lesion_free``, whose missing mask is empty (BUSI 'normal');
    unreadable images or masks are skipped or raised per ``cfg.on_error``."""
    lesion_free = {Path(p) for p in lesion_free}
    size, channels = cfg.image_size, cfg.channels or 1
    pixels = np.empty((len(images), channels, size, size), dtype=np.float32)
    masks = np.empty((len(images), 1, size, size), dtype=np.uint8)
    sources: list[str] = []
    skipped: list[Skipped] = []
    used: list[Path] = []
    fragmented: list[tuple[str, int, int]] = []
    for path in map(Path, images):
        if split_frame(str(path))[1] is not None:
            skipped.append(Skipped(str(path), "a frame of a multi-frame DICOM: masks pair with whole files"))
            continue
        try:
            files = find_mask_files(path)
            if not files and path in lesion_free:
                image = read_channels(path, channels)
                pixels[len(sources)], masks[len(sources)] = preprocess(image, cfg), 0
            elif not files:
                reason = (
                    f"no mask file {path.stem}_mask.<ext> (PNG, GIF, TIFF, BMP or JPEG) next to it or in a "
                    "sibling mask/ folder"
                )
                skipped.append(Skipped(str(path), reason))
                continue
            else:
                image = read_channels(path, channels)
                mask = read_mask(files, image.shape[:2])
                small = resize_mask(mask, cfg)
                pixels[len(sources)], masks[len(sources)] = preprocess(image, cfg), small[None]
                broken = fragmentation(mask, small)
                if broken:
                    fragmented.append((str(path), *broken))
                used += files
        except SynthmedError as exc:
            handle_failure(exc, str(path), skipped, cfg.on_error)
            continue
        sources.append(str(path))
    _warn_lossy(used)
    warn_fragmented(fragmented, cfg.image_size)
    n = len(sources)
    return MaskPairs(torch.from_numpy(pixels[:n]), torch.from_numpy(masks[:n]), sources, skipped, fragmented)
