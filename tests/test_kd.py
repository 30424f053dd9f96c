"""The distillation losses (condense.kd), each against a value computed by hand on a tiny batch, and
their wiring: protocols name them, --kd-loss replaces them, the training loop hands them the ground truth."""
from __future__ import annotations

import math

import pytest
import torch

from condense.errors import CondenseError
from condense.kd import LOSSES
from condense.train import TrainConfig, TrainData, loss_fn, train_model

S = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]])  # student logits, 2 images x 3 classes
T = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, -1.0]])  # teacher logits
Y = torch.tensor([0, 1])  # ground truth


def softmax(row: list[float], tau: float = 1.0) -> list[float]:
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def hand_kl(tau: float) -> float:
    total = 0.0
    for s, t in zip(S.tolist(), T.tolist()):
        ps, pt = softmax(s, tau), softmax(t, tau)
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    return total / 2


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"loss": "kl", "temperature": 2.0, "kl_t2": False, **kw})


def test_kl_with_and_without_t2():
    assert LOSSES.get("kl")(cfg(), S, T, [(1.0, Y)]).item() == pytest.approx(hand_kl(2.0), rel=1e-5)
    assert LOSSES.get("kl")(cfg(kl_t2=True), S, T, [(1.0, Y)]).item() == pytest.approx(4 * hand_kl(2.0), rel=1e-5)


def test_soft_cross_entropy_is_kl_plus_the_target_entropy():
    entropy = sum(-q * math.log(q) for t in T.tolist() for q in softmax(t, 2.0)) / 2
    got = LOSSES.get("sce")(cfg(), S, T, [(1.0, Y)]).item()
    assert got == pytest.approx(hand_kl(2.0) + entropy, rel=1e-5)


def test_mse_gt_is_the_logit_mse_plus_weighted_cross_entropy():
    mse = sum((a - b) ** 2 for s, t in zip(S.tolist(), T.tolist()) for a, b in zip(s, t)) / 6
    ce = -(math.log(softmax(S[0].tolist())[0]) + math.log(softmax(S[1].tolist())[1])) / 2
    got = LOSSES.get("mse_gt")(cfg(gt_weight=0.5), S, T, [(1.0, Y)]).item()
    assert got == pytest.approx(mse + 0.5 * ce, rel=1e-5)
    # mixed ground truth: the cross-entropy term is the lambda-weighted sum over the two partners
    ce_other = -(math.log(softmax(S[0].tolist())[2]) + math.log(softmax(S[1].tolist())[0])) / 2
    mixed = LOSSES.get("mse_gt")(cfg(gt_weight=0.5), S, T, [(0.75, Y), (0.25, torch.tensor([2, 0]))]).item()
    assert mixed == pytest.approx(mse + 0.5 * (0.75 * ce + 0.25 * ce_other), rel=1e-5)


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_dist_is_one_minus_pearson_between_and_within_classes():
    ps = [softmax(s, 2.0) for s in S.tolist()]
    pt = [softmax(t, 2.0) for t in T.tolist()]
    inter = 1 - sum(pearson(a, b) for a, b in zip(ps, pt)) / 2
    intra = 1 - sum(pearson([r[k] for r in ps], [r[k] for r in pt]) for k in range(3)) / 3
    got = LOSSES.get("dist")(cfg(dist_beta=1.0, dist_gamma=2.0), S, T, [(1.0, Y)]).item()
    assert got == pytest.approx(4 * (inter + 2 * intra), rel=1e-5)


def test_dkd_splits_the_kl_into_target_and_non_target_parts():
    tau, total = 2.0, 0.0
    for s, t, y in zip(S.tolist(), T.tolist(), Y.tolist()):
        ps, pt = softmax(s, tau), softmax(t, tau)
        bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
        tckd = sum(q * math.log(q / p) for p, q in zip(bs, bt))
        rest = [k for k in range(3) if k != y]
        ns, nt = softmax([s[k] for k in rest], tau), softmax([t[k] for k in rest], tau)
        nckd = sum(q * math.log(q / p) for p, q in zip(ns, nt))
        total += 1.0 * tckd + 8.0 * nckd
    got = LOSSES.get("dkd")(cfg(), S, T, [(1.0, Y)]).item()
    assert got == pytest.approx(tau ** 2 * total / 2, rel=1e-4)


def test_kd_losses_need_the_ground_truth_only_where_they_use_it():
    for name in ("kl", "sce", "dist"):
        assert torch.isfinite(loss_fn(cfg(loss=name), S, T))
    assert torch.isfinite(loss_fn(cfg(loss="mse_gt", gt_weight=0.0), S, T))
    for name in ("dkd", "mse_gt"):
        with pytest.raises(CondenseError, match="ground-truth classes"):
            loss_fn(cfg(loss=name), S, T)
    with pytest.raises(CondenseError, match="Unknown loss"):
        loss_fn(cfg(loss="l2"), S, T)


def test_the_training_loop_hands_the_mixed_ground_truth_to_the_loss(monkeypatch):
    """Under MixUp with soft targets, the loss gets the images' classes and their partners' with lambda."""
    import condense.train as tr
    from condense.models import build_model
    from condense.runtime import make_generator

    x, z, c = torch.randn(8, 1, 28, 28), torch.randn(8, 10), torch.arange(8) % 10
    seen, draws = [], []
    real_mixup, real_loss = tr.mixup, tr.loss_fn
    monkeypatch.setattr(tr, "mixup", lambda *a: draws.append(real_mixup(*a)) or draws[-1])
    monkeypatch.setattr(tr, "loss_fn", lambda conf, s, t, gt=None: seen.append(gt) or real_loss(conf, s, t, gt))
    conf = TrainConfig(epochs=1, batch=8, optimizer="sgd", lr=0.0, weight_decay=0, augment="none", mixup=0.8,
                       loss="mse_gt", temperature=1.0)
    train_model(build_model("convnet", 1, 10, 28, seed=0, width=8), TrainData.tensors(x, z, c), conf, make_generator(0))
    (_, _, _, lam, perm), = draws
    (gt,) = seen
    (_, mine), (_, partners) = gt  # the batch's classes (in the shuffled order) and their partners'
    assert [w for w, _ in gt] == [lam, 1 - lam] and sorted(mine.tolist()) == sorted(c.tolist())
    assert torch.equal(partners, mine[perm]) and not torch.equal(partners, mine)


def test_kd_loss_option_renames_the_protocol_and_refuses_hard_label_protocols():
    from evaluators.protocols import get_protocol

    p = get_protocol("kd-static").with_loss("dkd")
    assert p.name == "kd-static+dkd" and p.train.loss == "dkd" and "MODIFIED" in p.description
    assert get_protocol("kd-static").with_loss("kl") is get_protocol("kd-static")
    with pytest.raises(CondenseError, match="hard labels"):
        get_protocol("dsa").with_loss("kl")
    with pytest.raises(CondenseError, match="Unknown loss"):
        get_protocol("kd-sre2l").with_loss("nope")


@pytest.mark.parametrize("protocol", ["kd-static", "kd-sre2l"])
@pytest.mark.parametrize("loss", ["sce", "mse_gt", "dist", "dkd"])
def test_every_kd_loss_trains_a_set_and_the_random_baseline_under_both_soft_modes(real, protocol, loss):
    from condense.models import build_model
    from condense.runtime import make_generator
    from condense.synthetic import SetMeta, SyntheticSet
    from evaluators.protocols import get_protocol
    from evaluators.retrain import EvalSettings, evaluate_random, evaluate_set
    from evaluators.softlabel import Teacher

    x, y = real.random_subset(2, make_generator(0))
    i = real.info
    s = SyntheticSet(x, y, SetMeta(i.name, i.num_classes, i.class_names, 2, i.channels, i.size, i.size, i.mean, i.std))
    teacher = Teacher([build_model("convnet", 1, 10, 28, seed=3, width=8)], {"members": "test"})
    settings = EvalSettings(get_protocol(protocol).with_epochs(1).with_loss(loss), ["convnet"], runs=1, teacher=teacher)
    for res in (evaluate_set(s, real, settings)[0], evaluate_random(real, 2, settings)[0]):
        assert len(res.accs) == 1 and 0.0 <= res.accs[0] <= 1.0
