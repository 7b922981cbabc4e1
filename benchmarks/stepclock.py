"""Run ``trio-echo`` with a Trio instrument that times every task step in CPU time.

``python benchmarks/stepclock.py serve --port 0 ...`` is ``trio-echo serve`` plus,
at exit, one line on stderr: ``stepclock: longest task step X ms CPU ...``. A task
step is what runs between two checkpoints, so the longest step is the longest the
event loop was held by one piece of work (CPU time of the thread, so time the OS
gave to other processes on a busy machine is not counted). ``benchmarks/attacks.py
--stepclock`` uses it to measure what one hostile message costs the loop.
"""

from __future__ import annotations

import atexit
import sys
import time
from typing import Any

import trio

try:
    from trio_echo.cli import main
except ImportError:  # a build from before the package layout (to measure it too)
    from trio_echo._cli import main  # type: ignore[import-not-found,no-redef]


class StepClock(trio.abc.Instrument):
    """Keeps the longest task step (thread CPU time) and the task it was in."""

    def __init__(self) -> None:
        self.started = 0.0
        self.longest = 0.0
        self.task = ""
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.started = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.thread_time() - self.started
        self.steps += 1
        if took > self.longest:
            self.longest = took
            self.task = task.name

    def report(self) -> None:
        print(
            f"stepclock: longest task step {self.longest * 1000:.1f} ms CPU "
            f"({self.steps} steps; in {self.task})",
            file=sys.stderr,
            flush=True,
        )


clock = StepClock()
atexit.register(clock.report)
_run = trio.run


def run_with_clock(*args: Any, **kwargs: Any) -> Any:
    kwargs["instruments"] = [*kwargs.get("instruments", ()), clock]
    return _run(*args, **kwargs)


trio.run = run_with_clock  # type: ignore[assignment]  # a measuring tool, not the product

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
