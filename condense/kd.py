"""The losses a student trains with: cross-entropy for hard labels, and the knowledge-distillation
family for soft ones. A protocol names one (`loss` in its [train] table; `condense eval --kd-loss`
replaces it) and every result records which.

Every loss takes the student's logits `s` [B, K], the target `t` [B, K] (the teacher's logits, or
probabilities when the protocol's soft_kind is `probs`) and the ground truth as weighted parts
`[(w, y)]`: one part for plain batches, two (lambda and 1 - lambda) under CutMix and MixUp. T is
the protocol's temperature; `kl_t2` multiplies the temperature-scaled losses by T^2 (Hinton's
gradient-scale correction; SRe2L and INFER train without it).

    kl      KL(softmax(t/T) || softmax(s/T)), averaged over the batch
    sce     soft cross-entropy -sum softmax(t/T) log softmax(s/T): KL plus the target's entropy,
            the same gradient as kl, a different value (DD-Ranking's default)
    mse_gt  EDC's MSE+GT: mean (s - t)^2 plus gt_weight x cross-entropy to the ground truth
    dist    DIST (Huang et al., 2022): 1 - Pearson correlation of softmax(s/T) and softmax(t/T),
            per image (inter-class, weight dist_beta) and per class over the batch (intra-class,
            weight dist_gamma)
    dkd     DKD (Zhao et al., 2022): the KL split into the target class vs the rest (TCKD, weight
            dkd_alpha) and among the non-target classes (NCKD, weight dkd_beta), each x T^2
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from condense.registry import Registry

LOSSES: Registry[Callable] = Registry("loss")
Parts = Sequence[tuple[float, Tensor]]  # ground truth: (weight, class indices [B]) pairs summing to weight 1


class LossSettings(Protocol):
    """The fields of `condense.train.TrainConfig` the losses read."""

    soft_kind: str
    temperature: float
    kl_t2: bool
    gt_weight: float
    dist_beta: float
    dist_gamma: float
    dkd_alpha: float
    dkd_beta: float


def _target_probs(cfg: LossSettings, t: Tensor) -> Tensor:
    return t if cfg.soft_kind == "probs" else F.softmax(t / cfg.temperature, 1)


def _t2(cfg: LossSettings, loss: Tensor) -> Tensor:
    t = cfg.temperature
    return loss * t * t if cfg.kl_t2 else loss


@LOSSES.register("ce")
def cross_entropy(cfg: LossSettings, s: Tensor, t: Tensor | None, gt: Parts) -> Tensor:
    return sum(w * F.cross_entropy(s, y) for w, y in gt)  # type: ignore[return-value]


@LOSSES.register("kl")
def kl(cfg: LossSettings, s: Tensor, t: Tensor, gt: Parts) -> Tensor:
    p = _target_probs(cfg, t)
    return _t2(cfg, F.kl_div(F.log_softmax(s / cfg.temperature, 1), p, reduction="batchmean"))


@LOSSES.register("sce")
def soft_cross_entropy(cfg: LossSettings, s: Tensor, t: Tensor, gt: Parts) -> Tensor:
    p = _target_probs(cfg, t)
    return _t2(cfg, -(p * F.log_softmax(s / cfg.temperature, 1)).sum(1).mean())


@LOSSES.register("mse_gt")
def mse_gt(cfg: LossSettings, s: Tensor, t: Tensor, gt: Parts) -> Tensor:
    loss = F.mse_loss(s, t)
    return loss + cfg.gt_weight * cross_entropy(cfg, s, None, gt) if cfg.gt_weight else loss


def _pearson_gap(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """1 - the Pearson correlation of a and b along `dim`, averaged over the other dimension."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return 1 - F.cosine_similarity(a, b, dim=dim, eps=1e-8).mean()


@LOSSES.register("dist")
def dist(cfg: LossSettings, s: Tensor, t: Tensor, gt: Parts) -> Tensor:
    ps, pt = F.softmax(s / cfg.temperature, 1), _target_probs(cfg, t)
    inter, intra = _pearson_gap(ps, pt, 1), _pearson_gap(ps, pt, 0)
    return (cfg.dist_beta * inter + cfg.dist_gamma * intra) * cfg.temperature ** 2


def _dkd_one(cfg: LossSettings, s: Tensor, pt: Tensor, lt: Tensor, y: Tensor) -> Tensor:
    tau = cfg.temperature
    target = F.one_hot(y, s.shape[1]).bool()
    ps = F.softmax(s / tau, 1)

    def binary(p: Tensor) -> Tensor:  # [B, 2]: probability of the target class, and of all the others
        pk = (p * target).sum(1, keepdim=True)
        return torch.cat([pk, 1 - pk], 1)

    tckd = F.kl_div(binary(ps).clamp_min(1e-12).log(), binary(pt), reduction="batchmean")
    # among the non-target classes: the target logit pushed to -inf-like before the softmax
    nckd = F.kl_div(F.log_softmax(s / tau - 1000.0 * target, 1), F.softmax(lt - 1000.0 * target, 1),
                    reduction="batchmean")
    return (cfg.dkd_alpha * tckd + cfg.dkd_beta * nckd) * tau ** 2


@LOSSES.register("dkd")
def dkd(cfg: LossSettings, s: Tensor, t: Tensor, gt: Parts) -> Tensor:
    pt = _target_probs(cfg, t)
    lt = pt.clamp_min(1e-12).log() if cfg.soft_kind == "probs" else t / cfg.temperature  # log-probs up to a constant
    return sum(w * _dkd_one(cfg, s, pt, lt, y) for w, y in gt)  # type: ignore[return-value]
