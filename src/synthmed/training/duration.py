"""How long a training stage will take on this machine, timed over its first steps (`synthmed train`)."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Steps timed per stage, after its first step (which pays for allocation and warm-up).
TIMED_STEPS = 5


class StepTimer:
    """An ``on_step(stage, step, steps)`` callback for `synthmed.training.run.train`: after the first
    TIMED_STEPS steps of each stage it says how long the configured steps will take (previews and
    checkpoints not included) and, on a CPU, how many steps of the stage fit in an hour."""

    def __init__(
        self, say: Callable[[str], None], cpu: bool, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._say, self._cpu, self._clock = say, cpu, clock
        self._stage: str | None = None
        self._start = (0, 0.0)  # (step, time) the timing started at
        self._told = False

    def __call__(self, stage: str, step: int, steps: int) -> None:
        if stage != self._stage:
            self._stage, self._start, self._told = stage, (step, self._clock()), False
            return
        first, started = self._start
        if self._told or (step - first < TIMED_STEPS and step < steps):
            return
        self._told = True
        rate = (step - first) / max(self._clock() - started, 1e-9)  # steps per second
        line = (
            f"{stage}: {steps} steps take about {format_duration(steps / rate)} on this machine "
            f"({rate:.2f} steps/s over {step - first} steps; {format_duration((steps - step) / rate)} to go)"
        )
        if self._cpu:
            line += f"; on this CPU an hour fits about {int(rate * 3600):,} {stage} steps"
        self._say(line)


def format_duration(seconds: float) -> str:
    """Seconds as "42 s", "17 min" or "2.3 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
