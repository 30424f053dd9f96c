from dataclasses import asdict

import h5py
import numpy as np
import pytest
import torch

import condense
from condense.data import Zca
from condense.errors import CondenseError
from condense.synthetic import FORMAT_VERSION, SetMeta, SyntheticSet, export_imagefolder, export_pt, save_grid


def make_set(n_per_class=2, k=3, zca=False, extras=True) -> SyntheticSet:
    meta = SetMeta(dataset="fashion-mnist", num_classes=k, class_names=[f"c{i}" for i in range(k)], ipc=n_per_class,
                   channels=1, height=8, width=8, mean=(0.5,), std=(0.25,), pixel_space="zca" if zca else "normalized",
                   algorithm="test", config={"lr_img": 100.0, "nested": {"a": [1, 2]}}, seed=7, protocol="dsa",
                   teacher="convnet@fashion-mnist")
    n = n_per_class * k
    g = torch.Generator().manual_seed(0)
    s = SyntheticSet(torch.randn(n, 1, 8, 8, generator=g), torch.arange(k).repeat_interleave(n_per_class), meta)
    if extras:
        s.soft_labels = torch.randn(n, k, generator=g)
        s.soft_attrs = {"kind": "logits", "temperature": 4.0, "source": "learned"}
        s.lr = 0.0123
        s.compact = {"images": torch.randn(n_per_class, 1, 8, 8, generator=g)}
        s.compact_attrs = {"factor": 2, "decode": "zoom"}
    if zca:
        s.zca = Zca(torch.randn(1, 64, generator=g), torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g))
    return s


def test_h5_round_trip_keeps_every_field(tmp_path):
    s = make_set(zca=True)
    path = s.save(tmp_path / "synth.h5")
    t = condense.load(path)
    assert torch.equal(t.images, s.images) and torch.equal(t.labels, s.labels)
    assert torch.equal(t.soft_labels, s.soft_labels) and t.soft_attrs == s.soft_attrs
    assert t.lr == pytest.approx(s.lr) and t.compact_attrs == s.compact_attrs
    assert torch.equal(t.compact["images"], s.compact["images"])
    assert all(torch.equal(getattr(t.zca, k), getattr(s.zca, k)) for k in ("mean", "matrix", "inverse"))
    assert asdict(t.meta) == asdict(s.meta)


def test_loaded_set_is_a_torch_dataset(tmp_path):
    s = make_set()
    s.save(tmp_path / "s.h5")
    t = condense.load(tmp_path / "s.h5")
    x, y = t[0]
    assert x.shape == (1, 8, 8) and int(y) == 0 and len(t) == 6
    batch = next(iter(torch.utils.data.DataLoader(t, batch_size=4)))
    assert batch[0].shape == (4, 1, 8, 8)
    soft = condense.load(tmp_path / "s.h5", soft=True)
    assert soft[1][1].shape == (3,)
    # pixels = images * std + mean (0.25 and 0.5 in make_set), then clamped to [0, 1]
    assert torch.allclose(t.preprocess.to_pixels(t.images, clamp=False), t.images * 0.25 + 0.5)
    assert torch.equal(t.to_pixels(), (t.images * 0.25 + 0.5).clamp(0, 1))
    assert t.stored_images() == 2 and t.counts() == [2, 2, 2]


def corrupt(path, how):
    with h5py.File(path, "r+") as f:
        if how == "foreign":
            f.attrs["format"] = "something-else"
        elif how == "newer":
            f.attrs["format_version"] = FORMAT_VERSION + 1
        elif how == "nan":
            d = f["images"][...]
            d[0, 0, 0, 0] = np.nan
            f["images"][...] = d
        elif how == "labels":
            f["labels"][0] = 99
        elif how == "shape":
            f.attrs["height"] = 9
        elif how == "missing":
            del f["labels"]
        elif how == "unversioned":
            del f.attrs["format_version"]
        elif how == "compact-nan":
            d = f["compact/images"][...]
            d[0, 0, 0, 0] = np.inf
            f["compact/images"][...] = d


@pytest.mark.parametrize("how,needle", [("foreign", "not a condense synthetic set"), ("newer", "newer condense"),
                                        ("nan", "NaN"), ("labels", "outside"), ("shape", "shape"),
                                        ("missing", "missing"), ("unversioned", "format_version"),
                                        ("compact-nan", "/compact/images")])
def test_corrupt_or_foreign_files_are_refused_with_the_file_named(tmp_path, how, needle):
    path = make_set().save(tmp_path / "s.h5")
    corrupt(path, how)
    with pytest.raises(CondenseError) as e:
        condense.load(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_truncated_and_non_hdf5_files_are_refused(tmp_path):
    path = make_set().save(tmp_path / "s.h5")
    data = path.read_bytes()
    (tmp_path / "half.h5").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.h5").write_text("hello")
    for name in ("half.h5", "text.h5", "absent.h5"):
        with pytest.raises(CondenseError) as e:
            condense.load(tmp_path / name)
        assert name in str(e.value)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["images"] = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(CondenseError, match="not a condense synthetic set"):
        condense.load(tmp_path / "plain.h5")


def test_inconsistent_set_is_not_written_and_nothing_half_written_remains(tmp_path):
    s = make_set()
    s.labels[0] = 5  # out of range for 3 classes
    with pytest.raises(CondenseError):
        s.save(tmp_path / "bad.h5")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    good = make_set()
    path = good.save(tmp_path / "s.h5")
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(RuntimeError):
        make_set().save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]


def test_exporters_write_the_fields_other_tools_read(tmp_path):
    s = make_set()
    out = export_pt(s, tmp_path / "pt")
    assert torch.equal(torch.load(out / "images_best.pt"), s.images)
    assert torch.equal(torch.load(out / "labels_best.pt"), s.soft_labels)
    assert torch.equal(torch.load(out / "hard_labels_best.pt"), s.labels)
    assert float(torch.load(out / "lr_best.pt")) == pytest.approx(s.lr)
    plain = make_set(extras=False)
    out2 = export_pt(plain, tmp_path / "pt2")
    assert torch.equal(torch.load(out2 / "labels_best.pt"), plain.labels) and not (out2 / "lr_best.pt").exists()
    folder = export_imagefolder(s, tmp_path / "folder")
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["000_c0", "001_c1", "002_c2"]
    assert len(list((folder / "000_c0").glob("*.png"))) == 2
    grid = save_grid(s, tmp_path / "grid.png", per_class=2, upscale=1)
    from PIL import Image

    assert Image.open(grid).size == (2 * 12, 3 * 12)


def test_export_never_deletes_a_folder_it_did_not_write(tmp_path):
    s = make_set()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(CondenseError, match="refusing to replace"):
        export_pt(s, mine)
    assert (mine / "thesis.tex").read_text() == "precious"
    out = export_pt(s, tmp_path / "out")
    export_pt(s, out)  # an earlier export may be replaced
    assert (out / "images_best.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]  # no temporary or old folder left


def test_written_files_are_world_readable_like_any_other(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = make_set().save(tmp_path / "s.h5")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_unwritable_destination_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CondenseError, match="Cannot write"):
        make_set().save(tmp_path / "file" / "s.h5")
