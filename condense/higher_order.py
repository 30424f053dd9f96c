"""Convolutions whose derivatives of every order use the fast convolution kernels.

Trajectory matching differentiates through gradients, so every inner step needs the derivative
of a convolution's weight gradient. PyTorch's generic double backward computes one of its terms
as a convolution whose "kernel" is a whole activation map (batch and channels transposed), which
oneDNN runs far below its normal throughput on a CPU (benchmarks/RESULTS.md, trajectory matching).
The three linear maps below are closed under differentiation, so every derivative of every order
stays one of the three well-optimized kernels of `aten.convolution_backward`:

    y  = conv(x, W)          gx = in_grad(dy, W)  (= conv transposed)   gW = w_grad(x, dy)
    <U, in_grad(dy, W)> = <conv(U, W), dy>      <V, w_grad(x, dy)> = <dy, conv(x, V)>

Same numbers as `F.conv2d` (tested to third order); MTT uses them while the `condense.fast` switch
is on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from condense.errors import CondenseError


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
