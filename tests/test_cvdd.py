"""CV-DD: committee voting, patch initialization, replayable labels and their side file."""
from __future__ import annotations

import json
import shutil

import h5py
import pytest
import torch

from algorithms.base import Context, config_from
from algorithms.cvdd import CVDD, voter_sets, weights
from condense import committee as committee_module
from condense.artifacts import Artifacts
from condense.errors import CondenseError
from condense.models import build_model
from condense.relabel import ReplayConfig, ensemble_logits, file_sha256, relabel, replay_data, side_file
from condense.run import RunSpec, run_distill
from condense.synthetic import SyntheticSet
from condense.train import TrainConfig, train_model

TINY = {"tiny": {"members": ["convnetbn", "resnet18bn_narrow", "convnetbn"], "epochs": 2, "lr": 0.05, "batch": 32,
                 "val_per_class": 4, "description": "three small BatchNorm networks"}}


@pytest.fixture
def tiny_committee(monkeypatch):
    monkeypatch.setattr(committee_module, "_table", lambda dataset: TINY)
    return "tiny"


def make(real, tmp_path, **over):
    values = {"ipc": 2, "committee": "tiny", "recover_iters": 3, "patch_pool": 8, "patch_crops": 2,
              "relabel_epochs": 2, **over}
    return CVDD(config_from(CVDD, values), real, Context(seed=0, artifacts=Artifacts(tmp_path / "cache")))


def test_voters_follow_the_official_settings_and_priors_weigh_them():
    priors = [63.0, 65.3, 68.5, 67.6, 67.4]  # CIFAR-10's table (spec §4.3)
    assert voter_sets(1, priors, 2, torch.Generator()) == [(2, 3)]  # the two best
    ten = voter_sets(10, priors, 2, torch.Generator())
    assert sorted(ten) == sorted(set(ten)) and len(ten) == 10  # every pair once at IPC 10
    assert voter_sets(4, [1.0, 2.0, 3.0], 2, torch.Generator()) == [(0, 1), (0, 2), (1, 2), (0, 1)]  # cycling
    draws = [voter_sets(20, priors, 2, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert draws[0] == draws[1] != draws[2] and all(len(set(v)) == 2 for v in draws[0])
    w = weights([63.0, 65.3, 68.5, 67.6, 67.4], 10.0)
    assert [round(v, 2) for v in w] == [0.14, 0.18, 0.24, 0.22, 0.22]  # the relabel weights the spec quotes


def test_batch_statistics_label_with_the_batch_and_leave_the_teacher_unchanged():
    net = build_model("convnetbn", 1, 10, 28, seed=0, width=8).eval()
    with torch.no_grad():
        for m in net.norms:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 1, 28, 28)
    plain = ensemble_logits([net], x)
    bssl = ensemble_logits([net], x, bssl=True)
    train_mode = net.train()(x).detach()
    net.load_state_dict(before)
    net.eval()
    assert torch.allclose(bssl, train_mode, atol=1e-5) and not torch.allclose(bssl, plain, atol=1e-3)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items()) and not net.training
    assert torch.allclose(ensemble_logits([net, net], x, [0.25, 0.75]), plain, atol=1e-5)


def record_for(images, teacher, epochs=3, batch=4, seed=0):
    return relabel(images, teacher, ReplayConfig(epochs, batch, "rrc_flip", 1.0), torch.Generator().manual_seed(seed))


def test_replay_gives_the_student_exactly_the_batches_the_teacher_labelled():
    torch.manual_seed(0)
    teacher = build_model("convnetbn", 1, 10, 28, seed=1, width=8).eval()
    images, classes = torch.randn(10, 1, 28, 28), torch.arange(10)
    r = record_for(images, lambda b: teacher(b))
    assert r.logits.shape == (3, 10, 10) and r.logits.dtype == torch.float16 and r.mix_on.all()
    data = replay_data(r, images, classes)
    for e in range(3):
        batches = list(data.replay(e))
        assert [len(x) for x, _, _ in batches] == [4, 4, 2]
        for b, (x, logits, gt) in enumerate(batches):
            with torch.no_grad():
                assert torch.allclose(teacher(x).half().float(), logits, atol=1e-3)  # the labelled input, replayed
            order = r.order[e, 4 * b:4 * b + 4]
            lam = gt[0][0]
            assert torch.equal(gt[0][1], classes[order]) and 0 <= lam <= 1
            assert torch.equal(gt[1][1], classes[order][r.mix_perm[e, 4 * b:4 * b + len(order)]])


def test_two_students_replaying_one_record_train_to_identical_weights():
    teacher = build_model("convnetbn", 1, 10, 28, seed=1, width=8).eval()
    images, classes = torch.randn(10, 1, 28, 28), torch.arange(10)
    r = record_for(images, lambda b: teacher(b), epochs=2)
    cfg = TrainConfig(epochs=2, batch=4, optimizer="adamw", lr=1e-3, weight_decay=0.01, schedule="cosine",
                      augment="rrc_flip", augment_mode="all", cutmix=1.0, loss="kl", temperature=20.0, kl_t2=False)
    students = []
    for _ in range(2):
        net = build_model("convnet", 1, 10, 28, seed=5, width=8)
        # different loop generators: a replay draws nothing from them
        train_model(net, replay_data(r, images, classes), cfg, torch.Generator().manual_seed(len(students)))
        students.append(net.state_dict())
    assert all(torch.equal(v, students[1][k]) for k, v in students[0].items())
    r.check_matches(cfg, "x")
    with pytest.raises(CondenseError, match="recorded for another training run"):
        r.check_matches(cfg.with_(epochs=3), "x")


def test_cvdd_stores_mosaics_and_a_checksummed_label_file_that_loads_back(real, tmp_path, tiny_committee):
    a = make(real, tmp_path)
    assert a.cfg.iters == 2 * 1 * 3  # IPC x class batches x recover_iters
    s = run_distill(a, RunSpec("cvdd", out=tmp_path / "c.h5"))
    assert s.images.shape == (20, 1, 28, 28) and torch.equal(s.labels, torch.arange(10).repeat_interleave(2))
    assert s.meta.protocol == "kd-replay" and s.replay is not None
    teacher = json.loads(s.meta.teacher)
    assert teacher["committee"] == "tiny" and teacher["bssl"] and len(teacher["weights"]) == 3
    assert a.voters == [(0, 1), (0, 2)]  # IPC 2: the first pairs in order
    loaded = SyntheticSet.load(tmp_path / "c.h5")
    assert torch.equal(loaded.replay.logits, s.replay.logits) and torch.equal(loaded.replay.order, s.replay.order)
    storage = loaded.storage()
    assert storage["label_kind"] == "replayed"
    assert storage["bytes_by_part"]["replay_logits"] == 2 * 20 * 10 * 2  # epochs x images x classes x fp16
    with h5py.File(side_file(tmp_path / "c.h5"), "r") as f:  # counted as the side file stores it
        stored = {name: f[name].nbytes for name in ("order", "mix_on", "mix_box", "mix_perm", "logits")}
        stored["aug"] = sum(d.nbytes for d in f["aug"].values())
    assert storage["bytes_by_part"]["replay_metadata"] == sum(stored.values()) - stored["logits"]
    assert stored["logits"] == storage["bytes_by_part"]["replay_logits"]


def test_a_changed_missing_or_foreign_label_file_is_refused(real, tmp_path, tiny_committee):
    s = run_distill(make(real, tmp_path), RunSpec("cvdd", out=tmp_path / "a.h5"))
    other = run_distill(make(real, tmp_path, ipc=1), RunSpec("cvdd", out=tmp_path / "b.h5"))
    assert other.replay is not None
    labels = side_file(tmp_path / "a.h5")
    good = labels.read_bytes()
    labels.write_bytes(good[:-100])  # truncated
    with pytest.raises(CondenseError, match="SHA-256 does not match"):
        SyntheticSet.load(tmp_path / "a.h5")
    labels.unlink()
    with pytest.raises(CondenseError, match="missing"):
        SyntheticSet.load(tmp_path / "a.h5")
    shutil.copy(side_file(tmp_path / "b.h5"), labels)  # another set's labels, with the checksum made to fit
    with h5py.File(tmp_path / "a.h5", "a") as f:
        f["replay"].attrs["sha256"] = file_sha256(labels)
    with pytest.raises(CondenseError, match="labels other images|should be"):
        SyntheticSet.load(tmp_path / "a.h5")
    for name, change, message in (("order", lambda v: v[:, ::-1] * 0, "not a permutation"),
                                  ("mix_perm", lambda v: v + 1000, "partner lies outside"),
                                  ("mix_box", lambda v: v + 1000, "box lies outside"),
                                  ("aug/rrc.wh", lambda v: v[..., :1], "do not match augmentation|should")):
        labels.write_bytes(good)
        with h5py.File(labels, "a") as f:
            value = change(f[name][()])
            del f[name]
            f[name] = value
        with h5py.File(tmp_path / "a.h5", "a") as f:
            f["replay"].attrs["sha256"] = file_sha256(labels)
        with pytest.raises(CondenseError, match=message):
            SyntheticSet.load(tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "a") as f:
        f["replay"].attrs["file"] = "../../etc/passwd"
    with pytest.raises(CondenseError, match="not a file beside the set"):
        SyntheticSet.load(tmp_path / "a.h5")
    assert s.replay is not None


def test_the_voting_recover_lowers_the_loss_and_resumes_bit_for_bit(real, tmp_path, tiny_committee):
    a = make(real, tmp_path, recover_iters=30, rrc_min=1.0, jitter=0, ipc=1)
    a.init()
    losses = [float(a.step(i)["loss"]) for i in range(30)]
    assert losses[-1] < losses[0]
    whole = run_distill(make(real, tmp_path), RunSpec("cvdd", out=tmp_path / "w.h5"))
    half = make(real, tmp_path)
    half.init()
    for i in range(4):  # in the middle of the second IPC slot
        half.step(i)
    resumed = make(real, tmp_path)
    resumed.load_state_dict(half.state_dict())
    for i in range(4, 6):
        resumed.step(i)
    again = resumed.synthetic()
    assert torch.equal(again.images, whole.images) and torch.equal(again.replay.logits, whole.replay.logits)


def test_single_teacher_variant_and_bad_settings(real, tmp_path, tiny_committee):
    a = make(real, tmp_path, members="best", ipc=1)
    s = run_distill(a, RunSpec("cvdd", out=tmp_path / "s.h5"))
    assert len(a.teachers) == 1 and json.loads(s.meta.teacher)["members"] == a.keep and len(a.keep) == 1
    assert a.keep[0] == max(range(3), key=lambda i: a.committee.records[i]["val_accuracy"])
    with pytest.raises(CondenseError, match="prior val, distill or equal"):
        make(real, tmp_path, prior="accuracy")
    with pytest.raises(CondenseError, match="names member 7"):
        make(real, tmp_path, members="0,7").init()
    with pytest.raises(CondenseError, match="does not match"):
        make(real, tmp_path, iters=5)


def test_cvdd_from_the_command_line_replays_and_runs_mode_m(monkeypatch, capsys, data_root, tmp_path,
                                                             tiny_committee):
    from test_cli import cli

    out = tmp_path / "c.h5"
    code, _, err = cli(monkeypatch, capsys, "distill", "--algo", "cvdd", "--ipc", "1", "--set", "recover_iters=2",
                       "--set", "relabel_epochs=1", "--set", "patch_pool=4", "--out", out, "--data-root", data_root,
                       "--quiet")
    assert code == 0, err
    assert side_file(out).exists()
    code, _, err = cli(monkeypatch, capsys, "eval", out, "--epochs", "1", "--runs", "1", "--baseline", "random",
                       "--data-root", data_root, "--json", tmp_path / "e.json")  # no flags: the file's protocol
    assert code == 0, err
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["protocol"]["name"] == "kd-replay@1ep"
    row = next(r for r in doc["rows"] if r["method"] == "cvdd")
    assert row["targets"] == "the file's replayed labels (side file)" and row["storage"]["label_kind"] == "replayed"
    assert next(r for r in doc["rows"] if r["method"] == "random (real subset)")["results"][0]["accs"]
    code, _, err = cli(monkeypatch, capsys, "eval", out, "--protocol", "kd-sre2l", "--epochs", "1", "--runs", "1",
                       "--data-root", data_root, "--json", tmp_path / "m.json")
    assert code == 0, err
    row = json.loads((tmp_path / "m.json").read_text())["rows"][0]
    assert row["targets"] == "teacher online (mode M)" and row["teacher"]["bssl"] and row["teacher"]["weights"]
    code, _, err = cli(monkeypatch, capsys, "eval", out, "--epochs", "2", "--runs", "1", "--data-root", data_root)
    assert code == 1 and "recorded for another training run" in " ".join(err.split())


def test_a_teacher_without_batchnorm_cannot_be_inverted():
    from condense.recover import hook_teachers

    nets = [build_model("convnetbn", 1, 10, 28, seed=0, width=8), build_model("convnet", 1, 10, 28, seed=0, width=8)]
    with pytest.raises(CondenseError, match="convnet has no BatchNorm layer"):
        hook_teachers(nets, ["convnetbn", "convnet"], "CV-DD")
    assert not any(m._forward_hooks for m in nets[0].modules())  # the hooks of the others are removed again


def test_distil_and_evaluate_priors_are_measured_cached_and_used(monkeypatch, capsys, data_root, tmp_path,
                                                                 tiny_committee, real):
    from test_cli import cli

    with pytest.raises(CondenseError, match="--priors distill"):
        make(real, tmp_path, prior="distill").init()  # not measured yet
    fast = ["--set", "recover_iters=2", "--set", "relabel_epochs=1", "--set", "patch_pool=4"]
    code, text, err = cli(monkeypatch, capsys, "teachers", "--committee", "tiny", "--priors", *fast,
                          "--data-root", data_root, "--quiet")
    assert code == 0, err
    cached = list((tmp_path / "cache" / "priors").glob("fashion-mnist-tiny-*.json"))
    assert len(cached) == 1
    priors = json.loads(cached[0].read_text())["priors"]
    assert len(priors) == 3 and all(0 < p <= 100 for p in priors)
    a = CVDD(config_from(CVDD, {"ipc": 1, "committee": "tiny", "recover_iters": 1, "patch_pool": 4,
                                "relabel_epochs": 1, "prior": "distill"}), real,
             Context(seed=0, artifacts=Artifacts(tmp_path / "cache")))
    a.init()
    assert a.priors_kept == priors


def test_interim_sets_skip_relabelling_and_the_run_goes_on(real, tmp_path, tiny_committee):
    a = make(real, tmp_path)
    a.init()
    for i in range(3):
        a.step(i)
    interim = a.synthetic()  # what --eval-every asks for in the middle of a run
    assert interim.replay is None
    for i in range(3, 6):
        a.step(i)  # the hooks are still there
    assert a.synthetic().replay is not None
