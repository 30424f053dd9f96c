"""R ConvNets of one shape trained as one network, so that R evaluation runs share their passes.

A speed path for evaluation (`--stack`, on by default on CUDA): each run computes exactly what its
own ConvNet would (tested in tests/test_train_eval.py), so a reader of the evaluation protocol can
ignore this module.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from condense.errors import CondenseError
from condense.models import ConvNet


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

    def __init__(self, nets: list[ConvNet]) -> None:
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
    def copy_run_into(self, r: int, net: ConvNet) -> ConvNet:
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
    if isinstance(n, nn.GroupNorm) and n.num_groups == n.num_channels:  # instance norm
        out: nn.Module = nn.GroupNorm(n.num_channels * len(norms), n.num_channels * len(norms), n.eps, n.affine)
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
        isinstance(n, (nn.Identity, nn.BatchNorm2d))
        or (isinstance(n, nn.GroupNorm) and n.num_groups == n.num_channels) for n in net.norms)
