"""Probes behind RESULTS §3 (session 14): where DM's gradient-free real forward spends its time on this
CPU, and the alternatives that were tried for it and dropped. One JSON line per probe.

    python benchmarks/dm_probes.py [blocks|winograd|nnpack|fused|pieces|schedules|aoti|exit_cost ...] [--json-out FILE]

Everything is timed on the shapes of one DM iteration at the official batch (2560 real Fashion-MNIST-sized
images, ConvNet-3 width 128, channels-last, chunks of 32), with random inputs: the data do not change the
cost. Run on an otherwise idle machine (two OpenMP processes on 2 cores slow each other 10-20x).
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time

from condense.runtime import exit_now, tune_allocator

tune_allocator()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from condense.models import build_model, conv_output_stats, lean_block  # noqa: E402

CL = torch.channels_last
CHUNKS = 80  # 2560 images / 32


def bench(f, n: int = 30) -> float:
    """Fastest-of-steady milliseconds per call (mean over n after a warm-up)."""
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


def net():
    return build_model("convnet", 1, 10, 28, seed=0).to(memory_format=CL)


def images(b: int = 32) -> torch.Tensor:
    return torch.randn(b, 1, 28, 28).contiguous(memory_format=CL)


@torch.no_grad()
def blocks() -> dict:
    """lean_block taken apart, per DM iteration (80 chunks of 32), in milliseconds."""
    n = net()
    t = collections.defaultdict(float)
    xs = [images() for _ in range(CHUNKS)]
    for rep in range(2):  # the first pass warms up; the second is kept
        t.clear()
        for x in xs:
            for i, (conv, norm, _, pool) in enumerate(zip(n.convs, n.norms, n.acts, n.pools)):
                t0 = time.perf_counter()
                known = conv_output_stats(conv, x)
                t1 = time.perf_counter(); t[f"{i} input stats"] += t1 - t0; t0 = t1  # noqa: E702
                y = conv(x)
                t1 = time.perf_counter(); t[f"{i} conv"] += t1 - t0; t0 = t1  # noqa: E702
                b, c = y.shape[:2]
                scale, shift = norm.scale_shift(*(known or norm.stats(y)))
                t1 = time.perf_counter(); t[f"{i} stats"] += t1 - t0; t0 = t1  # noqa: E702
                y.clamp_min_((-shift / scale).view(b, c, 1, 1))
                t1 = time.perf_counter(); t[f"{i} clamp"] += t1 - t0; t0 = t1  # noqa: E702
                p = pool(y)
                t1 = time.perf_counter(); t[f"{i} pool"] += t1 - t0; t0 = t1  # noqa: E702
                x = torch.addcmul(shift.view(b, c, 1, 1), p, scale.view(b, c, 1, 1), out=p)
                t[f"{i} affine"] += time.perf_counter() - t0
    ms = {k: round(v * 1e3, 1) for k, v in t.items()}
    return {"probe": "blocks", "ms_per_iteration": ms, "total": round(sum(ms.values()), 1),
            "convs": round(sum(v for k, v in ms.items() if k.endswith("conv")), 1)}


def winograd_23(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """3x3, stride 1, padding 1 convolution as Winograd F(2x2, 3x3) in PyTorch ops (channels-last x, even sides)."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    th, tw = h // 2, wd // 2
    xp = x.new_zeros(n, h + 2, wd + 2, c)
    xp[:, 1:h + 1, 1:wd + 1] = x.permute(0, 2, 3, 1)
    s = xp.stride()
    d = xp.as_strided((n, th, tw, 4, 4, c), (s[0], 2 * s[1], 2 * s[2], s[1], s[2], 1))
    r = x.new_empty(4, n, th, tw, 4, c)  # B^T d, rows
    torch.sub(d[:, :, :, 0], d[:, :, :, 2], out=r[0])
    torch.add(d[:, :, :, 1], d[:, :, :, 2], out=r[1])
    torch.sub(d[:, :, :, 2], d[:, :, :, 1], out=r[2])
    torch.sub(d[:, :, :, 1], d[:, :, :, 3], out=r[3])
    v = x.new_empty(4, 4, n, th, tw, c)  # (B^T d) B, columns
    torch.sub(r[:, :, :, :, 0], r[:, :, :, :, 2], out=v[:, 0])
    torch.add(r[:, :, :, :, 1], r[:, :, :, :, 2], out=v[:, 1])
    torch.sub(r[:, :, :, :, 2], r[:, :, :, :, 1], out=v[:, 2])
    torch.sub(r[:, :, :, :, 1], r[:, :, :, :, 3], out=v[:, 3])
    g = w.new_tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
    u = torch.einsum("ik,ockl,jl->ijco", g, w, g).reshape(16, c, o)
    m = torch.bmm(v.view(16, n * th * tw, c), u).view(4, 4, n, th, tw, o)
    rows = (m[0] + m[1] + m[2], m[1] - m[2] - m[3])  # A^T m
    y = x.new_empty(n, th, 2, tw, 2, o)
    for i, s_ in enumerate(rows):
        torch.add(s_[0] + s_[1], s_[2], out=y[:, :, i, :, 0])
        torch.sub(s_[1] - s_[2], s_[3], out=y[:, :, i, :, 1])
    y = y.view(n, h, wd, o).add_(b)
    return y.permute(0, 3, 1, 2)


@torch.no_grad()
def winograd() -> dict:
    w, b = torch.randn(128, 128, 3, 3) * 0.03, torch.randn(128)
    x = torch.randn(32, 128, 16, 16).contiguous(memory_format=CL)
    err = (winograd_23(x, w, b) - F.conv2d(x, w, b, padding=1)).abs().max().item()
    v, u = torch.randn(16, 32 * 64, 128), torch.randn(16, 128, 128)
    return {"probe": "winograd F(2,3), 32 x 128 x 16 x 16", "max_abs_error": err,
            "oneDNN_ms": round(bench(lambda: F.conv2d(x, w, b, padding=1)), 3),
            "winograd_ms": round(bench(lambda: winograd_23(x, w, b)), 3),
            "its_batched_matmul_alone_ms": round(bench(lambda: torch.bmm(v, u)), 3)}


@torch.no_grad()
def nnpack() -> dict:
    w, b = torch.randn(128, 128, 3, 3) * 0.03, torch.randn(128)
    x = torch.randn(32, 128, 16, 16)
    xc = x.contiguous(memory_format=CL)
    return {"probe": "NNPACK, 32 x 128 x 16 x 16", "available": torch.backends.nnpack.is_available(),
            "oneDNN_channels_last_ms": round(bench(lambda: F.conv2d(xc, w, b, padding=1)), 3),
            "nnpack_ms": round(bench(lambda: torch._nnpack_spatial_convolution(x, w, b, [1, 1], [1, 1])), 3)}


@torch.no_grad()
def fused() -> dict:
    """First layer with a per-image bias and ReLU fused in oneDNN, as a convolution grouped by image."""
    b = 32
    w, bias = torch.randn(128, 1, 3, 3), torch.randn(b * 128)
    x = torch.randn(b, 1, 28, 28)
    xg = x.view(1, b, 28, 28).contiguous(memory_format=CL)
    wg = w.repeat(b, 1, 1, 1).contiguous(memory_format=CL)
    xc, wc, b1 = x.contiguous(memory_format=CL), w.contiguous(memory_format=CL), torch.randn(128)
    op = torch.ops.mkldnn._convolution_pointwise
    return {"probe": "first layer, 32 images", "plain_conv_ms": round(bench(lambda: F.conv2d(xc, wc, b1, padding=3)), 3),
            "grouped_conv_ms": round(bench(lambda: F.conv2d(xg, wg, bias, padding=3, groups=b)), 3),
            "grouped_conv_fused_relu_ms": round(bench(lambda: op(xg, wg, bias, [3, 3], [1, 1], [1, 1], b, "relu", [], "")), 3)}


@torch.no_grad()
def pieces() -> dict:
    """The first block of 32 images at once, or in L2-sized pieces."""
    n = net()
    conv, norm, pool = n.convs[0], n.norms[0], n.pools[0]
    x = images()
    scale, shift = norm.scale_shift(*conv_output_stats(conv, x))
    u, sc, sh = [t.view(32, 128, 1, 1) for t in (-shift / scale, scale, shift)]

    def whole():
        y = conv(x).clamp_min_(u)
        p = pool(y)
        return torch.addcmul(sh, p, sc, out=p)

    def split(k):
        out = torch.empty(32, 128, 16, 16, memory_format=CL)
        for s in range(0, 32, k):
            out[s:s + k] = pool(conv(x[s:s + k]).clamp_min_(u[s:s + k]))
        return torch.addcmul(sh, out, sc, out=out)

    return {"probe": "first block, 32 images", "whole_ms": round(bench(whole, 100), 3),
            **{f"pieces_of_{k}_ms": round(bench(lambda: split(k), 100), 3) for k in (1, 2, 4, 8, 16)}}


@torch.no_grad()
def schedules() -> dict:
    """Milliseconds per DM iteration (10 classes x 256 images): every block in chunks of 32 (the default)
    against the first block in chunks of c0 and the other two in chunks of c1."""
    n = net()
    blk = list(zip(n.convs, n.norms, n.acts, n.pools))
    x = torch.randn(256, 1, 28, 28).contiguous(memory_format=CL)

    def default():
        return torch.cat([n.embed(x[s:s + 32]) for s in range(0, 256, 32)])

    def split(c0, c1):
        h = torch.cat([lean_block(*blk[0], x[s:s + c0]) for s in range(0, 256, c0)])
        outs = []
        for s in range(0, 256, c1):
            z = h[s:s + c1]
            for bl in blk[1:]:
                z = lean_block(*bl, z)
            outs.append(z.flatten(1))
        return torch.cat(outs)

    row = {"probe": "chunk schedules, ms per iteration", "all_blocks_32": round(bench(default, 10) * 10)}
    for c0, c1 in ((32, 256), (32, 128), (32, 64), (64, 256), (16, 256)):
        row[f"first_{c0}_rest_{c1}"] = round(bench(lambda: split(c0, c1), 10) * 10)
    return row


def aoti() -> dict:
    """The embedding as an AOTInductor package, built in a child process and run through the C++ loader
    (which imports no TorchDynamo), against the eager in-place embedding; 32 images."""
    path = os.path.join(tempfile.mkdtemp(), "embed.pt2")
    build = (
        "import sys, torch, torch.nn.functional as F\n"
        "sys.modules['triton'] = None\n"
        "class E(torch.nn.Module):\n"
        "    def forward(self, x, *p):\n"
        "        for i, pad in enumerate((3, 1, 1)):\n"
        "            w, b, g, h = p[4 * i:4 * i + 4]\n"
        "            x = F.avg_pool2d(torch.relu(F.group_norm(F.conv2d(x, w, b, padding=pad), 128, g, h, 1e-5)), 2, 2)\n"
        "        return x.flatten(1)\n"
        "ps = []\n"
        "for cin in (1, 128, 128):\n"
        "    ps += [torch.randn(128, cin, 3, 3), torch.randn(128), torch.ones(128), torch.zeros(128)]\n"
        "x = torch.randn(32, 1, 28, 28).contiguous(memory_format=torch.channels_last)\n"
        "with torch.no_grad():\n"
        "    torch._inductor.aoti_compile_and_package(torch.export.export(E(), (x, *ps)), package_path=sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", build, path], check=True, capture_output=True)
    loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, -1)
    n = net()
    # the package expects the strides it was exported with: contiguous parameters
    ps = [t.detach().clone(memory_format=torch.contiguous_format) for i in range(3)
          for t in (n.convs[i].weight, n.convs[i].bias, n.norms[i].weight, n.norms[i].bias)]
    x = images()
    with torch.no_grad():
        err = (loader.run([x, *ps])[0] - n.embed(x)).abs().max().item()
        return {"probe": "AOTInductor vs eager embedding, 32 images", "max_abs_error": err,
                "dynamo_imported": "torch._dynamo" in sys.modules,
                "aoti_ms": round(bench(lambda: loader.run([x, *ps]), 40), 3),
                "eager_ms": round(bench(lambda: n.embed(x), 40), 3)}


def exit_cost() -> dict:
    """Peak RSS of `import torch` as /usr/bin/time sees it, by the way the process ends."""
    def peak(code: str) -> int:
        out = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c", code],
                             capture_output=True, text=True, check=True)
        return round(int(out.stderr.strip().splitlines()[-1]) / 1024)
    return {"probe": "exit cost of import torch, MB (ru_maxrss / 1024)",
            "normal_exit": peak("import torch"),
            "os_exit": peak("import torch, os; os._exit(0)"),
            "libc_exit_without_python_finalization": peak("import torch, ctypes, sys; sys.stdout.flush(); ctypes.CDLL(None).exit(0)")}


PROBES = {f.__name__: f for f in (blocks, winograd, nnpack, fused, pieces, schedules, aoti, exit_cost)}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = sys.argv[sys.argv.index("--json-out") + 1] if "--json-out" in sys.argv else None
    if out in args:
        args.remove(out)
    for name in args or list(PROBES):
        line = json.dumps({**PROBES[name](), "threads": torch.get_num_threads()})
        print(line, flush=True)
        if out:
            with open(out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
    exit_now(0)
