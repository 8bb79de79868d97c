"""Progress of long work: a live bar on a terminal, plain lines at a steady interval everywhere else.

A cluster job's log or ``ood-bench run ... | cat`` has no terminal, where a live bar prints nothing until it
ends; there each task prints ``description: done/total (percent), rate, ETA, stats`` every
``OOD_BENCH_PROGRESS_EVERY`` seconds (default 10) and once when it finishes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("OOD_BENCH_PROGRESS_EVERY", "10")))
    except ValueError:
        return 10.0


class Tracker:
    """One task's progress: :meth:`advance` by a number of items, :meth:`stats` for a free-text tail."""

    def __init__(self, console: Console, description: str, total: int, completed: int = 0, unit: str = "ex"):
        self.console, self.description, self.total, self.unit = console, description, total, unit
        self.completed, self._stats = completed, ""
        self._start, self._start_done = time.perf_counter(), completed
        self._last = self._start
        self._live: Progress | None = None
        self._task = None

    def _rate(self) -> float:
        return (self.completed - self._start_done) / max(time.perf_counter() - self._start, 1e-9)

    def advance(self, n: int = 1) -> None:
        self.completed += n
        if self._live is not None:
            self._live.update(self._task, completed=self.completed, stats=self._stats)
        elif time.perf_counter() - self._last >= _interval():
            self._line()

    def stats(self, text: str) -> None:
        self._stats = text
        if self._live is not None:
            self._live.update(self._task, stats=text)

    def _line(self) -> None:
        self._last = time.perf_counter()
        rate = self._rate()
        left = (self.total - self.completed) / rate if rate > 0 else float("nan")
        eta = f"ETA {left:.0f} s" if left == left else "ETA ?"
        pct = 100.0 * self.completed / max(self.total, 1)
        tail = f"  {self._stats}" if self._stats else ""
        self.console.print(f"{self.description}: {self.completed}/{self.total} ({pct:.0f}%), "
                           f"{rate:.1f} {self.unit}/s, {eta}{tail}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def track(console: Console, description: str, total: int, completed: int = 0, unit: str = "ex") -> Iterator[Tracker]:
    """A :class:`Tracker` shown as a live bar on a terminal and as periodic plain lines otherwise."""
    tracker = Tracker(console, description, total, completed, unit)
    if console.is_terminal:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[stats]}")]
        with Progress(*columns, console=console, transient=False) as live:
            tracker._live, tracker._task = live, live.add_task(description, total=total, completed=completed,
                                                              stats="")
            yield tracker
        return
    yield tracker
    tracker._line()  # the final state, once
