"""`synthmed split`: check a data set and freeze its split before training."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from synthmed.cli import app

runner = CliRunner()


def test_split_reports_counts_and_skipped_files(kermany_folder: Callable[..., Path], tmp_path: Path) -> None:
    root = kermany_folder(n=10)
    good = next((root / "NORMAL").glob("*.jpeg"))
    (root / "NORMAL" / "cut.jpeg").write_bytes(good.read_bytes()[:400])
    (root / "PNEUMONIA" / "notes.txt").write_text("not an image")
    out = tmp_path / "split.json"
    result = runner.invoke(app, ["split", "--data", str(root), "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "cut.jpeg" in result.output and "notes.txt" in result.output
    doc = json.loads(out.read_text())
    assert sum(doc["counts"]["train"].values()) + sum(doc["counts"]["holdout"].values()) <= 20
    assert {s["source"] for s in doc["skipped"]} == {"NORMAL/cut.jpeg", "PNEUMONIA/notes.txt"}
    # Same data, other seed: the existing split file is not silently replaced.
    again = runner.invoke(app, ["split", "--data", str(root), "--out", str(out), "--seed", "4"])
    assert again.exit_code == 2 and "seed" in again.output


def test_split_missing_source_is_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["split", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 2
    assert "nope" in result.output and "Traceback" not in result.output
