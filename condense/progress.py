"""Progress reporting, injected so that math modules never print.

The driver and CLI pass a `RichReporter` (progress bars with ETA, or nothing with --quiet);
tests pass `Reporter()`, which is silent. Anything that runs longer than a few seconds takes
a reporter and wraps its loop in `reporter.task(...)`.
"""
from __future__ import annotations

import sys
import time

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

Update = Callable[..., None]  # update(advance=1, **fields shown next to the bar)


class Reporter:
    """Silent reporter: the interface, and what tests and library callers get by default."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Update]:
        yield lambda advance=1, **fields: None

    def log(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        """Something about a finished job the user must see: printed even when quiet."""
        print(f"warning: {message}", file=sys.stderr)


class RichReporter(Reporter):
    """Rich progress bars on stderr; one line per finished task survives in the scrollback."""

    def __init__(self, quiet: bool = False) -> None:
        from rich.console import Console

        self.quiet = quiet
        self.console = Console(stderr=True)
        self._bar: Any = None
        self._depth = 0

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Update]:
        """A bar for one loop. Nested tasks (an artifact built during distillation) share one
        live display, since rich allows only one at a time."""
        if self.quiet:
            yield lambda advance=1, **fields: None
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        if self._bar is None:
            columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                       TextColumn("{task.fields[info]}")]
            self._bar = Progress(*columns, console=self.console)
            self._bar.start()
        bar = self._bar
        self._depth += 1
        tid = bar.add_task(description, total=total, info="")

        shown = [0.0]

        def update(advance: int = 1, **fields: Any) -> None:
            # Fields may be device tensors: they are read (a host sync) at most twice a second.
            now = time.monotonic()
            if fields and now - shown[0] >= 0.5:
                shown[0] = now
                info = "  ".join(_fmt(k, v) for k, v in fields.items())
                bar.update(tid, advance=advance, info=info)
            else:
                bar.update(tid, advance=advance)

        try:
            yield update
        finally:
            self._depth -= 1
            if self._depth > 0:  # a nested bar disappears when done; the outer one stays
                bar.remove_task(tid)
            else:
                bar.stop()
                self._bar = None

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False, highlight=False)  # messages carry paths and [hashes]

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {message}")


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = float(value)
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
