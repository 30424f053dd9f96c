"""NCFM (Wang et al., CVPR 2025): neural characteristic-function matching.

The empirical characteristic function (CF) of a class's L2-normalized features x_i is
Phi(t) = mean_i exp(j <t, x_i>). For frequencies t_k the loss compares the real and synthetic
CFs with the amplitude / phase split

    amp_k   = (|Phi_r| - |Phi_s|)^2
    phase_k = 2 (|Phi_r||Phi_s| - Re_r Re_s - Im_r Im_s)        (amp + phase = |Phi_r - Phi_s|^2)
    loss    = scale * mean_k sqrt(alpha amp_k + beta phase_k)

so with alpha = beta = 1/2 it is scale / sqrt(2) times the mean modulus of the CF gap. Since the
real side enters only through class means of cos(<t, x>) and sin(<t, x>), it rides on the shared
class-wise machinery of `algorithms/dm.py` (chunked, gradient-free real forward).

Frequencies are Gaussian, t ~ N(0, I), redrawn every step. With the sampling network psi on
(`psi=true`), t is a scale mixture as the paper describes it: psi maps noise z_j to positive
per-dimension scales sigma_j (one per group of 16 frequencies) and t = sigma_j * eps. psi is
trained to *increase* the discrepancy (the max of the min-max game) with its gradient sign
flipped in the same backward pass as the pixels' descent. (The official code runs two backward
passes whose contributions to psi cancel, so its psi never learns.)

Feature extractors come from a pool of ConvNets trained on the real data, each kept at
initialization and after training (an artifact built once per dataset and recipe); every step
blends one pool member's two checkpoints with lambda ~ U(0, 1). Synthetic images start as 2x2
mosaics of downsampled real images and are decoded by multi-formation (factor 2: each stored
image yields four training images, its quarters upsampled). A calibration step takes the
cross-entropy of the trained network on the decoded images.

Defaults are the official code's (AdamW 1e-3, wd 5e-4 on the pixels; 20000 iterations;
batch_real 1024; plateau schedule x0.5 / 500; Siamese `color_crop_cutout`; factor 2; 20-model
pool of 60 epochs; calibration on; one optimizer step per class as the official loop does),
except the number of frequencies, which follows the paper (1024; the official configs use 4096).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from algorithms.base import ALGORITHMS
from algorithms.dm import ClassMatching, Feats, MatchConfig, split_means
from condense.errors import CondenseError
from condense.augment import make_dsa
from condense.models import FlatParams, Network
from condense.runtime import derive_seed
from condense.synthetic import SyntheticSet
from condense.artifacts import pool_recipe
from condense.train import TrainConfig


# --------------------------------------------------------------------------------------------
# the loss


def cf_loss(real: tuple[Tensor, Tensor], syn: tuple[Tensor, Tensor], alpha: float = 0.5, beta: float = 0.5,
            scale: float = 300.0) -> Tensor:
    """CF discrepancy of one class from (Re, Im) of the real and synthetic CFs, each [K]."""
    re_r, im_r = real
    re_s, im_s = syn
    amp_r = torch.sqrt(re_r.square() + im_r.square() + 1e-12)
    amp_s = torch.sqrt(re_s.square() + im_s.square() + 1e-12)
    amp = (amp_r - amp_s).square()
    phase = (2 * (amp_r * amp_s - re_r * re_s - im_r * im_s)).clamp_min(1e-12)
    return scale * torch.sqrt(alpha * amp + beta * phase).mean()


def cf_terms(features: Tensor, t: Tensor) -> list[Tensor]:
    """Per-sample CF terms [cos <t_k, x>, sin <t_k, x>] of L2-normalized features.

    features: [B, D]; t: [K, D] -> two [B, K] tensors whose means over B are Re and Im of Phi."""
    phase = F.normalize(features, dim=1) @ t.T
    return [torch.cos(phase), torch.sin(phase)]


class FrequencySampler(nn.Module):
    """psi: noise z_j -> per-dimension scales sigma_j > 0; t_{j,m} = sigma_j * eps_{j,m}.

    Starts close to the plain Gaussian (sigma = 1), so psi off and psi on begin alike."""

    def __init__(self, dim: int, noise_dim: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.net = nn.Sequential(nn.Linear(noise_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, dim))
        with torch.no_grad():
            self.net[2].weight.mul_(0.01)
            self.net[2].bias.fill_(math.log(math.e - 1))  # softplus^-1(1)

    def forward(self, num: int, per_component: int, g: torch.Generator) -> Tensor:
        """[num, D] frequencies: num // per_component components of per_component draws each."""
        comps = max(1, -(-num // per_component))  # ceil: always at least `num` frequencies
        z = torch.randn(comps, self.noise_dim, generator=g, device=g.device)  # g: on psi's device
        sigma = F.softplus(self.net(z))  # [comps, D]
        eps = torch.randn(comps, per_component, sigma.shape[1], generator=g, device=g.device)
        return (sigma[:, None, :] * eps).reshape(-1, sigma.shape[1])[:num]


def real_side_t_grad(embeds: Tensor, t: Tensor, g_re: Tensor, g_im: Tensor, chunk: int = 1024) -> Tensor:
    """dLoss/dt through the real CF of one class, computed without keeping a graph.

    With Re[k] = mean_i cos<t_k, x_i> and Im[k] = mean_i sin<t_k, x_i>, and g_re, g_im = dLoss/dRe,
    dLoss/dIm ([K]), the gradient is (1/n) W^T X with W[i, k] = -g_re[k] sin<t_k, x_i> +
    g_im[k] cos<t_k, x_i>. embeds: [n, D], L2-normalized; t: [K, D] -> [K, D]."""
    out = torch.zeros_like(t)
    for s in range(0, embeds.shape[0], chunk):
        x = embeds[s:s + chunk]
        phase = x @ t.T
        w = torch.cos(phase) * g_im - torch.sin(phase) * g_re
        out += w.T @ x
    return out / embeds.shape[0]


def ascend(opt: torch.optim.Optimizer, t: Tensor, t_leaf: Tensor) -> None:
    """One ascent step for psi. `t` is psi's output (with graph), `t_leaf` its detached copy that
    the loss was computed from, holding dLoss/dt. Pushing -dLoss/dt through psi's graph makes
    the optimizer's descent an ascent on the loss, in one backward pass of the loss."""
    opt.zero_grad(set_to_none=True)
    if t_leaf.grad is not None:
        t.backward(-t_leaf.grad)
        opt.step()


# --------------------------------------------------------------------------------------------
# multi-formation


def mosaic(images: Tensor, factor: int) -> Tensor:
    """Tile factor^2 images [n * f^2, C, H, W] (downsampled by f) into n images [n, C, H, W]."""
    if factor == 1:
        return images
    f = factor
    n = images.shape[0] // (f * f)
    c, h, w = images.shape[1:]
    small = F.interpolate(images, size=(h // f, w // f), mode="bilinear", align_corners=False, antialias=True)
    small = small.view(n, f, f, c, h // f, w // f)
    return small.permute(0, 3, 1, 4, 2, 5).reshape(n, c, (h // f) * f, (w // f) * f)


def decode(images: Tensor, factor: int) -> Tensor:
    """Multi-formation (IDC's 'zoom' decoding): each image [C, H, W] -> its f x f grid of
    crops, each upsampled back to H x W; [n, ...] -> [n * f^2, ...], one image's crops adjacent."""
    if factor == 1:
        return images
    f = factor
    n, c, h, w = images.shape
    hh, ww = h // f, w // f
    crops = images[:, :, : hh * f, : ww * f].reshape(n, c, f, hh, f, ww).permute(0, 2, 4, 1, 3, 5)
    return F.interpolate(crops.reshape(n * f * f, c, hh, ww), size=(h, w), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# the method


@dataclass
class NCFMConfig(MatchConfig):
    iters: int = 20000  # official
    batch_real: int = 1024  # real images per class per step (official; capped by the class size)
    optimizer: str = "adamw"  # pixels: adamw (official) | sgd
    lr_img: float = 1e-3  # official effective AdamW lr
    weight_decay: float = 5e-4  # official AdamW weight decay on the pixels
    momentum: float = 0.5  # SGD only
    init: str = "mix"  # mix: 2x2 mosaics of real images (official) | real | noise
    factor: int = 2  # multi-formation factor (1 = off)
    dsa: str = "color_crop_cutout"  # official matching augmentation (IDC DiffAug: all three every time), Siamese
    num_freqs: int = 1024  # frequencies per step (paper; the official configs use 4096)
    alpha: float = 0.5  # amplitude weight
    beta: float = 0.5  # phase weight
    loss_scale: float = 300.0  # official
    psi: bool = False  # the sampling network (scale mixture), trained by ascent
    psi_group: int = 16  # frequencies per mixture component (paper: components = freqs / 16)
    lr_psi: float = 1e-3  # psi: SGD, momentum 0.5, wd 5e-4 (official)
    calib: bool = True  # calibration step: CE of the trained network on the decoded images
    calib_weight: float = 1.0  # official
    class_steps: bool = True  # one optimizer step per class, as the official loop (False: one per iteration)
    plateau_patience: int = 500  # ReduceLROnPlateau x0.5 on the mean class loss (official)
    clamp: bool = True  # keep pixels in the valid [0, 1] range (the official store is clamped)
    pool_size: int = 20  # pretrained ConvNets in the feature-extractor pool (official)
    pool_epochs: int = 60  # their training epochs (official: SGD 0.01, batch 128, DSA color_crop + CutMix)

    def problems(self) -> list[str]:
        out = super().problems()
        for name in ("num_freqs", "psi_group", "factor", "pool_size"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.pool_epochs < 0 or self.alpha < 0 or self.beta < 0 or self.alpha + self.beta == 0:
            out.append("pool_epochs, alpha and beta must not be negative, and alpha + beta must be positive")
        return out


@ALGORITHMS.register("ncfm")
class NCFM(ClassMatching[NCFMConfig]):
    name = "ncfm"
    Config = NCFMConfig
    cpu_chunk = 64  # keeps peak memory under half the official code's at its settings (RESULTS.md)

    @classmethod
    def artifacts_needed(cls, cfg: NCFMConfig) -> list[tuple[str, TrainConfig, int]]:
        return [(cfg.arch, pool_recipe(cfg.pool_epochs), i) for i in range(cfg.pool_size)]

    # ---- setup -------------------------------------------------------------------------------

    def init(self) -> None:
        cfg = self.cfg
        info, k = self.real.info, self.real.info.num_classes
        if cfg.factor < 1 or info.size % cfg.factor:
            raise CondenseError(f"factor {cfg.factor} must divide the image size {info.size}.")
        # The learnable store lives in [0, 1] pixel space, as in the official code: AdamW's step size
        # and weight decay are meant in pixel units. The preprocess (normalization or ZCA) is applied
        # to the decoded images on the way into the network.
        if cfg.init == "mix":
            x = torch.cat([mosaic(self.real.pixels_of(c, cfg.ipc * cfg.factor ** 2, self.ctx.device_generator), cfg.factor)
                           for c in range(k)])
        elif cfg.init == "real":
            x = torch.cat([self.real.pixels_of(c, cfg.ipc, self.ctx.device_generator) for c in range(k)])
        elif cfg.init == "noise":
            x = torch.rand(k * cfg.ipc, info.channels, info.size, info.size, generator=self.ctx.device_generator,
                           device=self.ctx.device)
        else:
            raise CondenseError(f"init must be 'mix', 'real' or 'noise', not '{cfg.init}'.")
        self.images = x.to(self.ctx.device).detach().requires_grad_(True)
        self.labels = torch.arange(k, device=self.ctx.device).repeat_interleave(cfg.ipc)
        if cfg.optimizer == "adamw":
            self.opt = torch.optim.AdamW([self.images], lr=cfg.lr_img, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.momentum)
        else:
            raise CondenseError(f"optimizer must be adamw or sgd, not '{cfg.optimizer}'.")
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=0.5, patience=cfg.plateau_patience)
        self.aug = make_dsa(cfg.dsa, info.allow_flip, mode="idc")
        self.net = self.ctx.model(cfg.arch, self.real, seed=0, width=cfg.width, norm=cfg.norm)
        if self.ctx.execution.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.net.requires_grad_(False)
        self.flat = FlatParams(self.net)
        self.final = self.ctx.model(cfg.arch, self.real, seed=0, width=cfg.width, norm=cfg.norm).eval()
        self.final.requires_grad_(False)
        self.pool = self.load_pool()
        self.psi = self.psi_opt = None
        if cfg.psi:
            with torch.random.fork_rng(devices=[]):  # psi's initialization is part of the seeded run
                torch.manual_seed(derive_seed(self.ctx.seed, "psi"))
                self.psi = FrequencySampler(self.final.classifier.in_features).to(self.ctx.device)
            self.psi_opt = torch.optim.SGD(self.psi.parameters(), lr=cfg.lr_psi, momentum=0.5, weight_decay=5e-4)
        self._compiled = None

    def load_pool(self) -> list[tuple[Tensor, Tensor]]:
        """(init, trained) flat parameter vectors of every pool member (built and cached on demand)."""
        cfg = self.cfg
        if cfg.arch != "convnet" or cfg.width != 128 or cfg.norm != "instancenorm":
            raise CondenseError("NCFM's feature pool is the standard ConvNet (width 128, instance norm); "
                                "leave arch, width and norm at their defaults.")
        pool = []
        for arch, recipe, seed in self.artifacts_needed(cfg):
            rec = self.ctx.artifacts.trained_record(self.real, arch, recipe, seed=seed)
            pool.append(tuple(self.flat.flatten({k: v.to(self.ctx.device) for k, v in rec[w].items()})
                              for w in ("init", "trained")))
        return pool  # type: ignore[return-value]

    # ---- what the shared machinery calls -----------------------------------------------------

    def cf_features(self, net: Network, x: Tensor, t: Tensor, keep: list[Tensor] | None = None) -> Feats:
        """Per-sample CF terms [cos <t_k, e>, sin <t_k, e>] of the L2-normalized embedding e, each
        [B, K] for frequencies t [K, D]. `keep` collects e (psi's real-side gradient needs it)."""
        emb = F.normalize(net.embed(x), dim=1)
        if keep is not None:
            keep.append(emb.detach())
        phase = emb @ t.T
        return [torch.cos(phase), torch.sin(phase)]

    def class_loss(self, real_means: Feats, syn_means: Feats) -> Tensor:
        cfg = self.cfg
        return cf_loss((real_means[0], real_means[1]), (syn_means[0], syn_means[1]), cfg.alpha, cfg.beta,
                       cfg.loss_scale)

    # ---- one iteration -----------------------------------------------------------------------

    def frequencies(self) -> Tensor:
        cfg = self.cfg
        dim = self.final.classifier.in_features
        if self.psi is not None:
            return self.psi(cfg.num_freqs, cfg.psi_group, self.ctx.device_generator)
        return torch.randn(cfg.num_freqs, dim, generator=self.ctx.device_generator, device=self.ctx.device)

    def decoded(self, c: int | None = None) -> Tensor:
        """Decoded training images of class c (or of all classes) in model-input space,
        differentiable in the stored pixels."""
        cfg = self.cfg
        x = self.images if c is None else self.images[c * cfg.ipc:(c + 1) * cfg.ipc]
        return self.real.pre(decode(x, cfg.factor))

    def step(self, it: int) -> dict[str, float | Tensor]:
        cfg = self.cfg
        k = self.real.info.num_classes
        member = int(torch.randint(len(self.pool), (1,), generator=self.ctx.generator))
        lam = float(torch.rand(1, generator=self.ctx.generator))
        init, trained = self.pool[member]
        self.flat.load_into(self.net, lam * init + (1 - lam) * trained)
        self.flat.load_into(self.final, trained)
        t = self.frequencies()  # [num_freqs, D]; with psi, the output of its graph
        with_psi = self.psi is not None
        t_leaf = t.detach().requires_grad_(with_psi)  # what the loss sees; collects dLoss/dt for psi
        params = self.siamese_params()
        classes = list(range(k))
        keep: list[Tensor] | None = [] if with_psi else None  # the real embeddings, for psi
        real = self.real_class_means(self.net, params, classes, lambda net, x: self.cf_features(net, x, t_leaf, keep))
        if keep is not None:  # real CF means become leaves, so the loss tells us dLoss/dRe and dLoss/dIm
            real = [[m.requires_grad_(True) for m in class_means] for class_means in real]
            embeds = torch.cat(keep).view(k, -1, keep[0].shape[1])
        per = cfg.ipc * cfg.factor ** 2
        groups = [[c] for c in classes] if cfg.class_steps else [classes]
        match = torch.zeros((), device=self.ctx.device)
        for group in groups:  # one optimizer step per class (official) or one for all
            x = torch.cat([self.decoded(c) for c in group])
            syn = split_means(self.cf_features(self.net, self.aug_stack(x, params, group, per), t_leaf), len(group))
            loss = torch.stack([self.class_loss(real[c], s) for c, s in zip(group, syn)]).sum()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.project()
            match = match + loss.detach()
        if with_psi:
            grad = t_leaf.grad if t_leaf.grad is not None else torch.zeros_like(t_leaf)
            for c in classes:
                grad = grad + real_side_t_grad(embeds[c], t_leaf.detach(), real[c][0].grad, real[c][1].grad,
                                               self.chunk or 1024)
            t_leaf.grad = grad
            ascend(self.psi_opt, t, t_leaf)
        calib = torch.zeros((), device=self.ctx.device)
        if cfg.calib:
            for group in groups:
                x = torch.cat([self.decoded(c) for c in group])
                y = torch.cat([torch.full((per,), c, device=x.device) for c in group])
                if self.aug is not None:
                    x = self.aug(x, self.aug.sample(1, self.ctx.generator, x.shape[-1], per_sample=False,
                                                    tensors=self.ctx.device_generator))
                loss = cfg.calib_weight * F.cross_entropy(self.final(x), y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.project()
                calib = calib + loss.detach()
        match_loss, calib_loss = (torch.stack([match / k, calib / len(groups)])).tolist()  # one host sync
        self.sched.step(match_loss)
        return {"loss": match_loss, "calib": calib_loss, "lr": self.opt.param_groups[0]["lr"]}

    def aug_stack(self, x: Tensor, params: list, group: list[int], per: int) -> Tensor:
        """Apply each class's Siamese draw to its slice of the decoded images."""
        if self.aug is None:
            return x
        return torch.cat([self.aug(x[i * per:(i + 1) * per], params[c]) for i, c in enumerate(group)])

    def project(self) -> None:
        """Keep pixels in [0, 1] (the official store is clamped the same way)."""
        if self.cfg.clamp:
            with torch.no_grad():
                self.images.clamp_(0, 1)

    # ---- results and state -------------------------------------------------------------------

    def synthetic(self) -> SyntheticSet:
        cfg = self.cfg
        with torch.no_grad():
            images = self.decoded()
            compact = self.real.pre(self.images.detach())
        labels = self.labels.repeat_interleave(cfg.factor ** 2)
        extra: dict[str, Any] = {}
        if cfg.factor > 1:  # the stored images, in the same (model-input) space as /images
            extra = {"compact": {"images": compact.cpu(), "labels": self.labels.cpu()},
                     "compact_attrs": {"factor": cfg.factor, "decode": "zoom"}}
        return self.make_set(images, labels, **extra)

    def state_dict(self) -> dict[str, Any]:
        s = super().state_dict()
        s["sched"] = self.sched.state_dict()
        if self.psi is not None:
            s["psi"] = self.psi.state_dict()
            s["psi_opt"] = self.psi_opt.state_dict()
        return s

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.sched.load_state_dict(state["sched"])
        if self.psi is not None:
            self.psi.load_state_dict(state["psi"])
            self.psi_opt.load_state_dict(state["psi_opt"])
