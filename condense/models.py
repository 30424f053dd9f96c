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
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from condense.errors import CondenseError
from condense.registry import Registry

MODELS: Registry[Callable[..., "Network"]] = Registry("architecture")


# --------------------------------------------------------------------------------------------
# building blocks


class InstanceNorm(nn.Module):
    """Per-sample, per-channel normalization with an affine map: the field's 'instancenorm'.

    Exactly the DC code's `GroupNorm(C, C)` (same parameter names, so state dicts
    interchange). `group_norm` measured a little faster than `instance_norm` on CPU for the
    ConvNet-3 shapes (587 vs 550 img/s forward+backward, batch 256).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)

    def stats(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample, per-channel mean and (biased) variance of a gradient-free map, each [B, C].

        PyTorch's CPU `group_norm` and `var_mean` are slow on channels-last maps (6.8 / 8.9 ms
        for 16 x 128 x 28 x 28 vs 0.55 ms NCHW, measured); seen as [B, H*W, C] rows, the
        statistics are two cheap outer reductions."""
        b, c, h, w = y.shape
        if not y.is_contiguous(memory_format=torch.channels_last) or y.is_contiguous():
            var, mean = torch.var_mean(y, (2, 3), correction=0)
            return mean, var
        rows = y.permute(0, 2, 3, 1).view(b, h * w, c)
        mean = rows.sum(1).div_(h * w)
        var = rows.square().sum(1).div_(h * w).sub_(mean.square()).clamp_min_(0)
        return mean, var

    def scale_shift(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        """The norm as one affine map per sample and channel: y -> scale * y + shift, each [B, C]."""
        scale = (var + self.eps).rsqrt_().mul_(self.weight)
        return scale, self.bias - mean * scale

    def positive(self) -> bool:
        """Whether every weight is positive (so is a fresh network's). Checked again only when the
        weights change, so a device does not synchronize on every call."""
        key = (self.weight._version, self.weight.data_ptr())
        if getattr(self, "_positive_key", None) != key:
            self._positive_key, self._positive = key, bool((self.weight > 0).all())
        return self._positive

    def normalize_(self, y: Tensor) -> Tensor:
        """`forward(y)` written over `y`, for gradient-free channels-last passes (see `stats`)."""
        b, c = y.shape[:2]
        if y.requires_grad or not y.is_contiguous(memory_format=torch.channels_last) or y.is_contiguous():
            return self(y)
        scale, shift = self.scale_shift(*self.stats(y))
        return torch.addcmul(shift.view(b, c, 1, 1), y, scale.view(b, c, 1, 1), out=y)


def norm_(norm: nn.Module, y: Tensor) -> Tensor:
    """`norm(y)`, in place over `y` where the module allows it (gradient-free passes only)."""
    return norm.normalize_(y) if isinstance(norm, InstanceNorm) else norm(y)


def act_(act: nn.Module, y: Tensor) -> Tensor:
    """`act(y)`, in place over `y` for ReLU (gradient-free passes only)."""
    return torch.relu_(y) if isinstance(act, nn.ReLU) else act(y)


def conv_output_stats(conv: nn.Conv2d, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """Per-sample, per-channel mean and variance of `conv(x)`, each [B, C], without running it, when
    the convolution has few inputs per output (a first layer: 9 for grey 3x3, 27 for RGB).

    Every output value is w_c . p + b_c for an input patch p, so its mean over positions is
    w_c . mean(p) + b_c and its variance w_c^T Cov(p) w_c: one small patch covariance per image
    instead of reading the (large, early) output map twice. None when this does not apply."""
    k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    if conv.groups != 1 or k > 32 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    xp = F.pad(x, (pw, pw, ph, ph))
    oh, ow = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    taps = [xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            for i in range(kh) for j in range(kw)]
    patches = torch.stack(taps, 2).reshape(x.shape[0], k, oh * ow)  # [B, k, L]; 3x faster than F.unfold here
    mean_p = patches.mean(2, keepdim=True)
    centered = patches - mean_p
    cov = centered @ centered.transpose(1, 2) / patches.shape[2]  # [B, k, k]
    w = conv.weight.reshape(conv.out_channels, k)
    mean = mean_p.squeeze(2) @ w.T
    if conv.bias is not None:
        mean += conv.bias
    var = ((cov @ w.T) * w.T).sum(1).clamp_min_(0)  # [B, C]: w_c^T Cov w_c
    return mean, var


def lean_block(conv: nn.Conv2d, norm: nn.Module, act: nn.Module, pool: nn.Module, x: Tensor) -> Tensor:
    """`pool(act(norm(conv(x))))` for gradient-free passes, in as few passes over the convolution's
    output as possible (on a CPU these passes, not the arithmetic, are what is slow).

    For instance norm, ReLU and average or max pooling with positive norm weights (every fresh
    network has weight 1): the norm is y -> s (y - u) per sample and channel with s > 0, so
    relu(s (y - u)) = s (max(y, u) - u), and both poolings commute with a positive affine map. One
    in-place clamp over the full map, the pooling, then the affine map on the 4x smaller result.
    A first layer's statistics come from its input (`conv_output_stats`)."""
    if not (isinstance(norm, InstanceNorm) and isinstance(act, nn.ReLU)
            and isinstance(pool, (AvgPool2x2, nn.MaxPool2d)) and norm.positive()):
        return pool(act_(act, norm_(norm, conv(x))))
    known = conv_output_stats(conv, x)
    y = conv(x)
    b, c = y.shape[:2]
    scale, shift = norm.scale_shift(*(known or norm.stats(y)))
    y.clamp_min_((-shift / scale).view(b, c, 1, 1))  # u = -shift / scale
    p = pool(y)
    return torch.addcmul(shift.view(b, c, 1, 1), p, scale.view(b, c, 1, 1), out=p)


def make_norm(kind: str, channels: int) -> nn.Module:
    kind = kind.lower()
    if kind == "instancenorm":
        return InstanceNorm(channels)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "groupnorm":  # GroupNorm(C, C) exactly as the DC code writes instance norm
        return nn.GroupNorm(channels, channels, affine=True)
    if kind in ("none", "nonorm"):
        return nn.Identity()
    raise CondenseError(f"Unknown norm '{kind}'. Use instancenorm, batchnorm, groupnorm or none.")


def make_act(kind: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid,
            "swish": nn.SiLU, "gelu": nn.GELU}
    if kind.lower() not in acts:
        raise CondenseError(f"Unknown activation '{kind}'. Use one of {', '.join(acts)}.")
    return acts[kind.lower()]()


class _Halve(torch.autograd.Function):
    """2x2 average pooling, stride 2, of an NCHW-contiguous map with even sides."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        b, c, h, w = x.shape
        rows = x.view(b, c, h // 2, 2, w)
        pairs = (rows[:, :, :, 0] + rows[:, :, :, 1]).view(b, c, h // 2, w // 2, 2)
        return (pairs[..., 0] + pairs[..., 1]).mul_(0.25)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        return _Double.apply(g)


class _Double(torch.autograd.Function):
    """The adjoint of `_Halve`: every value spread, divided by 4, over its 2x2 block."""

    @staticmethod
    def forward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        return (g * 0.25).repeat_interleave(2, -1).repeat_interleave(2, -2)

    @staticmethod
    def backward(ctx, u: Tensor) -> Tensor:  # type: ignore[override]
        return _Halve.apply(u)


class AvgPool2x2(nn.Module):
    """`nn.AvgPool2d(2, 2)`, faster on CPU for NCHW maps.

    PyTorch's CPU kernels for this pooling run at a few GB/s on NCHW tensors; two strided adds
    forward and `repeat_interleave` backward are 2.3x / 1.9x faster here (ConvNet-3 training +9%,
    measured; benchmarks/RESULTS.md). The two functions are each other's derivative, so every order
    of derivative stays fast (trajectory matching differentiates through gradients). Channels-last
    maps, where the native kernel is already fast, and odd sides use `F.avg_pool2d`."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.is_contiguous() and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
            return _Halve.apply(x)
        return F.avg_pool2d(x, 2, 2)


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

    @torch.no_grad()
    def features_lowmem(self, x: Tensor, chunk: int, reduce: Callable[[Tensor], Tensor]) -> tuple[list[Tensor], Tensor]:
        """`features(x)` for a big gradient-free batch, about `chunk` images at a time, keeping
        only `reduce(activation)` of every block (e.g. an attention map [B, H*W]).

        Exact even for BatchNorm in train mode: when a block's output for the whole batch exceeds
        the budget (`chunk` images of the first block), its batch statistics are gathered over all
        images in a first pass and the convolution is recomputed in the second, so every image is
        normalized with the statistics of the whole batch, as one big forward would do. Work is
        done in place where possible. BatchNorm running statistics are left as they come out (the
        callers sample a fresh network every step and never use them)."""
        reduced: list[Tensor] = []
        budget = 0
        for d, (conv, norm, act, pool) in enumerate(zip(self.convs, self.norms, self.acts, self.pools)):
            n = x.shape[0]
            side = x.shape[-1] + 2 * conv.padding[0] - conv.kernel_size[0] + 1  # stride-1 convolutions
            per_image = conv.out_channels * side * side
            budget = budget or chunk * per_image
            step = n if n * per_image <= budget else max(1, budget // per_image)
            batch_norm = isinstance(norm, nn.BatchNorm2d) and norm.training and step < n
            pieces = [(s, min(s + step, n)) for s in range(0, n, step)]
            affine = None
            if batch_norm:  # whole-batch statistics from per-piece sums (float32 sums, combined in float64)
                total = torch.zeros(conv.out_channels, dtype=torch.float64, device=x.device)
                squares = torch.zeros_like(total)
                count = 0
                for s, e in pieces:
                    y = conv(x[s:e])
                    total += y.sum((2, 3)).sum(0).double()
                    squares += y.square_().sum((2, 3)).sum(0).double()
                    count += y.shape[0] * y.shape[2] * y.shape[3]
                    del y
                mean = total / count
                var = (squares / count - mean.square()).clamp_min(0)
                scale = torch.rsqrt(var + norm.eps).float() * norm.weight
                affine = (mean.float().view(1, -1, 1, 1), scale.view(1, -1, 1, 1), norm.bias.view(1, -1, 1, 1))
            outs, reds = [], []
            for s, e in pieces:
                y = conv(x[s:e])
                if affine is not None:
                    y = y.sub_(affine[0]).mul_(affine[1]).add_(affine[2])
                else:  # one piece, or a per-sample norm: the module itself is exact
                    y = norm_(norm, y)
                y = act_(act, y)
                reds.append(reduce(y))
                outs.append(pool(y))
                del y
            x = torch.cat(outs) if len(outs) > 1 else outs[0]
            reduced.append(torch.cat(reds) if len(reds) > 1 else reds[0])
        return reduced, x.flatten(1)

    def embed(self, x: Tensor) -> Tensor:
        """The embedding without keeping every block's activation alive (less memory); without
        gradients, each block runs as `lean_block` (in place, fewer passes over each map: faster)."""
        lean = not torch.is_grad_enabled() and not torch.compiler.is_compiling()  # the compiler fuses the plain ops better
        for conv, norm, act, pool in zip(self.convs, self.norms, self.acts, self.pools):
            x = lean_block(conv, norm, act, pool, x) if lean else pool(act(norm(conv(x))))
        return x.flatten(1)


class ConvNetStack(nn.Module):
    """R ConvNets of one shape run as one network, so R evaluation runs train in one pass.

    Run r's images travel in channel block r: every convolution is grouped by run, every norm is
    per channel (instance norm per sample and channel; batch norm per channel over run r's batch
    only), and the classifier is a batched matrix product, so the runs never mix and each one
    computes exactly what its own ConvNet would. Optimizers that act elementwise (SGD with
    momentum and weight decay, AdamW) therefore train every run as if alone. On GPUs this turns R
    small launches into one; on CPU the grouped convolutions run in channels-last layout, which
    oneDNN handles far better than the default layout for groups.

    forward: x [R, B, C, H, W] (run r's batch is x[r]) -> logits [R, B, K].
    """

    def __init__(self, nets: list["ConvNet"]) -> None:
        super().__init__()
        first, r = nets[0], len(nets)
        self.runs = r
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        self.acts, self.pools = first.acts, first.pools  # stateless
        for d, conv in enumerate(first.convs):
            g = nn.Conv2d(conv.in_channels * r, conv.out_channels * r, conv.kernel_size, padding=conv.padding,
                          groups=r, bias=conv.bias is not None)
            _copy_cat(g, [n.convs[d] for n in nets])
            self.convs.append(g.to(memory_format=torch.channels_last))
            self.norms.append(_stack_norm([n.norms[d] for n in nets]))
        self.weight = nn.Parameter(torch.stack([n.classifier.weight.detach() for n in nets]).clone())  # [R, K, D]
        self.bias = nn.Parameter(torch.stack([n.classifier.bias.detach() for n in nets]).clone())  # [R, K]
        self.to(first.classifier.weight.device)

    def forward(self, x: Tensor) -> Tensor:
        r, b = x.shape[:2]
        x = x.transpose(0, 1).reshape(b, -1, *x.shape[3:]).contiguous(memory_format=torch.channels_last)
        for conv, norm, act, pool in zip(self.convs, self.norms, self.acts, self.pools):
            x = pool(act(norm(conv(x))))
        emb = x.reshape(b, r, -1)  # per run: (channel, row, column), the order of ConvNet.flatten
        return torch.einsum("brd,rkd->rbk", emb, self.weight) + self.bias[:, None]

    @torch.no_grad()
    def copy_run_into(self, r: int, net: "ConvNet") -> "ConvNet":
        """Write run r's parameters and buffers into `net` (a ConvNet of the stacked shape)."""
        for mine, theirs in zip(list(self.convs) + list(self.norms), list(net.convs) + list(net.norms)):
            ours = dict(list(mine.named_parameters()) + list(mine.named_buffers()))
            for name, t in list(theirs.named_parameters()) + list(theirs.named_buffers()):
                t.copy_(ours[name] if t.dim() == 0 else ours[name][r * t.shape[0]:(r + 1) * t.shape[0]])
        net.classifier.weight.copy_(self.weight[r])
        net.classifier.bias.copy_(self.bias[r])
        return net


def _copy_cat(target: nn.Module, sources: list[nn.Module]) -> None:
    """Fill `target`'s parameters and buffers with the sources' concatenated along dim 0."""
    with torch.no_grad():
        for name, t in list(target.named_parameters()) + list(target.named_buffers()):
            parts = [dict(list(m.named_parameters()) + list(m.named_buffers()))[name] for m in sources]
            t.copy_(parts[0] if t.dim() == 0 else torch.cat(parts))  # num_batches_tracked is shared


def _stack_norm(norms: list[nn.Module]) -> nn.Module:
    n = norms[0]
    if isinstance(n, nn.Identity):
        return n
    if isinstance(n, InstanceNorm):
        out: nn.Module = InstanceNorm(n.weight.numel() * len(norms), n.eps)
    elif isinstance(n, nn.GroupNorm) and n.num_groups == n.num_channels:
        out = nn.GroupNorm(n.num_channels * len(norms), n.num_channels * len(norms), n.eps, n.affine)
    elif isinstance(n, nn.BatchNorm2d):
        out = nn.BatchNorm2d(n.num_features * len(norms), n.eps, n.momentum, n.affine, n.track_running_stats)
        out.train(n.training)
    else:
        raise CondenseError(f"Cannot stack runs of a ConvNet with norm {type(n).__name__}.")
    _copy_cat(out, norms)
    return out


def stackable(net: nn.Module) -> bool:
    """Whether runs of this network can train together as a `ConvNetStack`."""
    return type(net) is ConvNet and all(
        isinstance(n, (nn.Identity, InstanceNorm, nn.BatchNorm2d))
        or (isinstance(n, nn.GroupNorm) and n.num_groups == n.num_channels) for n in net.norms)


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
    """ResNet-18 with the small-image stem (3x3 conv, stride 1, no max-pool)."""

    def __init__(self, channels: int, num_classes: int, size: int, norm: str = "instancenorm") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        self.bn1 = make_norm(norm, 64)
        stages, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride, norm), BasicBlock(cout, cout, 1, norm)))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(512, num_classes)

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


# --------------------------------------------------------------------------------------------
# convolutions with cheap higher-order derivatives (trajectory matching differentiates through
# gradients, so every inner step needs the derivative of a convolution's weight gradient)
#
# PyTorch's generic double backward computes one of its terms as a convolution whose "kernel" is a
# whole activation map (batch and channels transposed), which oneDNN runs an order of magnitude
# below its normal throughput on CPU. The three linear maps below are closed under
# differentiation, so every derivative of every order stays one of the three well-optimized
# kernels of `aten.convolution_backward`:
#     y  = conv(x, W)          gx = in_grad(dy, W)  (= conv transposed)   gW = w_grad(x, dy)
# <U, in_grad(dy, W)> = <conv(U, W), dy>      <V, w_grad(x, dy)> = <dy, conv(x, V)>


def _conv_args(conf: tuple) -> tuple:
    stride, padding, dilation, groups = conf
    return stride, padding, dilation, False, [0] * len(stride), groups


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, conf: tuple) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.conf = conf
        stride, padding, dilation, groups = conf
        return F.conv2d(x, w, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        gx = _InGrad.apply(gy, w, x, ctx.conf) if ctx.needs_input_grad[0] else None
        gw = _WGrad.apply(x, gy, w, ctx.conf) if ctx.needs_input_grad[1] else None
        return gx, gw, None


class _InGrad(torch.autograd.Function):
    """d conv / d x applied to dy; `like` only lends the input's shape."""

    @staticmethod
    def forward(ctx, dy: Tensor, w: Tensor, like: Tensor, conf: tuple) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(dy, w, like)
        ctx.conf = conf
        return torch.ops.aten.convolution_backward(dy, like, w, None, *_conv_args(conf), [True, False, False])[0]

    @staticmethod
    def backward(ctx, u: Tensor):  # type: ignore[override]
        dy, w, like = ctx.saved_tensors
        g_dy = _Conv.apply(u, w, ctx.conf) if ctx.needs_input_grad[0] else None
        g_w = _WGrad.apply(u, dy, w, ctx.conf) if ctx.needs_input_grad[1] else None
        return g_dy, g_w, None, None


class _WGrad(torch.autograd.Function):
    """d conv / d W applied to dy; `like` only lends the weight's shape."""

    @staticmethod
    def forward(ctx, x: Tensor, dy: Tensor, like: Tensor, conf: tuple) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, dy, like)
        ctx.conf = conf
        return torch.ops.aten.convolution_backward(dy, x, like, None, *_conv_args(conf), [False, True, False])[1]

    @staticmethod
    def backward(ctx, v: Tensor):  # type: ignore[override]
        x, dy, like = ctx.saved_tensors
        g_x = _InGrad.apply(dy, v, x, ctx.conf) if ctx.needs_input_grad[0] else None
        g_dy = _Conv.apply(x, v, ctx.conf) if ctx.needs_input_grad[1] else None
        return g_x, g_dy, None, None


def conv2d_higher_order(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                        dilation=1, groups: int = 1) -> Tensor:
    """`F.conv2d` (numeric padding only) whose derivatives of every order use the fast kernels."""
    pair = (lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v])
    if isinstance(padding, str):
        raise CondenseError("conv2d_higher_order takes numeric padding only.")
    y = _Conv.apply(x, weight, (pair(stride), pair(padding), pair(dilation), groups))
    return y if bias is None else y + bias.view(1, -1, 1, 1)


class HigherOrderConvs(torch.overrides.TorchFunctionMode):
    """Inside this context every `F.conv2d` runs as `conv2d_higher_order` (trajectory matching's
    inner steps, whose gradients are differentiated again)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and not isinstance(kwargs.get("padding", args[4] if len(args) > 4 else 0), str):
            return conv2d_higher_order(*args, **kwargs)
        return func(*args, **kwargs)
