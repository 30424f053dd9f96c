"""The driver: checkpoints, resume, interruption, presets."""
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import condense
from algorithms.base import ALGORITHMS, AlgoConfig, Algorithm, Context, config_from
from condense.errors import CondenseError, Interrupted
from condense.run import RunSpec, preset_values, run_distill


@dataclass
class WalkConfig(AlgoConfig):
    iters: int = 6
    lr: float = 0.1  # step size of the noisy descent


class Walk(Algorithm):
    """A tiny iterative method with momentum state and randomness: enough to test resume."""

    name = "test-walk"
    Config = WalkConfig

    def init(self):
        x, y = self.real.random_subset(self.cfg.ipc, self.ctx.generator)
        self.x, self.y = x.clone(), y
        self.opt = torch.optim.SGD([self.x.requires_grad_(True)], lr=self.cfg.lr, momentum=0.5)
        self.fail_at, self.signal = None, signal.SIGINT

    def step(self, it):
        if it == self.fail_at:  # as if the user pressed Ctrl-C (or the scheduler sent SIGTERM) during this iteration
            os.kill(os.getpid(), self.signal)
        noise = torch.randn(self.x.shape, generator=self.ctx.generator)
        loss = ((self.x - noise) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}

    def synthetic(self):
        return self.make_set(self.x, self.y)

    def state_dict(self):
        return {**super().state_dict(), "x": self.x.detach().clone(), "y": self.y, "opt": self.opt.state_dict()}

    def load_state_dict(self, s):
        super().load_state_dict(s)
        self.x, self.y = s["x"].clone().requires_grad_(True), s["y"]
        self.opt = torch.optim.SGD([self.x], lr=self.cfg.lr, momentum=0.5)
        self.opt.load_state_dict(s["opt"])
        self.fail_at = None


ALGORITHMS.register("test-walk")(Walk)


def make(real, tmp_path, seed=0, **over):
    cfg = config_from(Walk, {"ipc": 2, **over})
    return Walk(cfg, real, Context(seed=seed))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_resumes_to_the_same_file(real, tmp_path, sig):
    """Ctrl-C and SIGTERM (what batch schedulers send before preempting) both checkpoint and stop."""
    whole = run_distill(make(real, tmp_path), RunSpec("test-walk", out=tmp_path / "whole.h5", ckpt_every=2))
    out = tmp_path / "cut.h5"
    algo = make(real, tmp_path)
    algo.init()
    algo.init = lambda: None  # keep the instance's state, but make step 4 fail like Ctrl-C
    algo.fail_at, algo.signal = 4, sig
    with pytest.raises(Interrupted, match="after iteration 5 of 6") as e:
        run_distill(algo, RunSpec("test-walk", out=out, ckpt_every=2))
    assert e.value.exit_code == 130
    assert not out.exists() and Path(str(out) + ".ckpt").exists()
    resumed = run_distill(make(real, tmp_path), RunSpec("test-walk", out=out, resume=Path(str(out) + ".ckpt")))
    assert torch.equal(resumed.images, whole.images)
    assert torch.equal(condense.load(out).images, condense.load(tmp_path / "whole.h5").images)
    assert not Path(str(out) + ".ckpt").exists()


def test_resume_refuses_a_checkpoint_of_another_run(real, tmp_path):
    out = tmp_path / "a.h5"
    algo = make(real, tmp_path)
    algo.init()
    algo.init = lambda: None
    algo.fail_at = 3
    with pytest.raises(CondenseError):
        run_distill(algo, RunSpec("test-walk", out=out, ckpt_every=1))
    with pytest.raises(CondenseError, match="different run"):
        run_distill(make(real, tmp_path, lr=0.2), RunSpec("test-walk", out=out, resume=Path(str(out) + ".ckpt")))
    (tmp_path / "junk.ckpt").write_text("junk")
    with pytest.raises(CondenseError, match="not a readable checkpoint"):
        run_distill(make(real, tmp_path), RunSpec("test-walk", out=out, resume=tmp_path / "junk.ckpt"))


def test_same_seed_same_file_other_seed_other_file(real, tmp_path):
    a = run_distill(make(real, tmp_path, seed=1), RunSpec("test-walk", out=tmp_path / "a.h5"))
    b = run_distill(make(real, tmp_path, seed=1), RunSpec("test-walk", out=tmp_path / "b.h5"))
    c = run_distill(make(real, tmp_path, seed=2), RunSpec("test-walk", out=tmp_path / "c.h5"))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_presets_merge_from_general_to_specific(tmp_path, monkeypatch):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "test-walk.toml").write_text(
        "[cpu]\niters = 5\nlr = 1.0\n[cpu.ipc10]\nlr = 2.0\n[cpu.fashion-mnist]\niters = 7\n"
        "[cpu.fashion-mnist.ipc10]\nlr = 3.0\n")
    monkeypatch.setattr("condense.run.assets_dir", lambda: tmp_path)
    assert preset_values("test-walk", "cpu", "cifar10", 1) == {"iters": 5, "lr": 1.0}
    assert preset_values("test-walk", "cpu", "cifar10", 10) == {"iters": 5, "lr": 2.0}
    assert preset_values("test-walk", "cpu", "fashion-mnist", 10) == {"iters": 7, "lr": 3.0}
    with pytest.raises(CondenseError, match="no preset 'paper'"):
        preset_values("test-walk", "paper", "cifar10", 1)
