"""Device hygiene: a distillation step moves nothing between host and device.

On a GPU a host-to-device copy inside a step stalls the pipeline, so every step draws its random
tensors on the device and keeps what it reads there (experts, pools). A TorchFunctionMode records
every call that moves a tensor or names a device to move it to; one step of each method must make
none. On a CPU-only machine the test sees the calls (`.to(device)`, `.cuda()`, `.cpu()`,
`pin_memory()`) even though they move nothing; on a GPU it also sees copies between devices.
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from algorithms.base import Context, settings_from
from algorithms.datadam import DataDAM
from algorithms.dm import DM
from algorithms.mtt import MTT
from algorithms.ncfm import NCFM
from condense.artifacts import Artifacts

MOVES = {torch.Tensor.cuda, torch.Tensor.cpu, torch.Tensor.pin_memory}


def _names_a_device(tensor, args, kwargs) -> bool:
    """`to(device)` names a device even when it moves nothing; `to(other)` moves when devices differ."""
    def device_like(v) -> bool:
        if isinstance(v, torch.Tensor):
            return v.device != tensor.device
        if isinstance(v, torch.device):
            return True
        if isinstance(v, str):
            try:
                torch.device(v)
                return True
            except RuntimeError:
                return False
        return False

    return any(device_like(v) for v in args) or kwargs.get("device") is not None


class Transfers(TorchFunctionMode):
    """Records calls that move tensors between devices (or name a device to move them to)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MOVES or (func is torch.Tensor.to and _names_a_device(args[0], args[1:], kwargs)):
            self.calls.append(f"{func.__name__}{tuple(str(a) for a in args[1:])}")
        elif func is torch.Tensor.copy_ and args[0].device != args[1].device:
            self.calls.append(f"copy_ {args[1].device} -> {args[0].device}")
        return func(*args, **kwargs)


def test_the_recorder_sees_a_transfer():
    """The detector itself: a step that moves a tensor to the device is caught."""
    with Transfers() as seen:
        torch.zeros(3).to("cpu")
        torch.zeros(3).to(torch.float64)  # a dtype change moves nothing
    assert seen.calls == ["to('cpu',)"]


class _Experts(Artifacts):
    """Expert trajectories of the right shape (random walks): a step's transfers do not depend on values."""

    def expert(self, real, arch, recipe, index):
        from condense.models import FlatParams, build_model

        net = build_model(arch, real.info.channels, real.info.num_classes, real.info.size, seed=index)
        theta = FlatParams(net).flatten(net)
        walk = 0.01 * torch.randn(recipe.epochs, theta.numel(), generator=torch.Generator().manual_seed(index))
        return torch.cat([theta[None], theta[None] + walk.cumsum(0)])


@pytest.mark.parametrize("cls,over", [
    (DM, {}), (DataDAM, {}), (NCFM, {"pool_size": 1, "pool_epochs": 1, "num_freqs": 16}),
    (NCFM, {"pool_size": 1, "pool_epochs": 1, "num_freqs": 16, "psi": True}),
    (MTT, {"num_experts": 2, "syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 2, "weight_perturb": 1.0}),
])
def test_a_distillation_step_moves_nothing_between_devices(real, tmp_path, cls, over):
    values = {"ipc": 1, "iters": 3, "compile": False, **over}
    if cls is not MTT:
        values.update(batch_real=8, width=16 if cls is not NCFM else 128)
    cfg, execution = settings_from(cls, values)
    artifacts = _Experts(tmp_path) if cls is MTT else Artifacts(tmp_path)
    a = cls(cfg, real, Context(seed=0, artifacts=artifacts, execution=execution))
    a.init()
    a.step(0)  # first step: anything built once (compiled views, buffers) is built here
    with Transfers() as seen:
        a.step(1)
    assert seen.calls == []


def test_an_infer_step_moves_nothing_between_devices(real, tmp_path, monkeypatch):
    from algorithms.infer import INFER
    from condense import committee
    from test_infer import TINY

    monkeypatch.setattr(committee, "_table", lambda dataset: TINY)
    cfg = settings_from(INFER, {"ipc": 2, "committee": "tiny", "ufc_iters": 2})[0]
    a = INFER(cfg, real, Context(seed=0, artifacts=Artifacts(tmp_path)))
    a.init()
    a.step(0)
    with Transfers() as seen:
        a.step(1)  # finishes a compensator
        a.step(2)  # starts the next one
    assert seen.calls == []
