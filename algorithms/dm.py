"""Distribution matching (DM, Zhao & Bilen 2023) and the class-wise matching machinery that
DataDAM and NCFM share.

Every class-wise matching method here has the same shape. Each iteration samples a network;
for every class c, a real batch and the class's synthetic images pass through one Siamese
augmentation draw; each image is mapped to per-sample features phi(x) (an embedding, attention
maps, characteristic-function terms...); the loss compares the **class means** of phi between the
real and the synthetic side; the synthetic pixels take an SGD step.

Because the real side only enters through class means, it is computed without gradients, in
chunks of whole classes (the `chunk` execution setting), so memory does not grow with
`batch_real` x classes. With per-sample normalization (instance norm) chunking is exact; with
BatchNorm the statistics depend on the batch, so all classes go forward together, as in the
official DM and DataDAM code (in exact pieces, `bn_chunk`). The loss of class c depends only on
class c's data (`class_loss`), which is what a later class-sharded run needs.

DM itself: phi(x) = embedding of a randomly initialized ConvNet; loss = sum_c ||mean phi(real_c)
- mean phi(syn_c)||^2; official defaults: 20000 iterations, batch_real 256, lr_img 1 with SGD
momentum 0.5, real initialization, DSA `color_crop_cutout_flip_scale_rotate`, ConvNet-3 (IN).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Generic, TypeVar

import torch
from torch import Tensor

from algorithms.base import ALGORITHMS, AlgoConfig, Algorithm, PixelSGD
from condense import fast
from condense.augment import DEFAULT_STRATEGY, AugParams
from condense.errors import CondenseError
from condense.execution import compile_fn
from condense.models import ConvNet, Network, build_model, can_reinitialize, reinitialize_
from condense.runtime import make_generator
from condense.synthetic import SyntheticSet

Feats = list[Tensor]  # per-sample features: each [B, ...]
Phi = Callable[[Any, Tensor], Feats]  # (network, images) -> per-sample features


@dataclass
class MatchConfig(AlgoConfig):
    """Settings every class-wise matching method has (defaults: the official DM code)."""

    iters: int = 20000  # outer iterations (DM official)
    batch_real: int = 256  # real images per class per iteration (DM official)
    lr_img: float = 1.0  # SGD learning rate on the pixels (DM official)
    momentum: float = 0.5  # SGD momentum on the pixels (DM official)
    init: str = "real"  # real: random real images of the class; noise: N(0, 1) in model-input space
    dsa: str = DEFAULT_STRATEGY  # Siamese augmentation strategy ("none" to switch it off)
    norm: str = "instancenorm"  # normalization of the sampled networks
    width: int = 128  # ConvNet width of the sampled networks

    def problems(self) -> list[str]:
        out = super().problems()
        for name in ("batch_real", "width"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.lr_img <= 0:
            out.append(f"lr_img must be positive (got {self.lr_img})")
        return out


MC = TypeVar("MC", bound=MatchConfig)


class ClassMatching(Algorithm[MC], Generic[MC]):
    """Base of DM, DataDAM and NCFM: learnable images `[K * ipc, C, H, W]`, class-sorted."""

    Config = MatchConfig
    # execution preferences, measured per method (benchmarks/RESULTS.md, speed and memory):
    compile_on_cpu: ClassVar[bool] = True  # what compile=auto does on a CPU
    compile_on_cuda: ClassVar[bool] = True  # ... and on CUDA
    cpu_chunk: ClassVar[int] = 32  # what chunk=-1 means on a CPU

    # ---- what a method defines ---------------------------------------------------------------

    def features(self, net: Network, x: Tensor) -> Feats:
        """Per-sample features phi(x) whose class means are matched."""
        raise NotImplementedError

    def class_loss(self, real_means: Feats, syn_means: Feats) -> Tensor:
        """Loss of one class from its real and synthetic feature means (each [...])."""
        raise NotImplementedError

    def features_real(self, net: Any, x: Tensor) -> Feats:
        """phi on a gradient-free real batch; a method may use a leaner path than `features`."""
        return self.features(net, x)

    # ---- the shared machinery ----------------------------------------------------------------

    def init(self) -> None:
        cfg, k = self.cfg, self.real.info.num_classes
        if cfg.init == "real":
            x = torch.cat([self.real.images_of(c, cfg.ipc, self.ctx.device_generator) for c in range(k)])
        elif cfg.init == "noise":
            i = self.real.info
            x = torch.randn(k * cfg.ipc, i.channels, i.size, i.size, generator=self.ctx.device_generator,
                            device=self.ctx.device)
        else:
            raise CondenseError(f"init must be 'real' or 'noise', not '{cfg.init}'.")
        self.images = x.to(self.ctx.device).detach().requires_grad_(True)
        self.labels = torch.arange(k, device=self.ctx.device).repeat_interleave(cfg.ipc)
        self.opt = PixelSGD(self.images, lr=cfg.lr_img, momentum=cfg.momentum)
        self.aug = self.ctx.augment(cfg.dsa, self.real)
        self.net = self.ctx.model(cfg.arch, self.real, seed=0, **self.net_kwargs())
        if self.ctx.execution.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.net.requires_grad_(False)
        self.net_generator = make_generator(0, self.ctx.device)  # reseeded from the host stream every step
        self._compiled: _CompiledView | None = None

    def net_kwargs(self) -> dict[str, Any]:
        """norm/width apply to the ConvNet family only; other architectures use their own."""
        arch = self.cfg.arch.lower()
        if arch == "convnet" or arch.startswith("convnetd"):
            return {"norm": self.cfg.norm, "width": self.cfg.width}
        if arch == "convnetbn":
            return {"width": self.cfg.width}
        return {}

    def sample_network(self) -> Network:
        """A freshly initialized, frozen network in train mode (BN uses batch statistics).

        Its seed comes from the host stream; the weights are drawn on the device into the one
        network the run keeps (on a CPU the same weights as `build_model(..., seed=seed)`)."""
        seed = int(torch.randint(2**62, (1,), generator=self.ctx.generator))
        if can_reinitialize(self.net):
            reinitialize_(self.net, self.net_generator.manual_seed(seed))
        else:  # a layer reinitialize_ does not know: build on the CPU and copy
            i = self.real.info
            self.net.load_state_dict(build_model(self.cfg.arch, i.channels, i.num_classes, i.size, seed=seed,
                                                 **self.net_kwargs()).state_dict())
        return self.net.train()

    def siamese_params(self) -> list[AugParams | None]:
        """One augmentation draw per class, shared by the class's real and synthetic images."""
        if self.aug is None:
            return [None] * self.real.info.num_classes
        size = self.real.info.size
        return [self.aug.sample(1, self.ctx.generator, size, per_sample=False, tensors=self.ctx.device_generator)
                for _ in range(self.real.info.num_classes)]

    def augment(self, x: Tensor, p: AugParams | None) -> Tensor:
        return x if p is None else self.aug(x, p)

    @property
    def compiles(self) -> bool:
        """Whether the real-side forward is compiled (the `compile` execution setting, auto resolved)."""
        return self.ctx.execution.compiles(self.ctx.device, self.compile_on_cpu, self.compile_on_cuda)

    def real_features(self, net: Network, x: Tensor, phi: Phi) -> Feats:
        """phi on real images: no gradients, optionally compiled and in bfloat16."""
        view: Any = net
        if self.compiles and (self._compiled is None or self._compiled.net is not net):
            self._compiled = _CompiledView(net)
        if self.compiles and self._compiled is not None and self._compiled.ok:
            view = self._compiled
        amp = self.ctx.execution.amp == "bf16"
        with torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else nullcontext():
            try:
                feats = phi(view, x)
            except Exception:  # noqa: BLE001  (no compiler or an unsupported op: run eagerly from now on)
                if view is net:
                    raise
                self._compiled.ok = False  # type: ignore[union-attr]
                feats = phi(net, x)
        return [f.float() for f in feats]

    def real_class_means(self, net: Network, params: list[AugParams | None], classes: list[int],
                         phi: Phi | None = None) -> list[Feats]:
        """Class means of phi (default `features_real`) over `batch_real` fresh real images per
        class, without gradients.

        Forwarded `chunk` images at a time: whole classes grouped while they fit, a class split
        into pieces (its sums accumulated) when `batch_real` exceeds `chunk`."""
        phi = phi or self.features_real
        n, g = self.batch_real, self.ctx.device_generator
        # BatchNorm statistics span every class's real batch, as in the official DM and DataDAM code
        # (features_real may still bound the memory, exactly); other norms are per image.
        chunk = 0 if self.cfg.norm == "batchnorm" else self.chunk
        out: list[Feats] = []
        with torch.no_grad():
            if chunk <= 0 or n <= chunk:
                per = len(classes) if chunk <= 0 else chunk // n
                for s in range(0, len(classes), per):
                    group = classes[s:s + per]
                    x = torch.cat([self.augment(self.real.images_of(c, n, g), params[c]) for c in group])
                    out += split_means(self.real_features(net, x, phi), len(group))
                return out
            for c in classes:
                x = self.augment(self.real.images_of(c, n, g), params[c])
                sums: list[Tensor] | None = None
                for s in range(0, n, chunk):
                    part = [f.sum(0) for f in self.real_features(net, x[s:s + chunk], phi)]
                    sums = part if sums is None else [a + b for a, b in zip(sums, part)]
                out.append([t / n for t in sums])  # type: ignore[union-attr]
        return out

    def syn_class_means(self, net: Network, images: Tensor, params: list[AugParams | None],
                        classes: list[int], per_class: int, phi: Phi | None = None) -> list[Feats]:
        """Class means of phi (default `features`) over the synthetic images of `classes`
        (class-sorted, `per_class` each), with gradients to the pixels, in one forward pass."""
        phi = phi or self.features
        x = torch.cat([self.augment(images[c * per_class:(c + 1) * per_class], params[c]) for c in classes])
        return split_means(phi(net, x), len(classes))

    @property
    def chunk(self) -> int:
        """Real images per forward pass (the `chunk` execution setting, auto resolved)."""
        return self.ctx.execution.real_chunk(self.ctx.device, self.cpu_chunk)

    @property
    def batch_real(self) -> int:
        """Real images per class per step, capped by the smallest class (as the official
        samplers do), so every class mean is over the same number of images."""
        smallest = min(self.real.count(c) for c in range(self.real.info.num_classes))
        return min(self.cfg.batch_real, smallest)

    def syn_groups(self, classes: list[int]) -> list[list[int]]:
        """Classes whose synthetic images go forward and backward together. The loss is a sum of
        per-class terms, so with per-image norms each group's backward is exact on its own and
        only one group's activations are alive at a time; BatchNorm's statistics span all classes."""
        size = self.ctx.execution.syn_chunk_for(self.ctx.device)
        if self.cfg.norm == "batchnorm" or size <= 0:
            return [classes]
        per = max(1, size // self.cfg.ipc)
        return [classes[s:s + per] for s in range(0, len(classes), per)]

    def step(self, it: int) -> dict[str, float | Tensor]:
        net = self.sample_network()
        params = self.siamese_params()
        classes = list(range(self.real.info.num_classes))
        real = dict(zip(classes, self.real_class_means(net, params, classes)))
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.ctx.device)
        for group in self.syn_groups(classes):
            syn = self.syn_class_means(net, self.images, params, group, self.cfg.ipc)
            loss = torch.stack([self.class_loss(real[c], s) for c, s in zip(group, syn)]).sum()
            loss.backward()  # gradients of the groups add up in images.grad
            total += loss.detach()
        self.opt.step()
        return {"loss": total}  # a tensor: the display reads it when it redraws, no sync per step

    def synthetic(self) -> SyntheticSet:
        return self.make_set(self.images, self.labels)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "images": self.images.detach().cpu().clone(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.init()  # rebuilds the optimizer and augmentation; then overwrite with the saved state
        super().load_state_dict(state)
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.images.device))
        self.opt.load_state_dict(state["opt"])


class _CompiledView:
    """`embed` and `features` of a network, compiled once (the network object persists across
    iterations and its weights change in place, so the compiled graphs are reused)."""

    def __init__(self, net: Network) -> None:
        self.net, self.ok = net, True
        self.embed = compile_fn(net.embed)
        self.features = compile_fn(net.features)


def split_means(feats: Feats, groups: int) -> list[Feats]:
    """Per-sample features of `groups` equal, contiguous groups -> each group's means."""
    means = [f.view(groups, f.shape[0] // groups, *f.shape[1:]).mean(1) for f in feats]
    return [[m[j] for m in means] for j in range(groups)]


def mean_gap(a: Tensor, b: Tensor) -> Tensor:
    """||a - b||^2 over all elements."""
    return (a - b).square().sum()


@ALGORITHMS.register("dm")
class DM(ClassMatching[MatchConfig]):
    """Distribution matching: class means of a random network's embedding."""

    name = "dm"
    compile_on_cpu = False  # eager with condense.fast: about as fast and smaller (benchmarks/RESULTS.md §2.4)

    def features(self, net: Network, x: Tensor) -> Feats:
        return [net.embed(x)]

    def features_real(self, net: Any, x: Tensor) -> Feats:
        bn_chunk = self.ctx.execution.bn_chunk
        if self.cfg.norm == "batchnorm" and bn_chunk > 0 and isinstance(net, ConvNet):
            return [fast.features_lowmem(net, x, bn_chunk, _keep_nothing)[1]]  # whole-batch statistics, bounded memory
        return self.features(net, x)

    def class_loss(self, real_means: Feats, syn_means: Feats) -> Tensor:
        return mean_gap(real_means[0], syn_means[0])


def _keep_nothing(a: Tensor) -> Tensor:
    return a.new_empty(a.shape[0], 0)
