"""INFER (Zhang et al., ICLR 2025): inter-class feature compensators over a committee of BatchNorm teachers.

Methods of SRe2L's lineage optimize every synthetic image for one class. INFER keeps real images and
learns one additive image u, the compensator, shared by all classes: a base set B_k holds one real
image of every class, and B_k + u (u broadcast over the C images) is optimized so that one teacher f_m
classifies every image as its own class while its BatchNorm layers see the real data's statistics
(the recover loop, `condense.recover`). One compensator per base set and committee member:

    K = int(IPC / (M / C + 1))  base sets          (the budget formula as the paper counts it:
    K * C base images + K * M compensators          K*C + K*M stored images <= IPC * C)
    K * C * (M + 1) training instances              (each B_k, and B_k + u_{k,m} for every m)

Labels are static: the committee's mean logits on each instance (un-augmented), evaluated under the
`kd-static` protocol (MixUp with the logits interpolated by the same lambda, KL at T = 30).

As coded officially (zhangxin-xd/UFC, ufc_cifar.py): u starts at 0; Adam (betas 0.5, 0.9) at lr 0.25
with cosine decay over 1000 steps; CE + BN-statistic matching with r_bn 1 and the first layer x10; a
random shift of 0 to 4 px along each axis; every BatchNorm layer that runs is hooked (the official
code drops one EfficientNet layer only because its own EfficientNet never runs it; torchvision's
does); the K base images of a class are distinct; u is not clipped
during optimization, only the final B_k + u is clamped to the valid pixel range. Each driver step is
one Adam step of one compensator, so progress, checkpoints and resume work mid-compensator.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from algorithms.base import ALGORITHMS, AlgoConfig, Algorithm
from condense.committee import inversion_spec, load_committee
from condense.errors import CondenseError
from condense.recover import Recover, RecoverConfig, hook_teachers, inversion_loss
from condense.synthetic import SyntheticSet


@dataclass
class INFERConfig(AlgoConfig):
    iters: int = 0  # derived: base sets x committee members x ufc_iters (0 = that; other values are refused)
    committee: str = ""  # teacher committee (assets/committees/<dataset>.toml); "" = the dataset's only one
    ufc_iters: int = 1000  # Adam steps per compensator (official)
    lr: float = 0.25  # Adam learning rate, cosine to 0 (official CIFAR)
    r_bn: float = 1.0  # weight of the BatchNorm-statistics term (official CIFAR; 0.01 on ImageNet)
    first_bn_multiplier: float = 10.0  # the first BatchNorm layer's extra weight (official)
    jitter: int = 4  # random shift of up to this many pixels (official CIFAR)
    flip: bool = False  # random horizontal flip in the recover loop (official CIFAR: off)

    def problems(self) -> list[str]:
        out = super().problems()
        if self.ufc_iters < 1:
            out.append(f"ufc_iters must be at least 1 (got {self.ufc_iters})")
        if self.lr <= 0 or self.r_bn < 0 or self.jitter < 0:
            out.append("lr must be positive, r_bn and jitter not negative")
        return out


def base_sets(ipc: int, teachers: int, classes: int) -> int:
    """K = int(IPC / (M / C + 1)): the base sets the budget leaves (INFER's formula)."""
    return int(ipc / (teachers / classes + 1))


@ALGORITHMS.register("infer")
class INFER(Algorithm[INFERConfig]):
    name = "infer"
    Config = INFERConfig
    protocol = "kd-static"

    def __init__(self, cfg: INFERConfig, real, ctx) -> None:
        super().__init__(cfg, real, ctx)
        self.spec = inversion_spec(real, cfg.committee, "INFER")
        c, m = real.info.num_classes, len(self.spec.members)
        self.k = base_sets(cfg.ipc, m, c)
        if self.k < 1:
            smallest = math.ceil(1 + m / c)
            raise CondenseError(
                f"INFER's budget formula K = int(IPC / (M/C + 1)) leaves no base set at IPC {cfg.ipc} with a committee "
                f"of M = {m} teachers and C = {c} classes (it would store K*C + K*M = 0 images). Use --ipc {smallest} "
                f"or more; at IPC 1 no committee fits, since every base set costs C + M > C images.")
        total = self.k * m * cfg.ufc_iters
        if cfg.iters not in (0, total):
            raise CondenseError(f"INFER runs base sets x teachers x ufc_iters = {self.k} x {m} x {cfg.ufc_iters} = "
                                f"{total} steps; --iters {cfg.iters} does not match. Set ufc_iters instead.")
        cfg.iters = total
        self.recover_cfg = RecoverConfig(cfg.ufc_iters, cfg.lr, cfg.r_bn, cfg.first_bn_multiplier, cfg.jitter, cfg.flip)

    # ---- setup -------------------------------------------------------------------------------

    def init(self) -> None:
        info, c = self.real.info, self.real.info.num_classes
        committee = load_committee(self.ctx.artifacts, self.real, self.spec)
        self.committee = committee
        self.teachers = [net.to(self.ctx.device).eval() for net in committee.nets]
        self.stats = hook_teachers(self.teachers, [a for a, _ in self.spec.members], "INFER")
        g = self.ctx.device_generator
        # K distinct real images of every class, one per base set: [K, C, ch, H, W], model-input space
        self.base = torch.stack([self.real.images_of(cls, self.k, g) for cls in range(c)], 1).to(self.ctx.device)
        self.ufcs = torch.zeros(self.k, len(self.teachers), info.channels, info.size, info.size, device=self.ctx.device)
        self.targets = torch.arange(c, device=self.ctx.device)
        self.current: Recover | None = None
        self.slot = -1

    def slot_of(self, s: int) -> tuple[int, int]:
        """(base set k, teacher m) of compensator slot s, in the official order (teacher by teacher)."""
        return s % self.k, s // self.k

    # ---- one iteration: one Adam step of one compensator ---------------------------------------

    def step(self, it: int) -> dict[str, float | torch.Tensor]:
        s = it // self.cfg.ufc_iters
        k, m = self.slot_of(s)
        if s != self.slot:
            self.slot, self.current = s, Recover(torch.zeros_like(self.ufcs[k, m:m + 1]), self.recover_cfg)
        base, teacher, stats = self.base[k], self.teachers[m], self.stats[m]
        loss = self.current.step(lambda u: inversion_loss(teacher, stats, base + u, self.targets, self.recover_cfg,
                                                          self.ctx.generator))
        if self.current.finished:
            with torch.no_grad():
                self.ufcs[k, m] = self.current.param[0]
        return {"loss": loss, "ufc": float(s + 1)}

    # ---- results -----------------------------------------------------------------------------

    @torch.no_grad()
    def instances(self) -> torch.Tensor:
        """[K * (M + 1) * C, ch, H, W]: for every base set, its C images, then B_k + u_{k,m} for every
        teacher, clamped to the valid pixel range (model-input space)."""
        pre = self.real.pre
        out = []
        for k in range(self.k):
            out.append(self.base[k])
            for m in range(len(self.teachers)):
                out.append(pre(pre.to_pixels(self.base[k] + self.ufcs[k, m])))
        return torch.cat(out)

    @torch.no_grad()
    def labels_of(self, x: torch.Tensor) -> torch.Tensor:
        """Static labels: the committee's mean logits on each (un-augmented) image, [N, C]."""
        return torch.stack([torch.cat([t(x[i:i + 256]) for i in range(0, len(x), 256)]) for t in self.teachers]).mean(0)

    def synthetic(self) -> SyntheticSet:
        c, m = self.real.info.num_classes, len(self.teachers)
        x = self.instances()
        soft = self.labels_of(x)
        labels = self.targets.repeat(self.k * (m + 1))
        is_base = torch.arange(len(x), device=x.device) // c % (m + 1) == 0
        compact = {"images": self.base.flatten(0, 1), "labels": self.targets.repeat(self.k),
                   "compensators": self.ufcs.flatten(0, 1), "soft_labels": soft[is_base]}
        s = self.make_set(x, labels, soft_labels=soft.detach().cpu(), compact={k: v.detach().cpu() for k, v in compact.items()},
                          soft_attrs={"kind": "logits", "source": f"mean logits of committee {self.spec.name}"},
                          compact_attrs={"decode": "infer", "base_sets": self.k, "teachers": m})
        s.meta.teacher = json.dumps({"committee": self.spec.name})
        s.meta.config = {**s.meta.config, "committee_members": self.committee.records}
        return s

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "base": self.base.cpu(), "ufcs": self.ufcs.cpu(), "slot": self.slot,
                "current": None if self.current is None else self.current.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.init()
        super().load_state_dict(state)
        self.base = state["base"].to(self.ctx.device)
        self.ufcs = state["ufcs"].to(self.ctx.device)
        self.slot = state["slot"]
        if state["current"] is not None:
            k, m = self.slot_of(self.slot)
            self.current = Recover(torch.zeros_like(self.ufcs[k, m:m + 1]), self.recover_cfg)
            self.current.load_state_dict(state["current"])
