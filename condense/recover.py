"""The recover loop of the teacher-inversion methods (SRe2L's lineage: INFER, committee voting).

Synthetic pixels (or an additive image) are optimized so that a frozen BatchNorm teacher, in eval
mode, classifies them as their target classes and sees, in every BatchNorm layer, the statistics
of the real data it was trained on:

    L = CE(f(aug(x)), y) + r_bn * sum_l g_l (||mu_l(x) - mu_l*||_2 + ||var_l(x) - var_l*||_2)

where mu_l(x), var_l(x) are the per-channel mean and (biased) variance of layer l's input over the
batch, mu_l*, var_l* the layer's running statistics, g_1 = `first_bn_multiplier` and g_l = 1 after.
The augmentation is a random shift (`torch.roll` by up to `jitter` pixels, as the official code)
and optionally a horizontal flip. Adam with betas (0.5, 0.9) and a cosine decay to 0.

`Recover` keeps everything learnable in one place (the tensor, Adam's state, the step), so its
`state_dict` resumes bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.errors import CondenseError


@dataclass(frozen=True)
class RecoverConfig:
    """One inversion's hyperparameters (defaults: INFER's CIFAR settings, spec §3.4)."""

    iters: int = 1000  # Adam steps per optimized tensor
    lr: float = 0.25  # Adam learning rate, cosine-decayed to 0 over `iters`
    r_bn: float = 1.0  # weight of the BatchNorm-statistics term
    first_bn_multiplier: float = 10.0  # extra weight of the first BatchNorm layer's term
    jitter: int = 4  # random shift of up to this many pixels (torch.roll), 0 = off
    flip: bool = False  # random horizontal flip of the whole batch


class BNStatistics:
    """Forward hooks on every BatchNorm layer of `net`: each call records the gap between the batch
    statistics of the layer's input and the layer's running statistics."""

    def __init__(self, net: nn.Module) -> None:
        self.layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.gaps: list[Tensor | None] = [None] * len(self.layers)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, i: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]
            dims = [0] + list(range(2, x.dim()))
            var, mean = torch.var_mean(x, dims, correction=0)
            self.gaps[i] = torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2)
        return hook

    def loss(self, first_multiplier: float) -> Tensor:
        """sum_l g_l * gap_l of the last forward pass."""
        if not self.layers or any(g is None for g in self.gaps):
            raise RuntimeError("BNStatistics.loss needs one forward pass through the network first")
        return sum((first_multiplier if i == 0 else 1.0) * g for i, g in enumerate(self.gaps))  # type: ignore[return-value]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def hook_teachers(nets: list[nn.Module], names: list[str], method: str) -> list[BNStatistics]:
    """`BNStatistics` on every teacher; one without BatchNorm layers cannot be inverted."""
    stats = [BNStatistics(net) for net in nets]
    bad = [name for st, name in zip(stats, names) if not st.layers]
    if bad:
        for st in stats:
            st.remove()
        raise CondenseError(f"{method} inverts BatchNorm statistics, but {', '.join(bad)} has no BatchNorm layer. "
                            f"Use a committee of BatchNorm networks.")
    return stats


def shift_and_flip(x: Tensor, jitter: int, flip: bool, generator: torch.Generator) -> Tensor:
    """The recover loop's augmentation: one random roll of the batch by 0 to `jitter` pixels along each
    axis (the official code's `randint(0, jitter)`; torch.roll wraps around), and a horizontal flip
    with probability 1/2 when `flip`, drawn from the host generator."""
    if jitter > 0:
        dx, dy = (int(v) for v in torch.randint(0, jitter + 1, (2,), generator=generator))
        x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
    if flip and float(torch.rand(1, generator=generator)) < 0.5:
        x = x.flip(3)
    return x


class Recover:
    """Adam (betas 0.5, 0.9) with a cosine learning rate on one learnable tensor.

    >>> r = Recover(torch.zeros(1, 3, 32, 32), RecoverConfig(iters=100))
    >>> loss = r.step(lambda u: objective(u))   # one update; returns the loss (a tensor)
    """

    def __init__(self, init: Tensor, cfg: RecoverConfig) -> None:
        self.cfg = cfg
        self.param = init.detach().clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.param], lr=cfg.lr, betas=(0.5, 0.9))
        self.done = 0

    def lr(self) -> float:
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * self.done / self.cfg.iters))

    def step(self, objective: Callable[[Tensor], Tensor]) -> Tensor:
        for group in self.opt.param_groups:
            group["lr"] = self.lr()
        self.opt.zero_grad(set_to_none=True)
        loss = objective(self.param)
        loss.backward()
        self.opt.step()
        self.done += 1
        return loss.detach()

    @property
    def finished(self) -> bool:
        return self.done >= self.cfg.iters

    def state_dict(self) -> dict[str, Any]:
        return {"param": self.param.detach().cpu().clone(), "opt": self.opt.state_dict(), "done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.param.copy_(state["param"].to(self.param.device))
        self.opt.load_state_dict(state["opt"])
        self.done = int(state["done"])


def inversion_loss(teacher: nn.Module, stats: BNStatistics, x: Tensor, targets: Tensor, cfg: RecoverConfig,
                   generator: torch.Generator) -> Tensor:
    """CE of the teacher on the augmented batch plus the weighted BatchNorm-statistics term."""
    logits = teacher(shift_and_flip(x, cfg.jitter, cfg.flip, generator))
    return F.cross_entropy(logits, targets) + cfg.r_bn * stats.loss(cfg.first_bn_multiplier)
