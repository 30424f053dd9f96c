"""Files from others: a synth.h5 reads only itself, sizes are checked before data is read, every
field is validated, and no mutation of a good file gets past as anything but a clean refusal."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import condense
from condense.errors import CondenseError
from condense.synthetic import SetMeta, SyntheticSet


def good_file(path, n_per_class=2, k=3):
    meta = SetMeta(dataset="fashion-mnist", num_classes=k, class_names=[f"c{i}" for i in range(k)], ipc=n_per_class,
                   channels=1, height=8, width=8, mean=(0.5,), std=(0.25,), algorithm="test")
    g = torch.Generator().manual_seed(0)
    n = n_per_class * k
    s = SyntheticSet(torch.randn(n, 1, 8, 8, generator=g), torch.arange(k).repeat_interleave(n_per_class), meta,
                     soft_labels=torch.randn(n, k, generator=g), soft_attrs={"kind": "logits"}, lr=0.01)
    return s.save(path)


def rewrite(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def test_a_dataset_stored_in_another_file_is_refused_before_reading(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(6 * 64, dtype=np.float32).tobytes())

    def external(f):
        del f["images"]
        f.create_dataset("images", shape=(6, 1, 8, 8), dtype="f4", external=[(str(secret), 0, 6 * 64 * 4)])

    with pytest.raises(CondenseError, match="external files"):
        condense.load(rewrite(good_file(tmp_path / "a.h5"), external))


def test_links_to_other_files_and_virtual_datasets_are_refused(tmp_path):
    other = good_file(tmp_path / "other.h5")

    def external_link(f):
        del f["images"]
        f["images"] = h5py.ExternalLink(str(other), "/images")

    with pytest.raises(CondenseError, match="link to another file"):
        condense.load(rewrite(good_file(tmp_path / "b.h5"), external_link))

    def virtual(f):
        del f["images"]
        layout = h5py.VirtualLayout(shape=(6, 1, 8, 8), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "images", shape=(6, 1, 8, 8))
        f.create_virtual_dataset("images", layout)

    with pytest.raises(CondenseError, match="virtual dataset"):
        condense.load(rewrite(good_file(tmp_path / "c.h5"), virtual))

    def soft_link(f):
        f["moved"] = f["labels"][...]
        del f["labels"]
        f["labels"] = h5py.SoftLink("/moved")

    with pytest.raises(CondenseError, match="SoftLink"):
        condense.load(rewrite(good_file(tmp_path / "d.h5"), soft_link))


def test_declared_sizes_are_checked_before_any_data_is_read(tmp_path):
    def bomb(f):  # a few KB on disk, 10^9 images declared
        del f["images"]
        d = f.create_dataset("images", shape=(10**9, 1, 8, 8), dtype="f4", chunks=(1, 1, 8, 8), compression="gzip")
        d[0] = 0.0

    with pytest.raises(CondenseError, match="more than"):
        condense.load(rewrite(good_file(tmp_path / "a.h5"), bomb))

    def extra_label(f):
        del f["labels"]
        f["labels"] = np.zeros(7, dtype=np.int64)

    with pytest.raises(CondenseError, match="there are 6 images"):
        condense.load(rewrite(good_file(tmp_path / "b.h5"), extra_label))


@pytest.mark.parametrize("edit, words", [
    (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.array([0.0, 0, 1.7, 1, 2, 2]))), "integers"),
    (lambda f: f.attrs.__setitem__("std", np.array([0.0])), "not positive"),
    (lambda f: f.attrs.__setitem__("mean", np.array([np.nan])), "finite"),
    (lambda f: f.attrs.__setitem__("num_classes", "three"), "num_classes"),
    (lambda f: f.attrs.__setitem__("ipc", 1), "more than its ipc"),
    (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.array([0, 0, 1, 1, 1, 1]))), "no image"),
    (lambda f: f.attrs.__setitem__("class_names", '{"a": 1}'), "class_names"),
])
def test_every_field_is_validated(tmp_path, edit, words):
    with pytest.raises(CondenseError, match=words):
        condense.load(rewrite(good_file(tmp_path / "a.h5"), edit))


def test_zca_and_compact_parts_are_validated(tmp_path):
    def bad_zca(f):
        f.attrs["pixel_space"] = "zca"
        g = f.create_group("zca")
        g["mean"] = np.zeros((1, 64), dtype=np.float32)
        g["matrix"] = np.zeros((64, 63), dtype=np.float32)
        g["inverse"] = np.zeros((64, 64), dtype=np.float32)

    with pytest.raises(CondenseError, match="zca/matrix"):
        condense.load(rewrite(good_file(tmp_path / "a.h5"), bad_zca))

    def bad_compact(f):
        g = f.create_group("compact")
        g["images"] = np.zeros((3, 1, 8, 8), dtype=np.float32)
        g["labels"] = np.array([0, 1, 7])

    with pytest.raises(CondenseError, match="compact/labels span"):
        condense.load(rewrite(good_file(tmp_path / "b.h5"), bad_compact))


def test_a_pipe_or_a_folder_is_not_read(tmp_path):
    import os

    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    with pytest.raises(CondenseError, match="not a regular file"):
        condense.load(fifo)  # would block forever if opened
    with pytest.raises(CondenseError, match="not a regular file"):
        condense.load(tmp_path)


MUTATIONS = st.one_of(
    st.tuples(st.just("attr"), st.sampled_from(["num_classes", "channels", "height", "ipc", "mean", "std",
                                                 "class_names", "config", "pixel_space", "format_version"]),
              st.one_of(st.integers(-5, 10**7), st.floats(allow_nan=True), st.text(max_size=5),
                        st.lists(st.floats(allow_nan=True), max_size=3))),
    st.tuples(st.just("bytes"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(b"")),
)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATIONS)
@example(mutation=("bytes", 687, b"\x00\x00"))  # h5py raised RuntimeError (bad heap free list) here
def test_a_mutated_file_loads_cleanly_or_is_refused_cleanly(tmp_path, mutation):
    path = tmp_path / "fuzz.h5"
    shutil.copy(good_file(tmp_path / "good.h5"), path)
    kind, where, what = mutation
    if kind == "attr":
        try:
            with h5py.File(path, "r+") as f:
                f.attrs[where] = np.array(what) if isinstance(what, list) else what
        except (TypeError, ValueError):
            return  # h5py cannot store that value: nothing to read
    else:
        data = bytearray(path.read_bytes())
        at = where % len(data)
        data = data[:at] if kind == "truncate" else data[:at] + what + data[at + len(what):]
        path.write_bytes(bytes(data))
    try:
        s = condense.load(path)
    except CondenseError:
        return
    assert isinstance(s, SyntheticSet) and torch.isfinite(s.images).all()


class _RunsCode:
    """What a hostile pickle does: call a function of its choosing while being loaded."""

    def __reduce__(self):
        return (open, ("/nonexistent-dir/should-not-exist", "w"))


def test_checkpoints_and_cached_artifacts_are_never_unpickled(tmp_path, monkeypatch, capsys, data_root, real):
    from test_cli import cli

    from condense.artifacts import Artifacts, teacher_recipe

    ckpt = tmp_path / "run.ckpt"
    torch.save({"version": 1, "identity": {}, "iteration": 1, "state": _RunsCode()}, ckpt)
    code, _, err = cli(monkeypatch, capsys, "distill", "--algo", "dm", "--ipc", "1", "--iters", "2", "--resume-from",
                       ckpt, "--out", tmp_path / "o.h5", "--data-root", data_root, "--quiet")
    assert code == 1 and "does not unpickle" in " ".join(err.split()) and not (tmp_path / "o.h5").exists()
    store = Artifacts(tmp_path / "cache")
    path = store.path(store.describe(real, "convnet", teacher_recipe(1), 0))
    path.parent.mkdir(parents=True)
    torch.save({"meta": _RunsCode()}, path)
    with pytest.raises(CondenseError, match="does not unpickle"):
        store.trained_record(real, "convnet", teacher_recipe(1), 0)


def test_a_cache_that_cannot_be_written_still_evaluates_and_warns(monkeypatch, capsys, data_root, tmp_path):
    from test_cli import cli

    out = tmp_path / "r.h5"
    assert cli(monkeypatch, capsys, "distill", "--algo", "random", "--ipc", "1", "--out", out, "--data-root",
               data_root, "--quiet")[0] == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # the cache lies below a file: nothing can be created there, even by root
    monkeypatch.setenv("CONDENSE_CACHE", str(blocker / "cache"))
    code, _, err = cli(monkeypatch, capsys, "eval", out, "--protocol", "kd-static", "--epochs", "1", "--runs", "1",
                       "--teacher-epochs", "1", "--data-root", data_root, "--quiet")
    assert code == 0, err
    assert "cannot be written" in " ".join(err.split())


def test_a_second_process_building_the_same_artifact_waits_and_loads_it(real, tmp_path):
    import threading
    import time

    from condense.artifacts import Artifacts, teacher_recipe
    from condense.io import exclusive

    store, recipe = Artifacts(tmp_path), teacher_recipe(1)
    path = store.path(store.describe(real, "convnet", recipe, 0))
    got = []
    with exclusive(path, "building", wait=True):  # as if another process were training it right now
        waiter = threading.Thread(target=lambda: got.append(store.trained_record(real, "convnet", recipe, 0)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not got  # waiting, not training a second copy
        other = Artifacts(tmp_path / "elsewhere").trained_record(real, "convnet", recipe, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(other, path)  # the other process publishes its result
    waiter.join(60)
    assert got and torch.equal(got[0]["trained"]["classifier.weight"], other["trained"]["classifier.weight"])
