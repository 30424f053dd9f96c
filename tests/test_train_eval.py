import json

import pytest
import torch

from condense.models import build_model
from condense.runtime import make_generator
from condense.synthetic import SetMeta, SyntheticSet
from condense.train import TrainConfig, TrainData, accuracy, loss_fn, lr_at, total_epochs, train_model
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
    cfg = TrainConfig(epochs=6, loss="kl", temperature=4.0, cutmix=1.0, augment="none", batch=10)
    before = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        start = loss_fn(cfg, net(x), soft)
    train_model(net, TrainData.tensors(x, soft), cfg, make_generator(0))
    with torch.no_grad():
        end = loss_fn(cfg, net(x), soft)
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert end < start  # it learned the soft targets (through the mixed batches)


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


def test_evaluation_is_reproducible_and_runs_differ(real, monkeypatch):
    proto = get_protocol("dsa").with_epochs(3)
    s = synth_from(real)
    settings = EvalSettings(proto, ["convnet"], runs=2, seed=3)
    seeds = []
    for name in ("build_model", "make_generator"):
        original = getattr(retrain, name)
        monkeypatch.setattr(retrain, name, lambda *a, _f=original, **k: seeds.append(k.get("seed", a[-1])) or _f(*a, **k))
    r1 = evaluate_set(s, real, settings)[0].accs
    assert len(set(seeds)) == 4  # two runs: each its own initialization and its own data stream
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


def test_selection_modes_report_what_they_say(real, monkeypatch):
    """final: the last epoch; test-best: the best test checkpoint (labelled); val: the test accuracy at
    the epoch with the best validation accuracy. Checkpoint accuracies are scripted, so each mode
    must pick a different number."""
    proto = get_protocol("dsa").with_epochs(4)
    s = synth_from(real)
    final = evaluate_set(s, real, EvalSettings(proto, ["convnet"], runs=2, every=1))[0]
    best = evaluate_set(s, real, EvalSettings(proto, ["convnet"], runs=2, select="test-best", every=1))[0]
    assert best.final_accs == final.accs  # the same training, only the reported number differs

    def script(values):
        it = iter(values * 2)  # two runs
        monkeypatch.setattr(retrain, "accuracy", lambda model, batches: next(it))

    n = total_epochs(proto.train)  # checkpoints: one per epoch (the DSA schedule runs epochs + 1)
    tests, vals = [0.3, 0.9] + [0.5] * (n - 3) + [0.4], [0.8, 0.2] + [0.1] * (n - 3) + [0.3]
    script(tests)
    best = evaluate_set(s, real, EvalSettings(proto, ["convnet"], runs=2, select="test-best", every=1,
                                              stack=False))[0]
    assert best.accs == [0.9, 0.9] and best.final_accs == [0.4, 0.4] and best.test_best_accs == [0.9, 0.9]
    rest, val = real.holdout(4, make_generator(0))
    assert val[0].shape == (40, 1, 28, 28) and rest.count(0) == real.count(0) - 4
    held = set(val[1].tolist())
    assert held == set(range(10)) and rest.train.labels.numel() == real.train.labels.numel() - 40
    script([a for pair in zip(vals, tests) for a in pair])  # each checkpoint: validation, then test
    chosen = evaluate_set(s, rest, EvalSettings(proto, ["convnet"], runs=2, select="val", every=1, val=val,
                                                stack=False))[0]
    assert chosen.accs == [0.3, 0.3] and chosen.val_accs == [0.8, 0.8] and chosen.final_accs == [0.4, 0.4]
    report = Report(proto, real.info.name, 0, [Row("x", 2, "x.h5", [best], "test-best")])
    assert "BEST TEST ACCURACY" in report.title() and "[test-best]" in report.to_markdown()


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


def test_lr_grid_picks_the_lr_on_validation_not_test(real, monkeypatch):
    """Every run is trained at each grid lr; the reported lr has the best mean validation accuracy even
    where the test set favours another (checkpoint accuracies scripted: validation, then test)."""
    from condense.errors import CondenseError
    proto = get_protocol("dsa").with_epochs(2)
    vx, vy = real.random_subset(3, make_generator(7))
    n = 2 * total_epochs(proto.train)  # checkpoints per lr: 2 runs x every epoch
    it = iter([0.6, 0.1] * n + [0.4, 0.9] * n)  # lr 1e-5 first, then lr 0.05
    monkeypatch.setattr(retrain, "accuracy", lambda model, batches: next(it))
    settings = EvalSettings(proto, ["convnet"], runs=2, select="val", every=1, val=(vx, vy), lr_grid=[1e-5, 0.05],
                            stack=False)
    res = evaluate_set(synth_from(real), real, settings)[0]
    assert res.lr_grid_val == {1e-5: pytest.approx(0.6), 0.05: pytest.approx(0.4)}
    assert res.lr == 1e-5 and res.accs == [0.1, 0.1] and res.val_accs == [0.6, 0.6]
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


@pytest.mark.parametrize("stack", [False, True])
def test_a_diverged_run_is_reported_as_diverged_not_as_chance_accuracy(real, tmp_path, stack):
    proto = get_protocol("dsa").with_epochs(2)
    res = evaluate_set(synth_from(real, lr=1e30), real, EvalSettings(proto, ["convnet"], runs=2, stack=stack))[0]
    assert res.diverged == 2 and res.mean != res.mean  # no mean over zero finished runs
    report = Report(proto, real.info.name, 0, [Row("x", 2, "x.h5", [res])])
    assert "2 runs diverged" in report.to_markdown()
    report.save_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())["rows"][0]["results"][0]
    assert data["accs"] == [None, None] and data["diverged"] == 2 and data["mean"] is None
    fine = evaluate_set(synth_from(real), real, EvalSettings(proto, ["convnet"], runs=2, stack=stack))[0]
    assert fine.diverged == 0 and fine.mean == fine.mean


def test_the_evaluation_cache_key_changes_with_the_code_and_the_test_split(real, monkeypatch):
    from dataclasses import replace as dreplace

    from condense import io
    from condense.data import Split

    settings = EvalSettings(get_protocol("dsa"), ["convnet"], runs=1)
    before = retrain._run_parts(settings, "data", "convnet", 0.01, "eval")
    monkeypatch.setattr(io, "_code", ["0.1.0+another-source-tree"])
    assert retrain._run_parts(settings, "data", "convnet", 0.01, "eval")["condense"] != before["condense"]
    flipped = dreplace(real, test=Split(real.test.images.flip(0), real.test.labels.flip(0)))
    assert retrain._pre_digest(flipped) != retrain._pre_digest(real)
