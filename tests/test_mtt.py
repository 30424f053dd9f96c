"""Trajectory matching: exact gradients in both memory modes, alpha, options, experts."""

import pytest
import torch

from algorithms.base import Context, config_from
from algorithms.mtt import MTT, kmeans
from condense import fast
from condense.artifacts import Artifacts, expert_recipe


class FakeExperts(Artifacts):
    """Expert trajectories made by small random walks from a seeded initialization (no training)."""

    def expert(self, real, arch, recipe, index):
        from condense.models import FlatParams, build_model

        net = build_model(arch, real.info.channels, real.info.num_classes, real.info.size, seed=index)
        theta = FlatParams(net).flatten(net)
        g = torch.Generator().manual_seed(index)
        steps = [theta]
        for _ in range(recipe.epochs):
            steps.append(steps[-1] + 0.01 * torch.randn(theta.shape, generator=g))
        return torch.stack(steps)


def make(real, tmp_path, **over):
    values = {"ipc": 1, "iters": 2, "num_experts": 2, "syn_steps": 3, "expert_epochs": 2, "max_start_epoch": 2,
              "lr_img": 10.0, "lr_teacher": 0.01, **over}
    a = MTT(config_from(MTT, values), real, Context(seed=0, artifacts=FakeExperts(tmp_path)))
    a.init()
    return a


def grads_of(real, tmp_path, memory, fast_paths=True, **over):
    a = make(real, tmp_path, memory=memory, **over)
    torch.manual_seed(0)
    a.ctx.generator.manual_seed(5)
    loss = None
    # one gradient computation, without the optimizer step
    expert = a.experts[0]
    start = expert[1]
    plan = a.plan()
    targets = a.targets(expert, 0)
    from algorithms import mtt

    with fast.use(fast_paths):
        loss = (mtt.unroll if memory == "unroll" else mtt.recompute)(a, start, plan, targets, 1.3).sum()
    out = {"images": a.images.grad.clone(), "lr": a.log_lr.grad.clone(), "loss": float(loss)}
    if a.soft is not None:
        out["soft"] = a.soft.grad.clone()
    return out


@pytest.mark.parametrize("over", [{}, {"inner_momentum": 0.9, "middle_loss": True},
                                  {"soft_labels": True, "batch_syn": 4}])
def test_recompute_gives_the_same_gradients_as_unroll(real, tmp_path, over):
    a = grads_of(real, tmp_path, "unroll", **over)
    b = grads_of(real, tmp_path, "recompute", **over)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    scale = a["images"].abs().max()
    assert scale > 0
    assert torch.allclose(a["images"], b["images"], atol=1e-5 * scale, rtol=1e-4)
    assert torch.allclose(a["lr"], b["lr"], rtol=1e-4, atol=1e-10)
    if "soft" in a:
        assert torch.allclose(a["soft"], b["soft"], rtol=1e-4, atol=1e-6 * a["soft"].abs().max())


def test_fast_convolutions_give_the_same_gradients(real, tmp_path):
    """The fast paths (higher-order convolutions, pooling) against the plain ones, across memory modes."""
    a = grads_of(real, tmp_path, "unroll", fast_paths=False)
    b = grads_of(real, tmp_path, "recompute", fast_paths=True)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert torch.allclose(a["images"], b["images"], atol=1e-5 * a["images"].abs().max(), rtol=1e-4)
    assert torch.allclose(a["lr"], b["lr"], rtol=1e-4, atol=1e-10)


def test_alpha_is_learned_saved_and_bounded(real, tmp_path):
    a = make(real, tmp_path, lr_lr=1e3, lr_bounds=(1e-3, 0.02))
    seen = []
    for i in range(3):
        seen.append(float(a.step(i)["lr"]))
        assert 1e-3 - 1e-9 <= seen[-1] <= 0.02 + 1e-9
    assert seen[-1] != pytest.approx(0.01)  # moved from lr_teacher: with lr_lr 1e3 it runs into a bound
    assert min(abs(seen[-1] - 1e-3), abs(seen[-1] - 0.02)) < 1e-9
    s = a.synthetic()
    s.save(tmp_path / "m.h5")
    import condense

    assert condense.load(tmp_path / "m.h5").lr == pytest.approx(seen[-1])  # the evaluator trains with it
    assert s.meta.algorithm == "mtt" and s.images.shape == (10, 1, 28, 28)


def test_steps_change_images_and_resume_exactly(real, tmp_path):
    whole = make(real, tmp_path, memory="recompute", weight_perturb=1.0, balance_loss=True)
    for i in range(3):
        whole.step(i)
    half = make(real, tmp_path, memory="recompute", weight_perturb=1.0, balance_loss=True)
    half.step(0)
    state = half.state_dict()
    again = make(real, tmp_path, memory="recompute", weight_perturb=1.0, balance_loss=True)
    again.load_state_dict(state)
    for i in (1, 2):
        again.step(i)
    assert torch.allclose(again.images, whole.images, atol=1e-6)
    assert float(again.log_lr.detach()) == pytest.approx(float(whole.log_lr.detach()))


def test_initializations_work_for_any_ipc(real, tmp_path):
    for init in ("kmeans", "correct", "noise"):
        for ipc in (1, 3):
            a = make(real, tmp_path, init=init, ipc=ipc)
            assert a.images.shape == (10 * ipc, 1, 28, 28)
    soft = make(real, tmp_path, soft_labels=True, init="correct")
    assert soft.soft.shape == (10, 10) and soft.synthetic().soft_labels.shape == (10, 10)


def test_window_grows_and_gate_skips(real, tmp_path):
    a = make(real, tmp_path, max_start_epoch=6, max_start_epoch_start=2, window_growth_iters=10)
    early = {a.start_epoch(0) for _ in range(40)}
    late = {a.start_epoch(10) for _ in range(60)}
    assert max(early) <= 1 and max(late) >= 4
    gated = make(real, tmp_path, loss_gate=1e-9)
    before = gated.images.detach().clone()
    gated.step(0)
    assert torch.equal(before, gated.images)
    assert "skipped 1 of" in gated.notes()[0]
    # with the intermediate loss on, the gate still reads the final point's normalized loss (about 1
    # here, where the sum of both points is about 2), so a gate of 1.5 lets the step through
    both = make(real, tmp_path, loss_gate=1.5, middle_loss=True, syn_steps=2)
    before = both.images.detach().clone()
    logs = both.step(0)
    assert float(logs["loss"]) > 1.5 and not torch.equal(before, both.images) and both.skipped == 0


def test_a_gate_that_refuses_everything_is_reported_and_kept_in_the_file(real, tmp_path, capsys):
    import condense
    from condense.run import RunSpec, run_distill

    out = tmp_path / "gated.h5"
    run_distill(make(real, tmp_path, loss_gate=1e-9), RunSpec("mtt", ipc=1, out=out))
    assert "skipped 2 of 2" in capsys.readouterr().err
    assert "No iteration updated the set" in condense.load(out).meta.config["notes"][0]


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = (torch.tensor([0.0, 0.0]), torch.tensor([5.0, 5.0]))
    x = torch.cat([torch.randn(30, 2, generator=g) * 0.1 + c for c in centres])
    c = kmeans(x, 2, g)
    assert sorted(round(float(v)) for v in c[:, 0]) == [0, 5]


def test_expert_recipes_and_real_expert_artifact(real, tmp_path):
    smooth = expert_recipe("smooth", 3)
    assert (smooth.momentum, smooth.weight_decay, smooth.clip_epochs, smooth.grad_penalty) == (0.9, 1e-3, 10, 2.0)
    store = Artifacts(tmp_path)
    traj = store.expert(real, "convnet", expert_recipe("mtt", 1).with_(batch=64), 0)
    assert traj.shape[0] == 2 and not torch.equal(traj[0], traj[1])
    assert torch.equal(store.expert(real, "convnet", expert_recipe("mtt", 1).with_(batch=64), 0), traj)
    g = store.expert(real, "convnet", smooth.with_(epochs=1, batch=64), 0)
    assert g.shape == traj.shape and torch.equal(g[0], traj[0])  # same initialization (seed 0) ...
    assert not torch.equal(g[1], traj[1])  # ... trained differently (momentum, clipping loss, penalty)


@pytest.mark.parametrize("bad, words", [({"loss_gate": -1.0}, "loss_gate"), ({"memory": "foo"}, "memory"),
                                        ({"lr_teacher": 2.0}, "lr_teacher")])
def test_out_of_range_settings_are_one_clear_error(real, tmp_path, bad, words):
    from condense.errors import CondenseError

    with pytest.raises(CondenseError, match=words):
        make(real, tmp_path, **bad)
