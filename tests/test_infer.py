"""Teacher committees, the recover loop and INFER."""
from __future__ import annotations

import json

import pytest
import torch

from algorithms.base import Context, config_from
from algorithms.infer import INFER, base_sets
from condense import committee as committee_module
from condense.artifacts import Artifacts, committee_recipe
from condense.committee import adhoc_spec, committee_spec, load_committee
from condense.errors import CondenseError
from condense.models import build_model
from condense.recover import BNStatistics, Recover, RecoverConfig
from condense.run import RunSpec, run_distill

TINY = {"tiny": {"members": ["convnetbn", "resnet18bn_narrow"], "epochs": 3, "lr": 0.05, "batch": 32,
                 "val_per_class": 4, "description": "two small BatchNorm networks"}}


@pytest.fixture
def tiny_committee(monkeypatch):
    """A committee small enough for the test data, as if it were in assets/committees/."""
    monkeypatch.setattr(committee_module, "_table", lambda dataset: TINY)
    return "tiny"


def test_the_budget_formula_as_the_paper_counts_it():
    assert [base_sets(ipc, 4, 10) for ipc in (10, 50)] == [7, 35]  # CIFAR-10 (spec §3.2)
    assert [base_sets(ipc, 4, 100) for ipc in (10, 50, 100)] == [9, 48, 96]  # CIFAR-100
    assert base_sets(10, 3, 1000) == 9 and base_sets(1, 1, 10) == 0


def test_bn_statistics_measure_the_gap_to_the_running_statistics():
    net = build_model("convnetbn", 1, 10, 28, seed=0, width=8).eval()
    with torch.no_grad():
        for m in net.norms:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    stats = BNStatistics(net)
    x = torch.randn(6, 1, 28, 28)
    net(x)
    first_input = net.convs[0](x)
    var, mean = torch.var_mean(first_input, (0, 2, 3), correction=0)
    bn = net.norms[0]
    gap0 = torch.norm(mean - bn.running_mean) + torch.norm(var - bn.running_var)
    assert torch.allclose(stats.gaps[0], gap0, atol=1e-5)
    assert torch.allclose(stats.loss(10.0), 10 * stats.gaps[0] + stats.gaps[1] + stats.gaps[2], atol=1e-5)
    stats.remove()
    assert not net.norms[0]._forward_hooks


def test_recover_decays_its_lr_to_zero_and_resumes_bit_for_bit():
    target = torch.randn(1, 3, 4, 4)

    def objective(u):
        return (u - target).square().sum()

    whole = Recover(torch.zeros(1, 3, 4, 4), RecoverConfig(iters=6, lr=0.3))
    lrs = []
    for _ in range(6):
        lrs.append(whole.lr())
        whole.step(objective)
    assert lrs[0] == pytest.approx(0.3) and lrs[3] == pytest.approx(0.15) and whole.finished
    half = Recover(torch.zeros(1, 3, 4, 4), RecoverConfig(iters=6, lr=0.3))
    for _ in range(3):
        half.step(objective)
    resumed = Recover(torch.zeros(1, 3, 4, 4), RecoverConfig(iters=6, lr=0.3))
    resumed.load_state_dict(half.state_dict())
    for _ in range(3):
        resumed.step(objective)
    assert torch.equal(resumed.param, whole.param)
    assert (whole.param - target).square().sum() < target.square().sum()


def test_committees_are_named_checked_and_record_both_accuracies(real, tmp_path, tiny_committee):
    spec = committee_spec("fashion-mnist", "tiny")
    assert [a for a, _ in spec.members] == ["convnetbn", "resnet18bn_narrow"] and spec.val_per_class == 4
    assert committee_spec("fashion-mnist").name == "tiny"  # the dataset's only committee
    with pytest.raises(CondenseError, match="no teacher committee 'paper'"):
        committee_spec("fashion-mnist", "paper")
    with pytest.raises(CondenseError, match="unknown architecture 'resnet7'"):
        adhoc_spec(["resnet7"], committee_recipe(1))
    c = load_committee(Artifacts(tmp_path), real, spec)
    assert len(c.nets) == 2 and all(not n.training for n in c.nets)
    for r in c.records:
        assert 0 <= r["val_accuracy"] <= 1 and r["test_accuracy"] > 0 and r["key"]
    assert c.describe()["committee"] == "tiny"


def test_an_interrupted_teacher_training_resumes_to_the_same_network(real, tmp_path, monkeypatch):
    import condense.artifacts as artifacts

    recipe = committee_recipe(3, lr=0.05, batch=32)
    whole = Artifacts(tmp_path / "a").trained_record(real, "convnetbn", recipe, 0)["trained"]
    real_train = artifacts.train_model

    def stopped_after_epoch_2(*args, on_epoch, **kw):  # Ctrl-C once epoch 2 is checkpointed
        def then_stop(epoch, model, opt):
            on_epoch(epoch, model, opt)
            if epoch == 1:
                raise KeyboardInterrupt
        return real_train(*args, on_epoch=then_stop, **kw)

    monkeypatch.setattr(artifacts, "train_model", stopped_after_epoch_2)
    store = Artifacts(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        store.trained_record(real, "convnetbn", recipe, 0)
    files = [p.name for p in (tmp_path / "b").rglob("*.pt")]
    assert len(files) == 1 and files[0].endswith(".partial.pt")  # a checkpoint, nothing cached as finished
    monkeypatch.setattr(artifacts, "train_model", real_train)
    resumed = store.trained_record(real, "convnetbn", recipe, 0)["trained"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not list((tmp_path / "b").rglob("*.partial.pt"))


def test_a_diverged_teacher_is_refused_and_not_cached(real, tmp_path):
    store = Artifacts(tmp_path)
    recipe = committee_recipe(1, lr=1e12, batch=16)  # explodes to non-finite weights
    with pytest.raises(CondenseError, match="diverged"):
        store.trained_record(real, "convnetbn", recipe, 0)
    assert not list((tmp_path / "networks").glob("*.pt"))


def make(real, tmp_path, **over):
    values = {"ipc": 2, "committee": "tiny", "ufc_iters": 3, "lr": 0.1, **over}
    return INFER(config_from(INFER, values), real, Context(seed=0, artifacts=Artifacts(tmp_path / "cache")))


def test_ipc_1_is_refused_with_the_smallest_ipc_that_works(real, tmp_path, tiny_committee):
    with pytest.raises(CondenseError, match="leaves no base set at IPC 1.*--ipc 2"):
        make(real, tmp_path, ipc=1)
    with pytest.raises(CondenseError, match="does not match"):
        make(real, tmp_path, iters=5)


def test_base_sets_hold_distinct_real_images_of_each_class(real, tmp_path, tiny_committee):
    a = make(real, tmp_path, ipc=4)
    a.init()
    assert a.k == 3 and a.base.shape[:2] == (3, 10)
    for c in range(10):
        assert len({tuple(img.flatten().tolist()) for img in a.base[:, c]}) == 3


def test_the_recover_shift_is_zero_to_jitter_pixels_along_each_axis_as_the_official_code():
    from condense.recover import shift_and_flip
    from condense.runtime import make_generator

    x, g, seen = torch.arange(64.0).view(1, 1, 8, 8), make_generator(0), set()
    for _ in range(300):
        y = shift_and_flip(x, 2, False, g)
        seen |= {(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)
                 if torch.equal(torch.roll(x, (dx, dy), (2, 3)), y)}
    assert seen == {(dx, dy) for dx in range(3) for dy in range(3)}


def test_infer_stores_bases_compensators_instances_and_static_labels(real, tmp_path, tiny_committee):
    a = make(real, tmp_path)
    assert (a.k, a.cfg.iters) == (1, 6)  # K = int(2 / (2/10 + 1)) = 1; 1 base set x 2 teachers x 3 steps
    s = run_distill(a, RunSpec("infer", out=tmp_path / "i.h5"))
    assert s.images.shape == (30, 1, 28, 28) and s.soft_labels.shape == (30, 10)
    assert s.compact["images"].shape == (10, 1, 28, 28) and s.compact["compensators"].shape == (2, 1, 28, 28)
    assert torch.equal(s.images[:10], s.compact["images"])  # each base set comes first, unchanged
    pre = real.pre
    u = s.compact["compensators"][0]
    assert u.abs().sum() > 0  # the compensator learned something
    assert torch.allclose(s.images[10:20], pre(pre.to_pixels(s.compact["images"] + u)), atol=1e-5)
    assert torch.equal(s.labels, torch.arange(10).repeat(3))
    with torch.no_grad():  # static labels: the committee's mean logits on each instance
        x = s.images.to(a.ctx.device)
        mean = torch.stack([t(x) for t in a.teachers]).mean(0).cpu()
    assert torch.allclose(s.soft_labels, mean, atol=1e-4)
    assert s.meta.protocol == "kd-static" and json.loads(s.meta.teacher) == {"committee": "tiny"}
    storage = s.storage()
    assert (storage["stored_images"], storage["compensators"], storage["label_vectors"]) == (10, 2, 30)
    assert storage["bytes"] == 12 * 784 * 4 + 30 * 10 * 4
    assert storage["equivalent_ipc"] == pytest.approx(storage["bytes"] / (10 * (784 * 4 + 8)), abs=0.01)


def test_a_compensator_lowers_its_teachers_inversion_loss(real, tmp_path, tiny_committee):
    a = make(real, tmp_path, ufc_iters=40, jitter=0)
    a.init()
    losses = [float(a.step(i)["loss"]) for i in range(40)]
    assert losses[-1] < losses[0]


def test_an_interrupted_infer_run_resumes_to_the_same_file(real, tmp_path, tiny_committee):
    whole = run_distill(make(real, tmp_path), RunSpec("infer", out=tmp_path / "a.h5"))
    half = make(real, tmp_path)
    half.init()
    for i in range(4):  # stop in the middle of the second compensator
        half.step(i)
    resumed = make(real, tmp_path)
    resumed.load_state_dict(half.state_dict())
    for i in range(4, 6):
        resumed.step(i)
    again = resumed.synthetic()
    assert torch.equal(again.compact["compensators"], whole.compact["compensators"])
    assert torch.equal(again.images, whole.images)


@pytest.mark.parametrize("arch", ["resnet18bn_narrow", "mobilenetv2_050", "shufflenetv2_050", "efficientnet_b0",
                                  "mobilenetv2", "shufflenetv2", "densenet121"])
def test_teacher_architectures_take_small_images_in_any_channels(arch):
    for channels, size in ((1, 28), (3, 32)):
        net = build_model(arch, channels, 10, size, seed=0).eval()
        x = torch.randn(2, channels, size, size)
        with torch.no_grad():
            assert net(x).shape == (2, 10)
            acts, emb = net.features(x)
            assert torch.allclose(net.classifier(emb), net(x), atol=1e-5)
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        assert first.in_channels == channels and first.stride == (1, 1)  # the small-image stem keeps the resolution
    same = build_model(arch, 1, 10, 28, seed=3).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in build_model(arch, 1, 10, 28, seed=3).state_dict().items())


def test_infer_from_the_command_line_evaluates_with_its_protocol_and_committee(monkeypatch, capsys, data_root,
                                                                                 tmp_path, tiny_committee):
    from test_cli import cli

    out = tmp_path / "i.h5"
    code, _, err = cli(monkeypatch, capsys, "distill", "--algo", "infer", "--ipc", "2", "--set", "ufc_iters=2",
                       "--out", out, "--data-root", data_root, "--quiet")
    assert code == 0, err
    code, text, err = cli(monkeypatch, capsys, "eval", out, "--epochs", "1", "--runs", "1", "--baseline", "random",
                          "--data-root", data_root, "--json", tmp_path / "e.json")  # no protocol, no teacher flags
    assert code == 0, err
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["protocol"]["name"] == "kd-static@1ep" and "kd-static" in err
    infer, base = (next(r for r in doc["rows"] if r["method"] == m) for m in ("infer", "random (real subset)"))
    assert infer["teacher"]["committee"] == "tiny" and infer["targets"] == "the file's soft labels (logits)"
    assert infer["storage"]["compensators"] == 2 and infer["storage"]["label_kind"] == "soft"
    assert base["results"][0]["accs"]  # the random subset, labelled by the same committee
    code, text, err = cli(monkeypatch, capsys, "info", out, "--json")
    assert json.loads(text)["storage"]["stored_images"] == 10
    code, text, err = cli(monkeypatch, capsys, "teachers", "--committee", "tiny", "--data-root", data_root, "--quiet")
    assert code == 0 and "convnetbn" in text and "resnet18bn" in text and "val acc" in text
    code, _, err = cli(monkeypatch, capsys, "teachers", "--arch", "resnet7", "--data-root", data_root, "--quiet")
    assert code == 1 and "unknown architecture 'resnet7'" in err
    code, _, err = cli(monkeypatch, capsys, "distill", "--algo", "infer", "--ipc", "1", "--out", tmp_path / "x.h5",
                       "--data-root", data_root, "--quiet")
    assert code == 1 and "no base set" in " ".join(err.split()) and not (tmp_path / "x.h5").exists()
