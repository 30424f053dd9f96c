import gzip

import pytest
import torch

from condense.data import Preprocess, load_dataset, read_idx
from condense.errors import CondenseError
from conftest import N_TEST, N_TRAIN


def test_idx_files_load_as_class_indexed_uint8(real):
    assert real.info.name == "fashion-mnist" and real.info.num_classes == 10
    assert real.train.images.dtype == torch.uint8 and real.train.images.shape == (10 * N_TRAIN, 1, 28, 28)
    assert real.test.images.shape == (10 * N_TEST, 1, 28, 28)
    assert [real.count(c) for c in range(10)] == [N_TRAIN] * 10
    for c in range(10):
        assert bool((real.train.labels[real.class_index[c]] == c).all())


def test_images_of_samples_one_class_without_replacement(real):
    g = torch.Generator().manual_seed(0)
    idx = real.sample_indices(3, N_TRAIN, g)
    assert len(set(idx.tolist())) == N_TRAIN and bool((real.train.labels[idx] == 3).all())
    x = real.images_of(3, 5, g)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    more = real.sample_indices(3, N_TRAIN + 5, g)  # more than the class has: with replacement
    assert more.numel() == N_TRAIN + 5


def test_normalization_and_zca_invert_exactly(data_root):
    real = load_dataset("fashion-mnist", data_root=data_root)
    pix = real.train.images[:4].float() / 255
    assert torch.allclose(real.pre.to_pixels(real.pre(real.train.images[:4])), pix, atol=1e-5)
    z = load_dataset("fashion-mnist", data_root=data_root, zca=True)
    assert z.pre.pixel_space == "zca"
    assert torch.allclose(z.pre.to_pixels(z.pre(z.train.images[:4])), pix, atol=1e-4)
    other = Preprocess(z.pre.mean, z.pre.std)
    assert not torch.allclose(z.pre(z.train.images[:4]), other(z.train.images[:4]))


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("condense.data.SYSTEM_DIRS", {"fashion-mnist": [str(tmp_path / "nowhere")]})
    with pytest.raises(CondenseError) as e:
        load_dataset("fashion-mnist", data_root=tmp_path / "empty")
    msg = str(e.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg and "--download" in msg
    assert str(tmp_path / "empty") in msg and str(tmp_path / "nowhere") in msg


def test_unknown_dataset_and_truncated_idx_are_clear_errors(tmp_path):
    with pytest.raises(CondenseError, match="Unknown dataset 'imagenet-21k'"):
        load_dataset("imagenet-21k")
    bad = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with pytest.raises(CondenseError, match="truncated"):
        read_idx(bad)
    huge = tmp_path / "h-idx3-ubyte.gz"  # a header claiming an impossible size is a corrupt file, not a crash
    with gzip.open(huge, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (4_000_000_000).to_bytes(4, "big") * 3)
    with pytest.raises(CondenseError, match="cannot be read as an IDX file"):
        read_idx(huge)


def test_imagefolder_loads_train_and_val(tmp_path):
    from PIL import Image
    import numpy as np

    for split in ("train", "val"):
        for cname in ("cat", "dog"):
            d = tmp_path / "set" / split / cname
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    real = load_dataset(f"imagefolder:{tmp_path / 'set'}@16")
    assert real.info.class_names == ["cat", "dog"] and real.info.size == 16
    assert real.train.images.shape == (6, 3, 16, 16) and real.test.images.shape == (6, 3, 16, 16)
    with pytest.raises(CondenseError, match="different sizes"):
        Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "set" / "train" / "cat" / "odd.png")
        load_dataset(f"imagefolder:{tmp_path / 'set'}")


def _folder(root, classes=("cat", "dog"), n=2):
    from PIL import Image
    import numpy as np

    for split in ("train", "val"):
        for cname in classes:
            d = root / split / cname
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    return root


def test_imagefolder_skips_junk_and_hidden_folders_and_refuses_empty_classes_and_broken_images(tmp_path):
    root = _folder(tmp_path / "we@home")  # an '@' in the path is part of the path
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "dog" / ".hidden").mkdir()
    with pytest.warns(UserWarning, match="skipped 1 files"):
        real = load_dataset(f"imagefolder:{root}")
    assert real.info.class_names == ["cat", "dog"] and real.train.images.shape[0] == 4
    assert load_dataset(f"imagefolder:{root}@12").info.size == 12
    (root / "train" / "bird").mkdir()
    with pytest.raises(CondenseError, match="bird holds no image"):
        load_dataset(f"imagefolder:{root}")
    (root / "train" / "bird").rmdir()
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CondenseError, match="broken.png cannot be read as an image"):
        load_dataset(f"imagefolder:{root}")


def test_idx_files_whose_counts_or_labels_do_not_fit_are_refused(tmp_path, data_root):
    import shutil

    import numpy as np
    from conftest import write_idx

    root = tmp_path / "fashion-mnist"
    shutil.copytree(data_root / "fashion-mnist", root)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(N_TRAIN * 10 - 1))
    with pytest.raises(CondenseError, match="N 28x28 images and N labels"):
        load_dataset("fashion-mnist", data_root=tmp_path)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.full(N_TRAIN * 10, 12))
    with pytest.raises(CondenseError, match="label 12, outside 0-9"):
        load_dataset("fashion-mnist", data_root=tmp_path)
