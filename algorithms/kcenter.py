"""K-center greedy (Sener & Savarese 2018): start from the image nearest the class mean, then
repeatedly add the image farthest from every chosen centre. Deterministic.
"""
from __future__ import annotations

import torch
from torch import Tensor

from algorithms.base import ALGORITHMS
from algorithms.selection import Selection


def kcenter_greedy(features: Tensor, k: int) -> Tensor:
    """features: [n, D] -> indices [k] of a greedy k-center cover."""
    first = (features - features.mean(0)).norm(dim=1).argmin()
    chosen = [first]
    nearest = (features - features[first]).norm(dim=1)  # distance to the closest chosen centre
    for _ in range(k - 1):
        i = nearest.argmax()
        chosen.append(i)
        nearest = torch.minimum(nearest, (features - features[i]).norm(dim=1))
    return torch.stack(chosen)


@ALGORITHMS.register("kcenter")
class KCenter(Selection):
    name = "kcenter"

    def select(self, c: int) -> Tensor:
        return kcenter_greedy(self.class_features(c), self.cfg.ipc)
