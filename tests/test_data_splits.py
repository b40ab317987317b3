"""assign_splits, split.json and prepare: reproducible, stratified, duplicate-safe, frozen per run."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from synthmed.config import DataConfig
from synthmed.data import Record, Skipped, assign_splits, prepare, read_split, write_split
from synthmed.errors import SynthmedError


def _records(n_a: int = 120, n_b: int = 60) -> list[Record]:
    out = []
    for label, n in (("a", n_a), ("b", n_b)):
        for i in range(n):
            out.append(Record(f"{label}/{i}.png", label, hashlib.sha256(f"{label}{i}".encode()).hexdigest()))
    return out


def _by_source(records: list[Record]) -> dict[str, str | None]:
    return {r.source: r.split for r in records}


def test_same_seed_same_split_any_input_order() -> None:
    recs = _records()
    shuffled = recs[:]
    random.Random(3).shuffle(shuffled)
    assert _by_source(assign_splits(recs, 7, 0.1, 0.2)) == _by_source(assign_splits(shuffled, 7, 0.1, 0.2))
    assert _by_source(assign_splits(recs, 7, 0.1, 0.2)) != _by_source(assign_splits(recs, 8, 0.1, 0.2))


def test_stratified_per_class() -> None:
    counts = Counter((r.label, r.split) for r in assign_splits(_records(), 0, 0.1, 0.2))
    assert (counts["a", "holdout"], counts["a", "val"], counts["a", "train"]) == (24, 12, 84)
    assert (counts["b", "holdout"], counts["b", "val"], counts["b", "train"]) == (12, 6, 42)


def test_tiny_class_keeps_a_training_image() -> None:
    recs = _records(n_a=1, n_b=2)
    out = assign_splits(recs, 0, 0.4, 0.45)
    assert all(any(r.label == c and r.split == "train" for r in out) for c in "ab")


def test_duplicates_share_a_split_and_holdout_never_leaks() -> None:
    recs = _records()
    # Every 'a' content also exists under a second name (and one under a 'b' label).
    dupes = [Record(f"copies/{r.source}", r.label, r.sha256) for r in recs if r.label == "a"]
    dupes.append(Record("b/mislabelled.png", "b", recs[0].sha256))
    for seed in range(5):
        out = assign_splits(recs + dupes, seed, 0.1, 0.2)
        by_hash: dict[str, set[str | None]] = {}
        for r in out:
            by_hash.setdefault(r.sha256, set()).add(r.split)
        assert all(len(s) == 1 for s in by_hash.values())
        train = {r.sha256 for r in out if r.split == "train"}
        assert train.isdisjoint(r.sha256 for r in out if r.split == "holdout")


def test_preset_splits_are_kept_and_followed_by_copies() -> None:
    recs = _records(20, 20)
    recs[0] = Record(recs[0].source, "a", recs[0].sha256, "holdout")
    copy = Record("copy.png", "a", recs[0].sha256)
    out = assign_splits([*recs, copy], 0, 0.1, 0.1)
    assert out[0].split == "holdout" and out[-1].split == "holdout"


def test_split_json_round_trip(tmp_path: Path) -> None:
    recs = assign_splits(_records(10, 10), 0, 0.1, 0.2)
    path = tmp_path / "run" / "split.json"
    write_split(path, recs, ["a", "b"], [Skipped("x.txt", "not an image")], {"seed": 0})
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["settings"] == {"seed": 0} and doc["class_names"] == ["a", "b"]
    assert doc["counts"]["holdout"] == {"a": 2, "b": 2} and doc["skipped"][0]["source"] == "x.txt"
    assert set(doc["items"][0]) == {"source", "label", "sha256", "split"}
    assert read_split(path) == (recs, ["a", "b"])
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left behind


def test_unsplit_records_and_broken_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(SynthmedError, match="no split"):
        write_split(tmp_path / "s.json", _records(2, 2), ["a", "b"], [], {})
    for text in ("{not json", '{"version": 99}', '{"version": 1, "items": []}'):
        (tmp_path / "s.json").write_text(text)
        with pytest.raises(SynthmedError, match=r"s\.json"):
            read_split(tmp_path / "s.json")


# --- prepare: real files ---------------------------------------------------------------------------


def test_prepare_writes_then_reuses(kermany_folder, tmp_path: Path) -> None:
    root = kermany_folder(n=10)
    first = root / "NORMAL" / sorted(p.name for p in (root / "NORMAL").iterdir())[0]
    shutil.copy(first, root / "NORMAL" / "duplicate of first (1).jpeg")
    shutil.copy(first, root / "PNEUMONIA" / "duplicate.jpeg")  # same content, other class
    (root / "NORMAL" / "notes.txt").write_text("x")
    cfg = DataConfig(source=root, val_fraction=0.2, holdout_fraction=0.2)
    split_path = tmp_path / "run" / "split.json"
    prepared = prepare(cfg, 1, split_path)
    assert prepared.class_names == ["NORMAL", "PNEUMONIA"] and len(prepared.records) == 22
    assert [s.source for s in prepared.skipped] == ["NORMAL/notes.txt"]
    dup_splits = {
        r.split for r in prepared.records if r.sha256 == hashlib.sha256(first.read_bytes()).hexdigest()
    }
    assert len(dup_splits) == 1
    assert read_split(split_path) == (prepared.records, prepared.class_names)
    mtime = split_path.stat().st_mtime_ns
    again = prepare(cfg, 1, split_path)
    assert again.records == prepared.records and split_path.stat().st_mtime_ns == mtime


def test_prepare_refuses_a_changed_data_set_or_settings(kermany_folder, tmp_path: Path) -> None:
    root = kermany_folder(n=4)
    cfg = DataConfig(source=root)
    split_path = tmp_path / "split.json"
    prepare(cfg, 0, split_path)
    with pytest.raises(SynthmedError, match="seed: 0 -> 5"):
        prepare(cfg, 5, split_path)
    extra = root / "NORMAL" / "new.jpeg"
    shutil.copy(next((root / "PNEUMONIA").iterdir()), extra)
    with pytest.raises(SynthmedError, match=r"1 new \(e\.g\. 'NORMAL/new\.jpeg'\)"):
        prepare(cfg, 0, split_path)
    extra.unlink()
    victim = sorted((root / "PNEUMONIA").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(SynthmedError, match="1 changed"):
        prepare(cfg, 0, split_path)
    shutil.rmtree(root / "PNEUMONIA")
    with pytest.raises(SynthmedError, match=r"classes are now \['NORMAL'\]"):
        prepare(cfg, 0, split_path)


def test_prepare_skips_unreadable_files_before_splitting(kermany_folder, tmp_path: Path) -> None:
    root = kermany_folder(n=5)
    bad = root / "NORMAL" / "cut.jpeg"
    bad.write_bytes(next((root / "NORMAL").iterdir()).read_bytes()[:500])
    prepared = prepare(DataConfig(source=root), 0, tmp_path / "split.json")
    assert "NORMAL/cut.jpeg" not in {r.source for r in prepared.records}
    assert [s.source for s in prepared.skipped] == ["NORMAL/cut.jpeg"]
    with pytest.raises(SynthmedError, match=r"cut\.jpeg"):
        prepare(DataConfig(source=root, on_error="raise"), 0, tmp_path / "other.json")
