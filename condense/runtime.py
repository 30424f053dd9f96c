"""Process-level settings: allocator tuning, device choice, seeded generators.

Why the allocator: on glibc, tensors above the mmap threshold are mapped and unmapped on every
iteration and page-faulted back in; on a 2-core VM this kernel time cost more than the math
(ConvNet-3 training 345 -> 550 img/s, sys time 5 s -> 0 s per 10 steps). Two `mallopt` calls at
process start keep freed memory in the heap for reuse.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Any, Callable, NoReturn

import torch

from condense.errors import CondenseError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_tuned = False


def tune_allocator() -> bool:
    """Stop glibc from returning large blocks to the kernel. Safe to call more than once;
    a no-op (returns False) where glibc is absent."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        return False
    _tuned = bool(ok)
    return _tuned


def compile_fn(fn: Any) -> Any:
    """`torch.compile(fn, dynamic=False)`, without importing Triton on a machine with no CUDA device.

    Inductor generates C++ for the CPU and needs Triton only for GPU kernels, yet TorchDynamo
    imports it when present: 63-73 MB of resident memory for nothing on a CPU-only machine
    (measured here). A `None` entry in `sys.modules` makes that import fail cleanly, which
    Inductor reads as "no Triton"; with a CUDA device, nothing is changed."""
    if "triton" not in sys.modules and not torch.cuda.is_available():
        sys.modules["triton"] = None  # type: ignore[assignment]
        # torch then logs "triton not found" and, compiling, "No CUDA runtime is found": both
        # notices say only that this machine has no GPU
        logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(fn, dynamic=False)


HUGE_PAGES = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: malloc asks the kernel for transparent huge pages
restartable = False  # set by the command-line entry point: only a whole CLI process may restart itself


def huge_pages_on() -> bool:
    return HUGE_PAGES in os.environ.get("GLIBC_TUNABLES", "")


def huge_pages_chosen() -> bool:
    """Whether the environment already sets the tunable, either way (`glibc.malloc.hugetlb=0` opts out)."""
    return "glibc.malloc.hugetlb=" in os.environ.get("GLIBC_TUNABLES", "")


def restart_with_huge_pages(announce: Callable[[str], None] | None = None) -> None:
    """Run this command line again, from the start, with glibc's huge-page tunable set.

    glibc reads its tunables only at process start, and only a whole process may be replaced, so
    this does nothing inside a library call, a test, off Linux, or when the environment already
    sets the tunable either way (which also ends the restart after one round;
    `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps ordinary pages). Where the C library ignores the
    tunable the run simply proceeds with ordinary pages. `announce` gets a one-line notice first."""
    if not restartable or huge_pages_chosen() or not sys.platform.startswith("linux"):
        return
    if announce is not None:
        announce("restarting with transparent huge pages (this run frees gigabytes every step; "
                 "2 MB pages make that cheaper)")
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), HUGE_PAGES) if t)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def exit_now(code: int | str | None = 0) -> NoReturn:
    """End the process at once, skipping the C++ static destructors of torch's libraries.

    With the CUDA build of torch those destructors touch about 120 MB that the process had never
    used and take about 0.3 s: `python -c "import torch"` peaks at 630 MB with the normal exit and
    507 MB with this one (measured), so a run's peak RSS as `/usr/bin/time` reports it would
    otherwise be set by its exit. Python's exit handlers still run (`atexit`, which also closes
    logging and runs `weakref.finalize` hooks) and the standard streams are flushed. Only for a
    whole process: the executable's entry point and the benchmarks, never library code or tests.
    `code` follows `sys.exit`: None is 0, a string is printed to stderr and gives 1."""
    import atexit

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`condense info f | head -1`) or stream
            pass
    os._exit(code or 0)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; anything else must be a valid, available device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise CondenseError(f"--device '{name}' is not a device name ({e}). Use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CondenseError(f"--device {name} was asked for, but this machine has no usable CUDA device. "
                            f"Use --device cpu (or auto).")
    return dev


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator: random draws for shuffling and augmentation parameters are tiny, so
    drawing them on the host avoids device syncs and keeps CPU and GPU runs identical."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def derive_seed(seed: int, *keys: int | str) -> int:
    """A stable child seed for a named sub-stream (run r of architecture a, ...)."""
    import hashlib

    h = hashlib.sha256(repr((seed,) + keys).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**62 - 1)
