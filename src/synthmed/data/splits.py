"""Train/val/holdout assignment and the split.json file that freezes it for a run.

Splits are made over distinct contents, not file names: files with the same sha256 or near-identical
pixels (`synthmed.data.integrity`) share a split, so a copy under another name or in another format can
never sit in holdout and train at once. Copies that a data set's own split puts apart are listed.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from synthmed.artifacts.files import atomic_write
from synthmed.data.integrity import Duplicate, content_groups
from synthmed.data.sources import SPLITS, Record, Skipped
from synthmed.errors import SynthmedError

SPLIT_FILE_VERSION = 1
# When copies of one content carry different preset splits, the group follows the most protected one.
_PROTECTION = {"holdout": 2, "val": 1, "train": 0}


def assign_splits(
    records: Sequence[Record], seed: int, val_fraction: float, holdout_fraction: float
) -> list[Record]:
    """Give every record a split; same inputs and seed -> same result, whatever the input order.

    Stratified per class; records of one content (same sha256, or near-identical pixel hashes) always
    share a split; records that already have a split (from an .npz or CSV) keep it, and their copies
    follow it.
    """
    groups = content_groups(records)
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    chosen: dict[int, str] = {}
    free_by_label: dict[str, dict[str, int]] = defaultdict(dict)  # label -> {group key: group}
    for g, members in enumerate(groups):
        preset = [split for i in members if (split := records[i].split) is not None]
        if preset:
            chosen[g] = max(preset, key=lambda s: _PROTECTION.get(s, 0))
        else:
            first = min((records[i] for i in members), key=lambda r: r.source)
            free_by_label[first.label][min(records[i].sha256 for i in members)] = g
    for label, keyed in free_by_label.items():
        split_of = _split_class(sorted(keyed), f"{seed}:{label}", val_fraction, holdout_fraction)
        chosen.update({keyed[key]: split for key, split in split_of.items()})
    return [
        r if r.split is not None else replace(r, split=chosen[group_of[i]]) for i, r in enumerate(records)
    ]


def _split_class(shas: list[str], seed: str, val_fraction: float, holdout_fraction: float) -> dict[str, str]:
    # A string seed is hashed deterministically by random.Random, and a per-class seed means adding
    # a class never reshuffles the others.
    random.Random(seed).shuffle(shas)
    n = len(shas)
    n_holdout = int(n * holdout_fraction + 0.5)
    n_val = min(int(n * val_fraction + 0.5), max(0, n - n_holdout - 1))  # keep at least one for training
    out = dict.fromkeys(shas[:n_holdout], "holdout")
    out.update(dict.fromkeys(shas[n_holdout : n_holdout + n_val], "val"))
    out.update(dict.fromkeys(shas[n_holdout + n_val :], "train"))
    return out


@dataclass
class SplitFile:
    records: list[Record]
    class_names: list[str]
    skipped: list[Skipped]
    settings: dict[str, Any]


def split_counts(records: Sequence[Record], class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    counts = {s: dict.fromkeys(class_names, 0) for s in SPLITS}
    for r in records:
        if r.split in counts and r.label in counts[r.split]:
            counts[r.split][r.label] += 1
    return counts


def write_split(
    path: Path,
    records: Sequence[Record],
    class_names: Sequence[str],
    skipped: Sequence[Skipped],
    settings: dict[str, Any],
    *,
    duplicates: Sequence[Duplicate] = (),
) -> None:
    """Write split.json atomically (a crash never leaves half a file that a resume would trust)."""
    missing = [r.source for r in records if r.split not in SPLITS]
    if missing:
        raise SynthmedError(
            f"{len(missing)} records have no split (e.g. {missing[0]}); run assign_splits first"
        )
    doc = {
        "version": SPLIT_FILE_VERSION,
        "settings": settings,
        "class_names": list(class_names),
        "counts": split_counts(records, class_names),
        "items": [_item(r) for r in records],
        "skipped": [asdict(s) for s in skipped],
        "duplicates": [d.as_dict() for d in duplicates],
    }
    with atomic_write(Path(path)) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _item(r: Record) -> dict[str, str | int | None]:
    item: dict[str, str | int | None] = {"source": r.source, "label": r.label, "sha256": r.sha256}
    item["split"] = r.split
    if r.channels > 1:
        item["channels"] = r.channels
    return item | ({"phash": r.phash} if r.phash else {})


def read_split_file(path: Path) -> SplitFile:
    """Everything in a split.json, checked; any problem is a SynthmedError naming the file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SynthmedError("split file not found", path=path) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SynthmedError(f"not a readable split file ({exc}); delete it to re-split", path=path) from exc
    if not isinstance(doc, dict) or doc.get("version") != SPLIT_FILE_VERSION:
        raise SynthmedError(f"not a version-{SPLIT_FILE_VERSION} synthmed split file", path=path)
    try:
        class_names = [str(c) for c in doc["class_names"]]
        records = [
            Record(
                str(i["source"]), str(i["label"]), str(i["sha256"]), str(i["split"]), _phash(i), _channels(i)
            )
            for i in doc["items"]
        ]
        skipped = [
            Skipped(str(s["source"]), str(s["reason"]), s.get("label")) for s in doc.get("skipped", [])
        ]
        settings = dict(doc.get("settings", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise SynthmedError(f"malformed split file ({type(exc).__name__}: {exc})", path=path) from exc
    bad = [r.source for r in records if r.split not in SPLITS or r.label not in class_names]
    if bad:
        raise SynthmedError(f"{len(bad)} items have an unknown split or class (e.g. {bad[0]!r})", path=path)
    return SplitFile(records, class_names, skipped, settings)


def _channels(item: dict[str, Any]) -> int:
    value = int(item.get("channels", 1))  # absent: grey (and every split file written before colour)
    if not 1 <= value <= 16:
        raise ValueError(f"channels {value} of {item.get('source')!r} is not in 1..16")
    return value


def _phash(item: dict[str, Any]) -> str | None:
    value = item.get("phash")
    return str(value) if value else None  # split files written before pixel hashes have none


def read_split(path: Path) -> tuple[list[Record], list[str]]:
    """(records with their splits, class names) from a split.json."""
    sf = read_split_file(path)
    return sf.records, sf.class_names
