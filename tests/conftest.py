"""Shared fixtures: a tiny Fashion-MNIST-shaped dataset written as real IDX files.

Each class c has a bright 6x6 patch at a class-specific place plus noise, so tiny networks can
learn it in a few steps; 24 train and 8 test images per class keep every test fast.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(2)

N_TRAIN, N_TEST = 24, 8


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fake_split(n_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for c in range(10):
        x = rng.integers(0, 60, size=(n_per_class, 28, 28))
        r, col = 2 + 2 * (c // 5) * 5, 2 + 5 * (c % 5)
        x[:, r:r + 6, col:col + 6] = 200 + rng.integers(0, 55, size=(n_per_class, 6, 6))
        xs.append(x)
        ys.append(np.full(n_per_class, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(len(y))
    return x[order], y[order]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "fashion-mnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    xtr, ytr = fake_split(N_TRAIN, rng)
    xte, yte = fake_split(N_TEST, rng)
    write_idx(root / "train-images-idx3-ubyte.gz", xtr)
    write_idx(root / "train-labels-idx1-ubyte.gz", ytr)
    write_idx(root / "t10k-images-idx3-ubyte.gz", xte)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", yte)
    return root.parent


@pytest.fixture(scope="session")
def real(data_root):
    from condense.data import load_dataset

    return load_dataset("fashion-mnist", data_root=data_root)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's real caches or data."""
    monkeypatch.setenv("CONDENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CONDENSE_DATA", raising=False)
