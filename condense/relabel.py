"""Replayable soft labels: relabel once, replay exactly (FKD, as SRe2L, RDED and CV-DD use it).

Under a soft-label protocol a student sees, every epoch, random crops, flips and CutMix of the
synthetic images, with the teachers' logits on exactly those inputs as targets. `relabel` records
all of it once: for every epoch and batch, which images, each image's augmentation parameters, the
CutMix partners and box, and the teachers' logits (float16). A student replays the record through
an ordinary `torch.utils.data.DataLoader` built from three plain parts (nothing in PyTorch is
patched, unlike the official FKD code):

    ReplaySampler   yields one epoch's stored batches, in order, as ranges of record positions
    ReplayDataset   `__getitems__` gathers one batch: images, parameters, logits
    ReplayCollate   applies the stored crop/flip and CutMix; returns (inputs, logits, classes)

The record lives in a side file next to `synth.h5` (`<name>.labels.h5`), which the set references
by name and SHA-256; `SyntheticSet.storage` counts its bytes next to the images. Mode M (teachers
online on every batch, protocol kd-sre2l) needs no record but the teachers at every evaluation.

Teachers may label with BatchNorm using each batch's own statistics (BSSL, CV-DD's labels):
`batch_statistics` switches the BatchNorm layers to batch statistics and restores their running
statistics afterwards, so labelling never changes a teacher.
"""
from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from condense.augment import AugParams, DSA, make_dsa
from condense.errors import CondenseError
from condense.h5read import check_self_contained, read_array
from condense.io import atomic_path, tensor_digest
from condense.train import TrainData, cutmix_apply, cutmix_draw

FORMAT = "condense-relabels"
FORMAT_VERSION = 1
MAX_EPOCHS = 100_000  # a label file declaring more is refused before anything is read
_TORCH = {"f4": torch.float32, "f8": torch.float64, "f2": torch.float16, "b1": torch.bool, "i8": torch.int64,
          "i4": torch.int32}  # numpy dtype codes of augmentation parameters -> torch, for the layout check
STORED = {"order": torch.int32, "mix_perm": torch.int32, "mix_box": torch.int16, "logits": torch.float16}  # on disk


@dataclass(frozen=True)
class ReplayConfig:
    """What the student will do, which the record must match (defaults: protocol kd-replay)."""

    epochs: int = 300  # epochs of labels (one record per epoch of the student)
    batch: int = 128  # the student's batch
    augment: str = "rrc_flip"  # DSA families, all applied to every image (mode "all")
    cutmix: float = 1.0  # probability of CutMix per batch

    def problems(self) -> list[str]:
        out = []
        if self.epochs < 1 or self.batch < 1:
            out.append(f"relabel epochs and batch must be at least 1 (got {self.epochs}, {self.batch})")
        if not 0 <= self.cutmix <= 1:
            out.append(f"relabel cutmix must be a probability (got {self.cutmix})")
        return out


@dataclass
class Relabels:
    """The record. `order[e]` lists epoch e's images in batch order; every per-image tensor is
    indexed like `order` ([E, n, ...]); batch b of an epoch is positions b*batch .. (b+1)*batch."""

    config: ReplayConfig
    order: Tensor  # int64 [E, n]
    aug: dict[str, Tensor]  # "<op>.<param>" -> [E, n, ...]: the DSA parameters of each image
    ops: tuple[str, ...]  # the DSA operations, in the order they are applied
    mix_on: Tensor  # bool [E, B]: whether batch b of epoch e is CutMixed
    mix_box: Tensor  # int64 [E, B, 4]: the CutMix box (y0, y1, x0, x1)
    mix_perm: Tensor  # int64 [E, n]: each image's CutMix partner, a position within its batch
    logits: Tensor  # float16 [E, n, K]: the teachers' logits on the augmented, mixed batch
    set_digest: str = ""  # which images were labelled (digest of the set's images and labels)
    source: str = ""  # the teachers, in words

    @property
    def images(self) -> int:
        return int(self.order.shape[1])

    def nbytes(self) -> dict[str, int]:
        """Bytes of the record as the side file stores it: the logits, and the replay metadata (order,
        augmentation parameters, CutMix)."""
        meta = {name: getattr(self, name) for name in ("order", "mix_on", "mix_box", "mix_perm")} | self.aug
        return {"logits": self.logits.numel() * 2,
                "metadata": sum(t.numel() * STORED.get(k, t.dtype).itemsize for k, t in meta.items())}

    def digest(self) -> str:
        """Everything a student's training depends on: the config, operations, and every array."""
        names = f"{asdict(self.config)} {self.ops} {sorted(self.aug)}"
        return tensor_digest(self.order, self.logits, self.mix_on, self.mix_perm, self.mix_box,
                             *(self.aug[k] for k in sorted(self.aug))) + " " + names

    def check_matches(self, cfg: Any, where: str) -> None:
        """Refuse to replay under a training config (`TrainConfig`) other than the recorded one."""
        want = {"epochs": cfg.epochs, "batch": cfg.batch, "augment": cfg.augment, "cutmix": cfg.cutmix}
        have = asdict(self.config)
        diff = [f"{k} {have[k]} (protocol: {v})" for k, v in want.items() if have[k] != v]
        if cfg.augment_mode != "all" or cfg.mixup:
            diff.append("the protocol uses augmentation mode 'all' and no MixUp for replay")
        if diff:
            raise CondenseError(f"{where}'s replayable labels were recorded for another training run "
                                f"({'; '.join(diff)}). Evaluate with the protocol they were made for, or re-distil "
                                f"with --set relabel_epochs=.. relabel_batch=.. to match.")


@contextmanager
def batch_statistics(nets: Sequence[nn.Module], on: bool = True) -> Iterator[None]:
    """BSSL: inside the block every BatchNorm layer normalizes with the batch's own statistics; its
    running statistics are restored afterwards (train mode would otherwise overwrite them)."""
    layers = [m for net in nets for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if on else []
    saved = [(m.training, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in layers]
    for m in layers:
        m.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mode, buffers) in zip(layers, saved):
                m.train(mode)
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


@torch.no_grad()
def ensemble_logits(nets: Sequence[nn.Module], x: Tensor, weights: Sequence[float] | None = None,
                    bssl: bool = False) -> Tensor:
    """sum_i w_i f_i(x) (the mean when `weights` is None), optionally with batch statistics (BSSL)."""
    w = [1 / len(nets)] * len(nets) if weights is None else list(weights)
    with batch_statistics(nets, bssl):
        out = w[0] * nets[0](x)
        for wi, net in zip(w[1:], nets[1:]):
            out = out + wi * net(x)
    return out


@torch.no_grad()
def relabel(images: Tensor, teacher: Callable[[Tensor], Tensor], cfg: ReplayConfig, generator: torch.Generator,
            allow_flip: bool = True, on_epoch: Callable[[int], None] | None = None) -> Relabels:
    """Record `cfg.epochs` epochs of a student's batches of `images` (model-input space) with the
    teacher's logits on each augmented, CutMixed batch. Draws only from `generator`."""
    n, size = int(images.shape[0]), int(images.shape[-1])
    aug = make_dsa(cfg.augment, allow_flip, "all")
    nb = math.ceil(n / cfg.batch)
    order = torch.empty(cfg.epochs, n, dtype=torch.long)
    mix_on = torch.zeros(cfg.epochs, nb, dtype=torch.bool)
    mix_box = torch.zeros(cfg.epochs, nb, 4, dtype=torch.long)
    mix_perm = torch.arange(cfg.batch).repeat(cfg.epochs, nb)[:, :n].clone()
    logits: Tensor | None = None
    params: dict[str, Tensor] = {}
    ops: tuple[str, ...] = ()
    for e in range(cfg.epochs):
        order[e] = torch.randperm(n, generator=generator)
        for b, s in enumerate(range(0, n, cfg.batch)):
            idx = order[e, s:s + cfg.batch]
            x = images[idx.to(images.device)]
            if aug is not None:
                p = aug.sample(len(idx), generator, size)
                x = aug(x, p)
                ops = tuple(name for name, _ in p.ops)
                for name, values in p.ops:
                    for k, v in values.items():
                        key = f"{name}.{k}"
                        if key not in params:
                            params[key] = torch.empty(cfg.epochs, n, *v.shape[1:], dtype=v.dtype)
                        params[key][e, s:s + len(idx)] = v.cpu()
            if cfg.cutmix > 0 and float(torch.rand(1, generator=generator)) < cfg.cutmix:
                perm, box = cutmix_draw(len(idx), size, size, generator)
                x = cutmix_apply(x, perm.to(x.device), box)
                mix_on[e, b], mix_box[e, b] = True, torch.tensor(box)
                mix_perm[e, s:s + len(idx)] = perm
            out = teacher(x)
            if logits is None:  # kept on the teachers' device until the end (no copy per batch)
                logits = torch.empty(cfg.epochs, n, out.shape[1], dtype=torch.float16, device=out.device)
            logits[e, s:s + len(idx)] = out.half()
        if on_epoch is not None:
            on_epoch(e)
    return Relabels(cfg, order, params, ops, mix_on, mix_box, mix_perm, logits.cpu())  # type: ignore[union-attr]


# ---- replay: Sampler + Dataset + collate -------------------------------------------------------

class ReplaySampler(Sampler):
    """One epoch's stored batches, in their recorded order, each as a range of record positions."""

    def __init__(self, relabels: Relabels, epoch: int) -> None:
        self.n, self.batch, self.epoch = relabels.images, relabels.config.batch, epoch

    def __iter__(self) -> Iterator[range]:
        base = self.epoch * self.n
        for s in range(0, self.n, self.batch):
            yield range(base + s, base + min(s + self.batch, self.n))

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch)


class ReplayDataset(Dataset):
    """The record as a dataset of positions; `__getitems__` gathers a whole batch at once."""

    def __init__(self, relabels: Relabels, images: Tensor, classes: Tensor) -> None:
        dev = images.device
        self.r, self.images, self.classes = relabels, images, classes
        self.order = relabels.order.flatten().to(dev)
        self.perm = relabels.mix_perm.flatten().to(dev)
        self.logits = relabels.logits.flatten(0, 1).to(dev)
        self.aug = {k: v.flatten(0, 1).to(dev) for k, v in relabels.aug.items()}

    def __len__(self) -> int:
        return int(self.order.numel())

    def __getitems__(self, positions: range) -> dict[str, Any]:
        sl = slice(positions.start, positions.stop)
        idx = self.order[sl]
        epoch, start = divmod(positions.start, self.r.images)
        return {"images": self.images[idx], "classes": self.classes[idx], "logits": self.logits[sl].float(),
                "aug": {k: v[sl] for k, v in self.aug.items()}, "perm": self.perm[sl],
                "batch": (epoch, start // self.r.config.batch)}


class ReplayCollate:
    """Apply a gathered batch's stored augmentation and CutMix, as `relabel` applied them."""

    def __init__(self, relabels: Relabels, allow_flip: bool = True) -> None:
        self.r = relabels
        self.dsa: DSA | None = make_dsa(relabels.config.augment, allow_flip, "all")

    def __call__(self, item: dict[str, Any]) -> tuple[Tensor, Tensor, list[tuple[float, Tensor]]]:
        x, classes = item["images"], item["classes"]
        if self.dsa is not None and self.r.ops:
            ops = tuple((op, {k.split(".", 1)[1]: v for k, v in item["aug"].items() if k.split(".", 1)[0] == op})
                        for op in self.r.ops)
            x = self.dsa(x, AugParams(ops, x.shape[0]))
        e, b = item["batch"]
        if bool(self.r.mix_on[e, b]):
            box = tuple(int(v) for v in self.r.mix_box[e, b])
            x = cutmix_apply(x, item["perm"], box)
            y0, y1, x0, x1 = box
            lam = 1 - (y1 - y0) * (x1 - x0) / (x.shape[-2] * x.shape[-1])
            return x, item["logits"], [(lam, classes), (1 - lam, classes[item["perm"]])]
        return x, item["logits"], [(1.0, classes)]


def replay_data(relabels: Relabels, images: Tensor, classes: Tensor, allow_flip: bool = True) -> TrainData:
    """Training data that replays the record: epoch e yields its stored batches (inputs, logits,
    ground-truth parts) through a DataLoader with `ReplaySampler` and `ReplayCollate`."""
    if relabels.images != images.shape[0]:
        raise CondenseError(f"The replayable labels cover {relabels.images} images, but the set has "
                            f"{images.shape[0]}; they belong to another set.")
    dataset, collate = ReplayDataset(relabels, images, classes), ReplayCollate(relabels, allow_flip)

    def epoch(e: int) -> Iterator[tuple[Tensor, Tensor, list[tuple[float, Tensor]]]]:
        if e >= relabels.config.epochs:
            raise CondenseError(f"The replayable labels hold {relabels.config.epochs} epochs; epoch {e + 1} was asked.")
        return iter(DataLoader(dataset, batch_sampler=ReplaySampler(relabels, e), collate_fn=collate))

    return TrainData(int(images.shape[0]), lambda i: (images[i], classes[i]), int(images.shape[-1]),
                     lambda i: classes[i], replay=epoch)


# ---- the side file -------------------------------------------------------------------------------

def side_file(path: Path) -> Path:
    """The label file of set `path`: <stem>.labels.h5 in the same folder."""
    return path.with_name(path.stem + ".labels.h5")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_relabels(r: Relabels, path: Path) -> str:
    """Write the record atomically; returns the file's SHA-256 (the set stores it)."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"], f.attrs["format_version"] = FORMAT, FORMAT_VERSION
            for k, v in asdict(r.config).items():
                f.attrs[k] = v
            f.attrs["ops"], f.attrs["set_digest"], f.attrs["source"] = ",".join(r.ops), r.set_digest, r.source
            for name in ("order", "mix_on", "mix_box", "mix_perm", "logits"):
                t = getattr(r, name)
                f.create_dataset(name, data=t.to(STORED.get(name, t.dtype)).cpu().numpy())
            g = f.create_group("aug")
            for k, v in r.aug.items():
                g.create_dataset(k, data=v.cpu().numpy())
        digest = file_sha256(tmp)
    return digest


def load_relabels(path: Path, sha256: str, n: int, classes: int, set_digest: str, size: int) -> Relabels:
    """Read a side file that a set names: the checksum first, then every array's kind and shape
    against the set, then every value's range. Anything else is refused in one message."""
    import h5py

    def bad(what: str) -> CondenseError:
        return CondenseError(f"{path}: {what}. The set's replayable labels cannot be used; re-create them with "
                             f"`condense distill` (or evaluate under mode M with --protocol kd-sre2l, which needs no "
                             f"label file).")

    if not path.is_file():
        raise bad("the label file the set names is missing (it must sit next to the set)")
    if file_sha256(path) != sha256:
        raise bad("the label file's SHA-256 does not match the one the set records (it was changed, truncated or "
                  "belongs to another set)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT or int(f.attrs.get("format_version", 0)) != FORMAT_VERSION:
                raise bad("not a condense label file of a version this condense reads")
            check_self_contained(f, path)
            cfg = ReplayConfig(int(f.attrs["epochs"]), int(f.attrs["batch"]), str(f.attrs["augment"]),
                               float(f.attrs["cutmix"]))
            if cfg.problems() or cfg.epochs > MAX_EPOCHS:
                raise bad("; ".join(cfg.problems()) or f"it declares {cfg.epochs} epochs (at most {MAX_EPOCHS})")
            e, nb = cfg.epochs, math.ceil(n / cfg.batch)
            ops = tuple(o for o in str(f.attrs["ops"]).split(",") if o)
            want = [_layout(*_reference(cfg.augment, flip, size), 1) for flip in (True, False)]
            group = f.get("aug", {})  # the layout as declared (names, dtypes, trailing shapes), nothing read yet
            declared = {k: torch.empty((0, 0, *d.shape[2:]), dtype=_TORCH[d.dtype.str[1:]]) for k, d in group.items()
                        if isinstance(d, h5py.Dataset) and d.dtype.str[1:] in _TORCH}
            if _layout(ops, declared, 2) not in want or len(declared) != len(group):
                raise bad(f"its augmentation parameters do not match augmentation '{cfg.augment}'")

            def arr(name: str, kinds: str, shape: tuple[int, ...]) -> Tensor:
                return torch.from_numpy(read_array(f, name, path, kinds, lambda s: s == shape, f"it should be {shape}"))

            order, perm = arr("order", "iu", (e, n)).long(), arr("mix_perm", "iu", (e, n)).long()
            mix_on, box = arr("mix_on", "b", (e, nb)), arr("mix_box", "iu", (e, nb, 4)).long()
            logits = arr("logits", "f", (e, n, classes)).half()
            aug = {k: torch.from_numpy(read_array(f, f"aug/{k}", path, "fbiu", lambda s: s[:2] == (e, n),
                                                  f"it should start with ({e}, {n})")) for k in f.get("aug", {})}
            source, digest = str(f.attrs.get("source", "")), str(f.attrs["set_digest"])
    except CondenseError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, OverflowError) as err:
        raise bad(f"damaged or incomplete ({type(err).__name__})") from None
    if digest != set_digest:
        raise bad("it labels other images than this set's")
    if not bool((order.sort(1).values == torch.arange(n)).all()):
        raise bad("an epoch's order is not a permutation of the set's images")
    batch_size = (n - torch.arange(n) // cfg.batch * cfg.batch).clamp(max=cfg.batch)  # of each position's batch
    if bool((perm < 0).any() or (perm >= batch_size).any()):
        raise bad("a CutMix partner lies outside its batch")
    if bool((box < 0).any() or (box > size).any() or (box[..., 0] > box[..., 1]).any()
            or (box[..., 2] > box[..., 3]).any()):
        raise bad("a CutMix box lies outside the image")
    if not bool(torch.isfinite(logits).all()) or any(not bool(torch.isfinite(v.float()).all()) for v in aug.values()):
        raise bad("it contains NaN or infinite values")
    return Relabels(cfg, order, aug, ops, mix_on.bool(), box, perm, logits, digest, source)


def _reference(augment: str, allow_flip: bool, size: int) -> tuple[tuple[str, ...], dict[str, Tensor]]:
    """The operations and parameters `relabel` records for `augment` (one draw, for their layout)."""
    dsa = make_dsa(augment, allow_flip, "all")
    if dsa is None:
        return (), {}
    p = dsa.sample(1, torch.Generator().manual_seed(0), size)
    return tuple(name for name, _ in p.ops), {f"{name}.{k}": v for name, vs in p.ops for k, v in vs.items()}


def _layout(ops: tuple[str, ...], params: dict[str, Tensor], lead: int) -> tuple:
    """Operations, and each parameter's dtype and per-image shape (the dims after the `lead` ones:
    2 in a record [E, n, ...], 1 in a draw [B, ...]), comparable between a file and a draw."""
    return ops, sorted((k, str(v.dtype), tuple(v.shape[lead:])) for k, v in params.items())
