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
from evaluators.retrain import evaluate_random, evaluate_set


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
    evaluate_set(synth_from(real, lr=0.0371), real, proto, ["convnet"], runs=2)
    assert seen == [0.0371, 0.0371]
    seen.clear()
    evaluate_set(synth_from(real), real, proto, ["convnet"], runs=1)
    assert seen == [0.01]


def test_learned_lr_changes_the_trained_network(real):
    proto = get_protocol("dsa").with_epochs(2)
    a = evaluate_set(synth_from(real, lr=1e-6), real, proto, ["convnet"], runs=1)[0].accs
    b = evaluate_set(synth_from(real, lr=0.05), real, proto, ["convnet"], runs=1)[0].accs
    assert a != b


def test_evaluation_is_reproducible_and_runs_differ(real):
    proto = get_protocol("dsa").with_epochs(3)
    s = synth_from(real)
    r1 = evaluate_set(s, real, proto, ["convnet"], runs=2, seed=3)[0].accs
    r2 = evaluate_set(s, real, proto, ["convnet"], runs=2, seed=3)[0].accs
    assert r1 == r2
    b1 = evaluate_random(real, 2, proto, ["convnet"], runs=2, seed=3)[0].accs
    assert b1 == evaluate_random(real, 2, proto, ["convnet"], runs=2, seed=3)[0].accs


def test_dataset_mismatch_is_refused(real):
    from condense.errors import CondenseError

    s = synth_from(real)
    s.meta.dataset = "mnist"
    with pytest.raises(CondenseError, match="distilled from 'mnist'"):
        evaluate_set(s, real, get_protocol("dsa"), ["convnet"], runs=1)


def test_protocol_is_frozen_hashed_and_reported(real, tmp_path):
    p = get_protocol("dsa")
    assert (p.train.epochs, p.train.batch, p.train.lr, p.train.momentum, p.train.weight_decay, p.runs) == \
           (1000, 256, 0.01, 0.9, 5e-4, 5)
    assert p.train.augment == "color_crop_cutout_flip_scale_rotate" and len(p.hash) == 12
    short = p.with_epochs(2)
    assert short.name == "dsa@2ep" and short.hash == p.hash
    res = evaluate_set(synth_from(real), real, short, ["convnet"], runs=2)
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
