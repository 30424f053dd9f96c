"""Random real subset: `ipc` training images per class drawn uniformly without replacement.

The baseline every distillation paper compares with (DC: 51.4 / 73.8 on Fashion-MNIST at
IPC 1 / 10 under its protocol).
"""
from __future__ import annotations

import torch
from torch import Tensor

from algorithms.base import ALGORITHMS
from algorithms.selection import Selection


@ALGORITHMS.register("random")
class Random(Selection):
    name = "random"

    @classmethod
    def artifacts_needed(cls, cfg) -> list:  # no embedding network: the choice is uniform
        return []

    def select(self, c: int) -> Tensor:
        return torch.randperm(self.real.count(c), generator=self.ctx.generator)[: self.cfg.ipc].to(self.real.device)
