"""Folder datasets without the real ImageNet: a generated JPEG tree read lazily and in memory, the cached
file index, seeding across decode-worker counts, Tiny-ImageNet and ImageNet layouts, and class manifests."""
import json
import os
import time

import numpy as np
import pytest
import torch

import condense
from condense.data import load_dataset
from condense.errors import CondenseError
from condense.runtime import make_generator
from test_cli import cli  # the command line in-process

MODES = ("RGB", "L", "RGBA", "P", "CMYK")


def _image(path, i, size):
    from PIL import Image

    rng = np.random.default_rng(i)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    mode = MODES[i % len(MODES)]
    img = img.convert(mode)
    if mode in ("RGBA", "P"):
        img.save(path.with_suffix(".png"))
    else:
        img.save(path.with_suffix(".jpg" if i % 2 else ".JPEG"), quality=90)


def make_tree(root, classes, per_class=6, val=2):
    """root/{train,val}/<class>/ with mixed sizes and modes; directory times set in the past (so the
    index cache is trusted at once)."""
    n = 0
    for split, k in (("train", per_class), ("val", val)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(k):
                _image(d / f"{c}_{i}", n, (20 + 7 * (n % 4), 18 + 5 * (n % 3)))
                n += 1
    age(root)
    return root


def age(root):
    past = time.time() - 60
    for here, _, _ in os.walk(root):
        os.utime(here, (past, past))


def test_lazy_and_in_memory_see_the_same_pixels_and_draws_do_not_depend_on_workers(tmp_path):
    root = make_tree(tmp_path / "tree", ["ant", "bee", "cat"])
    mem = load_dataset(f"imagefolder:{root}@16", lazy=False)
    from condense.folders import LazyImages

    assert isinstance(mem.train.images, torch.Tensor) and mem.train.images.shape == (18, 3, 16, 16)
    for workers in (0, 1, 2):
        lazy = load_dataset(f"imagefolder:{root}@16", lazy=True, workers=workers)
        assert isinstance(lazy.train.images, LazyImages) and lazy.train.images.shape == (18, 3, 16, 16)
        assert torch.equal(lazy.train.images[torch.arange(18)], mem.train.images)
        assert torch.equal(lazy.train.labels, mem.train.labels) and lazy.info.class_ids == ["ant", "bee", "cat"]
        a = lazy.images_of(1, 4, make_generator(7))
        assert torch.equal(a, mem.images_of(1, 4, make_generator(7)))
        test = torch.cat([x for x, _ in lazy.test_batches(4)])
        assert torch.equal(test, torch.cat([x for x, _ in mem.test_batches(4)]))
    rest, (val_x, val_y) = lazy.holdout(2, make_generator(0))  # a lazy split stays lazy when split further
    assert isinstance(rest.train.images, LazyImages) and len(rest.train.images) == 12 and val_x.shape[0] == 6
    with pytest.raises(CondenseError, match="--zca needs every training image"):
        load_dataset(f"imagefolder:{root}@16", lazy=True, zca=True)


def test_the_file_index_is_cached_and_rebuilt_when_a_folder_changes(tmp_path, monkeypatch):
    import condense.folders as folders

    root = make_tree(tmp_path / "tree", ["ant", "bee"])
    assert len(load_dataset(f"imagefolder:{root}@16", lazy=True).train.labels) == 12
    assert list((tmp_path / "home" / ".cache" / "condense" / "index").glob("imagefolder-*.npz"))
    built = []
    real_build = folders.index_class_folders
    monkeypatch.setattr(folders, "index_class_folders", lambda *a, **k: built.append(a) or real_build(*a, **k))
    assert len(load_dataset(f"imagefolder:{root}@16", lazy=True).train.labels) == 12 and not built  # from the cache
    _image(root / "train" / "bee" / "new", 99, (30, 30))
    age(root)
    os.utime(root / "train" / "bee", (time.time() - 30, time.time() - 30))  # the folder's time changed
    assert len(load_dataset(f"imagefolder:{root}@16", lazy=True).train.labels) == 13 and built
    # a damaged or hostile cache file is rebuilt, never trusted: paths leaving the folder are refused
    for f in (tmp_path / "home" / ".cache" / "condense" / "index").glob("imagefolder-*.npz"):
        with open(f, "wb") as out:
            np.savez(out, format=np.int64(1), files=np.array([b"../../etc/passwd"]), labels=np.array([0]),
                     dirs=np.array([b"."]), mtimes=np.array([0]), skipped=np.int64(0), built_ns=np.int64(time.time_ns()))
    built.clear()
    assert len(load_dataset(f"imagefolder:{root}@16", lazy=True).train.labels) == 13 and built
    # a class removed from the training split: the test split's cached labels must not be reused
    import shutil

    shutil.rmtree(root / "train" / "bee")
    age(root)
    real = load_dataset(f"imagefolder:{root}@16", lazy=True)
    assert real.info.class_ids == ["ant"] and real.test.labels.tolist() == [0, 0]


def test_a_broken_file_in_a_lazy_split_is_a_clear_error_when_it_is_drawn(tmp_path):
    root = make_tree(tmp_path / "tree", ["ant", "bee"])
    (root / "train" / "ant" / "zz_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(CondenseError, match="zz_broken.jpg cannot be read as an image"):  # (sampled for the mean)
        real = load_dataset(f"imagefolder:{root}@16", lazy=True, workers=2)
        real.train.images[torch.arange(len(real.train.labels))]


def _tiny(root):
    base = root / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]
    n = 0
    for w in wnids:
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(3):
            _image(d / f"{w}_{i}", n, (64, 64))
            n += 1
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n01", "n03", "n02", "n01"]):
        _image(base / "val" / "images" / f"val_{i}", 50 + i, (64, 64))
        lines.append(f"{next((base / 'val' / 'images').glob(f'val_{i}.*')).name}\t{w}\t0\t0\t10\t10")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tsalamander\nn03\tbullfrog\n")
    age(base)
    return root


def test_tiny_imagenet_layout_is_read_lazily_with_wordnet_ids_and_names(tmp_path):
    real = load_dataset("tiny-imagenet", data_root=_tiny(tmp_path / "data"))
    from condense.folders import LazyImages

    assert isinstance(real.train.images, LazyImages) and real.info.class_ids == ["n01", "n02", "n03"]
    assert real.info.class_names == ["goldfish", "salamander", "bullfrog"]
    assert real.test.labels.tolist() == [0, 2, 1, 0] and real.get(torch.tensor([0, 5])).shape == (2, 3, 64, 64)
    assert real.info.manifest()[0] == (0, "goldfish", "n01")


def test_imagenet_layout_with_flat_val_and_its_labels(tmp_path):
    root = tmp_path / "imagenet"
    for i, w in enumerate(["n01440764", "n01443537"]):
        (root / "train" / w).mkdir(parents=True)
        for j in range(2):
            _image(root / "train" / w / f"{w}_{j}", 4 * i + j, (40, 30))
    (root / "val").mkdir()
    for j in range(3):
        _image(root / "val" / f"ILSVRC2012_val_0000000{j + 1}", 20 + j, (30, 40))
    with pytest.raises(CondenseError, match="neither the devkit"):
        load_dataset(f"imagenet:{root}@16")
    names = sorted(p.stem for p in (root / "val").iterdir())
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"{n},{w} 1 2 3 4\n" for n, w in zip(names, ["n01443537", "n01440764", "n01443537"])))
    (root / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    real = load_dataset(f"imagenet:{root}@16")
    assert real.test.labels.tolist() == [1, 0, 1] and real.info.class_names == ["tench", "goldfish"]
    assert real.info.size == 16 and real.get(torch.tensor([3])).shape == (1, 3, 16, 16)


def test_imagenet_devkit_labels_follow_the_devkit_ids_not_the_folder_order(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "imagenet"
    wnids = ["n01440764", "n01443537"]
    for i, w in enumerate(wnids):
        (root / "train" / w).mkdir(parents=True)
        _image(root / "train" / w / f"{w}_0", i, (20, 20))
    (root / "val").mkdir()
    for j in range(2):
        _image(root / "val" / f"ILSVRC2012_val_0000000{j + 1}", 30 + j, (20, 20))
    dev = root / "ILSVRC2012_devkit_t12" / "data"
    dev.mkdir(parents=True)
    synsets = np.array([(1, "n01443537", "goldfish, Carassius auratus", 0), (2, "n01440764", "tench", 0),
                        (3, "n00001740", "entity", 2)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    scipy_io.savemat(str(dev / "meta.mat"), {"synsets": synsets})
    (dev / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n")  # devkit id 1 is goldfish = label 1
    real = load_dataset(f"imagenet:{root}@16")
    assert real.test.labels.tolist() == [0, 1] and real.info.class_names == ["tench", "goldfish"]


# ---- class manifests --------------------------------------------------------------------------------


def _distill(monkeypatch, capsys, root, out):
    code, _, err = cli(monkeypatch, capsys, "distill", "--algo", "dm", "--ipc", "1", "--iters", "2", "--dataset",
                       f"imagefolder:{root}@16", "--out", out, "--quiet")
    assert code == 0, err
    return out


def test_a_class_order_mismatch_is_refused_and_a_class_map_evaluates_it(monkeypatch, capsys, tmp_path):
    a = make_tree(tmp_path / "a", ["ant", "bee", "cat"])
    out = _distill(monkeypatch, capsys, a, tmp_path / "dm.h5")
    s = condense.load(out)
    assert s.meta.class_ids == ["ant", "bee", "cat"] and len(s.meta.classes_sha256) == 16
    # the same images, class folders named so that they sort in another order
    b = tmp_path / "b"
    for split in ("train", "val"):
        for old, new in (("ant", "3_ant"), ("bee", "1_bee"), ("cat", "2_cat")):
            (b / split).mkdir(parents=True, exist_ok=True)
            os.rename(a / split / old, b / split / new)
    age(b)
    code, _, err = cli(monkeypatch, capsys, "eval", out, "--dataset", f"imagefolder:{b}@16", "--runs", "1", "--epochs",
                       "1", "--quiet")
    assert code == 1 and "class order does not match" in err and "label 0 is 'ant' in the set but '1_bee'" in err
    with pytest.raises(CondenseError, match="class order does not match"):
        condense.load(out, dataset=f"imagefolder:{b}@16")
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"ant": "3_ant", "bee": "1_bee", "cat": "2_cat"}))
    mapped = condense.load(out, dataset=f"imagefolder:{b}@16", class_map=cmap)
    assert mapped.labels.tolist() == [2, 0, 1] and mapped.meta.class_ids == ["1_bee", "2_cat", "3_ant"]
    assert torch.equal(mapped.images, s.images)
    code, text, err = cli(monkeypatch, capsys, "eval", out, "--dataset", f"imagefolder:{b}@16", "--class-map", cmap,
                          "--runs", "1", "--epochs", "1", "--quiet")
    assert code == 0, err
    code, _, err = cli(monkeypatch, capsys, "export", out, "--to", "imagefolder", tmp_path / "exp", "--dataset",
                       f"imagefolder:{b}@16", "--class-map", cmap)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "exp").iterdir() if p.is_dir()) == ["000_1_bee", "001_2_cat", "002_3_ant"]
    # a map that is not one-to-one, or names a class nobody has, is refused with the reason
    cmap.write_text(json.dumps({"ant": "1_bee", "bee": "1_bee", "cat": "2_cat"}))
    with pytest.raises(CondenseError, match="not one-to-one"):
        condense.load(out, dataset=f"imagefolder:{b}@16", class_map=cmap)
    cmap.write_text(json.dumps({"wasp": "1_bee"}))
    with pytest.raises(CondenseError, match="'wasp' is not a class of the set"):
        condense.load(out, dataset=f"imagefolder:{b}@16", class_map=cmap)


def test_remap_moves_soft_label_columns_and_inverts(tmp_path):
    from condense.classes import remap
    from condense.data import DatasetInfo
    from condense.synthetic import SetMeta, SyntheticSet

    info = DatasetInfo("x", 3, 1, 4, (0.5,), (0.5,), ["a", "b", "c"])
    meta = SetMeta("x", 3, ["a", "b", "c"], 1, 1, 4, 4, (0.5,), (0.5,), class_ids=["a", "b", "c"],
                   classes_sha256=info.classes_sha256)
    soft = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 5.0]])
    s = SyntheticSet(torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2]), meta, soft)
    perm = torch.tensor([2, 0, 1])
    target = DatasetInfo("x", 3, 1, 4, (0.5,), (0.5,), ["b", "c", "a"])
    r = remap(s, perm, target)
    assert r.labels.tolist() == [2, 0, 1] and torch.equal(r.soft_labels.argmax(1), r.labels)
    back = remap(r, torch.argsort(perm), info)
    assert torch.equal(back.soft_labels, soft) and back.labels.tolist() == [0, 1, 2]
    r.save(tmp_path / "r.h5")
    assert condense.load(tmp_path / "r.h5").meta.class_ids == ["b", "c", "a"]


def test_a_tampered_class_manifest_is_refused(tmp_path, real):
    import h5py

    from condense.synthetic import SetMeta, SyntheticSet

    info = real.info
    meta = SetMeta(info.name, 10, list(info.class_names), 1, 1, 28, 28, info.mean, info.std,
                   class_ids=list(info.class_ids), classes_sha256=info.classes_sha256)
    SyntheticSet(torch.zeros(10, 1, 28, 28), torch.arange(10), meta).save(tmp_path / "s.h5")
    assert condense.load(tmp_path / "s.h5", dataset=real).meta.classes_sha256 == info.classes_sha256
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        ids = json.loads(f.attrs["class_ids"])
        ids[0], ids[1] = ids[1], ids[0]
        f.attrs["class_ids"] = json.dumps(ids)
    with pytest.raises(CondenseError, match="class manifest"):
        condense.load(tmp_path / "s.h5")


def test_distill_and_evaluate_on_a_lazy_folder(monkeypatch, capsys, tmp_path):
    root = make_tree(tmp_path / "tree", [f"c{i}" for i in range(4)], per_class=5)
    monkeypatch.setattr("condense.folders.IN_MEMORY_BYTES", 0)  # the small tree takes the lazy path
    out = _distill(monkeypatch, capsys, root, tmp_path / "dm.h5")
    code, text, err = cli(monkeypatch, capsys, "eval", out, "--runs", "1", "--epochs", "2", "--baseline", "random",
                          "--quiet")
    assert code == 0, err and "random (real subset)" in text


# ---- pretrained ImageNet teachers (torchvision's networks, weights the user brings) ----------------


@pytest.mark.parametrize("arch", ["tv_resnet18", "tv_shufflenet_v2_x1_0", "tv_densenet121"])
def test_torchvision_networks_compute_what_torchvision_computes(arch):
    from condense.models import build_model

    net = build_model(arch, 3, 4, 32, seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(net(x), net.net(x), atol=1e-5)
    with pytest.raises(CondenseError, match="takes RGB images"):
        build_model(arch, 1, 4, 32)


def _imagenet_tree(root, wnids=("n01440764", "n01443537", "n01484850")):
    for split, k in (("train", 2), ("val", 1)):
        for w in wnids:
            (root / split / w).mkdir(parents=True)
            for j in range(k):
                _image(root / split / w / f"{w}_{j}", hash((split, w, j)) % 1000, (40, 36))
    age(root)
    return root


def test_a_pretrained_committee_is_imported_once_and_distils_with_the_imagenet_preset(monkeypatch, capsys, tmp_path):
    import torchvision

    root = _imagenet_tree(tmp_path / "imagenet")
    weights = tmp_path / "weights"
    weights.mkdir()
    for arch, file in (("resnet18", "tv_resnet18.pth"), ("resnet50", "resnet50-0676ba61.pth"),
                       ("shufflenet_v2_x1_0", "shufflenetv2_x1-5666bf0f80.pth"), ("mobilenet_v2", "tv_mobilenet_v2.pt")):
        torch.save(getattr(torchvision.models, arch)(num_classes=3).state_dict(), weights / file)
    dense = torchvision.models.densenet121(num_classes=3).state_dict()  # saved with the old 'norm.1' names
    old = {k.replace("norm1", "norm.1").replace("conv2", "conv.2") if "denselayer" in k else k: v for k, v in dense.items()
           if not k.endswith("num_batches_tracked")}  # the 2017 file predates BatchNorm's counter
    torch.save({"state_dict": {f"module.{k}": v for k, v in old.items()}}, weights / "densenet121-a639ec97.pth")
    ds = f"imagenet:{root}@32"
    out = tmp_path / "cvdd.h5"
    distill = ("distill", "--algo", "cvdd", "--preset", "paper", "--dataset", ds, "--ipc", "1", "--set",
               "recover_iters=2", "--set", "relabel_epochs=1", "--set", "patch_pool=2", "--out", out, "--quiet")
    code, _, err = cli(monkeypatch, capsys, *distill)
    assert code == 1 and "has not been imported" in err and "--teacher-weights" in err
    code, text, err = cli(monkeypatch, capsys, "teachers", "--dataset", ds, "--committee", "cvdd", "--teacher-weights",
                          weights, "--quiet")
    assert code == 0, err
    assert "tv_densenet121" in text and "tv_resnet50" in text
    code, _, err = cli(monkeypatch, capsys, *distill)
    assert code == 0, err
    s = condense.load(out)
    assert s.meta.config["prior"] == "equal" and s.meta.config["jitter"] == 32 and s.meta.class_ids[0] == "n01440764"
    members = json.loads(s.meta.teacher)["members"]
    assert len(members) == 5
    # weights of another network, or a file that is more than tensors, are refused with the reason
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), weights / "tv_resnet18.pth")
    code, _, err = cli(monkeypatch, capsys, "teachers", "--dataset", ds, "--committee", "infer", "--teacher-weights",
                       weights, "--quiet")
    assert code == 1 and "does not fit tv_resnet18" in err and "of another shape" in err
    torch.save({"fc.weight": torch.zeros(3, 512), "note": object()}, weights / "tv_resnet18.pth")
    code, _, err = cli(monkeypatch, capsys, "teachers", "--dataset", ds, "--committee", "infer", "--teacher-weights",
                       weights, "--quiet")
    assert code == 1 and "does not unpickle" in err
    code, _, err = cli(monkeypatch, capsys, "teachers", "--dataset", ds, "--arch", "convnet", "--teacher-weights",
                       weights, "--epochs", "1", "--quiet")
    assert code == 1 and "pretrained committee" in err
