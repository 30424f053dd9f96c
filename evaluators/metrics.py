"""DD-Ranking's scores, defined on accuracies as fractions in [0, 1].

* HLR (hard-label recovery) = acc(whole real training set, hard labels) - acc(synthetic, hard labels):
  how much of the full-data accuracy the set fails to recover (lower is better).
* IOR (improvement over random) = acc(synthetic, its protocol) - acc(random real subset of the same
  IPC, same protocol) (higher is better).
* LRS (label-robust score) squashes alpha = w * IOR - (1 - w) * HLR to (e^alpha - e^-1) / (e - e^-1).
* ARS (augmentation-robust score) squashes beta = g * (syn - rnd, with augmentation) + (1 - g) *
  (syn - rnd, without augmentation) the same way.

DD-Ranking's own code feeds percentages into the exponential, which saturates the score (a few
points of negative alpha already pin it near its floor); here every input must be a fraction, and
values outside [-1, 1] are refused.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from condense.errors import CondenseError

if TYPE_CHECKING:
    from evaluators.report import Report


def _fraction(name: str, value: float) -> float:
    if not -1.0 <= value <= 1.0:
        raise CondenseError(f"{name} = {value} is not an accuracy (difference) in [-1, 1]; pass fractions, "
                            f"not percentages.")
    return value


def squash(x: float) -> float:
    """(e^x - e^-1) / (e - e^-1): maps [-1, 1] onto [0, 1]."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def hlr(full_acc: float, syn_hard_acc: float) -> float:
    return _fraction("full-data accuracy", full_acc) - _fraction("synthetic accuracy", syn_hard_acc)


def ior(syn_acc: float, random_acc: float) -> float:
    return _fraction("synthetic accuracy", syn_acc) - _fraction("random-subset accuracy", random_acc)


def lrs(ior_value: float, hlr_value: float, w: float = 0.5) -> float:
    return squash(w * _fraction("IOR", ior_value) - (1 - w) * _fraction("HLR", hlr_value))


def ars(gap_with_aug: float, gap_without_aug: float, gamma: float = 0.5) -> float:
    return squash(gamma * _fraction("gap with augmentation", gap_with_aug)
                  + (1 - gamma) * _fraction("gap without augmentation", gap_without_aug))


# --------------------------------------------------------------------------------------------
# the scores of a whole report


def _random_means(report: "Report") -> dict[int, dict[str, float]]:
    """The random baseline's mean accuracy per IPC and architecture."""
    return {r.ipc: {a.arch: a.mean for a in r.results} for r in report.rows if r.source == "baseline"}


def add_ars(report: "Report", plain: "Report") -> None:
    """DD-Ranking's ARS per row and architecture, from `report` (the protocol) and `plain` (the same
    evaluations without augmentation): squash of the mean of the two set-minus-random gaps."""
    def gaps(rep: "Report") -> dict[tuple, float]:
        base = _random_means(rep)
        return {(r.source, r.ipc, a.arch): a.mean - base[r.ipc][a.arch]
                for r in rep.rows if r.source != "baseline" for a in r.results}

    with_aug, without = gaps(report), gaps(plain)
    plain_acc = {(r.source, r.ipc, a.arch): a.mean for r in plain.rows for a in r.results}
    for row in report.rows:
        for a in row.results:
            key = (row.source, row.ipc, a.arch)
            entry = row.extra.setdefault("scores", {}).setdefault(a.arch, {})
            entry["acc_without_augmentation"] = plain_acc[key]
            if key in with_aug:
                entry["ARS"] = ars(with_aug[key], without[key])


def add_scores(report: "Report", full: float) -> None:
    """HLR / IOR / LRS (fractions) for every row that has a random baseline of its IPC; `full` is
    the accuracy of the architecture trained on the whole training set."""
    base = _random_means(report)
    if not base:
        raise CondenseError("--full-acc needs --baseline random (IOR compares with the random subset).")
    if report.protocol.labels != "hard":
        raise CondenseError(f"HLR compares hard-label accuracies, but protocol {report.protocol.name} uses soft "
                            f"labels. Compute HLR/LRS with a hard-label protocol (e.g. dsa); IOR under this "
                            f"protocol is the gap to the random row of the table.")
    for row in report.rows:
        scores = {}
        for a in row.results:
            h = hlr(full, a.mean)
            i = ior(a.mean, base.get(row.ipc, {}).get(a.arch, float("nan")))
            scores[a.arch] = {"HLR": h, "IOR": i, "LRS": lrs(i, h)} if i == i else {"HLR": h}
        row.extra["scores"] = scores
