"""Accuracy against IPC as a PNG (matplotlib is optional: the `plot` extra)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from condense.errors import CondenseError
from condense.io import atomic_path

if TYPE_CHECKING:
    from evaluators.report import Report

NEEDS = "--plot needs matplotlib (the plot extra of condense-dd: pip install matplotlib), or drop --plot."


def need_matplotlib() -> None:
    """Fail before hours of work, not after, when --plot cannot be honoured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CondenseError(NEEDS) from None


def plot_report(report: "Report", path: Path) -> None:
    """Accuracy (mean ± std) against IPC, one line per method and architecture."""
    need_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in sorted({r.method for r in report.rows}):
        for arch in report.archs:
            pts = sorted((r.ipc, a.mean, a.std) for r in report.rows if r.method == m for a in r.results
                         if a.arch == arch)
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, [100 * y for y in ys], [100 * e for e in es], marker="o", capsize=3,
                            label=m if len(report.archs) == 1 else f"{m} ({arch})")
    ax.set_xscale("log")
    ax.set_xlabel("images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{report.dataset}, protocol {report.protocol.name}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
