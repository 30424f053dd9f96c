"""Datasets that are folders of image files: `imagefolder:PATH[@SIZE]`, `tiny-imagenet` and
`imagenet:PATH[@SIZE]`.

A folder is first *indexed*: the image files of every class (sorted, hidden files and folders
skipped) and their labels. The index is cached under `$CONDENSE_INDEX` (default
`~/.cache/condense/index`) with the modification time of every directory it walked, and rebuilt
when one of them changes (adding, removing or renaming a file changes its folder's time), so a
second run on ImageNet does not list 1.28 M files again.

Small folders are decoded once into the in-memory uint8 tensor every other dataset uses. Large
ones (more than `IN_MEMORY_BYTES` decoded, or `lazy=True`) stay files: `LazyImages` stands where
the tensor would be, and indexing it decodes just those files, in `workers` threads (Pillow
releases the GIL while it decodes and resizes, so threads scale like DataLoader worker processes
without pickling or a fork per draw). Which files are drawn is decided by the caller's generator
before decoding starts, so the same seed draws the same images whatever the worker count, and
memory is bounded by the batch, not the dataset. Both paths decode a file with the same `decode`,
so they see identical pixels.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from condense.data import DATASETS, DatasetInfo, Split, channel_stats, missing_dataset
from condense.errors import CondenseError
from condense.io import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IN_MEMORY_BYTES = 2 << 30  # decoded training split above this: lazy (ImageNet-1k at 64 px is 15 GiB)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INDEX_FORMAT = 1


def default_workers() -> int:
    """Decode threads when the caller does not say: one per core, at most 8."""
    return min(8, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# decoding one file


def decode(path: Path, size: int | None) -> Tensor:
    """One image file -> uint8 [3, H, W] RGB (grey, palette, RGBA and CMYK converted); with `size`,
    the shorter side resized to `size` and the centre cropped to size x size.

    JPEGs are decoded at the smallest of libjpeg's 1/2, 1/4, 1/8 scales that still covers `size`
    (`Image.draft`), which is what makes 64 px ImageNet affordable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if size is not None:
                img.draft("RGB", (size, size))
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise CondenseError(f"{path} cannot be read as an image ({e}). Remove or replace it (then rerun; "
                            f"distill --resume continues from the last checkpoint).") from None
    if size is not None and img.size != (size, size):
        s = size / min(img.size)
        img = img.resize((max(size, round(img.size[0] * s)), max(size, round(img.size[1] * s))),
                         Image.Resampling.BICUBIC)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


class LazyImages:
    """uint8 [N, 3, S, S] images that are still files. `images[idx]` decodes the files `idx`
    (an int64 tensor, a list or a slice) into a tensor on `device`; `take(idx)` is a view on a
    subset. It stands where `RealData` keeps its in-memory tensor."""

    dtype = torch.uint8
    lazy = True  # how condense.data tells it from a tensor

    def __init__(self, root: Path, files: np.ndarray, size: int, device: torch.device | str = "cpu",
                 workers: int | None = None, pool: ThreadPoolExecutor | None = None):
        self.root, self.files, self.size = Path(root), files, size
        self.device = torch.device(device)
        self.workers = default_workers() if workers is None else workers
        self._pool = pool

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), 3, self.size, self.size))

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.files[i])

    def __getitem__(self, idx: Tensor | Sequence[int] | slice) -> Tensor:
        if isinstance(idx, slice):
            rows = range(len(self.files))[idx]
        elif isinstance(idx, Tensor) and not idx.dtype.is_floating_point and idx.dtype != torch.bool and idx.dim() == 1:
            rows = idx.tolist()
        elif isinstance(idx, (list, tuple, range)):
            rows = list(idx)
        else:
            raise TypeError(f"LazyImages is indexed by a slice, a list or a 1-d integer tensor, not {idx!r}")
        paths = [self.path(i) for i in rows]
        if self.workers > 0 and len(paths) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="condense-decode")
            images = list(self._pool.map(decode, paths, [self.size] * len(paths)))
        else:
            images = [decode(p, self.size) for p in paths]
        if not images:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        batch = torch.stack(images)
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def decode_all(self, chunk: int = 1024) -> Tensor:
        """Every image, decoded into one preallocated uint8 tensor (the in-memory path: no list of
        per-image tensors beside the result)."""
        out = torch.empty(tuple(self.shape), dtype=torch.uint8)
        for i in range(0, len(self.files), chunk):
            out[i:i + chunk] = self.to("cpu")[i:i + chunk]
        return out

    def take(self, idx: Tensor) -> "LazyImages":
        return LazyImages(self.root, self.files[idx.cpu().numpy()], self.size, self.device, self.workers, self._pool)

    def to(self, device: torch.device | str) -> "LazyImages":
        return LazyImages(self.root, self.files, self.size, device, self.workers, self._pool)

    def digest(self) -> str:
        """Which files at which size (the identity of the split, without decoding it)."""
        h = hashlib.sha256(f"{self.root}\0{self.size}\0".encode())
        h.update(b"\0".join(self.files.tolist()))
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# the file index


@dataclass
class FileIndex:
    """The image files of one split: paths relative to `root` (file-system bytes) and labels, with
    the directories walked and their modification times (to notice changes)."""

    root: Path
    files: np.ndarray  # bytes [N]
    labels: np.ndarray  # int64 [N]
    dirs: np.ndarray  # bytes [D], relative to root
    mtimes: np.ndarray  # int64 [D], st_mtime_ns
    skipped: int = 0  # files that are not images
    built_ns: int = 0  # when the listing started

    def fresh(self) -> bool:
        """Every directory walked still has its recorded time, and none was modified within 2 s of the
        listing (a file added in the same clock tick as the listing leaves the time unchanged: the
        'racy' case git also guards against)."""
        if int(self.mtimes.max(initial=0)) >= self.built_ns - 2_000_000_000:
            return False
        for d, t in zip(self.dirs.tolist(), self.mtimes.tolist()):
            try:
                if os.stat(self.root / os.fsdecode(d)).st_mtime_ns != t:
                    return False
            except OSError:
                return False
        return True


def _mtime(path: Path) -> int:
    return os.stat(path).st_mtime_ns


def index_class_folders(folder: Path, classes: list[str], warn: bool = True) -> FileIndex:
    """Every image under folder/<class>/ (recursively) labelled by its class's position in `classes`.
    A class folder without any image is refused; other files are skipped (with a warning)."""
    built = time.time_ns()
    files: list[bytes] = []
    labels: list[int] = []
    dirs: list[tuple[bytes, int]] = [(b".", _mtime(folder))]
    skipped = 0
    for c, cname in enumerate(classes):
        top = folder / cname
        if not top.is_dir():
            raise CondenseError(f"{top} is missing: every class of the training split needs a folder in "
                                f"{folder} too. Add it (with its images) or remove the class from the training split.")
        found = 0
        for here, subdirs, names in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            rel = Path(here).relative_to(folder)
            dirs.append((os.fsencode(rel), _mtime(Path(here))))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                    skipped += 1
                    continue
                files.append(os.fsencode(rel / name))
                found += 1
        labels += [c] * found
        if not found:
            raise CondenseError(f"{top} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}); every class folder "
                                f"needs at least one. Remove the folder or add its images.")
    if skipped and warn:
        warnings.warn(f"skipped {skipped} files under {folder} that are not images", stacklevel=3)
    d, t = zip(*dirs)
    return FileIndex(folder, np.array(files), np.array(labels, dtype=np.int64), np.array(d), np.array(t, dtype=np.int64),
                     skipped, built)


def index_dir() -> Path:
    return Path(os.environ.get("CONDENSE_INDEX") or "~/.cache/condense/index").expanduser()


def cached_index(root: Path, kind: str, classes: list[str], build) -> FileIndex:
    """`build()`'s index of `root` for this class list, from the cache when every directory (and label
    file) it read is unchanged."""
    key = hashlib.sha256("\0".join([kind, str(root.resolve()), *classes]).encode()).hexdigest()[:20]
    path = index_dir() / f"{kind}-{key}.npz"
    if path.is_file():
        idx = _read_index(path, root)
        if idx is not None and idx.fresh():
            return idx
    idx = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, format=np.int64(INDEX_FORMAT), files=idx.files, labels=idx.labels, dirs=idx.dirs,
                         mtimes=idx.mtimes, skipped=np.int64(idx.skipped), built_ns=np.int64(idx.built_ns))
    except (OSError, CondenseError) as e:  # a read-only home: index again next time
        warnings.warn(f"could not cache the file index of {root} in {path} ({e}); set $CONDENSE_INDEX to a "
                      f"writable folder", stacklevel=2)
    return idx


def _read_index(path: Path, root: Path) -> FileIndex | None:
    """The cached index, or None when it is unreadable or not what condense writes (then it is rebuilt).
    Arrays only (no pickles); relative paths that leave the folder are refused."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != INDEX_FORMAT:
                return None
            files, labels, dirs, mtimes = z["files"], z["labels"], z["dirs"], z["mtimes"]
            skipped, built = int(z["skipped"]), int(z["built_ns"])
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    ok = (files.dtype.kind == "S" and dirs.dtype.kind == "S" and labels.dtype == np.int64 and mtimes.dtype == np.int64
          and files.shape == labels.shape and dirs.shape == mtimes.shape and files.ndim == 1)
    if not ok or any(p.startswith(b"/") or b".." in p.split(b"/") for p in files.tolist()):
        return None
    return FileIndex(root, files, labels, dirs, mtimes, skipped, built)


# --------------------------------------------------------------------------------------------
# splits: lazy or in memory


def make_split(index: FileIndex, size: int, lazy: bool, workers: int | None):
    """The split as the data layer's `Split`: images decoded now (in memory) or on demand (lazy)."""
    images = LazyImages(index.root, index.files, size, workers=workers)
    return Split(images if lazy else images.decode_all(), torch.from_numpy(index.labels.copy()))


def native_size(index: FileIndex) -> int:
    """The size of a folder whose images all share one square size (needed when no @SIZE is given)."""
    from PIL import Image

    sizes = set()
    for f in index.files.tolist():
        try:
            with Image.open(index.root / os.fsdecode(f)) as img:
                sizes.add(img.size)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise CondenseError(f"{index.root / os.fsdecode(f)} cannot be read as an image ({e}). Remove or replace "
                                f"it.") from None
        if len(sizes) > 1:
            break
    if len(sizes) > 1 or next(iter(sizes))[0] != next(iter(sizes))[1]:
        raise CondenseError(f"Images under {index.root} have different sizes or are not square ({sorted(sizes)[:3]}); "
                            f"add '@SIZE' to the dataset name (imagefolder:PATH@64) to resize them.")
    return next(iter(sizes))[0]


def sample_stats(images: LazyImages, n: int = 1000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a seeded sample of at most n training images (a lazy split cannot
    be averaged whole; 1000 images pin the mean to about 0.005), cached beside the index."""
    path = index_dir() / f"stats-{images.digest()}.npy"
    try:
        st = np.load(path, allow_pickle=False)
        if st.shape == (2, 3) and st.dtype == np.float64 and np.isfinite(st).all() and (st[1] > 0).all():
            return tuple(st[0].tolist()), tuple(st[1].tolist())
    except (OSError, ValueError, EOFError):
        pass
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n].sort().values
    st = np.array(channel_stats(images.to("cpu")[pick]), dtype=np.float64)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, st)
    except (OSError, CondenseError):  # no cache: measured again next time
        pass
    return tuple(st[0].tolist()), tuple(st[1].tolist())


def choose_lazy(lazy: bool | None, n: int, size: int) -> bool:
    return lazy if lazy is not None else n * 3 * size * size > IN_MEMORY_BYTES


# --------------------------------------------------------------------------------------------
# the loaders (registered lazily by condense.data: this module is imported on first use)


def parse_size(name: str, spec: str, default: int | None) -> tuple[str, int | None]:
    """'PATH@SIZE' -> (PATH, SIZE); an '@' that is part of the path is kept."""
    path, at, size_s = spec.rpartition("@")
    if not at or not size_s.isdigit():
        path, size_s = spec, ""
    size = int(size_s) if size_s else default
    if size is not None and not 8 <= size <= 1024:
        raise CondenseError(f"{name}:{spec}: the size after '@' must be between 8 and 1024 pixels (got {size}).")
    return path, size


def subfolders(path: Path) -> list[str]:
    try:
        return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        raise CondenseError(f"{path} cannot be listed ({e}). Check the path and its permissions.") from None


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CondenseError(f"{path} cannot be read as text ({e}). Restore it from the dataset's archive.") from None


@DATASETS.register("imagefolder")
def load_imagefolder(roots: list[Path], download: bool, spec: str, lazy: bool | None = None,
                     workers: int | None = None):
    """`imagefolder:PATH[@SIZE]`: PATH/train/<class>/* and PATH/val (or test)/<class>/*; class
    identifiers are the folder names."""
    path, size = parse_size("imagefolder", spec, None)
    root = Path(path).expanduser()
    if not (root / "train").is_dir():
        raise CondenseError(f"imagefolder:{path}: no folder {root / 'train'}. Expected PATH/train/<class>/... and "
                            f"PATH/val/<class>/... (or PATH/test).")
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if test_dir is None:
        raise CondenseError(f"imagefolder:{path}: no {root / 'val'} or {root / 'test'} folder for the test split.")
    classes = subfolders(root / "train")
    if not classes:
        raise CondenseError(f"No class folders under {root / 'train'}. Expected {root / 'train'}/<class>/<images>.")
    tr = cached_index(root / "train", "imagefolder", classes, lambda: index_class_folders(root / "train", classes))
    te = cached_index(test_dir, "imagefolder", classes, lambda: index_class_folders(test_dir, classes))
    if size is None:  # every image of both splits must already be one square size
        size = native_size(tr)
        if native_size(te) != size:
            raise CondenseError(f"The images of {test_dir} are not {size}x{size} like those of {root / 'train'}; add "
                                f"'@SIZE' to the dataset name (imagefolder:PATH@{size}) to resize them.")
    lazy = choose_lazy(lazy, len(tr.files), size)
    train, test = make_split(tr, size, lazy, workers), make_split(te, size, lazy, workers)
    mean, std = sample_stats(train.images) if lazy else channel_stats(train.images)
    info = DatasetInfo(f"imagefolder:{spec}", len(classes), 3, size, mean, std, classes, class_ids=list(classes))
    return train, test, info


def _list_index(root: Path, rel_files: list[str], labels: list[int], dirs: list[Path], built: int) -> FileIndex:
    return FileIndex(root, np.array([os.fsencode(f) for f in rel_files]), np.array(labels, dtype=np.int64),
                     np.array([os.fsencode(os.path.relpath(d, root)) for d in dirs]),  # label files too
                     np.array([_mtime(d) for d in dirs], dtype=np.int64), 0, built)


@DATASETS.register("tiny-imagenet")
def load_tiny(roots: list[Path], download: bool, spec: str, lazy: bool | None = None, workers: int | None = None):
    """Tiny-ImageNet-200 as distributed (train/<wnid>/images/*.JPEG, val/images + val_annotations.txt,
    words.txt for the class names), read lazily unless `lazy=False`."""
    for r in roots:
        base = r / "tiny-imagenet-200"
        if (base / "train").is_dir():
            break
    else:
        raise missing_dataset("tiny-imagenet", roots, "Expected tiny-imagenet-200/ (unzip "
                              "http://cs231n.stanford.edu/tiny-imagenet-200.zip there); torchvision cannot download it.",
                              downloadable=False)
    wnids = subfolders(base / "train")
    tr = cached_index(base / "train", "tiny-imagenet", wnids,
                      lambda: index_class_folders(base / "train", wnids, warn=False))
    ann = base / "val" / "val_annotations.txt"

    def val_index() -> FileIndex:
        built = time.time_ns()
        where = {w: i for i, w in enumerate(wnids)}
        files, labels = [], []
        for n, line in enumerate(read_text(ann).splitlines(), 1):
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in where or "/" in parts[0] or parts[0].startswith("."):
                raise CondenseError(f"{ann}, line {n}: expected '<file name>\\t<wnid of a training class>', got "
                                    f"{line[:80]!r}. Restore the file from the Tiny-ImageNet archive.")
            files.append(f"images/{parts[0]}")
            labels.append(where[parts[1]])
        return _list_index(base / "val", files, labels, [base / "val", base / "val" / "images", ann], built)

    if not ann.is_file():
        raise CondenseError(f"{ann} is missing: Tiny-ImageNet's test split is read from it. Restore it from the archive.")
    te = cached_index(base / "val", "tiny-imagenet-val", wnids, val_index)
    names = _wnid_names(base / "words.txt")
    lazy = True if lazy is None else lazy
    info = DatasetInfo("tiny-imagenet", len(wnids), 3, 64, IMAGENET_MEAN, IMAGENET_STD,
                       [names.get(w, w) for w in wnids], class_ids=wnids)
    return make_split(tr, 64, lazy, workers), make_split(te, 64, lazy, workers), info


def _wnid_names(path: Path) -> dict[str, str]:
    """'<wnid>\\t<names, comma-separated>' lines (Tiny-ImageNet's words.txt, ImageNet's LOC_synset_mapping.txt
    with a space) -> wnid: first name. Missing file: no names (the wnids are shown)."""
    out: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            wnid, _, words = line.replace("\t", " ", 1).partition(" ")
            if wnid.startswith("n") and words:
                out[wnid] = words.split(",")[0].strip()
    return out


@DATASETS.register("imagenet")
def load_imagenet(roots: list[Path], download: bool, spec: str, lazy: bool | None = None, workers: int | None = None):
    """`imagenet:PATH[@SIZE]` (default 224): PATH/train/<wnid>/*.JPEG as ILSVRC-2012 ships it, and the
    validation images either sorted into PATH/val/<wnid>/ or flat in PATH/val with their labels from the
    devkit (PATH/ILSVRC2012_devkit_t12: data/meta.mat + data/ILSVRC2012_validation_ground_truth.txt, read
    with scipy) or from Kaggle's PATH/LOC_val_solution.csv. Always lazy unless `lazy=False`."""
    path, size = parse_size("imagenet", spec, 224)
    root = Path(path).expanduser()
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise CondenseError(f"imagenet:{path}: expected {root / 'train'}/<wnid>/*.JPEG and {root / 'val'} (class "
                            f"folders, or the flat validation images with the devkit or LOC_val_solution.csv).")
    wnids = subfolders(root / "train")
    tr = cached_index(root / "train", "imagenet", wnids, lambda: index_class_folders(root / "train", wnids))
    val = root / "val"
    if subfolders(val):
        te = cached_index(val, "imagenet", wnids, lambda: index_class_folders(val, wnids))
    else:
        te = cached_index(val, "imagenet-val", wnids, lambda: _flat_val_index(root, wnids))
    try:
        names = _devkit_names(root) or _wnid_names(root / "LOC_synset_mapping.txt")
    except CondenseError:  # names are for display: without scipy (or with a damaged meta.mat) show the wnids
        names = {}
    lazy = True if lazy is None else lazy
    info = DatasetInfo(f"imagenet:{spec}", len(wnids), 3, size, IMAGENET_MEAN, IMAGENET_STD,
                       [names.get(w, w) for w in wnids], class_ids=wnids)
    return make_split(tr, size, lazy, workers), make_split(te, size, lazy, workers), info


def _devkit(root: Path) -> Path:
    return root / "ILSVRC2012_devkit_t12" / "data"


def _devkit_synsets(root: Path) -> list[tuple[int, str, str]] | None:
    """(ILSVRC2012_ID, wnid, first name) of the 1000 leaf classes in the devkit's meta.mat, or None."""
    meta = _devkit(root) / "meta.mat"
    if not meta.is_file():
        return None
    try:
        import scipy.io
    except ImportError:
        raise CondenseError(f"Reading {meta} needs scipy (pip install scipy); or sort the validation images into "
                            f"{root / 'val'}/<wnid>/ folders.") from None
    try:
        synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
        out = [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"]).split(",")[0].strip())
               for s in synsets if int(s["num_children"]) == 0]
    except Exception as e:  # noqa: BLE001  (any malformed file is one user problem)
        raise CondenseError(f"{meta} is not the ILSVRC-2012 devkit's meta.mat ({type(e).__name__}: {e}). Restore "
                            f"it from ILSVRC2012_devkit_t12.tar.gz.") from None
    return out


def _devkit_names(root: Path) -> dict[str, str]:
    return {w: name for _, w, name in (_devkit_synsets(root) or [])}


def _flat_val_index(root: Path, wnids: list[str]) -> FileIndex:
    built = time.time_ns()
    where = {w: i for i, w in enumerate(wnids)}
    val = root / "val"
    images = sorted(p.name for p in val.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    synsets = _devkit_synsets(root)
    kaggle = root / "LOC_val_solution.csv"
    if synsets is not None:
        by_id = {i: w for i, w, _ in synsets}
        gt = _devkit(root) / "ILSVRC2012_validation_ground_truth.txt"
        try:
            ids = [int(t) for t in read_text(gt).split()]
        except ValueError as e:
            raise CondenseError(f"{gt} cannot be read as the devkit's list of class ids ({e}).") from None
        if len(ids) != len(images) or any(i not in by_id or by_id[i] not in where for i in ids):
            raise CondenseError(f"{gt} labels {len(ids)} images with ILSVRC ids, but {val} holds {len(images)} images "
                                f"(or an id names a class without a training folder). The devkit and the images "
                                f"must be the same release.")
        labels = [where[by_id[i]] for i in ids]  # the ground truth follows the sorted file names
        tracked = [val, gt, _devkit(root) / "meta.mat"]
    elif kaggle.is_file():
        label_of = {}
        for line in read_text(kaggle).splitlines()[1:]:
            name, _, pred = line.partition(",")
            wnid = pred.split(" ")[0]
            if wnid in where:
                label_of[name] = where[wnid]
        missing = [p for p in images if Path(p).stem not in label_of]
        if missing:
            raise CondenseError(f"{kaggle} gives no class for {len(missing)} validation images (e.g. {missing[0]}).")
        labels = [label_of[Path(p).stem] for p in images]
        tracked = [val, kaggle]
    else:
        raise CondenseError(f"{val} holds the validation images without class folders, and neither the devkit "
                            f"({_devkit(root)}) nor LOC_val_solution.csv is there to label them. Add one, or sort "
                            f"the images into {val}/<wnid>/ folders.")
    return _list_index(val, images, labels, tracked, built)
