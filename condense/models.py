"""Network registry: the ConvNet family and the cross-architecture zoo of the field.

Every network takes `(channels, num_classes, size)` and exposes:

* `forward(x)` -> logits `[B, K]`
* `embed(x)` -> penultimate features `[B, D]` (what distribution matching compares)
* `features(x)` -> `(activations, embedding)`: the list of intermediate activation maps, one per
  block (post-activation, pre-pooling; attention matching needs them), and the embedding.

Trajectory matching runs a network functionally from one flat parameter vector; `FlatParams`
does the bookkeeping on top of `torch.func.functional_call`.

The definitions follow the DC/DSA `networks.py` that every paper evaluates with (ConvNet-3 of
width 128 with instance norm implemented as per-channel GroupNorm, AlexNet/VGG/LeNet with the
28-px padding trick), so numbers stay comparable with the literature.

This file is the plain path. Two layers dispatch in one line to the CPU speed paths of
`condense.fast` when its switch is on (the average pooling and the gradient-free ConvNet
embedding); with `condense.fast.set_fast(False)` exactly the code below runs.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from condense import fast
from condense.errors import CondenseError
from condense.registry import Registry

MODELS: Registry[Callable[..., "Network"]] = Registry("architecture")


# --------------------------------------------------------------------------------------------
# building blocks


def make_norm(kind: str, channels: int) -> nn.Module:
    """instancenorm is the DC code's `GroupNorm(C, C)`: per-sample, per-channel normalization with
    an affine map (same parameter names, so state dicts interchange with the field's code)."""
    kind = kind.lower()
    if kind in ("instancenorm", "groupnorm"):
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind in ("none", "nonorm"):
        return nn.Identity()
    raise CondenseError(f"Unknown norm '{kind}'. Use instancenorm, batchnorm, groupnorm or none.")


def make_act(kind: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid,
            "swish": nn.SiLU, "gelu": nn.GELU}
    if kind.lower() not in acts:
        raise CondenseError(f"Unknown activation '{kind}'. Use one of {', '.join(acts)}.")
    return acts[kind.lower()]()


class AvgPool2x2(nn.AvgPool2d):
    """`nn.AvgPool2d(2, 2)`; with the `condense.fast` switch on, CPU maps take its faster kernel."""

    def __init__(self) -> None:
        super().__init__(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        if fast.pool_applies(x):
            return fast.avg_pool_2x2(x)
        return super().forward(x)


def make_pool(kind: str) -> nn.Module:
    kind = kind.lower()
    if kind == "avgpool":
        return AvgPool2x2()
    if kind == "maxpool":
        return nn.MaxPool2d(2, 2)
    if kind in ("none", "nopool"):
        return nn.Identity()
    raise CondenseError(f"Unknown pooling '{kind}'. Use avgpool, maxpool or none.")


def default_depth(size: int) -> int:
    """ConvNet depth by resolution, as the field uses it: D3 <= 32 px, D4 at 64, D5 at 128."""
    if size <= 32:
        return 3
    if size <= 64:
        return 4
    return 5


def first_padding(channels: int, size: int, base: int) -> int:
    """28-px inputs (MNIST family) are padded to 32 in the first conv, as in the DC code."""
    return base + 2 if (size == 28 and channels == 1) else base


class Network(nn.Module):
    """Base class: subclasses implement `features`; `classifier` maps the embedding to logits."""

    classifier: nn.Module

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        raise NotImplementedError

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)[1]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def _flat_dim(module: nn.Module, body: Callable[[Tensor], Tensor], channels: int, size: int) -> int:
    """Width of the flattened features, from one dummy forward in eval mode (so BatchNorm's
    running statistics are not touched)."""
    was = module.training
    module.eval()
    with torch.no_grad():
        dim = int(body(torch.zeros(1, channels, size, size)).flatten(1).shape[1])
    module.train(was)
    return dim


# --------------------------------------------------------------------------------------------
# ConvNet family


class ConvNet(Network):
    """depth x [conv3x3 -> norm -> act -> pool], then a linear classifier.

    The standard ConvNet-3 (width 128, instance norm, ReLU, average pooling) gives a
    2048-d embedding at 28/32 px.
    """

    def __init__(self, channels: int, num_classes: int, size: int, width: int = 128,
                 depth: int | None = None, norm: str = "instancenorm", act: str = "relu",
                 pool: str = "avgpool") -> None:
        super().__init__()
        depth = depth or default_depth(size)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.acts = nn.ModuleList()
        self.pools = nn.ModuleList()
        c = channels
        for d in range(depth):
            pad = first_padding(channels, size, 1) if d == 0 else 1
            self.convs.append(nn.Conv2d(c, width, 3, padding=pad))
            self.norms.append(make_norm(norm, width))
            self.acts.append(make_act(act))
            self.pools.append(make_pool(pool))
            c = width
        self.classifier = nn.Linear(_flat_dim(self, lambda z: self.features(z)[1], channels, size), num_classes)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        acts = []
        for conv, norm, act, pool in zip(self.convs, self.norms, self.acts, self.pools):
            x = act(norm(conv(x)))
            acts.append(x)
            x = pool(x)
        return acts, x.flatten(1)

    def embed(self, x: Tensor) -> Tensor:
        """The embedding, without keeping every block's activation alive."""
        if fast.lean_applies(x):  # a gradient-free CPU pass: fewer passes over each map
            return fast.lean_embed(self, x)
        for conv, norm, act, pool in zip(self.convs, self.norms, self.acts, self.pools):
            x = pool(act(norm(conv(x))))
        return x.flatten(1)


@MODELS.register("convnet")
def convnet(channels: int, num_classes: int, size: int, **kw) -> Network:
    """ConvNet-D (D from the image size unless `depth` is given), width 128, instance norm."""
    return ConvNet(channels, num_classes, size, **kw)


@MODELS.register("convnetbn")
def convnetbn(channels: int, num_classes: int, size: int, **kw) -> Network:
    """ConvNet with BatchNorm (DataDAM's distillation backbone)."""
    kw.setdefault("norm", "batchnorm")
    return ConvNet(channels, num_classes, size, **kw)


for _d in (1, 2, 3, 4, 5, 6):
    MODELS.register(f"convnetd{_d}")(
        lambda channels, num_classes, size, _d=_d, **kw: ConvNet(channels, num_classes, size, depth=_d, **kw))


# --------------------------------------------------------------------------------------------
# Classic small networks


class MLP(Network):
    """Two hidden layers of 128 on the flattened image."""

    def __init__(self, channels: int, num_classes: int, size: int, width: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels * size * size, width)
        self.fc2 = nn.Linear(width, width)
        self.classifier = nn.Linear(width, num_classes)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        h1 = F.relu(self.fc1(x.flatten(1)))
        h2 = F.relu(self.fc2(h1))
        return [h1, h2], h2


class LeNet(Network):
    def __init__(self, channels: int, num_classes: int, size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=2 if size == 28 else 0)
        self.conv2 = nn.Conv2d(6, 16, 5)
        dim = _flat_dim(self, lambda z: self._body(z)[1], channels, size)
        self.fc1 = nn.Linear(dim, 120)
        self.fc2 = nn.Linear(120, 84)
        self.classifier = nn.Linear(84, num_classes)

    def _body(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        a1 = F.relu(self.conv1(x))
        a2 = F.relu(self.conv2(F.max_pool2d(a1, 2)))
        return [a1, a2], F.max_pool2d(a2, 2).flatten(1)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        acts, h = self._body(x)
        return acts, F.relu(self.fc2(F.relu(self.fc1(h))))


class AlexNet(Network):
    """The DC code's 5-conv AlexNet for small images."""

    def __init__(self, channels: int, num_classes: int, size: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(channels, 128, 5, padding=first_padding(channels, size, 2)),
            nn.Conv2d(128, 192, 5, padding=2),
            nn.Conv2d(192, 256, 3, padding=1),
            nn.Conv2d(256, 192, 3, padding=1),
            nn.Conv2d(192, 192, 3, padding=1),
        ])
        self._pool_after = (0, 1, 4)
        self.classifier = nn.Linear(_flat_dim(self, lambda z: self.features(z)[1], channels, size), num_classes)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        acts = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            acts.append(x)
            if i in self._pool_after:
                x = F.max_pool2d(x, 2)
        return acts, x.flatten(1)


class VGG(Network):
    CFG = {"vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]}

    def __init__(self, channels: int, num_classes: int, size: int, cfg: str = "vgg11",
                 norm: str = "instancenorm") -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self._pool_after: set[int] = set()
        c = channels
        for v in self.CFG[cfg]:
            if v == "M":
                self._pool_after.add(len(self.blocks) - 1)
                continue
            pad = first_padding(channels, size, 1) if not len(self.blocks) else 1
            self.blocks.append(nn.Sequential(nn.Conv2d(c, v, 3, padding=pad), make_norm(norm, v), nn.ReLU()))
            c = v
        self.classifier = nn.Linear(_flat_dim(self, lambda z: self.features(z)[1], channels, size), num_classes)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        acts = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            acts.append(x)
            if i in self._pool_after:
                x = F.max_pool2d(x, 2)
        return acts, x.flatten(1)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(Network):
    """ResNet-18 with the small-image stem (3x3 conv, stride 1, no max-pool); `width` channels in the
    first stage (64 standard; narrower ones are the CPU-sized teachers)."""

    def __init__(self, channels: int, num_classes: int, size: int, norm: str = "instancenorm", width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        stages, cin = [], width
        for cout, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride, norm), BasicBlock(cout, cout, 1, norm)))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(8 * width, num_classes)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        acts = [x]
        for stage in self.stages:
            x = stage(x)
            acts.append(x)
        return acts, F.adaptive_avg_pool2d(x, 1).flatten(1)


MODELS.register("mlp")(MLP)
MODELS.register("lenet")(LeNet)
MODELS.register("alexnet")(AlexNet)
MODELS.register("vgg11")(lambda channels, num_classes, size, **kw: VGG(channels, num_classes, size, "vgg11", **kw))
MODELS.register("vgg11bn")(
    lambda channels, num_classes, size, **kw: VGG(channels, num_classes, size, "vgg11", norm="batchnorm", **kw))
MODELS.register("resnet18")(ResNet18)
MODELS.register("resnet18bn")(
    lambda channels, num_classes, size, **kw: ResNet18(channels, num_classes, size, norm="batchnorm", **kw))
for _name in ("resnet18bn_narrow", "mobilenetv2", "mobilenetv2_050", "shufflenetv2", "shufflenetv2_050",
              "efficientnet_b0", "densenet121", "resnet50", "tv_resnet18", "tv_resnet50", "tv_mobilenet_v2",
              "tv_efficientnet_b0", "tv_shufflenet_v2_x1_0", "tv_densenet121"):
    MODELS.register_lazy(_name, "condense.zoo")  # torchvision networks (adapted to small images, or as shipped)


def build_model(arch: str, channels: int, num_classes: int, size: int, seed: int | None = None,
                **kwargs) -> Network:
    """Build a registered network; with `seed`, its initialization is reproducible without
    touching the caller's global RNG state (the DC code reseeds it from the wall clock)."""
    factory = MODELS.get(arch)
    try:
        if seed is None:
            return factory(channels, num_classes, size, **kwargs)
        with torch.random.fork_rng(devices=[]):  # restores the CPU generator afterwards
            torch.random.default_generator.manual_seed(seed)  # only the CPU one: CUDA RNGs stay untouched
            return factory(channels, num_classes, size, **kwargs)
    except TypeError as e:
        raise CondenseError(f"Architecture '{arch}' does not take the settings {sorted(kwargs)} ({e}).") from None


_DRAWN = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # initialized by kaiming_uniform_(a=sqrt(5)) + uniform bias
_FIXED = (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)  # initialized to ones / zeros


def can_reinitialize(net: nn.Module) -> bool:
    """Whether `reinitialize_` knows every parameterized layer of `net`."""
    return all(isinstance(m, _DRAWN + _FIXED) for m in net.modules() if list(m.parameters(recurse=False)))


@torch.no_grad()
def reinitialize_(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """Draw `net`'s initialization again, in place, on its own device, from `generator`.

    The same draws, in the same order, as PyTorch's default initialization when the network is
    built: with a CPU generator seeded with s, the result equals `build_model(..., seed=s)` bit
    for bit. Methods that sample a fresh network every step (DM, DataDAM) use it to draw on the
    GPU instead of building on the CPU and copying. Each tensor is drawn contiguous and copied in,
    so the memory layout of the network (channels-last) does not change the values."""
    if not can_reinitialize(net):
        raise CondenseError(f"{type(net).__name__} has layers reinitialize_ does not know; build it afresh instead.")
    for m in net.modules():
        if isinstance(m, _DRAWN):
            w = torch.empty(m.weight.shape, device=m.weight.device, dtype=m.weight.dtype)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
            m.weight.copy_(w)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                m.bias.copy_(torch.empty(m.bias.shape, device=m.bias.device, dtype=m.bias.dtype)
                             .uniform_(-bound, bound, generator=generator))
        elif isinstance(m, _FIXED):
            m.reset_parameters()  # ones and zeros (and fresh running statistics): no randomness
    return net


# --------------------------------------------------------------------------------------------
# functional use from one flat parameter vector


class FlatParams:
    """Bookkeeping for running a network from one flat parameter vector `[P]`.

    >>> net = build_model("convnet", 1, 10, 28, seed=0)
    >>> fp = FlatParams(net)
    >>> theta = fp.flatten(net)                  # [P]
    >>> logits = fp.call(net, theta, torch.zeros(2, 1, 28, 28))
    """

    def __init__(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters()]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.size = sum(self.numels)

    def flatten(self, model_or_params: nn.Module | dict[str, Tensor]) -> Tensor:
        if isinstance(model_or_params, nn.Module):
            params = dict(model_or_params.named_parameters())
        else:
            params = model_or_params
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        parts = torch.split(flat, self.numels)
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def call(self, model: nn.Module, flat: Tensor, x: Tensor) -> Tensor:
        """`model(x)` with the parameters taken from `flat` (differentiable in both)."""
        return functional_call(model, self.unflatten(flat), (x,))

    def load_into(self, model: nn.Module, flat: Tensor) -> None:
        with torch.no_grad():
            for p, t in zip(model.parameters(), self.unflatten(flat).values()):
                p.copy_(t)
