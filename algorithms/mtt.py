"""Trajectory matching: MTT (Cazenavette et al., CVPR 2022) with the AST and DATM improvements.

Experts are networks trained on the real data whose flat parameters are recorded at
initialization and after every epoch (an artifact, built once). Each iteration starts a student
at an expert's epoch t, takes N SGD steps on augmented mini-batches of the synthetic set with a
learnable step size alpha, and compares the result with the expert M epochs later:

    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

The images and alpha descend on L. alpha lives in log space and is clamped, so it can neither go
negative nor explode (a known failure of the official code); the learned alpha is saved in the
file and the evaluator trains with it.

Two ways to get the same gradient (`memory`):

* ``unroll``: autograd through all N steps (activation memory grows with N);
* ``recompute``: keep only the N flat parameter vectors, then walk the steps backwards, rebuilding
  one step's graph at a time and propagating the adjoint with a Hessian-vector product
  (lambda_n = lambda_{n+1} + dg_n/dtheta^T mu_n). Exact, with activation memory of one step.

Options from AST: heavy-ball momentum in the inner loop (`inner_momentum`), a balanced inner loss,
intermediate matching against the expert's epochs in between, weight perturbation of the starting
parameters, representative initialization (k-means over an expert's logits per class; any IPC).
From DATM: learnable soft labels initialized from correctly classified real images, the growing
start-epoch window and the loss gate.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms.base import ALGORITHMS, AlgoConfig, Algorithm, PixelSGD
from condense import fast
from condense.artifacts import expert_recipe
from condense.augment import DEFAULT_STRATEGY, AugParams, make_dsa
from condense.errors import CondenseError
from condense.higher_order import HigherOrderConvs
from condense.models import FlatParams
from condense.synthetic import SyntheticSet
from condense.train import TrainConfig


@dataclass
class MTTConfig(AlgoConfig):
    iters: int = 5000  # MTT official
    num_experts: int = 100  # experts trained (MTT: 100)
    expert_recipe: str = "mtt"  # mtt (plain SGD) | smooth (AST smooth experts)
    syn_steps: int = 30  # N, unrolled student steps per iteration
    expert_epochs: int = 2  # M, expert epochs the student must cover
    max_start_epoch: int = 20  # T+, start epochs drawn from [min_start_epoch, T+)
    min_start_epoch: int = 0  # T- (DATM)
    batch_syn: int = 0  # synthetic images per inner step; 0 = the whole set
    lr_img: float = 100.0  # SGD on the pixels (momentum 0.5)
    lr_lr: float = 1e-5  # SGD on alpha, in MTT's units (the log-space step is scaled to match at start)
    lr_teacher: float = 0.01  # alpha at the start
    lr_bounds: tuple[float, ...] = (1e-6, 1.0)  # alpha is clamped to this range
    init: str = "real"  # real | noise | kmeans (AST representative init) | correct (DATM: correctly classified)
    dsa: str = DEFAULT_STRATEGY  # inner-loop augmentation, per sample
    memory: str = "unroll"  # unroll | recompute (exact, activation memory independent of N)
    inner_momentum: float = 0.0  # AST: 0.9, heavy-ball momentum in the inner loop
    balance_loss: bool = False  # AST: scale the inner loss by the start epoch's position
    middle_loss: bool = False  # AST: also match the expert's intermediate epochs
    weight_perturb: float = 0.0  # AST: 1.0, perturb the start's conv weights
    soft_labels: bool = False  # DATM: learn logits as labels (initialized from the experts)
    lr_y: float = 2.0  # DATM: SGD (momentum 0.9) on the soft labels
    window_growth_iters: int = 0  # DATM: T+ grows from max_start_epoch_start to max_start_epoch over these its
    max_start_epoch_start: int = 0  # DATM: the starting upper bound of the window (0 = no growth)
    loss_gate: float = 0.0  # DATM: skip the update when the normalized loss exceeds this (0 = off)

    def problems(self) -> list[str]:
        out = super().problems()
        for name in ("num_experts", "syn_steps", "expert_epochs", "max_start_epoch"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.min_start_epoch >= self.max_start_epoch:
            out.append("min_start_epoch must be below max_start_epoch")
        if self.memory not in ("unroll", "recompute"):
            out.append(f"memory must be unroll or recompute (got {self.memory})")
        if len(self.lr_bounds) != 2 or not 0 < self.lr_bounds[0] < self.lr_bounds[1]:
            out.append("lr_bounds must be two increasing positive numbers")
        if not self.lr_bounds[0] <= self.lr_teacher <= self.lr_bounds[-1]:
            out.append("lr_teacher must lie within lr_bounds")
        if self.loss_gate < 0:
            out.append(f"loss_gate must be 0 (off) or positive (got {self.loss_gate}); a negative gate would "
                       f"refuse every iteration")
        return out

    @property
    def expert_length(self) -> int:
        """Epochs an expert needs: the last epoch distillation can use (issue 4 of MTT)."""
        return self.max_start_epoch + self.expert_epochs


@ALGORITHMS.register("mtt")
class MTT(Algorithm[MTTConfig]):
    name = "mtt"
    Config = MTTConfig

    @classmethod
    def artifacts_needed(cls, cfg: MTTConfig) -> list[tuple[str, TrainConfig, int]]:
        return [(cfg.arch, expert_recipe(cfg.expert_recipe, cfg.expert_length), i) for i in range(cfg.num_experts)]

    # ---- setup -------------------------------------------------------------------------------

    def init(self) -> None:
        cfg = self.cfg
        info, k, dev = self.real.info, self.real.info.num_classes, self.ctx.device
        recipe = expert_recipe(cfg.expert_recipe, cfg.expert_length)
        # on the device for the whole run: every step reads two or more of their epochs
        self.experts = [self.ctx.artifacts.expert(self.real, cfg.arch, recipe, i).to(dev)
                        for i in range(cfg.num_experts)]
        self.net = self.ctx.model(cfg.arch, self.real, seed=0)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.flat = FlatParams(self.net)
        if self.experts[0].shape[1] != self.flat.size:
            raise CondenseError("The cached experts do not match the network; delete the expert cache.")
        self.labels = torch.arange(k, device=dev).repeat_interleave(cfg.ipc)
        x, y = self.initial_images()
        self.images = x.to(dev).detach().requires_grad_(True)
        self.log_lr = torch.tensor(math.log(cfg.lr_teacher), device=dev, requires_grad=True)
        self.opt_img = PixelSGD(self.images, lr=cfg.lr_img, momentum=0.5)
        # the same first step on alpha as MTT's SGD(alpha, lr_lr): d/dlog(alpha) = alpha d/d(alpha)
        self.opt_lr = PixelSGD(self.log_lr, lr=cfg.lr_lr / cfg.lr_teacher ** 2, momentum=0.5)
        self.soft = None
        if cfg.soft_labels:
            self.soft = y.to(dev).detach().requires_grad_(True)
            self.opt_y = PixelSGD(self.soft, lr=cfg.lr_y, momentum=0.9)
        self.aug = make_dsa(cfg.dsa, info.allow_flip)
        self.skipped = 0  # iterations the loss gate refused

    def initial_images(self) -> tuple[Tensor, Tensor | None]:
        """Initial images [K * ipc, C, H, W] and, for soft labels, initial logits [K * ipc, K]."""
        cfg = self.cfg
        k, g = self.real.info.num_classes, self.ctx.device_generator
        if cfg.init == "noise":
            i = self.real.info
            x = torch.randn(k * cfg.ipc, i.channels, i.size, i.size, generator=g, device=self.ctx.device)
        elif cfg.init == "real":
            x = torch.cat([self.real.images_of(c, cfg.ipc, g) for c in range(k)])
        elif cfg.init in ("kmeans", "correct"):
            x = torch.cat([self.real.get(self.pick(c)) for c in range(k)])
        else:
            raise CondenseError(f"init must be real, noise, kmeans or correct, not '{cfg.init}'.")
        y = None
        if cfg.soft_labels:
            y = self.expert_logits(x.to(self.ctx.device))
        return x, y

    @torch.no_grad()
    def expert_logits(self, x: Tensor, only_correct: bool = True) -> Tensor:
        """DATM's label initialization: the mean logits over the experts (final epoch) that classify
        each image correctly (all experts where none does)."""
        outs = torch.stack([self.flat.call(self.net, e[-1].to(x.device), x) for e in self.experts])  # [E, n, K]
        target = self.labels.view(1, -1)
        ok = (outs.argmax(-1) == target).float() if only_correct else torch.ones(outs.shape[:2], device=x.device)
        ok = torch.where(ok.sum(0, keepdim=True) > 0, ok, torch.ones_like(ok))
        return (outs * ok[..., None]).sum(0) / ok.sum(0)[:, None]

    @torch.no_grad()
    def pick(self, c: int) -> Tensor:
        """Training indices for class c: k-means over an expert's logits (AST; k = ipc, so any IPC
        works, IPC 1 taking the image nearest the class mean), or DATM's random correctly
        classified images."""
        cfg = self.cfg
        idx = self.real.class_index[c]
        theta = self.experts[0][-1].to(self.ctx.device)
        logits = torch.cat([self.flat.call(self.net, theta, self.real.get(idx[s:s + 512]))
                            for s in range(0, idx.numel(), 512)])
        if cfg.init == "correct":
            good = idx[logits.argmax(1) == c]
            good = good if good.numel() >= cfg.ipc else idx
            return good[torch.randperm(good.numel(), generator=self.ctx.generator)[: cfg.ipc].to(good.device)]
        centres = kmeans(logits, cfg.ipc, self.ctx.generator)
        return idx[torch.cdist(centres, logits).argmin(1)]

    # ---- one iteration -----------------------------------------------------------------------

    def start_epoch(self, it: int) -> int:
        cfg = self.cfg
        upper = cfg.max_start_epoch
        if cfg.window_growth_iters and cfg.max_start_epoch_start:
            frac = min(1.0, it / cfg.window_growth_iters)
            upper = round(cfg.max_start_epoch_start + frac * (cfg.max_start_epoch - cfg.max_start_epoch_start))
        return int(torch.randint(cfg.min_start_epoch, max(upper, cfg.min_start_epoch + 1), (1,),
                                 generator=self.ctx.generator))

    def plan(self) -> list[tuple[Tensor, AugParams | None]]:
        """Mini-batches (indices) and their augmentation draws for the N inner steps: MTT walks a
        random permutation of the set in chunks of batch_syn, drawing a new one when exhausted."""
        cfg = self.cfg
        n, g, dev = self.images.shape[0], self.ctx.device_generator, self.ctx.device
        b = cfg.batch_syn or n
        steps, order = [], torch.empty(0, dtype=torch.long, device=dev)
        for _ in range(cfg.syn_steps):
            if order.numel() < b:
                order = torch.cat([order, torch.randperm(n, generator=g, device=dev)])
            idx, order = order[:b], order[b:]
            p = self.aug.sample(b, self.ctx.generator, self.real.info.size, tensors=g) if self.aug is not None else None
            steps.append((idx, p))
        return steps

    def inner_loss(self, theta: Tensor, images: Tensor, soft: Tensor | None, idx: Tensor,
                   p: AugParams | None, scale: float) -> Tensor:
        x = images[idx]
        if p is not None:
            x = self.aug(x, p)
        with HigherOrderConvs() if fast.is_fast() else contextlib.nullcontext():  # same numbers, faster kernels
            out = self.flat.call(self.net, theta, x)
        if soft is None:
            return scale * F.cross_entropy(out, self.labels[idx])
        return scale * torch.sum(-F.softmax(soft[idx], 1) * F.log_softmax(out, 1), 1).mean()

    def balance(self, t: int) -> float:
        """AST's balanced inner loss factor for start epoch t."""
        cfg = self.cfg
        if not cfg.balance_loss:
            return 1.0
        half = cfg.max_start_epoch / 2
        return math.log(t - half + 8, 5) if t >= half else 1.0 / math.log(half - t + 8, 5)

    def perturb(self, theta: Tensor) -> Tensor:
        """AST weight perturbation: W <- W + a (d / ||d||_F) * W for every conv weight, d ~ N(0, I)."""
        cfg = self.cfg
        parts = list(torch.split(theta.clone(), self.flat.numels))
        for i, shape in enumerate(self.flat.shapes):
            if len(shape) == 4:
                d = torch.randn(parts[i].shape, generator=self.ctx.device_generator, device=theta.device)
                parts[i] = parts[i] + cfg.weight_perturb * d / d.norm() * parts[i]
        return torch.cat(parts)

    def targets(self, expert: Tensor, t: int) -> list[tuple[int, Tensor, Tensor]]:
        """(inner step, target parameters, 1 / normalizer) for every matching point: the final one
        and, with middle_loss, the expert's intermediate epochs at evenly spaced steps."""
        cfg = self.cfg
        start = expert[t]
        points = [(cfg.syn_steps, t + cfg.expert_epochs)]
        if cfg.middle_loss:
            points += [(cfg.syn_steps // cfg.expert_epochs * i, t + i) for i in range(1, cfg.expert_epochs)]
        out = []
        for step, epoch in points:
            target = expert[epoch]
            out.append((step, target, 1.0 / (start - target).square().sum()))
        return out

    def step(self, it: int) -> dict[str, float | Tensor]:
        cfg = self.cfg
        expert = self.experts[int(torch.randint(len(self.experts), (1,), generator=self.ctx.generator))]
        t = self.start_epoch(it)
        start = expert[t]
        if cfg.weight_perturb:
            start = self.perturb(start)
        plan = self.plan()
        targets = self.targets(expert, t)
        scale = self.balance(t)
        for opt in self.optimizers():
            opt.zero_grad(set_to_none=True)
        grads = unroll if cfg.memory == "unroll" else recompute
        terms = grads(self, start, plan, targets, scale)  # [final point, intermediate points...]
        # DATM's gate reads the final point's normalized loss (the one DATM has); only it syncs the host
        gate_open = not cfg.loss_gate or bool(terms[0] <= cfg.loss_gate)
        self.skipped += 0 if gate_open else 1
        if gate_open:
            for opt in self.optimizers():
                opt.step()
            with torch.no_grad():
                lo, hi = cfg.lr_bounds
                self.log_lr.clamp_(math.log(lo), math.log(hi))
        return {"loss": terms.sum(), "lr": self.log_lr.detach().exp(), "start": float(t)}

    def notes(self) -> list[str]:
        cfg = self.cfg
        if not cfg.loss_gate or not self.skipped:
            return []
        note = f"The loss gate ({cfg.loss_gate}) skipped {self.skipped} of {cfg.iters} iterations."
        if self.skipped == cfg.iters:
            note += (" No iteration updated the set: the student never got within the gate of the expert "
                     "(inner_momentum with plain-SGD experts overshoots, for one). Raise loss_gate or set it to 0.")
        return [note]

    def optimizers(self) -> list[PixelSGD]:
        return [self.opt_img, self.opt_lr] + ([self.opt_y] if self.soft is not None else [])

    # ---- results and state -------------------------------------------------------------------

    def synthetic(self) -> SyntheticSet:
        extra: dict[str, Any] = {"lr": float(self.log_lr.detach().exp())}
        if self.soft is not None:
            extra["soft_labels"] = self.soft.detach().float().cpu()
            extra["soft_attrs"] = {"kind": "logits", "temperature": 1.0, "source": "learned (DATM)"}
        s = self.make_set(self.images, self.labels, **extra)
        s.meta.protocol = "dsa"
        return s

    def state_dict(self) -> dict[str, Any]:
        s = {**super().state_dict(), "images": self.images.detach().cpu().clone(), "log_lr": self.log_lr.detach().cpu(),
             "opt_img": self.opt_img.state_dict(), "opt_lr": self.opt_lr.state_dict(), "skipped": self.skipped}
        if self.soft is not None:
            s["soft"] = self.soft.detach().cpu().clone()
            s["opt_y"] = self.opt_y.state_dict()
        return s

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.init()
        super().load_state_dict(state)
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.images.device))
            self.log_lr.copy_(state["log_lr"].to(self.log_lr.device))
        self.opt_img.load_state_dict(state["opt_img"])
        self.opt_lr.load_state_dict(state["opt_lr"])
        self.skipped = state.get("skipped", 0)
        if self.soft is not None:
            with torch.no_grad():
                self.soft.copy_(state["soft"].to(self.soft.device))
            self.opt_y.load_state_dict(state["opt_y"])


# --------------------------------------------------------------------------------------------
# the two gradient computations (they fill .grad of the images, log-lr and soft labels)


def matching_loss(thetas: dict[int, Tensor], targets: list[tuple[int, Tensor, Tensor]]) -> Tensor:
    """The normalized distance at every matching point, [len(targets)] (the final point first)."""
    return torch.stack([(thetas[step] - target).square().sum() * inv for step, target, inv in targets])


def unroll(algo: MTT, start: Tensor, plan, targets, scale: float) -> Tensor:
    """Plain backpropagation through all N inner steps."""
    cfg = algo.cfg
    alpha = algo.log_lr.exp()
    theta = start.detach().requires_grad_(True)
    buf = torch.zeros_like(theta)
    wanted = {step for step, _, _ in targets}
    kept = {0: theta} if 0 in wanted else {}
    for n, (idx, p) in enumerate(plan):
        loss = algo.inner_loss(theta, algo.images, algo.soft, idx, p, scale)
        (g,) = torch.autograd.grad(loss, theta, create_graph=True)
        buf = cfg.inner_momentum * buf + g
        theta = theta - alpha * buf
        if n + 1 in wanted:
            kept[n + 1] = theta
    terms = matching_loss(kept, targets)
    terms.sum().backward()
    return terms.detach()


def recompute(algo: MTT, start: Tensor, plan, targets, scale: float) -> Tensor:
    """The same gradient as `unroll`, keeping only the N parameter vectors: a forward pass without
    graphs, then a backward sweep that rebuilds one inner step at a time.

    With b_{n+1} = mu b_n + g_n and theta_{n+1} = theta_n - alpha b_{n+1}, the adjoints are
    lb* = lb_{n+1} - alpha lt_{n+1};  lt_n = lt_{n+1} + H_n lb*;  lb_n = mu lb*;  and the images
    and soft labels receive d<g_n, lb*>/d(x, y), alpha receives -<b_{n+1}, lt_{n+1}>."""
    cfg = algo.cfg
    mu = cfg.inner_momentum
    alpha = algo.log_lr.detach().exp()  # a 0-d tensor: no host sync
    images, soft = algo.images.detach(), None if algo.soft is None else algo.soft.detach()
    thetas, bufs = [start.detach()], [torch.zeros_like(start)]
    for idx, p in plan:  # forward: parameters only
        theta = thetas[-1].requires_grad_(True)
        loss = algo.inner_loss(theta, images, soft, idx, p, scale)
        (g,) = torch.autograd.grad(loss, theta)
        bufs.append(mu * bufs[-1] + g)
        thetas.append(theta.detach() - alpha * bufs[-1])
        thetas[-2] = theta.detach()
    matched = {step: thetas[step].clone().requires_grad_(True) for step, _, _ in targets}
    terms = matching_loss(matched, targets)
    seeds = dict(zip(matched, torch.autograd.grad(terms.sum(), list(matched.values()))))
    lt = seeds.get(len(plan), torch.zeros_like(start))
    lb = torch.zeros_like(start)
    d_alpha = torch.zeros((), device=start.device)
    x_leaf = algo.images
    y_leaf = algo.soft
    for n in range(len(plan) - 1, -1, -1):
        idx, p = plan[n]
        d_alpha = d_alpha - (bufs[n + 1] * lt).sum()
        lb_star = lb - alpha * lt
        theta = thetas[n].requires_grad_(True)
        loss = algo.inner_loss(theta, x_leaf, y_leaf, idx, p, scale)
        (g,) = torch.autograd.grad(loss, theta, create_graph=True)
        leaves = [theta, x_leaf] + ([y_leaf] if y_leaf is not None else [])
        grads = torch.autograd.grad((g * lb_star).sum(), leaves)
        for leaf, gr in zip(leaves[1:], grads[1:]):
            leaf.grad = gr if leaf.grad is None else leaf.grad + gr
        lt = lt + grads[0]
        lb = mu * lb_star
        thetas[n] = theta.detach()
        if n in seeds:  # an intermediate matching point injects its own adjoint
            lt = lt + seeds[n]
    # d L / d log(alpha) = alpha d L / d alpha
    algo.log_lr.grad = (alpha * d_alpha).reshape(())
    return terms.detach()


def kmeans(x: Tensor, k: int, g: torch.Generator, iters: int = 25) -> Tensor:
    """Lloyd's k-means with k-means++ seeding from generator g: x [n, d] -> centres [k, d]."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=g))
    centres = [x[first]]
    for _ in range(1, k):
        d = torch.cdist(x, torch.stack(centres)).min(1).values.square()
        probs = (d / d.sum()).cpu()
        centres.append(x[int(torch.multinomial(probs, 1, generator=g))])
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if members.numel():
                c[j] = members.mean(0)
    return c
