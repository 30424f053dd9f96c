"""Progress reporting, injected so that math modules never print.

The driver and CLI pass a `RichReporter` (progress bars with ETA, or nothing with --quiet);
tests pass `Reporter()`, which is silent. Anything that runs longer than a few seconds takes
a reporter and wraps its loop in `reporter.task(...)`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

Update = Callable[..., None]  # update(advance=1, **fields shown next to the bar)


class Reporter:
    """Silent reporter: the interface, and what tests and library callers get by default."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Update]:
        yield lambda advance=1, **fields: None

    def log(self, message: str) -> None:
        pass


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

        def update(advance: int = 1, **fields: Any) -> None:
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            bar.update(tid, advance=advance, **({"info": info} if fields else {}))

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
            self.console.print(message)
