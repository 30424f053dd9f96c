"""Soft-label protocols: MixUp, random resized crop, mode M (teachers see the student's batch),
mode S (stored or teacher-made static labels), and their wiring into evaluation."""
import pytest
import torch

from condense.augment import DSA
from condense.models import build_model
from condense.runtime import make_generator
from condense.synthetic import SetMeta, SyntheticSet
from condense.train import TrainConfig, TrainData, mixup, train_model
from evaluators.protocols import get_protocol
from evaluators.retrain import EvalSettings, evaluate_random, evaluate_set
from evaluators.softlabel import Teacher


def test_mixup_mixes_images_with_one_lambda_and_is_seeded():
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    a = mixup(x, y, make_generator(0), 0.8)
    b = mixup(x, y, make_generator(0), 0.8)
    xm, ya, yb, lam, perm = a
    assert lam == b[3] and torch.equal(xm, b[0]) and torch.equal(ya, y)
    assert torch.equal(yb, perm)  # labels are 0..5, so the partner labels are the permutation itself
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm])
    # lambda ~ Beta(alpha, alpha): small alpha puts it near 0 or 1, alpha = 1 is uniform (mean 1/2)
    g = make_generator(1)
    near_ends = [min(l, 1 - l) < 0.05 for l in (mixup(x, y, g, 0.1)[3] for _ in range(400))]
    uniform = torch.tensor([mixup(x, y, g, 1.0)[3] for _ in range(400)])
    assert sum(near_ends) > 200 and abs(float(uniform.mean()) - 0.5) < 0.05


def test_random_resized_crop_stays_inside_the_image_and_differs_per_sample():
    aug = DSA("rrc")
    p = aug.sample(64, make_generator(1), 32)
    wh, centre = p.ops[0][1]["wh"], p.ops[0][1]["centre"]
    assert (wh <= 1).all() and (wh[:, 0] * wh[:, 1] >= 0.08 * 0.99).all()
    assert ((centre.abs() + wh) <= 1 + 1e-6).all()  # the box never leaves the image: no zero padding
    flat = torch.full((64, 1, 32, 32), 0.7)
    assert torch.allclose(aug(flat, p), flat, atol=1e-5)
    ramp = torch.linspace(0, 1, 32).expand(64, 1, 32, 32)
    out = aug(ramp, p)
    assert out.std(0).mean() > 0.01  # different crops per sample


class Recorder(torch.nn.Module):
    """A network that remembers the inputs it saw."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.net(x)


def test_mode_m_teacher_labels_exactly_the_batch_the_student_sees():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 28, 28, generator=g), torch.arange(20) % 10
    student = Recorder(build_model("convnet", 1, 10, 28, seed=0, width=8))
    teacher = Recorder(build_model("convnet", 1, 10, 28, seed=1, width=8).eval())
    cfg = get_protocol("kd-sre2l").train.with_(epochs=2, batch=8)
    train_model(student, TrainData.tensors(x, y), cfg, make_generator(2), teacher=teacher)
    assert len(student.seen) == len(teacher.seen) == 6
    assert all(torch.equal(s, t) for s, t in zip(student.seen, teacher.seen))
    assert not torch.equal(student.seen[0], x[:8])  # augmented and CutMix-ed, not the raw images


def test_static_mixup_interpolates_stored_logits_with_the_image_lambda(monkeypatch):
    """With MixUp and stored logits the loss target is lam z_i + (1 - lam) z_j, with the lambda and the
    partner of the images (spied on), not a two-term loss against z_i and z_j."""
    import condense.train as tr

    x = torch.randn(8, 1, 28, 28)
    z = torch.randn(8, 10) * 3  # every image its own logits
    cfg = TrainConfig(epochs=1, batch=8, optimizer="sgd", lr=0.0, weight_decay=0, augment="none", mixup=0.8,
                      loss="kl", temperature=1.0, kl_t2=False)
    draws, targets = [], []
    real_mixup, real_loss = tr.mixup, tr.loss_fn
    monkeypatch.setattr(tr, "mixup", lambda *a: draws.append(real_mixup(*a)) or draws[-1])
    monkeypatch.setattr(tr, "loss_fn", lambda c, logits, t, gt=None: targets.append(t.clone()) or real_loss(c, logits, t, gt))
    train_model(build_model("convnet", 1, 10, 28, seed=0, width=8), TrainData.tensors(x, z), cfg, make_generator(0))
    (_, ya, yb, lam, _), = draws
    assert 0.05 < lam < 0.95  # (seeded) a lambda that tells the two partners apart
    assert len(targets) == 1 and torch.allclose(targets[0], lam * ya + (1 - lam) * yb)
    assert not torch.allclose(targets[0], ya)


def _set(real, soft=None):
    x, y = real.random_subset(2, make_generator(0))
    i = real.info
    meta = SetMeta(i.name, i.num_classes, i.class_names, 2, i.channels, i.size, i.size, i.mean, i.std, algorithm="t")
    return SyntheticSet(x, y, meta, soft_labels=soft, soft_attrs={"kind": "logits"} if soft is not None else {})


@pytest.mark.parametrize("name", ["kd-static", "kd-sre2l"])
def test_soft_label_protocols_evaluate_sets_and_the_random_baseline(real, name):
    calls = []

    class Spy(Teacher):
        def label(self, images, batch=512):
            calls.append(images.shape[0])
            return super().label(images, batch)

    teacher = Spy([build_model("convnet", 1, 10, 28, seed=3, width=8)], {"members": "test"})
    settings = EvalSettings(get_protocol(name).with_epochs(1), ["convnet"], runs=2, teacher=teacher)
    res = evaluate_set(_set(real), real, settings)[0]
    base = evaluate_random(real, 2, settings)[0]
    assert len(res.accs) == 2 and len(base.accs) == 2
    assert calls == ([20, 20, 20] if name == "kd-static" else [])  # static: labels made once per set / subset
    calls.clear()
    stored = _set(real, soft=torch.randn(20, 10))
    evaluate_set(stored, real, settings)
    assert calls == []  # a file's own soft labels are used as they are


def test_soft_label_protocol_without_teacher_is_a_clear_error(real):
    from condense.errors import CondenseError
    with pytest.raises(CondenseError, match="needs teachers"):
        evaluate_set(_set(real), real, EvalSettings(get_protocol("kd-sre2l").with_epochs(1), ["convnet"], runs=1))


def test_networks_trained_without_the_validation_split_are_other_artifacts(real, tmp_path):
    from condense.artifacts import Artifacts, key_of, teacher_recipe
    store = Artifacts(tmp_path)
    rest, _ = real.holdout(2, make_generator(0))
    whole = store.describe(real, "convnet", teacher_recipe(15), 0)
    held = store.describe(rest, "convnet", teacher_recipe(15), 0)
    assert "train_subset" not in whole and "held out" in held["train_subset"]  # whole-split keys unchanged
    assert key_of(whole) != key_of(held)
    assert rest.with_preprocess(rest.pre).subset == rest.subset
