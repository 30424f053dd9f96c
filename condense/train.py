"""The one training loop: evaluators, teachers and experts all train networks through it.

It supports what the field's protocols need: SGD or AdamW, step / multistep / cosine
schedules, Siamese-free DSA augmentation drawn per sample, hard or soft (KL) targets. It is
deterministic on CPU for a given seed: shuffling and augmentation draw from an explicit
generator, never from the global RNG. The hot loop never synchronizes with the host.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.augment import DSA, make_dsa
from condense.data import RealData
from condense.errors import CondenseError
from condense.execution import compile_fn
from condense.kd import LOSSES


@dataclass(frozen=True)
class TrainConfig:
    """How to train one network. The defaults are the DSA evaluation protocol."""

    epochs: int = 1000  # DSA/DM/MTT evaluate with 1000 epochs
    batch: int = 256  # the DC/DSA evaluation batch
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # DC/DSA; trajectory matching replaces it by the learned lr
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4  # DC/DSA value
    schedule: str = "step"  # step: x gamma at each milestone | cosine: to 0 | constant
    milestones: tuple[float, ...] = (0.5,)  # fractions of the epochs (DSA: one decay at half)
    gamma: float = 0.1  # DSA: x0.1
    augment: str = "color_crop_cutout_flip_scale_rotate"  # DSA strategy, or "none"
    augment_mode: str = "single"  # single (DSA: one family per batch) | idc (IDC/NCFM DiffAug) | all
    loss: str = "ce"  # ce (hard labels) | a distillation loss for soft targets: kl, sce, mse_gt, dist, dkd (condense.kd)
    soft_kind: str = "logits"  # soft targets are logits (softmax at the temperature) or probs
    temperature: float = 1.0  # KL temperature for soft targets
    cutmix: float = 0.0  # probability of CutMix per batch (NCFM protocol); 0 = off
    mixup: float = 0.0  # MixUp on every batch with lambda ~ Beta(a, a) when a > 0 (INFER's static protocol: 0.8);
    #                     stored soft logits are interpolated with the same lambda
    kl_t2: bool = True  # multiply the KL loss by T^2 (Hinton); the SRe2L/INFER code does not
    gt_weight: float = 0.1  # mse_gt: weight of the cross-entropy to the ground truth next to the logit MSE
    dist_beta: float = 1.0  # dist: weight of the inter-class (per image) relation term (DIST's ImageNet value)
    dist_gamma: float = 1.0  # dist: weight of the intra-class (per class, over the batch) relation term
    dkd_alpha: float = 1.0  # dkd: weight of the target-vs-rest KL (TCKD; DKD's value)
    dkd_beta: float = 8.0  # dkd: weight of the KL among the non-target classes (NCKD; DKD's CIFAR value)
    dc_step: bool = False  # the DC/DSA code's exact step schedule: epochs + 1 epochs, the decay after
    #                        epoch int(m * epochs) + 1, and the SGD optimizer re-created (momentum reset) there
    clip_epochs: int = 0  # AST's clipping loss: the loss of epoch e < clip_epochs is scaled by 0.5 + 0.05 e
    grad_penalty: float = 0.0  # AST's input-gradient penalty weight (2 in AST): (||d sum(logits)/dx||_2 - 1)^2

    def with_(self, **kw: Any) -> "TrainConfig":
        known = {f.name for f in fields(self)}
        bad = sorted(set(kw) - known)
        if bad:
            raise CondenseError(f"Unknown training setting(s) {bad}. Known: {', '.join(sorted(known))}.")
        return replace(self, **kw)


@dataclass
class TrainData:
    """n examples and a way to fetch a batch of them by index: `(inputs, targets)`; with soft targets,
    `classes` gives the ground-truth classes too (the distillation losses with a ground-truth term)."""

    n: int
    fetch: Callable[[Tensor], tuple[Tensor, Tensor]]
    size: int  # image side, for augmentation ranges
    classes: Callable[[Tensor], Tensor] | None = None
    # recorded batches (condense.relabel.replay_data): epoch -> (inputs, target logits, ground-truth parts),
    # already augmented and mixed; the loop then draws nothing itself
    replay: Callable[[int], Iterable[tuple[Tensor, Tensor, list[tuple[float, Tensor]]]]] | None = None

    @staticmethod
    def tensors(images: Tensor, targets: Tensor, classes: Tensor | None = None) -> "TrainData":
        return TrainData(int(images.shape[0]), lambda i: (images[i], targets[i]), int(images.shape[-1]),
                         None if classes is None else (lambda i: classes[i]))

    @staticmethod
    def real(real: RealData) -> "TrainData":
        """The whole real training split, preprocessed batch by batch."""
        return TrainData(int(real.train.labels.numel()), lambda i: (real.get(i), real.train.labels[i]),
                         real.info.size)


def make_optimizer(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    raise CondenseError(f"Unknown optimizer '{cfg.optimizer}'. Use sgd or adamw.")


def total_epochs(cfg: TrainConfig) -> int:
    """Epochs actually run: the DC/DSA code runs `range(Epoch + 1)`."""
    return cfg.epochs + 1 if cfg.dc_step else cfg.epochs


def lr_at(cfg: TrainConfig, base_lr: float, epoch: int) -> float:
    """Learning rate for `epoch` (0-based). step: base * gamma^(milestones passed)."""
    if cfg.schedule == "constant":
        return base_lr
    if cfg.schedule == "step":
        shift = 2 if cfg.dc_step else 0  # DC decays *after* epoch int(m * E) + 1
        passed = sum(epoch >= int(m * cfg.epochs) + shift for m in cfg.milestones)
        return base_lr * cfg.gamma ** passed
    if cfg.schedule == "cosine":
        return 0.5 * base_lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
    raise CondenseError(f"Unknown schedule '{cfg.schedule}'. Use step, cosine or constant.")


def cutmix(x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, float, Tensor]:
    """CutMix with lambda ~ Beta(1, 1): returns mixed x, y, the partner labels, lambda and the partners."""
    b, _, h, w = x.shape
    perm, box = cutmix_draw(b, h, w, g)
    perm = perm.to(x.device, non_blocking=True)
    y0, y1, x0, x1 = box
    return cutmix_apply(x, perm, box), y, y[perm], 1 - (y1 - y0) * (x1 - x0) / (h * w), perm


def cutmix_draw(b: int, h: int, w: int, g: torch.Generator) -> tuple[Tensor, tuple[int, int, int, int]]:
    """One CutMix draw: the partners (a permutation of the batch) and the box (y0, y1, x0, x1)."""
    lam = float(torch.rand(1, generator=g))
    perm = torch.randperm(b, generator=g)
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))
    return perm, (max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h), max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w))


def cutmix_apply(x: Tensor, perm: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """Paste each image's partner into the box."""
    y0, y1, x0, x1 = box
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    return x


def mixup(x: Tensor, y: Tensor, g: torch.Generator, alpha: float) -> tuple[Tensor, Tensor, Tensor, float]:
    """MixUp with lambda ~ Beta(alpha, alpha): returns mixed x, y, the partner labels, lambda and the partners."""
    lam = _beta(alpha, g)
    perm = torch.randperm(x.shape[0], generator=g).to(x.device, non_blocking=True)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam, perm


def _beta(alpha: float, g: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw from `g` (torch's distributions cannot take a generator):
    X / (X + Y) with X, Y ~ Gamma(alpha)."""
    a = torch._standard_gamma(torch.full((2,), float(alpha)), generator=g)
    return float(a[0] / a.sum())


def input_gradient_penalty(forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """AST's smoothness term on un-augmented inputs `x` [R, B, C, H, W]: per run, the mean over
    pixels of (||grad_x sum(logits)||_2 - 1)^2 with the norm over channels; summed over runs."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(forward(x).sum(), x, create_graph=True)
    return (g.norm(dim=2) - 1).square().mean() * x.shape[0]


def loss_fn(cfg: TrainConfig, logits: Tensor, target: Tensor, gt: list[tuple[float, Tensor]] | None = None) -> Tensor:
    """The protocol's loss (`condense.kd`). gt: the ground-truth classes as weighted parts, for the
    losses that use them (mse_gt, dkd); `target` is the class indices for ce, soft targets otherwise."""
    if cfg.loss == "ce":
        return F.cross_entropy(logits, target)
    if gt is None and (cfg.loss == "dkd" or (cfg.loss == "mse_gt" and cfg.gt_weight)):
        raise CondenseError(f"The {cfg.loss} loss needs the images' ground-truth classes, and this training data "
                            f"has soft targets only.")
    return LOSSES.get(cfg.loss)(cfg, logits, target, gt or ())


def train_model(model: nn.Module, data: TrainData, cfg: TrainConfig, generator: torch.Generator,
                lr: float | None = None, aug: DSA | None = None,
                on_epoch: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
                start_epoch: int = 0, opt_state: dict | None = None, allow_flip: bool = True,
                compile: bool = False, teacher: Callable[[Tensor], Tensor] | None = None) -> nn.Module:
    """Train `model` in place for `cfg.epochs` epochs and return it.

    lr: overrides `cfg.lr` (the learned lr of trajectory matching).
    aug: the augmentation (default: DSA with `cfg.augment`), drawn per sample from `generator`.
    on_epoch(epoch, model, optimizer): called after every epoch (progress, checkpoints).
    start_epoch, opt_state: resume an interrupted run (with the generator state restored too).
    allow_flip: False drops the flip family (digits must not be mirrored).
    compile: run the forward pass through torch.compile (same math, fused kernels; falls back to
        eager execution if compilation fails).
    teacher: soft-label mode M, the target logits of every augmented batch (cfg.loss must be kl).
    """
    forward = _Forward(model, compile)
    _train(model, lambda x: forward(x[0])[None], [data], cfg, [generator], lr, aug, on_epoch, start_epoch,
           opt_state, allow_flip, teacher)
    return model


def train_runs(stack: nn.Module, datas: list[TrainData], cfg: TrainConfig, generators: list[torch.Generator],
               lr: float | None = None, on_epoch: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
               allow_flip: bool = True, compile: bool = False,
               teacher: Callable[[Tensor], Tensor] | None = None) -> nn.Module:
    """Train R runs at once: `stack` maps [R, B, ...] to [R, B, K] (a `ConvNetStack`), run r sees
    `datas[r]` in the order and with the augmentation drawn from `generators[r]`, exactly as
    `train_model` would for that run alone; the loss is the sum of the runs' losses."""
    if len({d.n for d in datas}) != 1:
        raise CondenseError("Runs trained together need training sets of one size.")
    _train(stack, _Forward(stack, compile), datas, cfg, generators, lr, None, on_epoch, 0, None, allow_flip,
           teacher)
    return stack


def _train(model: nn.Module, forward: Callable[[Tensor], Tensor], datas: list[TrainData], cfg: TrainConfig,
           generators: list[torch.Generator], lr: float | None, aug: DSA | None,
           on_epoch: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None,
           start_epoch: int, opt_state: dict | None, allow_flip: bool,
           teacher: Callable[[Tensor], Tensor] | None = None) -> None:
    """The training loop, over R runs at once (R = 1 for one network). Each run draws its batches,
    augmentation, CutMix and MixUp from its own generator, in the same order whatever R is.
    teacher: maps a batch of inputs to target logits (soft-label mode M); replaces the data's targets."""
    base_lr = cfg.lr if lr is None else lr
    if aug is None:
        aug = make_dsa(cfg.augment, allow_flip, cfg.augment_mode)
    opt = make_optimizer(model.parameters(), cfg, base_lr)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    device = next(model.parameters()).device
    model.train()
    n = datas[0].n
    current = lr_at(cfg, base_lr, start_epoch)
    for epoch in range(start_epoch, total_epochs(cfg)):
        new = lr_at(cfg, base_lr, epoch)
        if cfg.dc_step and new != current:  # the DC code builds a fresh SGD at the decay
            opt = make_optimizer(model.parameters(), cfg, new)
        current = new
        for group in opt.param_groups:
            group["lr"] = new
        if datas[0].replay is not None:  # recorded batches: inputs, targets and classes come ready
            steps: Iterable = zip(*((_replayed(b) for b in d.replay(epoch)) for d in datas))  # type: ignore[misc]
        else:
            orders = [torch.randperm(n, generator=g).to(device, non_blocking=True) for g in generators]
            steps = ([_draw(d, g, o[s:s + cfg.batch], aug, cfg) for d, g, o in zip(datas, generators, orders)]
                     for s in range(0, n, cfg.batch))
        for drawn in steps:
            # per run: inputs, un-augmented inputs, [(weight, labels)], ground-truth classes [(weight, classes)]
            xs, cleans, targets, gts = (list(part) for part in zip(*drawn))
            batch = torch.stack(xs)
            if teacher is not None:  # mode M: the teachers label exactly the batch the student sees
                with torch.no_grad():  # a teacher on batch statistics (BSSL) sees one run's batch at a time
                    bssl = getattr(teacher, "bssl", False)
                    t = torch.stack([teacher(batch[r]) for r in range(batch.shape[0])]) if bssl else \
                        teacher(batch.flatten(0, 1)).view(*batch.shape[:2], -1)
                targets = [[(1.0, t[r])] for r in range(len(xs))]
            out = forward(batch)
            loss = None
            for r, parts in enumerate(targets):
                run_loss = None
                for i, (w, y) in enumerate(parts):
                    gt = gts[r] if len(parts) == 1 or gts[r] is None else [(1.0, gts[r][i][1])]
                    term = loss_fn(cfg, out[r], y, gt) if len(parts) == 1 else w * loss_fn(cfg, out[r], y, gt)
                    run_loss = term if run_loss is None else run_loss + term
                loss = run_loss if loss is None else loss + run_loss
            if epoch < cfg.clip_epochs:
                loss = loss * (0.5 + 0.05 * epoch)
            if cfg.grad_penalty > 0:
                loss = loss + cfg.grad_penalty * input_gradient_penalty(forward, torch.stack(cleans))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch, model, opt)


Drawn = tuple[Tensor, Tensor, list[tuple[float, Tensor]], list[tuple[float, Tensor]] | None]


def _draw(data: TrainData, g: torch.Generator, idx: Tensor, aug: DSA | None, cfg: TrainConfig) -> Drawn:
    """One run's batch: fetched, augmented and mixed with draws from `g`; returns the inputs, the
    un-augmented inputs, the targets as weighted parts, and the ground-truth classes as weighted parts."""
    x, y = data.fetch(idx)
    c = y if not y.is_floating_point() else (data.classes(idx) if data.classes is not None else None)
    clean = x
    if aug is not None:
        x = aug.apply_random(x, g)
    if cfg.cutmix > 0 and float(torch.rand(1, generator=g)) < cfg.cutmix:
        x, ya, yb, lam, perm = cutmix(x, y, g)
        targets = [(lam, ya), (1 - lam, yb)]
    elif cfg.mixup > 0:
        x, ya, yb, lam, perm = mixup(x, y, g, cfg.mixup)
        soft_logits = ya.is_floating_point() and cfg.loss != "ce" and cfg.soft_kind == "logits"
        targets = [(1.0, lam * ya + (1 - lam) * yb)] if soft_logits else [(lam, ya), (1 - lam, yb)]
    else:
        lam, perm = 1.0, None
        targets = [(1.0, y)]
    gt = None if c is None else [(1.0, c)] if perm is None else [(lam, c), (1 - lam, c[perm])]
    return x, clean, targets, gt


def _replayed(batch: tuple[Tensor, Tensor, list[tuple[float, Tensor]]]) -> Drawn:
    """A recorded batch (inputs, target logits, ground-truth parts) in the loop's form."""
    x, logits, gt = batch
    return x, x, [(1.0, logits)], gt


class _Forward:
    """The model's forward, optionally compiled; on a compilation failure it runs eagerly."""

    def __init__(self, model: nn.Module, compile: bool) -> None:
        self.model = model
        self.compiled = compile_fn(model) if compile else None

    def __call__(self, x: Tensor) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception:  # noqa: BLE001  (no compiler, or an op inductor cannot handle)
                self.compiled = None
        return self.model(x)


@torch.no_grad()
def accuracy(model: nn.Module, batches) -> float:
    """Top-1 accuracy (a fraction) over an iterable of `(inputs, labels)` batches."""
    was = model.training
    model.eval()
    correct: Tensor | int = 0
    total = 0
    for x, y in batches:
        correct = correct + (model(x).argmax(1) == y).sum()  # stays on the device until the end
        total += int(y.numel())
    model.train(was)
    return float(correct) / max(total, 1)


@torch.no_grad()
def accuracy_runs(stack: nn.Module, batches) -> list[float]:
    """Per-run top-1 accuracies of a run stack ([R, B, ...] -> [R, B, K]); every run sees the
    same batches."""
    was = stack.training
    stack.eval()
    correct: Tensor | int = 0
    total = 0
    for x, y in batches:
        out = stack(x.expand(stack.runs, *x.shape))
        correct = correct + (out.argmax(2) == y).sum(1)
        total += int(y.numel())
    stack.train(was)
    return [float(c) / max(total, 1) for c in correct]  # type: ignore[union-attr]
