import json

import pytest
import torch

from condense.models import build_model
from condense.runtime import make_generator
from condense.synthetic import SetMeta, SyntheticSet
from condense.train import TrainConfig, TrainData, accuracy, lr_at, train_model
from evaluators import retrain
from evaluators.protocols import get_protocol
from evaluators.report import Report, Row
from evaluators.retrain import EvalSettings, evaluate_random, evaluate_set


def synth_from(real, ipc=2, lr=None):
    x, y = real.random_subset(ipc, make_generator(0))
    i = real.info
    meta = SetMeta(i.name, i.num_classes, i.class_names, ipc, i.channels, i.size, i.size, i.mean, i.std,
                   algorithm="random")
    return SyntheticSet(x, y, meta, lr=lr)


def test_training_is_deterministic_for_a_seed_and_learns(real):
    cfg = TrainConfig(epochs=3, batch=64, augment="color_crop_cutout_flip_scale_rotate")
    data = TrainData.real(real)
    nets = []
    for _ in range(2):
        net = build_model("convnet", 1, 10, 28, seed=0, width=16)
        train_model(net, data, cfg, make_generator(5))
        nets.append(net)
    assert all(torch.equal(p, q) for p, q in zip(nets[0].parameters(), nets[1].parameters()))
    assert accuracy(nets[0], real.test_batches()) > 0.5  # the fake classes are easy


def test_schedules_match_the_protocols():
    step = TrainConfig(epochs=1000, schedule="step", milestones=(0.5,), gamma=0.1)
    assert lr_at(step, 0.01, 499) == 0.01 and lr_at(step, 0.01, 500) == pytest.approx(0.001)
    multi = TrainConfig(epochs=100, schedule="step", milestones=(0.2, 0.4, 0.6, 0.8), gamma=0.5)
    assert lr_at(multi, 1.0, 85) == pytest.approx(0.5 ** 4)
    cos = TrainConfig(epochs=10, schedule="cosine")
    assert lr_at(cos, 1.0, 0) == 1.0 and lr_at(cos, 1.0, 5) == pytest.approx(0.5)


def test_soft_targets_and_cutmix_train(real):
    x, y = real.random_subset(2, make_generator(0))
    soft = torch.nn.functional.one_hot(y, 10).float() * 5
    net = build_model("convnet", 1, 10, 28, seed=0, width=8)
    train_model(net, TrainData.tensors(x, soft), TrainConfig(epochs=2, loss="kl", temperature=4.0, cutmix=1.0),
                make_generator(0))
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_evaluator_uses_the_learned_lr(real, monkeypatch):
    seen = []
    real_train = retrain.train_model

    def spy(*args, **kw):
        seen.append(kw["lr"])
        return real_train(*args, **kw)

    monkeypatch.setattr(retrain, "train_model", spy)
    proto = get_protocol("dsa").with_epochs(1)
    evaluate_set(synth_from(real, lr=0.0371), real, EvalSettings(proto, ["convnet"], runs=2, stack=False))
    assert seen == [0.0371, 0.0371]
    seen.clear()
    evaluate_set(synth_from(real), real, EvalSettings(proto, ["convnet"], runs=1))
    assert seen == [0.01]


def test_learned_lr_changes_the_trained_network(real):
    proto = get_protocol("dsa").with_epochs(2)
    a = evaluate_set(synth_from(real, lr=1e-6), real, EvalSettings(proto, ["convnet"], runs=1))[0].accs
    b = evaluate_set(synth_from(real, lr=0.05), real, EvalSettings(proto, ["convnet"], runs=1))[0].accs
    assert a != b


def test_evaluation_is_reproducible_and_runs_differ(real):
    proto = get_protocol("dsa").with_epochs(3)
    s = synth_from(real)
    settings = EvalSettings(proto, ["convnet"], runs=2, seed=3)
    r1 = evaluate_set(s, real, settings)[0].accs
    r2 = evaluate_set(s, real, settings)[0].accs
    assert r1 == r2
    b1 = evaluate_random(real, 2, settings)[0].accs
    assert b1 == evaluate_random(real, 2, settings)[0].accs


def test_dataset_mismatch_is_refused(real):
    from condense.errors import CondenseError

    s = synth_from(real)
    s.meta.dataset = "mnist"
    with pytest.raises(CondenseError, match="distilled from 'mnist'"):
        evaluate_set(s, real, EvalSettings(get_protocol("dsa"), ["convnet"], runs=1))


def test_protocol_is_frozen_hashed_and_reported(real, tmp_path):
    p = get_protocol("dsa")
    assert (p.train.epochs, p.train.batch, p.train.lr, p.train.momentum, p.train.weight_decay, p.runs) == \
           (1000, 256, 0.01, 0.9, 5e-4, 5)
    assert p.train.augment == "color_crop_cutout_flip_scale_rotate" and len(p.hash) == 12
    short = p.with_epochs(2)
    assert short.name == "dsa@2ep" and short.hash == p.hash
    res = evaluate_set(synth_from(real), real, EvalSettings(short, ["convnet"], runs=2))
    report = Report(short, real.info.name, 0, [Row("random", 2, "x.h5", res)])
    report.save_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["protocol"]["name"] == "dsa@2ep" and data["protocol"]["hash"] == p.hash
    assert len(data["rows"][0]["results"][0]["accs"]) == 2
    assert "dsa@2ep" in report.to_markdown() and "± " in report.to_markdown()


def test_compiled_training_matches_eager_training(real):
    x, y = real.random_subset(2, make_generator(0))
    params = []
    for compile in (False, True):
        net = build_model("convnet", 1, 10, 28, seed=0, width=8)
        train_model(net, TrainData.tensors(x, y), TrainConfig(epochs=3, batch=8), make_generator(1), compile=compile)
        params.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.allclose(params[0], params[1], atol=1e-4)


def test_selection_modes_and_their_labels(real):
    proto = get_protocol("dsa").with_epochs(4)
    s = synth_from(real)
    final = evaluate_set(s, real, EvalSettings(proto, ["convnet"], runs=2, every=1))[0]
    best = evaluate_set(s, real, EvalSettings(proto, ["convnet"], runs=2, select="test-best", every=1))[0]
    assert best.final_accs == final.accs  # the same training, only the reported number differs
    assert all(b >= f for b, f in zip(best.accs, best.final_accs))
    rest, val = real.holdout(4, make_generator(0))
    assert val[0].shape == (40, 1, 28, 28) and rest.count(0) == real.count(0) - 4
    held = set(val[1].tolist())
    assert held == set(range(10)) and rest.train.labels.numel() == real.train.labels.numel() - 40
    chosen = evaluate_set(s, rest, EvalSettings(proto, ["convnet"], runs=2, select="val", every=1, val=val))[0]
    assert all(0 <= a <= 1 for a in chosen.accs)
    report = Report(proto, real.info.name, 0, [Row("x", 2, "x.h5", [best], "test-best")])
    assert "BEST TEST ACCURACY" in report.title() and "[test-best]" in report.to_markdown()


def test_named_protocols_are_the_published_recipes():
    dc, mtt, dd, nc = (get_protocol(n) for n in ("dc", "mtt", "datadam", "ncfm"))
    assert (dc.train.epochs, dc.train.augment, dc.use_learned_lr) == (300, "none", False)
    assert mtt.use_learned_lr and mtt.train.epochs == 1000
    assert (dd.arch, dd.train.epochs, dd.train.batch) == ("convnetbn", 1800, 64)
    assert (nc.train.optimizer, nc.train.lr, nc.train.epochs, nc.train.batch, nc.train.cutmix, nc.runs) == \
        ("adamw", 1e-3, 2000, 128, 0.5, 10)
    assert nc.train.milestones == (0.2, 0.4, 0.6, 0.8) and nc.train.gamma == 0.5
    assert len({p.hash for p in (dc, mtt, dd, nc, get_protocol("dsa"))}) == 5


def test_shortened_protocol_says_it_is_modified():
    full = get_protocol("dsa")
    short = full.with_epochs(300)
    assert short.name == "dsa@300ep" and short.train.epochs == 300
    assert "MODIFIED: 300 epochs instead of 1000" in short.description
    assert full.with_epochs(None) is full and full.with_epochs(1000) is full


@pytest.mark.parametrize("arch,cfg", [
    ("convnet", TrainConfig(epochs=2, batch=16, cutmix=0.5)),
    ("convnetbn", TrainConfig(epochs=2, batch=16, optimizer="adamw", lr=1e-3, weight_decay=0.01)),
])
def test_stacked_runs_train_exactly_like_separate_runs(arch, cfg):
    """Runs trained together as a ConvNetStack end where each run trained alone ends (same seeds)."""
    from evaluators.stack import ConvNetStack
    from condense.train import accuracy_runs, train_runs
    g = torch.Generator().manual_seed(0)
    x, y, xt = torch.randn(40, 1, 28, 28, generator=g), torch.arange(40) % 10, torch.randn(20, 1, 28, 28, generator=g)
    alone = []
    for r in range(3):
        net = build_model(arch, 1, 10, 28, seed=r, width=8)
        alone.append(train_model(net, TrainData.tensors(x, y), cfg, make_generator(10 + r)).eval())
    stack = ConvNetStack([build_model(arch, 1, 10, 28, seed=r, width=8) for r in range(3)])
    train_runs(stack, [TrainData.tensors(x, y)] * 3, cfg, [make_generator(10 + r) for r in range(3)])
    with torch.no_grad():
        together = stack.eval()(xt.expand(3, *xt.shape))
        for r in range(3):  # logits agree (Adam's updates of biases that a norm cancels may differ: irrelevant)
            assert torch.allclose(together[r], alone[r](xt), atol=5e-3)
            back = stack.copy_run_into(r, build_model(arch, 1, 10, 28, seed=99, width=8)).eval()
            assert torch.allclose(back(xt), alone[r](xt), atol=5e-3)
    accs = accuracy_runs(stack, [(xt, torch.arange(20) % 10)])
    assert accs == [accuracy(m, [(xt, torch.arange(20) % 10)]) for m in alone]


def test_stacked_evaluation_matches_one_run_at_a_time(real):
    proto = get_protocol("dsa").with_epochs(2)
    s = synth_from(real)
    kw = dict(runs=3, select="test-best", every=1)
    a = evaluate_set(s, real, EvalSettings(proto, ["convnet"], stack=True, **kw))[0]
    b = evaluate_set(s, real, EvalSettings(proto, ["convnet"], stack=False, **kw))[0]
    assert a.accs == pytest.approx(b.accs, abs=0.02) and a.final_accs == pytest.approx(b.final_accs, abs=0.02)
    ra = evaluate_random(real, 1, EvalSettings(proto.with_epochs(1), ["convnet"], runs=2, stack=True))[0]
    rb = evaluate_random(real, 1, EvalSettings(proto.with_epochs(1), ["convnet"], runs=2, stack=False))[0]
    assert len(ra.accs) == 2 and ra.accs == pytest.approx(rb.accs, abs=0.02)


def test_lr_grid_picks_the_lr_on_validation_not_test(real):
    from condense.errors import CondenseError
    proto = get_protocol("dsa").with_epochs(2)
    vx, vy = real.random_subset(3, make_generator(7))
    # Every run is trained at both lrs; the reported lr is the one with the best mean validation accuracy
    # (the first in grid order among equals), and test accuracy plays no part in the choice.
    settings = EvalSettings(proto, ["convnet"], runs=2, select="val", every=1, val=(vx, vy), lr_grid=[1e-5, 0.05])
    res = evaluate_set(synth_from(real), real, settings)[0]
    assert set(res.lr_grid_val) == {1e-5, 0.05} and len(res.val_accs) == 2
    assert res.lr == max(res.lr_grid_val, key=lambda k: (res.lr_grid_val[k], -[1e-5, 0.05].index(k)))
    with pytest.raises(CondenseError, match="needs --select val"):
        EvalSettings(proto, ["convnet"], runs=1, lr_grid=[0.01])


def test_finished_runs_are_cached_so_an_interrupted_evaluation_resumes(real, tmp_path, monkeypatch):
    from evaluators.retrain import RunCache
    proto = get_protocol("dsa").with_epochs(1)
    cache = RunCache(tmp_path / "evals")
    s = synth_from(real)
    trained = []
    real_tt = retrain.train_and_test

    def spy(data, real_, settings, arch, lr, tag, runs):
        trained.extend(runs)
        return real_tt(data, real_, settings, arch, lr, tag, runs)

    monkeypatch.setattr(retrain, "train_and_test", spy)
    first = evaluate_set(s, real, EvalSettings(proto, ["convnet"], runs=2, stack=False, cache=cache))[0]
    assert trained == [0, 1]
    # "interrupted" after run 0: drop run 1's file; the rerun trains run 1 only, and adds run 2
    files = sorted((tmp_path / "evals").glob("*.json"), key=lambda p: p.stat().st_mtime)
    files[-1].unlink()
    trained.clear()
    again = evaluate_set(s, real, EvalSettings(proto, ["convnet"], runs=3, stack=False, cache=cache))[0]
    assert trained == [1, 2] and again.accs[:2] == first.accs
    trained.clear()
    evaluate_set(s, real, EvalSettings(proto.with_epochs(2), ["convnet"], runs=1, stack=False, cache=cache))
    assert trained == [0]  # another protocol is another key
