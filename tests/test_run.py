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


def test_the_output_is_checked_before_any_work(real, tmp_path):
    algo = make(real, tmp_path)
    started = []
    algo.init = lambda: started.append(1)
    with pytest.raises(CondenseError, match="is a folder"):
        run_distill(algo, RunSpec("test-walk", out=tmp_path))
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if not os.access(locked, os.W_OK):  # (root may write anywhere)
            with pytest.raises(CondenseError, match="not writable"):
                run_distill(algo, RunSpec("test-walk", out=locked / "x.h5"))
    finally:
        locked.chmod(0o755)
    ckpt = tmp_path / "same.h5"
    ckpt.write_bytes(b"x")
    with pytest.raises(CondenseError, match="also an input"):
        run_distill(algo, RunSpec("test-walk", out=ckpt, resume=ckpt))
    assert not started


def test_two_runs_never_write_the_same_output(real, tmp_path):
    from condense.io import exclusive

    out = tmp_path / "a.h5"
    with exclusive(out):
        with pytest.raises(CondenseError, match="Another condense process"):
            run_distill(make(real, tmp_path), RunSpec("test-walk", out=out))
    run_distill(make(real, tmp_path), RunSpec("test-walk", out=out))  # free again
    assert out.exists() and not list(tmp_path.glob(".*lock"))


def test_a_full_disk_keeps_the_progress_and_the_previous_file(real, tmp_path, monkeypatch, capsys):
    import errno

    out = tmp_path / "a.h5"
    first = run_distill(make(real, tmp_path), RunSpec("test-walk", out=out))
    before = out.read_bytes()
    real_save = torch.save

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)  # every checkpoint fails: the run goes on and finishes
    again = run_distill(make(real, tmp_path), RunSpec("test-walk", out=tmp_path / "b.h5", ckpt_every=2))
    assert torch.equal(again.images, first.images) and "disk is full" in capsys.readouterr().err
    monkeypatch.setattr(torch, "save", real_save)
    import h5py

    monkeypatch.setattr(h5py.File, "create_dataset", full)  # now the final write fails
    with pytest.raises(CondenseError, match="the disk is full; the previous file is unchanged"):
        run_distill(make(real, tmp_path, seed=1), RunSpec("test-walk", out=out))
    assert out.read_bytes() == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_diverging_run_stops_naming_the_iteration_and_keeps_the_last_finite_checkpoint(real, tmp_path):
    algo = make(real, tmp_path, lr=1e30, iters=12)  # the descent explodes to inf and NaN within a few steps
    out = tmp_path / "d.h5"
    with pytest.raises(CondenseError, match=r"diverged: .* at iteration \d+ of 12") as e:
        run_distill(algo, RunSpec("test-walk", out=out, ckpt_every=1))
    assert not out.exists()
    ck = torch.load(Path(str(out) + ".ckpt"), weights_only=True)
    assert f"holds iteration {ck['iteration']}" in str(e.value)
    assert torch.isfinite(ck["state"]["x"]).all()
