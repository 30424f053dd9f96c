"""Dataset registry and real data as class-indexed tensors.

Real images are kept as uint8 `[N, C, H, W]` (4x smaller than float, so even Tiny-ImageNet fits
on a GPU) and turned into model-input space per batch by a `Preprocess`: mean/std
normalization, or ZCA whitening (kornia, eps 0.1, fitted on the training split in [0, 1] pixel
space as in MTT/DATM). The preprocess travels with every synthetic set, so evaluation and
display invert it exactly.

Files are looked for under `--data-root`, then `$CONDENSE_DATA`, then `~/.cache/condense/data`,
then the system location a distribution package installs (Debian's `dataset-fashion-mnist`
puts the gzipped IDX files in `/usr/share/datasets/fashion-mnist`).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from condense.errors import CondenseError
from condense.io import tensor_digest
from condense.registry import Registry


@dataclass
class DatasetInfo:
    """What a dataset is, independent of where its files live."""

    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    allow_flip: bool = True  # digits (MNIST, SVHN) must not be mirrored (DC README)
    class_ids: list[str] = field(default_factory=list)  # stable identifiers (WordNet ids); default: the names

    def __post_init__(self) -> None:
        self.class_ids = list(self.class_ids or self.class_names)

    def manifest(self) -> list[tuple[int, str, str]]:
        """The class list as (index, name, identifier): what label i means."""
        return [(i, n, c) for i, (n, c) in enumerate(zip(self.class_names, self.class_ids))]

    @property
    def classes_sha256(self) -> str:
        return classes_digest(self.class_ids)


def classes_digest(class_ids: list[str]) -> str:
    """Checksum of a class order: label i is class_ids[i] (names are for display and do not count)."""
    return hashlib.sha256("\n".join(f"{i}\t{c}" for i, c in enumerate(class_ids)).encode()).hexdigest()[:16]


@dataclass
class Split:
    images: Tensor  # uint8 [N, C, H, W] (a `folders.LazyImages` for a lazily read folder)
    labels: Tensor  # int64 [N]


@dataclass
class Zca:
    """A fitted ZCA whitening: `z = (x - mean) @ matrix`, `x = z @ inverse + mean` on flattened
    [0, 1] pixels."""

    mean: Tensor  # [1, D]
    matrix: Tensor  # [D, D]
    inverse: Tensor  # [D, D]
    eps: float = 0.1

    @staticmethod
    def fit(pixels: Tensor, eps: float = 0.1) -> "Zca":
        """pixels: [N, C, H, W] float in [0, 1]."""
        import kornia

        z = kornia.enhance.ZCAWhitening(eps=eps, compute_inv=True)
        z.fit(pixels.float())
        return Zca(z.mean_vector.detach(), z.transform_matrix.detach(), z.transform_inv.detach(), eps)

    def to(self, device: torch.device | str) -> "Zca":
        return Zca(self.mean.to(device), self.matrix.to(device), self.inverse.to(device), self.eps)


@dataclass
class Preprocess:
    """Pixels in [0, 1] <-> model-input space ('normalized' or 'zca')."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    zca: Zca | None = None

    @property
    def pixel_space(self) -> str:
        return "zca" if self.zca is not None else "normalized"

    def _stats(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """mean/std as [1, C, 1, 1] tensors on `device`, made once per device (no per-batch copies)."""
        cache = self.__dict__.setdefault("_cache", {})
        if device not in cache:
            cache[device] = (torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                             torch.tensor(self.std, device=device).view(1, -1, 1, 1))
        return cache[device]

    def __call__(self, pixels: Tensor) -> Tensor:
        """pixels: [B, C, H, W], uint8 or float in [0, 1] -> model-input space, float32.
        Differentiable for float input (methods that learn pixels use it)."""
        x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
        if self.zca is not None:
            z = self.zca
            return ((x.flatten(1) - z.mean.to(x.device)) @ z.matrix.to(x.device)).view_as(x)
        mean, std = self._stats(x.device)
        return (x - mean) / std

    def to_pixels(self, x: Tensor, clamp: bool = True) -> Tensor:
        """Model-input space -> pixels in [0, 1] (clamped unless asked not to)."""
        x = x.float()
        if self.zca is not None:
            z = self.zca
            out = (x.flatten(1) @ z.inverse.to(x.device) + z.mean.to(x.device)).view_as(x)
        else:
            mean, std = self._stats(x.device)
            out = x * std + mean
        return out.clamp(0, 1) if clamp else out


@dataclass
class RealData:
    """The real training and test splits, indexed by class, on one device.

    `images_of(c, n, generator)` samples n model-input images of class c; `get(idx)` returns
    arbitrary training images; `test_batches(b)` iterates over the test split.
    """

    info: DatasetInfo
    train: Split
    test: Split
    pre: Preprocess
    class_index: list[Tensor] = field(default_factory=list)  # per class: int64 indices into train
    subset: str = ""  # "" for the whole training split; else what was held out (networks trained on it differ)

    def __post_init__(self) -> None:
        if not self.class_index:
            self.class_index = [torch.nonzero(self.train.labels == c).flatten()
                                for c in range(self.info.num_classes)]

    @property
    def device(self) -> torch.device:
        return self.train.images.device

    def to(self, device: torch.device | str) -> "RealData":
        pre = Preprocess(self.pre.mean, self.pre.std, self.pre.zca.to(device) if self.pre.zca else None)
        return RealData(self.info, Split(self.train.images.to(device), self.train.labels.to(device)),
                        Split(self.test.images.to(device), self.test.labels.to(device)), pre,
                        [i.to(device) for i in self.class_index], self.subset)

    def count(self, c: int) -> int:
        return int(self.class_index[c].numel())

    def sample_indices(self, c: int, n: int, generator: torch.Generator) -> Tensor:
        """n training indices of class c: without replacement when the class has enough
        images, with replacement otherwise. Drawn on the generator's device."""
        idx = self.class_index[c]
        m = idx.numel()
        if n <= m:
            pick = torch.randperm(m, generator=generator, device=generator.device)[:n]
        else:
            pick = torch.randint(m, (n,), generator=generator, device=generator.device)
        return idx[pick if pick.device == idx.device else pick.to(idx.device, non_blocking=True)]

    def images_of(self, c: int, n: int, generator: torch.Generator) -> Tensor:
        """[n, C, H, W] model-input images of class c."""
        return self.get(self.sample_indices(c, n, generator))

    def pixels_of(self, c: int, n: int, generator: torch.Generator) -> Tensor:
        """[n, C, H, W] images of class c as float pixels in [0, 1]."""
        return self.train.images[self.sample_indices(c, n, generator)].float() / 255.0

    def get(self, idx: Tensor) -> Tensor:
        """Training images `idx` in model-input space."""
        return self.pre(self.train.images[idx if idx.device == self.device else idx.to(self.device)])

    def random_subset(self, ipc: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """`ipc` random training images per class (the random baseline): images, labels."""
        idx = torch.cat([self.sample_indices(c, ipc, generator) for c in range(self.info.num_classes)])
        return self.get(idx), self.train.labels[idx]

    def holdout(self, per_class: int, generator: torch.Generator) -> tuple["RealData", tuple[Tensor, Tensor]]:
        """Split off `per_class` training images of every class as a validation set (seeded).
        Returns the remaining training data and (validation images in model-input space, labels)."""
        keep, val = [], []
        for c in range(self.info.num_classes):
            idx = self.class_index[c]
            if idx.numel() <= per_class:
                raise CondenseError(f"Class {c} has only {idx.numel()} training images; cannot hold out "
                                    f"{per_class} for validation. Use a smaller --val-size.")
            perm = idx[torch.randperm(idx.numel(), generator=generator).to(idx.device)]
            val.append(perm[:per_class])
            keep.append(perm[per_class:])
        keep_idx, val_idx = torch.cat(keep).sort().values, torch.cat(val)
        images = self.train.images
        if getattr(images, "lazy", False) and val_idx.numel() * images.shape[1:].numel() * 4 > 2 << 30:
            raise CondenseError(f"Holding out {per_class} images per class of {self.info.name} would decode "
                                f"{val_idx.numel()} validation images into memory (over 2 GiB as float32). Use a "
                                f"smaller --val-size (or val_per_class) for a dataset read lazily.")
        h = hashlib.sha256(val_idx.cpu().numpy().tobytes()).hexdigest()[:12]
        kept = images.take(keep_idx) if getattr(images, "lazy", False) else images[keep_idx]
        rest = RealData(self.info, Split(kept, self.train.labels[keep_idx]), self.test, self.pre,
                        subset=f"{self.subset}without {per_class}/class held out [{h}]")
        return rest, (self.get(val_idx), self.train.labels[val_idx])

    def with_preprocess(self, pre: Preprocess) -> "RealData":
        """The same images seen through another preprocess (a synthetic set's own ZCA/stats)."""
        if pre.zca is not None:
            pre = Preprocess(pre.mean, pre.std, pre.zca.to(self.device))
        return RealData(self.info, self.train, self.test, pre, self.class_index, self.subset)

    def test_digest(self) -> str:
        """The test split's identity (a lazy one by its files, without decoding them)."""
        x = self.test.images
        if getattr(x, "lazy", False):
            return x.digest() + tensor_digest(self.test.labels)[:16]
        return tensor_digest(x, self.test.labels)

    def test_batches(self, batch: int = 256) -> Iterator[tuple[Tensor, Tensor]]:
        for s in range(0, self.test.labels.numel(), batch):
            yield self.pre(self.test.images[s:s + batch]), self.test.labels[s:s + batch]


# --------------------------------------------------------------------------------------------
# where files are looked for

SYSTEM_DIRS = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist"],
               "mnist": ["/usr/share/datasets/mnist"]}
APT_HINT = {"fashion-mnist": "apt-get install -y dataset-fashion-mnist"}


def search_roots(data_root: str | os.PathLike | None) -> list[Path]:
    roots: list[Path] = []
    if data_root:
        roots.append(Path(data_root).expanduser())
    if os.environ.get("CONDENSE_DATA"):
        roots.append(Path(os.environ["CONDENSE_DATA"]).expanduser())
    roots.append(Path("~/.cache/condense/data").expanduser())
    return roots


def missing_dataset(name: str, looked: list[Path], extra: str = "", downloadable: bool = True) -> CondenseError:
    how = [f"pass --download to fetch it with torchvision into {looked[0]}"] if downloadable else []
    if name in APT_HINT:
        how.insert(0, f"run `{APT_HINT[name]}` (as root; run `apt-get update` first)")
    where = ", ".join(str(p) for p in looked)
    get = f"To get it, {' or '.join(how)}; or point" if how else "Point"
    return CondenseError(
        f"Dataset '{name}' was not found. Looked in: {where}.{(' ' + extra) if extra else ''} "
        f"{get} --data-root (or $CONDENSE_DATA) at a folder that has it.")


# --------------------------------------------------------------------------------------------
# the registry: a loader returns (train Split, test Split, DatasetInfo)

Loader = Callable[[list[Path], bool, str], tuple[Split, Split, DatasetInfo]]
DATASETS: Registry[Loader] = Registry("dataset")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the MNIST family's format.

    The values are decompressed straight into their final array (no intermediate bytes object
    or copy): with the allocator tuned to keep freed memory, temporaries would stay resident."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
            if zero != 0 or dtype != 0x08:
                raise CondenseError(f"{path} is not an unsigned-byte IDX file. Delete it and fetch the dataset "
                                    f"again.")
            shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            arr = np.empty(shape, dtype=np.uint8)
            view, got = memoryview(arr.reshape(-1)), 0
            while got < arr.size:
                n = f.readinto(view[got:got + (1 << 20)])  # 1 MB pieces: gzip decompresses a read into a temporary
                if not n:
                    break
                got += n
    except (OSError, EOFError, struct.error, MemoryError, ValueError) as e:  # MemoryError/ValueError: absurd header
        raise CondenseError(f"{path} cannot be read as an IDX file ({e}). Delete it and fetch the dataset "
                            f"again.") from None
    if got != arr.size:
        raise CondenseError(f"{path} is truncated ({got} of {arr.size} values). "
                            f"Delete it and fetch the dataset again.")
    return arr


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _mnist_like(name: str, tv_folder: str, class_names: list[str], mean: float, std: float,
                allow_flip: bool) -> Loader:
    def load(roots: list[Path], download: bool, spec: str) -> tuple[Split, Split, DatasetInfo]:
        info = DatasetInfo(name, 10, 1, 28, (mean,), (std,), class_names, allow_flip)
        dirs: list[Path] = []
        for r in roots + [Path(p) for p in SYSTEM_DIRS.get(name, [])]:
            dirs += [r, r / name, r / tv_folder / "raw"]
        stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"]
        found = [_find_idx(dirs, s) for s in stems]
        if not all(found) and download:
            import torchvision

            cls = getattr(torchvision.datasets, tv_folder)
            roots[0].mkdir(parents=True, exist_ok=True)
            cls(str(roots[0]), train=True, download=True)
            cls(str(roots[0]), train=False, download=True)
            found = [_find_idx(dirs, s) for s in stems]
        if not all(found):
            looked = roots + [Path(p) for p in SYSTEM_DIRS.get(name, [])]
            raise missing_dataset(name, looked, "Expected the four IDX files (train-images-idx3-ubyte[.gz], ...).")
        xtr, ytr, xte, yte = (read_idx(p) for p in found)  # type: ignore[arg-type]
        for x, y, px, py in ((xtr, ytr, found[0], found[1]), (xte, yte, found[2], found[3])):
            if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[1:] != (28, 28):
                raise CondenseError(f"{px} holds {x.shape} images and {py} {y.shape} labels: expected N 28x28 images "
                                    f"and N labels. Delete them and fetch the dataset again.")
            if y.size and int(y.max()) >= 10:
                raise CondenseError(f"{py} has label {int(y.max())}, outside 0-9. Delete it and fetch the dataset again.")
        train = Split(torch.from_numpy(xtr).unsqueeze(1), torch.from_numpy(ytr.astype(np.int64)))
        test = Split(torch.from_numpy(xte).unsqueeze(1), torch.from_numpy(yte.astype(np.int64)))
        return train, test, info

    return load


FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                  "Bag", "Ankle boot"]
DATASETS.register("fashion-mnist")(
    _mnist_like("fashion-mnist", "FashionMNIST", FMNIST_CLASSES, 0.2861, 0.3530, allow_flip=True))
DATASETS.register("mnist")(
    _mnist_like("mnist", "MNIST", [str(i) for i in range(10)], 0.1307, 0.3081, allow_flip=False))


def _torchvision_rgb(name: str, cls_name: str, mean: tuple[float, ...], std: tuple[float, ...],
                     allow_flip: bool = True) -> Loader:
    def load(roots: list[Path], download: bool, spec: str) -> tuple[Split, Split, DatasetInfo]:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)

        def make(root: Path, train: bool, dl: bool):
            if cls_name == "SVHN":
                return cls(str(root), split="train" if train else "test", download=dl)
            return cls(str(root), train=train, download=dl)

        for root in roots:
            try:
                tr, te = make(root, True, False), make(root, False, False)
                break
            except (RuntimeError, FileNotFoundError, OSError):
                continue
        else:
            if not download:
                raise missing_dataset(name, roots)
            roots[0].mkdir(parents=True, exist_ok=True)
            tr, te = make(roots[0], True, True), make(roots[0], False, True)

        def split(ds) -> Split:
            x = torch.from_numpy(np.asarray(ds.data))
            x = x if x.shape[1] == 3 else x.permute(0, 3, 1, 2)  # CIFAR stores NHWC, SVHN NCHW
            y = torch.as_tensor(np.asarray(ds.labels if hasattr(ds, "labels") else ds.targets), dtype=torch.int64)
            return Split(x.contiguous(), y)

        names = list(getattr(tr, "classes", [str(i) for i in range(10)]))
        info = DatasetInfo(name, len(names), 3, 32, mean, std, names, allow_flip)
        return split(tr), split(te), info

    return load


DATASETS.register("cifar10")(_torchvision_rgb("cifar10", "CIFAR10", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)))
DATASETS.register("cifar100")(
    _torchvision_rgb("cifar100", "CIFAR100", (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)))
DATASETS.register("svhn")(
    _torchvision_rgb("svhn", "SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), allow_flip=False))


def channel_stats(x: Tensor, chunk: int = 2048) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of uint8 images in [0, 1], in chunks (a float copy of a whole
    folder would be 4x its size) with float64 sums."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, x.shape[0], chunk):
        f = x[i:i + chunk].float() / 255.0
        total += f.sum((0, 2, 3)).double()
        squares += (f * f).sum((0, 2, 3)).double()
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / m
    std = ((squares - m * mean * mean) / max(m - 1, 1)).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


FOLDER_DATASETS = ("imagefolder", "tiny-imagenet", "imagenet")
for _name in FOLDER_DATASETS:
    DATASETS.register_lazy(_name, "condense.folders")  # registered there, on first use


def load_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool = False,
                 zca: bool = False, device: torch.device | str = "cpu", lazy: bool | None = None,
                 workers: int | None = None) -> RealData:
    """Load a registered dataset by name (`fashion-mnist`, `cifar10`, `imagefolder:PATH`, ...).

    Folder datasets (`condense.folders`) take `lazy` (None: lazy when the decoded training split would
    exceed 2 GiB; tiny-imagenet and imagenet always) and `workers` (decode threads, default one per
    core up to 8); the other datasets are small and always in memory."""
    key, _, spec = name.partition(":")
    loader = DATASETS.get(key)
    folder = {"lazy": lazy, "workers": workers} if key in FOLDER_DATASETS else {}  # the others are small
    train, test, info = loader(search_roots(data_root), download, spec, **folder)
    pre = Preprocess(info.mean, info.std)
    if zca:
        if getattr(train.images, "lazy", False):
            raise CondenseError(f"--zca needs every training image in memory to fit the whitening, and {name} is "
                                f"read lazily ({len(train.images)} images). Use normalization (drop --zca).")
        pre = Preprocess(info.mean, info.std, Zca.fit(train.images.float() / 255.0))
    return RealData(info, train, test, pre).to(device)
