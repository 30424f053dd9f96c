"""The Algorithm contract and the registry every method registers in.

An algorithm only does math: it receives the real data and a `Context`, builds its learnable
synthetic parameters in `init`, improves them one outer iteration per `step`, and hands back a
`SyntheticSet`. The driver (`condense/run.py`) owns the loop, progress, checkpoints and files.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Generic, TypeVar

import torch

from condense.artifacts import Artifacts
from condense.augment import DSA, make_dsa
from condense.data import RealData
from condense.errors import CondenseError
from condense.execution import Execution
from condense.models import Network, build_model
from condense.registry import Registry
from condense.run import preset_values
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


C = TypeVar("C", bound=AlgoConfig)


@dataclass
class Context:
    """What the driver hands an algorithm: where and how to compute, randomness, artifacts.

    Two random streams: `generator` (CPU) for decisions the host reads (which expert, which
    augmentation family, a network's seed), `device_generator` for tensors drawn where they are
    used. On a CPU they are one generator, so a CPU run draws exactly what it always did."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    artifacts: Artifacts = field(default_factory=Artifacts)
    execution: Execution = field(default_factory=Execution)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.generator = make_generator(derive_seed(self.seed, "algorithm"))
        self.device_generator = self.generator if self.device.type == "cpu" else \
            make_generator(derive_seed(self.seed, "algorithm", "device"), self.device)

    def state_dict(self) -> dict[str, Any]:
        state = {"generator": self.generator.get_state()}
        if self.device_generator is not self.generator:
            state["device_generator"] = self.device_generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        if self.device_generator is not self.generator and "device_generator" in state:
            self.device_generator.set_state(state["device_generator"])

    def model(self, arch: str, real: RealData, seed: int | None = None, **kw: Any) -> Network:
        """A freshly initialized network for `real`'s shape, on the device."""
        i = real.info
        return build_model(arch, i.channels, i.num_classes, i.size, seed=seed, **kw).to(self.device)

    def augment(self, strategy: str, real: RealData) -> DSA | None:
        return make_dsa(strategy, real.info.allow_flip)


class Algorithm(Generic[C]):
    """Base class. Subclasses set `name`, `Config` and implement init/step/synthetic."""

    name: ClassVar[str]
    Config: ClassVar[type[AlgoConfig]] = AlgoConfig
    protocol: ClassVar[str] = "dsa"  # the evaluation protocol the method's numbers are meant for

    def __init__(self, cfg: C, real: RealData, ctx: Context) -> None:
        issues = cfg.problems() + ctx.execution.problems()
        if issues:
            raise CondenseError(f"Invalid settings for --algo {self.name}: {'; '.join(issues)}. "
                                f"Fix them with --set key=value.")
        self.cfg: C = cfg
        self.real, self.ctx = real, ctx

    @classmethod
    def artifacts_needed(cls, cfg: Any) -> list[tuple[str, TrainConfig, int]]:
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

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit (tensors, optimizer and generator states)."""
        return self.ctx.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ctx.load_state_dict(state)

    # ---- helpers shared by methods ---------------------------------------------------------

    def make_set(self, images: torch.Tensor, labels: torch.Tensor, **extra: Any) -> SyntheticSet:
        """Wrap tensors in a SyntheticSet with this run's metadata."""
        info, pre = self.real.info, self.real.pre
        config = {**asdict(self.cfg), "execution": asdict(self.ctx.execution)}
        meta = SetMeta(dataset=info.name, num_classes=info.num_classes, class_names=list(info.class_names),
                       ipc=self.cfg.ipc, channels=info.channels, height=info.size, width=info.size,
                       mean=tuple(info.mean), std=tuple(info.std), pixel_space=pre.pixel_space,
                       algorithm=self.name, config=config, seed=self.ctx.seed, protocol=self.protocol,
                       class_ids=list(info.class_ids), classes_sha256=info.classes_sha256)
        return SyntheticSet(images.detach().float().cpu(), labels.detach().long().cpu(), meta,
                            zca=None if pre.zca is None else pre.zca.to("cpu"), **extra)


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")


class PixelSGD:
    """SGD with momentum on one learnable tensor (pixels, MTT's step size, soft labels): the update
    of `torch.optim.SGD` (dampening 0, no Nesterov, no weight decay) in three lines.

    Why not `torch.optim.SGD`: building any torch optimizer imports TorchDynamo, whose resident
    memory a method that never compiles does not need (benchmarks/RESULTS.md §2.4). Results are
    bit-identical (tested)."""

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


def configure(algo: str, dataset: str, ipc: int, preset: str | None = None, overrides: dict[str, Any] | None = None,
              iters: int | None = None) -> tuple[type[Algorithm], Any, Execution]:
    """The method's class, config and execution settings: its defaults, then the preset (most
    specific table last), then `overrides` (--set), then ipc and iters."""
    if ipc < 1:
        raise CondenseError(f"--ipc must be a positive number of images per class (got {ipc}).")
    cls = ALGORITHMS.get(algo)
    values = {**preset_values(cls.name, preset, dataset, ipc), **(overrides or {}), "ipc": ipc}
    if iters is not None:
        values["iters"] = iters
    cfg, execution = settings_from(cls, values)
    return cls, cfg, execution


def build(algo: str, real: RealData, ipc: int, preset: str | None = None, overrides: dict[str, Any] | None = None,
          iters: int | None = None, seed: int = 0, artifacts: Artifacts | None = None) -> Algorithm:
    """A configured method on `real`'s device (see `configure`), ready for the driver."""
    cls, cfg, execution = configure(algo, real.info.name, ipc, preset, overrides, iters)
    return cls(cfg, real, Context(real.device, seed, artifacts or Artifacts(device=real.device), execution))


def artifacts_for(algo: str, dataset: str, ipc: int, preset: str | None = None,
                  overrides: dict[str, Any] | None = None) -> list[tuple[str, TrainConfig, int]]:
    """The trained networks a configured method will ask for (`condense teachers --pool`)."""
    cls, cfg, _ = configure(algo, dataset, ipc, preset, overrides)
    jobs = cls.artifacts_needed(cfg)
    if not jobs:
        raise CondenseError(f"{cls.name} needs no pretrained networks; nothing to build.")
    return jobs


def applicable(cls: type[Algorithm], overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that are settings of `cls` (its own or execution settings)."""
    known = {f.name for f in fields(cls.Config)} | Execution.names()
    return {k: v for k, v in overrides.items() if k.replace("-", "_") in known}


def config_from(cls: type[Algorithm], overrides: dict[str, Any]) -> Any:
    """Build `cls.Config` from string/typed overrides (`--set key=value`), checking names and types."""
    return _build(cls.Config, overrides, f"--algo {cls.name}", Execution.names())


def execution_from(overrides: dict[str, Any]) -> Execution:
    """Build the execution settings from string/typed overrides, checking names and types."""
    return _build(Execution, overrides, "execution", set())


def settings_from(cls: type[Algorithm], values: dict[str, Any]) -> tuple[Any, Execution]:
    """One dict of settings (preset, then --set) -> the method's config and the execution settings."""
    method, execution = Execution.split(values)
    return config_from(cls, method), execution_from(execution)


def _build(kind: type, overrides: dict[str, Any], owner: str, also: set[str]) -> Any:
    known = {f.name: f for f in fields(kind)}
    kw: dict[str, Any] = {}
    for k, v in overrides.items():
        k2 = k.replace("-", "_")
        if k2 not in known:
            raise CondenseError(f"'{k}' is not a setting of {owner}. Its settings: {', '.join(sorted(known))}"
                                f"{'; execution settings: ' + ', '.join(sorted(also)) if also else ''}.")
        kw[k2] = coerce(v, known[k2].type, k)
    return kind(**kw)


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
