"""What a new user meets first (issue 20 items 10-12): the expected training time, a truthful README, and
`make test` without root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
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


# --- item 12: `make test` without root ------------------------------------------------------------------


def _make_test_dry_run(*prefix: str) -> str:
    """What `make test` would run (make -n), with both system packages missing."""
    command = [*prefix, "make", "-n", "-C", str(REPO), "test", "SYSTEM_PACKAGES=postgresql chromium"]
    return subprocess.run(command, capture_output=True, text=True, check=True, cwd="/").stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_without_root_skips_what_needs_system_packages() -> None:
    as_root = os.geteuid() == 0
    if as_root and shutil.which("runuser") is None:
        pytest.skip("runuser (util-linux) is needed to run make as a user without root")
    out = _make_test_dry_run(*(["runuser", "-u", "nobody", "--"] if as_root else []))
    if not as_root and "apt-get" in out:
        pytest.skip("this user has passwordless sudo, so make installs the packages")
    assert "apt-get" not in out and "not installing postgresql chromium" in out
    assert "SYNTHMED_SKIP_MISSING_SYSTEM_DEPS=1 .venv/bin/python -m pytest" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="CI runs as root; this user is not")
def test_make_test_as_root_installs_the_system_packages() -> None:
    out = _make_test_dry_run()
    assert "apt-get install -y -q postgresql chromium" in out and "SKIP_MISSING" not in out


def test_a_missing_system_program_fails_unless_make_ran_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from system_deps import SKIP_ENV, missing

    monkeypatch.delenv(SKIP_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match="chromium not found"):
        missing("chromium not found")
    monkeypatch.setenv(SKIP_ENV, "1")
    with pytest.raises(pytest.skip.Exception, match=r"chromium not found.*without root"):
        missing("chromium not found")


# --- item 11: the README says what the code does ---------------------------------------------------------


def test_readme_names_only_commands_and_data_settings_that_exist() -> None:
    import re

    import typer

    from synthmed.config import DataConfig

    text = (REPO / "README.md").read_text()
    assert "is planned" not in text  # the review web app exists
    commands = set(typer.main.get_command(app).commands)
    shell = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.DOTALL))
    used = set(re.findall(r"^(?:torchrun .*-- )?synthmed ([a-z][a-z-]*)", shell, re.MULTILINE))
    assert used and used <= commands, used - commands
    fields = set(re.findall(r"`data\.([a-z_]+)", text))
    assert fields and fields <= set(DataConfig.model_fields), fields - set(DataConfig.model_fields)
    assert "GIF" in text and "Without root" in text and "not checked" in text
