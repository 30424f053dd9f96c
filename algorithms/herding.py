"""Herding (Welling 2009): greedily add the image that keeps the running mean of the selected
embeddings closest to the class mean. Deterministic given the embedding network.
"""
from __future__ import annotations

import torch
from torch import Tensor

from algorithms.base import ALGORITHMS
from algorithms.selection import Selection


def herding(features: Tensor, k: int) -> Tensor:
    """features: [n, D] -> indices [k] chosen by herding (each at most once)."""
    mu = features.mean(0)
    total = torch.zeros_like(mu)
    taken = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    chosen = []
    for step in range(1, k + 1):
        # distance between the class mean and the mean after adding each candidate
        dist = ((total + features) / step - mu).norm(dim=1).masked_fill(taken, float("inf"))
        i = dist.argmin()
        chosen.append(i)
        taken[i] = True
        total = total + features[i]
    return torch.stack(chosen)


@ALGORITHMS.register("herding")
class Herding(Selection):
    name = "herding"

    def select(self, c: int) -> Tensor:
        return herding(self.class_features(c), self.cfg.ipc)
