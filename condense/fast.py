"""CPU speed paths, beside the plain code of `condense.models`, behind one switch.

Every function here computes what a plain expression in `condense.models` computes (each one is
tested against it in tests/test_fast.py); it only gets there in fewer passes over memory, which is
what is slow on a CPU. None of them is needed to understand a method: read `models.py` first.

The switch (like timm's `set_fast_norm`):

    condense.fast.set_fast(False)        # plain code everywhere, for the rest of the process
    with condense.fast.use(False): ...   # plain code inside the block
    CONDENSE_FAST=0 condense ...         # the default for a process, from the environment
    condense distill ... --set fast=false   # one run (an execution setting)

It is on by default: on this project's 2-core reference machine the fast paths are faster
(benchmarks/RESULTS.md, "Speed before and after the restructure"). They engage only on CPU
tensors; on a GPU the plain code runs whatever the switch says.

What is here:
* `avg_pool_2x2`: 2x2 average pooling of NCHW maps as two strided adds, with a backward that is
  itself fast to every order of derivative (trajectory matching differentiates through it);
* `lean_embed`: a ConvNet's gradient-free embedding, each block in as few passes as possible
  (instance norm statistics computed once, ReLU as a clamp before pooling, the norm's affine map
  after pooling on the 4x smaller map, a first layer's statistics from its input's patches);
* `features_lowmem`: a ConvNet's gradient-free activations for a big batch with bounded memory,
  exact even for BatchNorm (whole-batch statistics from a first pass). This one saves memory,
  not time; it is used when the `bn_chunk` execution setting asks for it, whatever the switch.
"""
from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # only for type hints: models.py imports this module
    from condense.models import ConvNet

_override: bool | None = None  # set_fast / use; None: the environment decides


def is_fast() -> bool:
    """Whether the speed paths are on (set_fast / use, else $CONDENSE_FAST, else on)."""
    if _override is not None:
        return _override
    return os.environ.get("CONDENSE_FAST", "1").lower() not in ("0", "false", "no", "off")


def set_fast(on: bool | None) -> None:
    """Turn the speed paths on or off for the process (None: back to the environment's default)."""
    global _override
    _override = on


@contextmanager
def use(on: bool) -> Iterator[None]:
    """The speed paths on or off inside a block, restored afterwards."""
    global _override
    before = _override
    _override = on
    try:
        yield
    finally:
        _override = before


# --------------------------------------------------------------------------------------------
# 2x2 average pooling


def pool_applies(x: Tensor) -> bool:
    """The strided-add pooling applies: switch on, a CPU NCHW-contiguous map with even sides.
    (PyTorch's CPU kernel for this pooling runs at a few GB/s on NCHW maps; on channels-last
    maps it is already fast.)"""
    return (is_fast() and x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous()
            and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0)


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
        return _Spread.apply(g)


class _Spread(torch.autograd.Function):
    """The adjoint of `_Halve`: every value spread, divided by 4, over its 2x2 block. The two
    functions are each other's derivative, so every order of derivative stays fast."""

    @staticmethod
    def forward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        return (g * 0.25).repeat_interleave(2, -1).repeat_interleave(2, -2)

    @staticmethod
    def backward(ctx, u: Tensor) -> Tensor:  # type: ignore[override]
        return _Halve.apply(u)


def avg_pool_2x2(x: Tensor) -> Tensor:
    """`F.avg_pool2d(x, 2, 2)` for a map where `pool_applies(x)`."""
    return _Halve.apply(x)


# --------------------------------------------------------------------------------------------
# gradient-free ConvNet blocks


def lean_applies(x: Tensor) -> bool:
    """Gradient-free CPU passes take `lean_embed` (while torch.compile traces, the compiler fuses
    the plain ops better)."""
    return (is_fast() and x.device.type == "cpu" and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


def is_instance_norm(norm: nn.Module) -> bool:
    """GroupNorm with one channel per group and an affine map: the field's 'instance norm'."""
    return isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels and norm.affine


def norm_stats(y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and biased variance of a gradient-free map, each [B, C].

    PyTorch's CPU `var_mean` is slow on channels-last maps; seen as [B, H*W, C] rows the
    statistics are two cheap outer reductions."""
    b, c, h, w = y.shape
    if not y.is_contiguous(memory_format=torch.channels_last) or y.is_contiguous():
        var, mean = torch.var_mean(y, (2, 3), correction=0)
        return mean, var
    rows = y.permute(0, 2, 3, 1).view(b, h * w, c)
    mean = rows.sum(1).div_(h * w)
    var = rows.square().sum(1).div_(h * w).sub_(mean.square()).clamp_min_(0)
    return mean, var


def scale_shift(norm: nn.GroupNorm, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Instance norm as one affine map per sample and channel: y -> scale * y + shift, each [B, C]."""
    scale = (var + norm.eps).rsqrt_().mul_(norm.weight)
    return scale, norm.bias - mean * scale


def normalize_(norm: nn.Module, y: Tensor) -> Tensor:
    """`norm(y)` written over `y` (gradient-free, channels-last instance norm; else `norm(y)`)."""
    b, c = y.shape[:2]
    if (not is_instance_norm(norm) or y.requires_grad
            or not y.is_contiguous(memory_format=torch.channels_last) or y.is_contiguous()):
        return norm(y)
    scale, shift = scale_shift(norm, *norm_stats(y))  # type: ignore[arg-type]
    return torch.addcmul(shift.view(b, c, 1, 1), y, scale.view(b, c, 1, 1), out=y)


def act_(act: nn.Module, y: Tensor) -> Tensor:
    """`act(y)`, in place over `y` for ReLU."""
    return torch.relu_(y) if isinstance(act, nn.ReLU) else act(y)


_positive: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, int], bool]]" = weakref.WeakKeyDictionary()


def positive_weights(norm: nn.GroupNorm) -> bool:
    """Whether every weight of the norm is positive (so is a fresh network's). Checked again only
    when the weights change, so a device does not synchronize on every call."""
    key = (norm.weight._version, norm.weight.data_ptr())
    seen = _positive.get(norm)
    if seen is None or seen[0] != key:
        seen = (key, bool((norm.weight > 0).all()))
        _positive[norm] = seen
    return seen[1]


def conv_output_stats(conv: nn.Conv2d, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """Per-sample, per-channel mean and variance of `conv(x)`, each [B, C], without reading its
    output, when the convolution has few inputs per output (a first layer: 9 for grey 3x3, 27 for
    RGB). Every output value is w_c . p + b_c for an input patch p, so its mean over positions is
    w_c . mean(p) + b_c and its variance w_c^T Cov(p) w_c. None when this does not apply."""
    k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    if conv.groups != 1 or k > 32 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    xp = F.pad(x, (pw, pw, ph, ph))
    oh, ow = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    taps = [xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            for i in range(kh) for j in range(kw)]
    patches = torch.stack(taps, 2).reshape(x.shape[0], k, oh * ow)  # [B, k, L]
    mean_p = patches.mean(2, keepdim=True)
    centered = patches - mean_p
    cov = centered @ centered.transpose(1, 2) / patches.shape[2]  # [B, k, k]
    w = conv.weight.reshape(conv.out_channels, k)
    mean = mean_p.squeeze(2) @ w.T
    if conv.bias is not None:
        mean += conv.bias
    var = ((cov @ w.T) * w.T).sum(1).clamp_min_(0)  # [B, C]: w_c^T Cov w_c
    return mean, var


def _is_2x2_pool(pool: nn.Module) -> bool:
    return (isinstance(pool, (nn.AvgPool2d, nn.MaxPool2d)) and pool.kernel_size in (2, (2, 2))
            and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0)))


def lean_block(conv: nn.Conv2d, norm: nn.Module, act: nn.Module, pool: nn.Module, x: Tensor) -> Tensor:
    """`pool(act(norm(conv(x))))` without gradients, in as few passes over the convolution's output
    as possible.

    For instance norm with positive weights, ReLU and 2x2 average or max pooling: the norm is
    y -> s (y - u) per sample and channel with s > 0, so relu(s (y - u)) = s (max(y, u) - u), and
    both poolings commute with a positive affine map. One in-place clamp over the full map, the
    pooling, then the affine map on the 4x smaller result."""
    if not (is_instance_norm(norm) and isinstance(act, nn.ReLU) and _is_2x2_pool(pool)
            and positive_weights(norm)):  # type: ignore[arg-type]
        return pool(act_(act, normalize_(norm, conv(x))))
    known = conv_output_stats(conv, x)
    y = conv(x)
    b, c = y.shape[:2]
    scale, shift = scale_shift(norm, *(known or norm_stats(y)))  # type: ignore[arg-type]
    y.clamp_min_((-shift / scale).view(b, c, 1, 1))  # u = -shift / scale
    p = pool(y)
    return torch.addcmul(shift.view(b, c, 1, 1), p, scale.view(b, c, 1, 1), out=p)


def lean_embed(net: "ConvNet", x: Tensor) -> Tensor:
    """`net.embed(x)` for a gradient-free pass, block by block through `lean_block`."""
    for conv, norm, act, pool in zip(net.convs, net.norms, net.acts, net.pools):
        x = lean_block(conv, norm, act, pool, x)
    return x.flatten(1)


# --------------------------------------------------------------------------------------------
# bounded memory for a big gradient-free batch (exact with BatchNorm)


@torch.no_grad()
def features_lowmem(net: "ConvNet", x: Tensor, chunk: int, reduce: Callable[[Tensor], Tensor]
                    ) -> tuple[list[Tensor], Tensor]:
    """`net.features(x)` for a big gradient-free batch, about `chunk` images at a time, keeping
    only `reduce(activation)` of every block (e.g. an attention map [B, H*W]).

    Exact even for BatchNorm in train mode: when a block's output for the whole batch exceeds
    the budget (`chunk` images of the first block), its batch statistics are gathered over all
    images in a first pass and the convolution is recomputed in the second, so every image is
    normalized with the statistics of the whole batch, as one big forward would do. BatchNorm
    running statistics are left as they come out (callers sample a fresh network every step)."""
    reduced: list[Tensor] = []
    budget = 0
    for conv, norm, act, pool in zip(net.convs, net.norms, net.acts, net.pools):
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
                y = normalize_(norm, y)
            y = act_(act, y)
            reds.append(reduce(y))
            outs.append(pool(y))
            del y
        x = torch.cat(outs) if len(outs) > 1 else outs[0]
        reduced.append(torch.cat(reds) if len(reds) > 1 else reds[0])
    return reduced, x.flatten(1)
