"""Content checks every input route shares: a normalised pixel hash for identical and near-identical images,
the duplicate pairs it finds, and warnings for small classes.

The pixel hash is computed from decoded pixels, so a copy of an image in another file format, bit depth or
size (same aspect ratio), or with a linear change of brightness and contrast, hashes (nearly) alike: file
hashes miss all of these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from synthmed.data.readers import split_frame
from synthmed.data.sources import SPLITS, Record, Skipped
from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)

#: Cells per axis of the pixel hash (8 x 8 in 2D, 8 x 8 x 8 in 3D).
CELLS = 8
#: Near-identical: root-mean-square difference of two hashes' cells at most this fraction of the intensity
#: range. Measured: re-encoded copies (PNG, JPEG quality 75, grey exports of RGB) stay below 0.007 on
#: Kermany, BUSI and RetinaMNIST; distinct images of those sets and of the MSD hippocampus are 0.02 apart
#: or more, except real near-copies (BUSI and RetinaMNIST ship some).
NEAR = 0.01
#: Fewer images than this of a class in a split get a warning.
MIN_PER_CLASS_SPLIT = 10
_ROWS = 1024  # rows of the distance matrix computed at once (memory)


def pixel_hash(image: npt.ArrayLike) -> str:
    """Hex code of one grey 2D or 3D image: mean intensity of CELLS equal cells per axis, min-max scaled to
    0-255 (a constant image gives zeros)."""
    cells = np.asarray(image, dtype=np.float32).squeeze()
    if cells.ndim not in (2, 3):
        raise ValueError(f"pixel_hash takes a 2D or 3D image, got shape {cells.shape}")
    for axis, n in enumerate(cells.shape):
        edges = np.arange(CELLS) * n // CELLS  # an axis shorter than CELLS repeats its pixels
        shape = [1] * cells.ndim
        shape[axis] = CELLS
        counts = np.diff(np.append(edges, n)).clip(min=1).reshape(shape)
        cells = np.add.reduceat(cells, edges, axis=axis) / counts
    cells = cells.ravel().astype(np.float64)
    lo, hi = cells.min(), cells.max()
    scaled = np.zeros_like(cells) if not hi > lo else (cells - lo) * (255 / (hi - lo))
    return np.round(scaled).astype(np.uint8).tobytes().hex()


def _codes(hashes: Sequence[str]) -> np.ndarray:
    if len({len(h) for h in hashes}) > 1:
        raise ValueError("pixel hashes of different lengths (2D and 3D images) in one set")
    return np.stack([np.frombuffer(bytes.fromhex(h), np.uint8) for h in hashes]).astype(np.float64)


def near_pairs(a: Sequence[str], b: Sequence[str] | None = None) -> list[tuple[int, int]]:
    """Index pairs (i, j) of near-identical hashes: ``a[i]`` and ``b[j]``, or within ``a`` (i < j).
    2D and 3D hashes (different lengths) never match."""
    if not a or (b is not None and (not b or len(b[0]) != len(a[0]))):
        return []
    left = _codes(a)
    right = left if b is None else _codes(b)
    limit = (NEAR * 255) ** 2 * left.shape[1]  # squared distance summed over cells
    right_sq = (right**2).sum(1)
    pairs = []
    for start in range(0, len(left), _ROWS):
        rows = left[start : start + _ROWS]
        dist = (rows**2).sum(1)[:, None] + right_sq[None] - 2 * rows @ right.T
        for i, j in zip(*np.nonzero(dist <= limit), strict=True):
            if b is not None or i + start < j:
                pairs.append((int(i) + start, int(j)))
    return pairs


@dataclass(frozen=True)
class Duplicate:
    """Two records of one content: 'identical' (same bytes) or 'near-identical' (same normalised pixels)."""

    first: Record
    other: Record

    @property
    def kind(self) -> str:
        return "identical" if self.first.sha256 == self.other.sha256 else "near-identical"

    def describe(self) -> str:
        a, b = self.first, self.other
        return f"{a.source} ({a.label}, {a.split}) = {b.source} ({b.label}, {b.split}), {self.kind}"

    def as_dict(self) -> dict[str, str | None]:
        a, b = self.first, self.other
        return {
            "a": a.source,
            "a_label": a.label,
            "a_split": a.split,
            "b": b.source,
            "b_label": b.label,
            "b_split": b.split,
            "kind": self.kind,
        }


def content_groups(records: Sequence[Record]) -> list[list[int]]:
    """Indices of ``records`` grouped by content: the same sha256 or near-identical pixel hashes, linked
    transitively (a ~ b and b ~ c put a, b and c in one group)."""
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    links = [(i, first_with.setdefault(r.sha256, i)) for i, r in enumerate(records)]
    hashed = [(i, r.phash) for i, r in enumerate(records) if r.phash]
    links += [(hashed[i][0], hashed[j][0]) for i, j in near_pairs([phash for _, phash in hashed])]
    for i, j in links:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(records)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def duplicates(records: Sequence[Record], groups: Sequence[Sequence[int]]) -> list[Duplicate]:
    """Each member of a content group of two or more paired with the group's first record (by source); the
    frames of one multi-frame file share its hash but are not copies of each other."""
    out = []
    for group in groups:
        members = sorted((records[i] for i in group), key=lambda r: r.source)
        first = split_frame(members[0].source)[0]
        out += [Duplicate(members[0], r) for r in members[1:] if split_frame(r.source)[0] != first]
    return out


def warn_cross_split(found: Sequence[Duplicate], shown: int = 10) -> None:
    """Warn about duplicates the data set's own split put in different splits (ours never does)."""
    crossing = [d for d in found if d.first.split != d.other.split]
    if crossing:
        listed = "; ".join(d.describe() for d in crossing[:shown])
        more = f"; and {len(crossing) - shown} more" if len(crossing) > shown else ""
        log.warning(
            "%d images of the data set's own split have a copy in another split (listed in split.json under "
            "'duplicates'); evaluation on them is not on unseen images: %s%s",
            len(crossing),
            listed,
            more,
        )


def check_class_sizes(
    records: Sequence[Record], class_names: Sequence[str], where: str | Path | None
) -> None:
    """Refuse a class without a training image; warn about a class with fewer than MIN_PER_CLASS_SPLIT
    images in a split that is in use."""
    counts: dict[tuple[str, str | None], int] = {}
    for r in records:
        counts[r.label, r.split] = counts.get((r.label, r.split), 0) + 1
    untrained = [c for c in class_names if not counts.get((c, "train"))]
    if untrained:
        raise SynthmedError(
            f"class(es) {untrained} have no image in the training split; add images, or leave them out "
            "with data.classes",
            path=where,
        )
    used = [s for s in SPLITS if any(r.split == s for r in records)]
    few = [
        f"{c} ({', '.join(f'{counts.get((c, s), 0)} {s}' for s in used)})"
        for c in class_names
        if any(counts.get((c, s), 0) < MIN_PER_CLASS_SPLIT for s in used)
    ]
    if few:
        log.warning(
            "fewer than %d images of a class in a split: %s; what is trained, validated or measured on these "
            "classes is unreliable",
            MIN_PER_CLASS_SPLIT,
            "; ".join(few),
        )


def skip_summary(kept: Sequence[str], skipped: Sequence[Skipped], class_names: Sequence[str]) -> str:
    """'NORMAL 118 kept, 2 skipped; PNEUMONIA 40 kept, 0 skipped' from the kept items' labels and the
    skipped items (those of no class are counted apart)."""
    parts = [
        f"{c} {list(kept).count(c)} kept, {sum(s.label == c for s in skipped)} skipped" for c in class_names
    ]
    unclassed = sum(s.label not in class_names for s in skipped)
    return "; ".join(parts + ([f"{unclassed} skipped outside any class"] if unclassed else []))


def require_kept_classes(
    before: Iterable[str],
    kept: Sequence[str],
    skip_empty: bool,
    what: str,
    where: str | Path | None,
    hint: str = "",
) -> list[str]:
    """The classes of ``before`` (labels, in order of first appearance) that keep an item in ``kept``.

    A class that lost every item is an error naming it, or with ``skip_empty`` a warning."""
    present = set(kept)
    lost = [c for c in dict.fromkeys(before) if c not in present]
    if lost and not skip_empty:
        raise SynthmedError(
            f"class(es) {lost} lost every {what}: each was skipped (see the messages above or split.json); "
            f"fix those files{hint}, or set data.skip_empty_classes: true to go on without these classes",
            path=where,
        )
    if lost:
        log.warning(
            "left out class(es) %s: every %s of them was skipped (data.skip_empty_classes)", lost, what
        )
    return [c for c in dict.fromkeys(before) if c not in lost]


def warn_channels(records: Sequence[Record], channels: int, where: str | Path | None) -> None:
    """Say once per data set which images were converted to its ``channels``: colour read as grey, or grey
    repeated into every channel; nothing is converted silently."""
    grey_of_colour = sum(r.channels > 1 for r in records) if channels == 1 else 0
    repeated = sum(r.channels == 1 for r in records) if channels > 1 else 0
    if grey_of_colour:
        log.warning(
            "%s: %d of %d images have colour or several channels, read as grey (luminance) because most "
            "images are grey or data.channels is 1; set data.channels: 3 to keep colour",
            where,
            grey_of_colour,
            len(records),
        )
    if repeated:
        log.warning(
            "%s: %d of %d images are grey, repeated into each of the data set's %d channels",
            where,
            repeated,
            len(records),
            channels,
        )
