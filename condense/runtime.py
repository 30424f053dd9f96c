"""Device choice, seeded generators, and the one process-level setting of the `condense` executable.

Library code never changes process state: importing condense or calling it from a notebook leaves
the allocator, the import system and the exit path alone. Only the console entry point calls
`tune_process`, which the README documents and CONDENSE_TUNE_PROCESS=0 turns off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import sys

import torch

from condense.errors import CondenseError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_process() -> bool:
    """For the `condense` executable only: keep freed memory in the heap (glibc `mallopt`), and
    silence two torch notices that only say the machine has no GPU.

    Why: on glibc, tensors above the mmap threshold are mapped and unmapped on every iteration and
    page-faulted back in; on a small VM that kernel time cost more than the math (training
    throughput, benchmarks/RESULTS.md). Returns whether the allocator was tuned; a no-op off
    Linux/glibc or with CONDENSE_TUNE_PROCESS=0."""
    if os.environ.get("CONDENSE_TUNE_PROCESS", "1").lower() in ("0", "false", "no", "off"):
        return False
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # torch.compile's CUDA_HOME notice
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


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


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on `device`. CPU generators serve decisions the host must read (which
    expert, which augmentation family) without a device sync; a device generator draws tensors
    where they are used (no host-to-device copy per step)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def derive_seed(seed: int, *keys: int | str) -> int:
    """A stable child seed for a named sub-stream (run r of architecture a, ...)."""
    h = hashlib.sha256(repr((seed,) + keys).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**62 - 1)
