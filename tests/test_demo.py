"""`synthmed demo --quick`: the README's main command on real MNI152 slices, as a seconds-long smoke run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthmed.cli import app

pytestmark = pytest.mark.slow


def test_quick_demo_writes_report_with_real_and_synthetic_grids(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--quick", "--no-progress"])
    assert result.exit_code == 0, result.output
    planes = {p.name for p in (tmp_path / "data").iterdir()}
    assert planes == {"axial", "coronal", "sagittal"}
    slice_png = np.asarray(Image.open(next((tmp_path / "data" / "axial").glob("*.png"))))
    assert slice_png.std() > 10, "template slices should hold anatomy, not a blank image"
    html = (tmp_path / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert (
        len([i for i in images if "synthetic_" in i]) == 3 and len([i for i in images if "real_" in i]) == 3
    )
    assert "curves.png" in html.split("Training curves")[1]
    for rel in images:
        assert (tmp_path / rel).is_file(), rel
    assert len((tmp_path / "synthetic" / "manifest.jsonl").read_text().splitlines()) == 12
