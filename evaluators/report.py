"""Result tables: rich on the terminal, JSON and Markdown on disk.

One row per (method, IPC), one column per architecture, cells `mean ± std` in percent over the
runs; the protocol's name and hash head every table, because numbers from different protocols
are not comparable.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condense.io import atomic_path, package_version
from evaluators.plot import plot_report
from evaluators.protocols import Protocol
from evaluators.retrain import ArchResult


def _nums(values: list[float]) -> list[float | None]:
    """NaN (a diverged run, or a mean over none) as JSON null."""
    return [v if v == v else None for v in values]


@dataclass
class Row:
    method: str  # algorithm name, or "random (real)" for the baseline
    ipc: int
    source: str  # file path, or "baseline"
    results: list[ArchResult] = field(default_factory=list)
    selection: str = "final"  # final | val | test-best (labelled wherever shown)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    protocol: Protocol
    dataset: str
    seed: int
    rows: list[Row] = field(default_factory=list)

    @property
    def archs(self) -> list[str]:
        seen: list[str] = []
        for row in self.rows:
            for r in row.results:
                if r.arch not in seen:
                    seen.append(r.arch)
        return seen

    def sorted_rows(self) -> list[Row]:
        return sorted(self.rows, key=lambda r: (r.ipc, r.source == "baseline", r.method))

    def title(self) -> str:
        picks = {r.selection for r in self.rows} or {"final"}
        what = {"final": "final-epoch test accuracy", "val": "test accuracy at the epoch chosen on validation",
                "test-best": "BEST TEST ACCURACY OVER CHECKPOINTS (selected on the test set)"}
        how = "; ".join(what[p] for p in sorted(picks))
        return (f"{self.dataset} — protocol {self.protocol.name} [{self.protocol.hash}], "
                f"{self.protocol.train.epochs} epochs, {how} (%), mean ± std")

    @staticmethod
    def cell(res: ArchResult | None, scores: dict[str, float] | None = None) -> str:
        if res is None or not res.accs:
            return "—"
        text = f"{100 * res.mean:.1f} ± {100 * res.std:.1f} (n={len(res.accs) - res.diverged})"
        if res.diverged:
            text += f", {res.diverged} run{'s' if res.diverged > 1 else ''} diverged"
        if res.lr_grid_val:
            text += f" lr {res.lr:g} (chosen on val)"
        scores = scores or {}
        text += "".join(f"  {k} {scores[k]:+.3f}" for k in ("HLR", "IOR") if k in scores)
        text += "".join(f"  {k} {scores[k]:.3f}" for k in ("LRS", "ARS") if k in scores)
        return text

    def _cells(self, row: Row) -> list[str]:
        by = {r.arch: r for r in row.results}
        scores = row.extra.get("scores", {})
        return [self.cell(by.get(a), scores.get(a)) for a in self.archs]

    def method_label(self, row: Row) -> str:
        return row.method if row.selection == "final" else f"{row.method} [{row.selection}]"

    def print(self, console) -> None:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(self.title()), title_justify="left")
        table.add_column("method")
        table.add_column("IPC", justify="right")
        for a in self.archs:
            table.add_column(a, justify="right")
        table.add_column("source", overflow="fold")
        for row in self.sorted_rows():
            table.add_row(escape(self.method_label(row)), str(row.ipc), *self._cells(row), escape(row.source))
        console.print(table)

    def to_markdown(self) -> str:
        head = ["method", "IPC", *self.archs, "source"]
        lines = [f"**{self.title()}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.sorted_rows():
            lines.append("| " + " | ".join([self.method_label(row), str(row.ipc), *self._cells(row),
                                             f"`{row.source}`"]) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol.to_json(), "dataset": self.dataset, "seed": self.seed,
            "condense_version": package_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "rows": [{"method": r.method, "ipc": r.ipc, "source": r.source, "selection": r.selection, **r.extra,
                      "results": [{"arch": a.arch, "lr": a.lr, "accs": _nums(a.accs), "mean": _nums([a.mean])[0],
                                   "std": _nums([a.std])[0], "diverged": a.diverged,
                                   "final_accs": _nums(a.final_accs), "test_best_accs": a.test_best_accs,
                                   **({"val_accs": a.val_accs} if a.val_accs else {}),
                                   **({"lr_grid_val": {str(k): v for k, v in a.lr_grid_val.items()}}
                                      if a.lr_grid_val else {})}
                                  for a in r.results]} for r in self.sorted_rows()],
        }

    def save_json(self, path: str | Path) -> None:
        with atomic_path(Path(path)) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2))

    def save_markdown(self, path: str | Path) -> None:
        with atomic_path(Path(path)) as tmp:
            tmp.write_text(self.to_markdown())

    def plot(self, path: str | Path) -> None:
        """Accuracy against IPC as a PNG (needs matplotlib)."""
        plot_report(self, Path(path))
