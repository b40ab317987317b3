"""What a new user meets first (issue 20 items 10-12): the expected training time, a truthful README, and
`make test` without root."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from synthmed.cli import app
from synthmed.training.duration import TIMED_STEPS, StepTimer

REPO = Path(__file__).resolve().parents[1]


# --- item 10: the expected duration of a training run --------------------------------------------------


def test_step_timer_extrapolates_the_first_steps() -> None:
    lines: list[str] = []
    now = [0.0]
    timer = StepTimer(lines.append, cpu=True, clock=lambda: now[0])
    for step in range(1, 3001):
        now[0] = 2.0 * step  # every step takes 2 s
        timer("diffusion", step, 3000)
    assert lines == [
        f"diffusion: 3000 steps take about 1.7 h on this machine (0.50 steps/s over {TIMED_STEPS} steps; "
        "1.7 h to go); on this CPU an hour fits about 1,800 diffusion steps"
    ]
    timer("controlnet", 1, 2)
    timer("controlnet", 2, 2)  # a stage shorter than the timed steps is told at its end
    assert lines[-1].startswith("controlnet: 2 steps take about")


def test_train_prints_the_expected_duration(kermany_folder, tmp_path: Path) -> None:
    config = {
        "preset": "tiny",
        "run_dir": str(tmp_path / "run"),
        "data": {"source": str(kermany_folder(n=12))},
        "autoencoder": {"steps": 8},
        "diffusion": {"steps": 8},
        "runtime": {"device": "cpu"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "c.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    for stage in ("autoencoder", "diffusion"):
        assert f"{stage}: 8 steps take about" in result.output
        assert "on this CPU an hour fits about" in result.output
