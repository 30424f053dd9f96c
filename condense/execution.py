"""Execution settings: how a run computes, never what it computes.

A method's config (`algorithms/<name>.py`) reads as its paper's table; everything here only moves
time and memory. Chunk sizes and the fast paths give the same numbers up to float rounding
(tested), `compile` and `amp` change rounding (bf16 more than that: it is off by default). The
driver records the settings of a run next to its config in the file.

`condense distill --set key=value` takes these names as well as the method's.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

@dataclass
class Execution:
    """One object every method reads (`ctx.execution`). Defaults are the measured choices of
    benchmarks/RESULTS.md ("speed and memory")."""

    chunk: int = -1  # real images per gradient-free forward, in whole classes; 0 = all at once;
    #                  -1 = auto: the method's CPU choice on a CPU (cache-sized pieces), 256 elsewhere
    syn_chunk: int = -1  # synthetic images per forward+backward, in whole classes (exact: the loss is a sum
    #                      over classes); 0 = all at once; -1 = auto: 20 on a CPU, all at once elsewhere
    bn_chunk: int = 64  # with BatchNorm, the real forward in pieces of about this many images, exact
    #                     (whole-batch statistics from a first pass; condense.fast.features_lowmem); 0 = at once
    compile: str = "auto"  # torch.compile the gradient-free real forward: true | false | auto (the method's
    #                        measured choice per device kind); falls back to eager if compiling fails
    amp: str = "none"  # none | bf16: autocast the real forward to bfloat16 (faster, approximate)
    channels_last: bool = True  # the matching methods' networks in channels-last layout (faster convolutions)
    fast: bool = True  # the CPU speed paths of condense.fast (equal to the plain code; see that module)

    def problems(self) -> list[str]:
        """Settings out of range, as sentences."""
        out = []
        for name in ("chunk", "syn_chunk"):
            if getattr(self, name) < -1:
                out.append(f"{name} must be -1 (auto), 0 (all at once) or positive (got {getattr(self, name)})")
        if self.bn_chunk < 0:
            out.append(f"bn_chunk must be 0 (all at once) or positive (got {self.bn_chunk})")
        if str(self.compile).lower() not in ("auto", "true", "false"):
            out.append(f"compile must be auto, true or false (got {self.compile})")
        if self.amp not in ("none", "bf16"):
            out.append(f"amp must be none or bf16 (got {self.amp})")
        return out

    @staticmethod
    def names() -> set[str]:
        return {f.name for f in fields(Execution)}

    @staticmethod
    def split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Settings from a preset or the command line -> (the method's, the execution's)."""
        known = Execution.names()
        method = {k: v for k, v in values.items() if k.replace("-", "_") not in known}
        execution = {k.replace("-", "_"): v for k, v in values.items() if k.replace("-", "_") in known}
        return method, execution

    def compiles(self, device: torch.device, on_cpu: bool, on_cuda: bool = True) -> bool:
        """`compile` resolved: auto follows the method's measured choice for the device kind."""
        setting = str(self.compile).lower()
        if setting == "auto":
            return on_cuda if device.type == "cuda" else on_cpu
        return setting == "true"

    def real_chunk(self, device: torch.device, cpu_default: int) -> int:
        """`chunk` resolved."""
        return self.chunk if self.chunk >= 0 else (cpu_default if device.type == "cpu" else 256)

    def syn_chunk_for(self, device: torch.device) -> int:
        """`syn_chunk` resolved."""
        return self.syn_chunk if self.syn_chunk >= 0 else (20 if device.type == "cpu" else 0)


def compile_fn(fn: Any) -> Any:
    """`torch.compile(fn, dynamic=False)`: the shapes of a run do not change."""
    return torch.compile(fn, dynamic=False)
