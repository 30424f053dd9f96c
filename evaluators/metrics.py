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

from condense.errors import CondenseError


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
