"""The Algorithm contract and the registry every method registers in.

An algorithm only does math: it receives the real data and a `Context`, builds its learnable
synthetic parameters in `init`, improves them one outer iteration per `step`, and hands back a
`SyntheticSet`. The driver (`condense/run.py`) owns the loop, progress, checkpoints and files.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from condense.artifacts import Artifacts
from condense.augment import DSA, make_dsa
from condense.data import RealData
from condense.errors import CondenseError
from condense.models import Network, build_model
from condense.registry import Registry
from condense.runtime import derive_seed, make_generator
from condense.synthetic import SetMeta, SyntheticSet
from condense.train import TrainConfig


@dataclass
class AlgoConfig:
    """Fields every method has. Subclasses add their own, each with a default and a comment."""

    ipc: int = 10  # synthetic images per class
    iters: int = 0  # outer iterations (0 for selection baselines, which finish in init)
    arch: str = "convnet"  # the network the method distils with

    def problems(self) -> list[str]:
        """Settings out of range, as sentences; subclasses extend the list."""
        out = []
        if self.ipc < 1:
            out.append(f"ipc must be at least 1 (got {self.ipc})")
        if self.iters < 0:
            out.append(f"iters must not be negative (got {self.iters})")
        return out


@dataclass
class Context:
    """What the driver hands an algorithm: where to compute, randomness, networks, artifacts."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    artifacts: Artifacts = field(default_factory=Artifacts)

    def __post_init__(self) -> None:
        self.generator = make_generator(derive_seed(self.seed, "algorithm"))

    def model(self, arch: str, real: RealData, seed: int | None = None, **kw: Any) -> Network:
        """A freshly initialized network for `real`'s shape, on the device."""
        i = real.info
        return build_model(arch, i.channels, i.num_classes, i.size, seed=seed, **kw).to(self.device)

    def augment(self, strategy: str, real: RealData) -> DSA | None:
        return make_dsa(strategy, real.info.allow_flip)


class Algorithm:
    """Base class. Subclasses set `name`, `Config` and implement init/step/synthetic."""

    name: ClassVar[str]
    Config: ClassVar[type[AlgoConfig]] = AlgoConfig
    protocol: ClassVar[str] = "dsa"  # the evaluation protocol the method's numbers are meant for

    def __init__(self, cfg: AlgoConfig, real: RealData, ctx: Context) -> None:
        issues = cfg.problems()
        if issues:
            raise CondenseError(f"Invalid settings for --algo {self.name}: {'; '.join(issues)}. "
                                f"Fix them with --set key=value.")
        self.cfg, self.real, self.ctx = cfg, real, ctx

    @classmethod
    def artifacts_needed(cls, cfg: AlgoConfig) -> list[tuple[str, TrainConfig, int]]:
        """Trained networks this method will ask the artifact cache for: (arch, recipe, seed).
        `condense teachers --pool NAME` builds them ahead of time."""
        return []

    def init(self) -> None:
        """Build the learnable synthetic parameters (real-image or noise initialization)."""

    def step(self, it: int) -> dict[str, float | torch.Tensor]:
        """One outer iteration; returns scalars to log."""
        return {}

    def synthetic(self) -> SyntheticSet:
        raise NotImplementedError

    def notes(self) -> list[str]:
        """Things the user should know about the finished run (the driver prints them)."""
        return []

    def wants_huge_pages(self) -> bool:
        """True when every step allocates and frees gigabytes on the CPU: page faults then cost
        seconds per step, and the command-line driver restarts with transparent huge pages."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit (tensors, optimizer and generator states)."""
        return {"generator": self.ctx.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ctx.generator.set_state(state["generator"])

    # ---- helpers shared by methods ---------------------------------------------------------

    def make_set(self, images: torch.Tensor, labels: torch.Tensor, **extra: Any) -> SyntheticSet:
        """Wrap tensors in a SyntheticSet with this run's metadata."""
        from dataclasses import asdict

        info, pre = self.real.info, self.real.pre
        meta = SetMeta(dataset=info.name, num_classes=info.num_classes, class_names=list(info.class_names),
                       ipc=self.cfg.ipc, channels=info.channels, height=info.size, width=info.size,
                       mean=tuple(info.mean), std=tuple(info.std), pixel_space=pre.pixel_space,
                       algorithm=self.name, config=asdict(self.cfg), seed=self.ctx.seed, protocol=self.protocol)
        return SyntheticSet(images.detach().float().cpu(), labels.detach().long().cpu(), meta,
                            zca=None if pre.zca is None else pre.zca.to("cpu"), **extra)


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")


class PixelSGD:
    """SGD with momentum on one learnable tensor (pixels, MTT's step size, soft labels): the update
    of `torch.optim.SGD` (dampening 0, no Nesterov, no weight decay) in three lines.

    Why not `torch.optim.SGD`: building any torch optimizer imports TorchDynamo, about 150 MB of
    resident memory on this machine (measured), which a method that never compiles does not
    need (DataDAM's and MTT recompute's memory targets). Results are bit-identical (tested)."""

    def __init__(self, param: torch.Tensor, lr: float, momentum: float) -> None:
        self.param, self.lr, self.momentum = param, lr, momentum
        self.buf: torch.Tensor | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        g = self.param.grad
        if g is None:
            return
        if self.momentum:
            self.buf = g.clone() if self.buf is None else self.buf.mul_(self.momentum).add_(g)
            g = self.buf
        self.param.add_(g, alpha=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum,
                "buf": None if self.buf is None else self.buf.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "param_groups" in state:  # a checkpoint written by torch.optim.SGD (earlier condense versions)
            group = state["param_groups"][0]
            buf = state["state"].get(0, {}).get("momentum_buffer")
            state = {"lr": group["lr"], "momentum": group["momentum"], "buf": buf}
        self.lr, self.momentum = state["lr"], state["momentum"]
        self.buf = None if state["buf"] is None else state["buf"].to(self.param.device, copy=True)


def config_from(cls: type[Algorithm], overrides: dict[str, Any]) -> AlgoConfig:
    """Build `cls.Config` from string/typed overrides (`--set key=value`), checking names and types."""
    known = {f.name: f for f in fields(cls.Config)}
    kw: dict[str, Any] = {}
    for k, v in overrides.items():
        k2 = k.replace("-", "_")
        if k2 not in known:
            raise CondenseError(f"'{k}' is not a setting of --algo {cls.name}. Its settings: "
                                f"{', '.join(sorted(known))}.")
        kw[k2] = coerce(v, known[k2].type, k)
    return cls.Config(**kw)


def coerce(value: Any, typ: Any, name: str) -> Any:
    """Turn a command-line string into the field's type (bool, int, float, str, tuple)."""
    if not isinstance(value, str):
        return value
    t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if t.startswith("bool"):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if t.startswith("int"):
            return int(value)
        if t.startswith("float"):
            return float(value)
        if t.startswith("tuple"):
            return tuple(float(x) if "." in x or "e" in x else int(x) for x in value.split(",") if x)
    except ValueError:
        kind = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(
            t.split("[")[0].split(" ")[0], "a comma-separated list of numbers")
        raise CondenseError(f"Setting '{name}' expects {kind}, got '{value}'.") from None
    return value
