"""Shared machinery of the real-image selection baselines (random, herding, k-center).

Herding and k-center select in the embedding space (`Network.embed`, the 2048-d penultimate
features of ConvNet-3) of a network. By default that network is a ConvNet trained on the
whole real training split for `embed_epochs` epochs (SGD 0.01, momentum 0.9, cosine; cached
as an artifact, so it is trained once per dataset); `embed=random` uses the same network at
initialization instead, which costs nothing and is what some papers mean by these baselines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from algorithms.base import AlgoConfig, Algorithm
from condense.errors import CondenseError
from condense.artifacts import embedding_recipe
from condense.synthetic import SyntheticSet
from condense.train import TrainConfig


@dataclass
class SelectionConfig(AlgoConfig):
    embed: str = "trained"  # trained | random: the network whose embedding herding/k-center use
    embed_epochs: int = 3  # epochs of the trained embedding network (about 88% test acc on FMNIST)
    embed_batch: int = 256  # images per forward pass when embedding a class


class Selection(Algorithm[SelectionConfig]):
    """Picks `ipc` real training images per class in `init`; there are no iterations."""

    Config = SelectionConfig

    @classmethod
    def artifacts_needed(cls, cfg: SelectionConfig) -> list[tuple[str, TrainConfig, int]]:
        return [(cfg.arch, embedding_recipe(cfg.embed_epochs), 0)] if cfg.embed == "trained" else []

    def init(self) -> None:
        cfg = self.cfg
        for c in range(self.real.info.num_classes):
            if self.real.count(c) < cfg.ipc:
                raise CondenseError(f"Class {c} ('{self.real.info.class_names[c]}') of {self.real.info.name} has only "
                                    f"{self.real.count(c)} training images; a selection baseline needs --ipc <= that.")
        self.indices = [self.real.class_index[c][self.select(c)] for c in range(self.real.info.num_classes)]

    def select(self, c: int) -> Tensor:
        """Positions (into class c's index list) of the chosen images."""
        raise NotImplementedError

    def synthetic(self) -> SyntheticSet:
        idx = torch.cat(self.indices)
        return self.make_set(self.real.get(idx), self.real.train.labels[idx])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "indices": [i.cpu() for i in getattr(self, "indices", [])]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.indices = [i.to(self.real.device) for i in state["indices"]]

    # ---- embedding space ---------------------------------------------------------------------

    @torch.no_grad()
    def class_features(self, c: int) -> Tensor:
        """[n_c, D] embeddings of every training image of class c."""
        if not hasattr(self, "_net"):
            cfg = self.cfg
            if cfg.embed == "trained":
                self._net = self.ctx.artifacts.trained(self.real, cfg.arch, embedding_recipe(cfg.embed_epochs), seed=0)
            elif cfg.embed == "random":
                self._net = self.ctx.model(cfg.arch, self.real, seed=self.ctx.seed).eval()
            else:
                raise CondenseError(f"embed must be 'trained' or 'random', not '{cfg.embed}'.")
        idx = self.real.class_index[c]
        bs = self.cfg.embed_batch
        return torch.cat([self._net.embed(self.real.get(idx[s:s + bs])) for s in range(0, idx.numel(), bs)])
