"""The on-disk contracts (synthmed.artifacts): atomic writes, the manifest's cut-line repair, and the run
folder's metadata.json, with runs trained before it existed still loading from their weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import synthmed
from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.files import atomic_write
from synthmed.artifacts.manifest import drop_cut_last_line, read_manifest
from synthmed.artifacts.run import METADATA_VERSION, RunDir, RunMetadata
from synthmed.errors import SynthmedError


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "file.txt"
    with atomic_write(path) as tmp:
        tmp.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.txt"]  # no temporary file left


def test_atomic_write_keeps_a_suffix_the_writer_needs(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "v.nii.gz", ".nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.name.startswith(".v.tmp")
        tmp.write_bytes(b"x")
    assert (tmp_path / "v.nii.gz").read_bytes() == b"x"


def test_a_cut_last_manifest_row_is_dropped(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"seed": 0}\n{"seed": 1}\n{"se')
    drop_cut_last_line(manifest)
    assert read_manifest(manifest) == [{"seed": 0}, {"seed": 1}]


def test_training_writes_metadata_matching_the_weights(tiny_run: Path) -> None:
    run = RunDir(tiny_run)
    written = json.loads(run.metadata_file.read_text())
    assert written["schema_version"] == METADATA_VERSION
    extra = ckpt.load(run.weights("diffusion"))["extra"]
    assert written["class_names"] == extra["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert written["scale_factor"] == pytest.approx(extra["scale_factor"])
    assert run.metadata() == RunMetadata.model_validate(written)


def test_controlnets_are_listed_with_their_settings(busi_run: Path) -> None:
    meta = RunDir(busi_run).metadata()
    assert list(meta.controlnets) == ["mask", "edges"]
    assert meta.controlnets["edges"].edge_sigma == 1.5


def test_a_run_without_metadata_json_loads_from_its_weights(tiny_run: Path, tmp_path: Path) -> None:
    old = tmp_path / "old_run"
    shutil.copytree(tiny_run, old)
    (old / "metadata.json").unlink()  # as runs trained before metadata.json existed
    assert RunDir(old).metadata() == RunDir(tiny_run).metadata()
    new = synthmed.load(tiny_run).generate(label="NORMAL", n=1, steps=2).images
    assert torch.equal(synthmed.load(old).generate(label="NORMAL", n=1, steps=2).images, new)
    assert not (old / "metadata.json").exists()  # reading never writes into a run


def test_metadata_from_a_newer_synthmed_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    newer = RunDir(tiny_run).metadata().model_dump(mode="json") | {"schema_version": METADATA_VERSION + 1}
    run.metadata_file.write_text(json.dumps(newer))
    with pytest.raises(SynthmedError, match="newer synthmed"):
        run.metadata()
    run.metadata_file.write_text("{not json")
    with pytest.raises(SynthmedError, match="unreadable run metadata"):
        run.metadata()
