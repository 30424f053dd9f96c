"""`SyntheticSet` and the self-describing `synth.h5` file format.

| path            | type                   | meaning                                                     |
|-----------------|------------------------|-------------------------------------------------------------|
| /images         | float32 [N, C, H, W]   | model-input space (normalized, or ZCA-whitened)             |
| /labels         | int64 [N]              | hard labels                                                 |
| /soft_labels    | float32 [N, K], opt.   | attrs kind (logits or probs), temperature, source           |
| /lr             | float32 scalar, opt.   | learned evaluation learning rate                            |
| /compact/...    | opt.                   | the stored representation when smaller than /images        |
| /replay         | group, opt.            | attrs file, sha256: replayable soft labels in a side file  |
|                 |                        | (`condense.relabel`: <name>.labels.h5 beside the set)       |
| /zca/...        | opt.                   | mean, matrix, inverse of the ZCA whitening                  |
| root attrs      |                        | format, format_version, dataset, class names, ipc, shape,   |
|                 |                        | pixel_space, mean, std, algorithm, config (JSON), seed,     |
|                 |                        | condense_version, created, protocol, teacher, class_ids     |
|                 |                        | (JSON) + classes_sha256: the class manifest                 |

Writes go to a temporary file beside the target and are renamed into place, so a crash never
leaves a half-written set. Reading refuses foreign, truncated, newer-version and inconsistent
files with a message that names the file and the problem.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from condense.data import Preprocess, Zca, classes_digest
from condense.errors import CondenseError
from condense.h5read import check_self_contained, read_array, refuse
from condense.io import atomic_path, package_version, tensor_digest
from condense.relabel import Relabels, load_relabels, save_relabels, side_file

FORMAT = "condense-synthetic"
FORMAT_VERSION = 1


@dataclass
class SetMeta:
    """Everything needed to evaluate a synthetic set correctly, stored as root attributes."""

    dataset: str
    num_classes: int
    class_names: list[str]
    ipc: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_space: str = "normalized"  # normalized | zca
    algorithm: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    protocol: str = "dsa"  # the evaluation protocol the method is meant for
    teacher: str = ""  # how to rebuild the soft-label teacher, when evaluation needs one
    condense_version: str = field(default_factory=package_version)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    class_ids: list[str] = field(default_factory=list)  # the class manifest (condense.classes); [] in older files
    classes_sha256: str = ""  # condense.data.classes_digest(class_ids)

    def to_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("config", "class_names", "class_ids"):
                v = json.dumps(v)
            elif f.name in ("mean", "std"):
                v = np.asarray(v, dtype=np.float64)
            out[f.name] = v
        return out

    def check(self, where: str) -> None:
        _meta_check(self, where)

    @classmethod
    def from_attrs(cls, attrs: Any) -> "SetMeta":
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in attrs:
                continue
            v = attrs[f.name]
            if f.name in ("config", "class_names", "class_ids"):
                v = json.loads(v)
            elif f.name in ("mean", "std"):
                v = tuple(float(t) for t in np.atleast_1d(v))
            elif isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, np.generic):
                v = v.item()
            kw[f.name] = v
        return cls(**kw)


_BOUNDS = {"num_classes": (1, 100_000), "channels": (1, 16), "height": (1, 4096), "width": (1, 4096),
           "ipc": (1, 1_000_000)}


def _meta_check(m: "SetMeta", where: str) -> None:
    """Types and ranges of every metadata field (files from others may carry anything)."""
    def bad(msg: str) -> CondenseError:
        return CondenseError(f"{where}: {msg}. The file's metadata is invalid; re-create it with condense.")

    for name, (lo, hi) in _BOUNDS.items():
        v = getattr(m, name)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise bad(f"{name} is {v!r}, expected an integer in [{lo}, {hi}]")
    for name in ("class_names", "class_ids"):
        v = getattr(m, name)
        if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
            raise bad(f"{name} is not a list of names")
    if m.class_ids and (len(m.class_ids) != m.num_classes or m.classes_sha256 != classes_digest(m.class_ids)):
        raise bad(f"its class manifest ({len(m.class_ids)} identifiers for {m.num_classes} classes, checksum "
                  f"{m.classes_sha256!r}) does not check out")
    for name in ("mean", "std"):
        v = getattr(m, name)
        if len(v) != m.channels or not all(np.isfinite(t) for t in v):
            raise bad(f"{name} {v} is not {m.channels} finite numbers")
    if not all(t > 0 for t in m.std):
        raise bad(f"std {m.std} has a value that is not positive")
    if not isinstance(m.config, dict):
        raise bad("config is not a JSON object")
    for name in ("dataset", "algorithm", "protocol", "teacher", "pixel_space", "classes_sha256"):
        if not isinstance(getattr(m, name), str):
            raise bad(f"{name} is not text")


@dataclass
class SyntheticSet(Dataset):
    """A distilled set: images in model-input space, labels, and what is needed to use them.

    Behaves as a torch `Dataset` yielding `(image, label)`; with `soft=True` the target is the
    soft label row instead.

    >>> s = condense.load("synth.h5")
    >>> image, label = s[0]
    >>> loader = torch.utils.data.DataLoader(s, batch_size=256, shuffle=True)
    """

    images: Tensor  # float32 [N, C, H, W], model-input space
    labels: Tensor  # int64 [N]
    meta: SetMeta
    soft_labels: Tensor | None = None  # float32 [N, K]
    soft_attrs: dict[str, Any] = field(default_factory=dict)  # kind, temperature, source
    lr: float | None = None  # learned evaluation learning rate
    compact: dict[str, Tensor] = field(default_factory=dict)  # stored representation, when smaller
    compact_attrs: dict[str, Any] = field(default_factory=dict)  # e.g. decode factor
    zca: Zca | None = None
    soft: bool = False  # __getitem__ returns soft labels as targets
    replay: Relabels | None = None  # recorded per-epoch soft labels (a side file next to the set)

    # ---- Dataset -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if self.soft:
            if self.soft_labels is None:
                raise CondenseError("This synthetic set has no soft labels; load it with soft=False.")
            return self.images[i], self.soft_labels[i]
        return self.images[i], self.labels[i]

    # ---- views -------------------------------------------------------------------------------

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.meta.mean, self.meta.std, self.zca)

    def to_pixels(self) -> Tensor:
        """[N, C, H, W] in [0, 1] pixel space (ZCA inverted, normalization undone)."""
        return self.preprocess.to_pixels(self.images)

    def counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.meta.num_classes).tolist()

    def storage(self) -> dict[str, Any]:
        """What the method stores, counted the same way for every method, so methods compare at equal
        storage: images (the compact ones when the method decodes them), compensators (INFER), label
        vectors (soft labels when the set trains on them, else the int64 hard labels) and the learned
        lr; total bytes; and `equivalent_ipc`, the real images per class (float32, with an int64
        label each) that the same bytes would hold."""
        images = self.compact.get("images", self.images)
        comp = self.compact.get("compensators")
        labels = self.soft_labels if self.soft_labels is not None else self.labels
        parts = {"images": images, "compensators": comp, "labels": labels}
        nbytes = {k: 0 if t is None else t.numel() * t.element_size() for k, t in parts.items()}
        if self.replay is not None:  # the side file's arrays: per-epoch logits and the replay metadata
            nbytes.update({f"replay_{k}": v for k, v in self.replay.nbytes().items()})
        total = sum(nbytes.values()) + (4 if self.lr is not None else 0)
        m = self.meta
        per_real = m.channels * m.height * m.width * 4 + 8
        kind = "replayed" if self.replay is not None else "soft" if self.soft_labels is not None else "hard"
        return {"stored_images": int(images.shape[0]), "compensators": 0 if comp is None else int(comp.shape[0]),
                "label_vectors": int(labels.shape[0]) + (0 if self.replay is None else int(self.replay.logits.shape[0]
                                                                                         * self.replay.images)),
                "label_dtype": "float16" if self.replay is not None else str(labels.dtype).replace("torch.", ""),
                "label_kind": kind,
                "training_images": len(self), "bytes": total, "bytes_by_part": nbytes,
                "equivalent_ipc": round(total / (m.num_classes * per_real), 2)}

    def stored_bytes(self) -> int:
        """Total bytes of what the method stores (see `storage`)."""
        return int(self.storage()["bytes"])

    def stored_images(self) -> int:
        """How many images the file stores (compact ones if present), vs `len(self)` trained on."""
        if "images" in self.compact:
            return int(self.compact["images"].shape[0])
        return len(self)

    def stored_set(self) -> "SyntheticSet":
        """The set as stored: the compact images (with their labels, and their soft labels where the
        compact part has them) when the method decodes them into more training images, else the set."""
        if "images" not in self.compact:
            return self
        imgs = self.compact["images"].float()
        labels = self.compact.get("labels")
        if labels is None:
            labels = torch.arange(self.meta.num_classes).repeat_interleave(imgs.shape[0] // self.meta.num_classes)
        soft = self.compact.get("soft_labels")
        return SyntheticSet(imgs, labels.long(), self.meta, None if soft is None else soft.float(),
                            dict(self.soft_attrs) if soft is not None else {}, self.lr, {}, dict(self.compact_attrs),
                            self.zca)

    def facts(self, path: str | os.PathLike) -> dict[str, Any]:
        """What `condense info` shows: metadata, image counts, storage accounting."""
        from dataclasses import asdict

        m = self.meta
        return {
            "file": str(path), "file bytes": Path(path).stat().st_size, "dataset": m.dataset, "algorithm": m.algorithm,
            "ipc": m.ipc, "classes": m.num_classes, "image shape": f"{m.channels}x{m.height}x{m.width}",
            "training images": len(self), "stored images": self.stored_images(), "storage": self.storage(),
            "images per class": self.counts(), "pixel space": m.pixel_space, "learned lr": self.lr,
            "soft labels": None if self.soft_labels is None else dict(self.soft_attrs, shape=list(self.soft_labels.shape)),
            "compact parts": {k: list(v.shape) for k, v in self.compact.items()} or None,
            "protocol": m.protocol, "seed": m.seed, "condense version": m.condense_version, "created": m.created,
            "meta": asdict(m),
        }

    # ---- file I/O ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` atomically (temporary file in the same folder, then rename)."""
        import h5py

        path = Path(path)
        self.validate(str(path))
        if self.replay is not None and self.replay.set_digest != self.replay_digest():
            raise CondenseError(f"{path}: the replayable labels were recorded for other images than this set's; "
                                f"relabel the set (condense.relabel.relabel) before saving it.")
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                for k, v in self.meta.to_attrs().items():
                    f.attrs[k] = v
                f.attrs["format"] = FORMAT
                f.attrs["format_version"] = FORMAT_VERSION
                f.create_dataset("images", data=self.images.detach().float().cpu().numpy())
                f.create_dataset("labels", data=self.labels.detach().long().cpu().numpy())
                if self.soft_labels is not None:
                    d = f.create_dataset("soft_labels", data=self.soft_labels.detach().float().cpu().numpy())
                    for k, v in self.soft_attrs.items():
                        d.attrs[k] = v
                if self.lr is not None:
                    f.create_dataset("lr", data=np.float32(self.lr))
                if self.compact:
                    g = f.create_group("compact")
                    for k, v in self.compact.items():
                        g.create_dataset(k, data=v.detach().cpu().numpy())
                    for k, v in self.compact_attrs.items():
                        g.attrs[k] = v
                if self.replay is not None:
                    g = f.create_group("replay")
                    g.attrs["file"] = side_file(path).name
                    g.attrs["sha256"] = save_relabels(self.replay, side_file(path))
                if self.zca is not None:
                    g = f.create_group("zca")
                    g.create_dataset("mean", data=self.zca.mean.cpu().numpy())
                    g.create_dataset("matrix", data=self.zca.matrix.cpu().numpy())
                    g.create_dataset("inverse", data=self.zca.inverse.cpu().numpy())
                    g.attrs["eps"] = self.zca.eps
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, soft: bool = False) -> "SyntheticSet":
        """Read and validate a `synth.h5`: only data stored in the file itself, every size checked
        before it is read (`condense.h5read`), every field validated."""
        import h5py

        p = Path(path)
        if not p.exists():
            raise CondenseError(f"{p}: no such file. Check the path (distill writes synth.h5 by default).")
        if not p.is_file():
            raise CondenseError(f"{p}: not a regular file (a folder, a pipe or a device). Pass a synth.h5 file.")
        try:
            f = h5py.File(p, "r")
        except (OSError, RuntimeError) as e:
            raise CondenseError(f"{p}: not a readable HDF5 file ({_short(e)}). It may be truncated or not a "
                                f"condense synthetic set; re-create it with `condense distill`.") from None
        try:
            with f:
                return cls._read(f, p, soft)
        except CondenseError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, OverflowError, json.JSONDecodeError) as e:
            raise CondenseError(f"{p}: the file is damaged or truncated ({_short(e)}). Re-create it with "
                                f"`condense distill`.") from None

    @classmethod
    def _read(cls, f: Any, p: Path, soft: bool) -> "SyntheticSet":
        fmt = _plain(f.attrs.get("format"))
        if fmt != FORMAT:
            raise CondenseError(f"{p}: not a condense synthetic set (format attribute is {fmt!r}, expected "
                                f"{FORMAT!r}). To bring in tensors from other tools, build a SyntheticSet in "
                                f"Python and call .save().")
        if "format_version" not in f.attrs:
            raise CondenseError(f"{p}: the format_version attribute is missing, so the file cannot be read safely; "
                                f"it was not written by condense. Re-create it with `condense distill`.")
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise CondenseError(f"{p}: written by a newer condense (format version {version}; this one reads "
                                f"up to {FORMAT_VERSION}). Upgrade condense to read it.")
        check_self_contained(f, p)
        meta = SetMeta.from_attrs(f.attrs)
        meta.check(str(p))
        c, h, w, k = meta.channels, meta.height, meta.width, meta.num_classes

        def image_shape(s: tuple[int, ...]) -> bool:
            return len(s) == 4 and s[1:] == (c, h, w)

        def array(name: str, kinds: str, ok, expected: str) -> Tensor:
            return torch.from_numpy(read_array(f, name, p, kinds, ok, expected))

        images = array("images", "f", image_shape, f"the metadata says [N, {c}, {h}, {w}]").float()
        n = images.shape[0]
        labels = array("labels", "iu", lambda s: s == (n,), f"there are {n} images").long()
        soft_labels, soft_attrs = None, {}
        if "soft_labels" in f:
            soft_labels = array("soft_labels", "f", lambda s: s == (n, k), f"it should be [{n}, {k}]").float()
            soft_attrs = {a: _plain(v) for a, v in f["soft_labels"].attrs.items()}
        lr = float(array("lr", "f", lambda s: s == (), "it should be one number")) if "lr" in f else None
        compact, compact_attrs = {}, {}
        if "compact" in f:
            parts = {"images": ("f", lambda s: len(s) == 4 and s[1] == c, f"[n, {c}, h, w] images"),
                     "labels": ("iu", lambda s: len(s) == 1, "one label per stored image"),
                     "compensators": ("f", image_shape, f"[n, {c}, {h}, {w}]"),
                     "soft_labels": ("f", lambda s: len(s) == 2 and s[1] == k, f"[n, {k}]")}
            for name, (kinds, ok, expected) in parts.items():
                if name in f["compact"]:
                    t = array(f"compact/{name}", kinds, ok, expected)
                    compact[name] = t.long() if kinds == "iu" else t.float()
            compact_attrs = {a: _plain(v) for a, v in f["compact"].attrs.items()}
        zca = None
        if "zca" in f:
            d = c * h * w
            mean, matrix, inverse = (array(f"zca/{name}", "f", ok, expected).float() for name, ok, expected in (
                ("mean", lambda s: s == (1, d), f"it should be [1, {d}]"),
                ("matrix", lambda s: s == (d, d), f"it should be [{d}, {d}]"),
                ("inverse", lambda s: s == (d, d), f"it should be [{d}, {d}]")))
            zca = Zca(mean, matrix, inverse, eps=float(f["zca"].attrs.get("eps", 0.1)))
        s = cls(images, labels, meta, soft_labels, soft_attrs, lr, compact, compact_attrs, zca, soft)
        s.validate(str(p))
        if "replay" in f:
            name = _plain(f["replay"].attrs.get("file"))
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".labels.h5"):
                raise refuse(p, f"/replay names its label file as {name!r}, not a file beside the set")
            s.replay = load_relabels(p.with_name(name), str(_plain(f["replay"].attrs.get("sha256"))), n, k,
                                     s.replay_digest(), h)
        return s

    def replay_digest(self) -> str:
        """What a label file records it labelled: the set's training images and hard labels."""
        return tensor_digest(self.images, self.labels)

    def validate(self, where: str = "synthetic set") -> None:
        """Refuse inconsistent contents (shapes, label range, non-finite values)."""
        m, x, y = self.meta, self.images, self.labels

        def bad(msg: str) -> CondenseError:
            return CondenseError(f"{where}: {msg}. The set is inconsistent; re-create it with `condense distill`.")

        _meta_check(m, where)
        if x.ndim != 4 or tuple(x.shape[1:]) != (m.channels, m.height, m.width):
            raise bad(f"images have shape {tuple(x.shape)} but the metadata says [N, {m.channels}, {m.height}, "
                      f"{m.width}]")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise bad(f"{tuple(y.shape)} labels for {x.shape[0]} images")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise bad(f"labels are {y.dtype}, not integers")
        if len(m.class_names) != m.num_classes:
            raise bad(f"{len(m.class_names)} class names for {m.num_classes} classes")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= m.num_classes):
            raise bad(f"labels span [{int(y.min())}, {int(y.max())}] outside [0, {m.num_classes - 1}]")
        if not torch.isfinite(x).all():
            raise bad("images contain NaN or infinite values")
        empty = [m.class_names[c] for c, n in enumerate(torch.bincount(y, minlength=m.num_classes).tolist()) if n == 0]
        if empty:
            raise bad(f"{len(empty)} of {m.num_classes} classes have no image ({', '.join(empty[:3])}...)")
        stored = self.compact["images"].shape[0] if "images" in self.compact else x.shape[0]
        if stored > m.ipc * m.num_classes:
            raise bad(f"it stores {stored} images, more than its ipc {m.ipc} x {m.num_classes} classes")
        if m.pixel_space not in ("normalized", "zca"):
            raise bad(f"unknown pixel_space '{m.pixel_space}'")
        if (m.pixel_space == "zca") != (self.zca is not None):
            raise bad("pixel_space and the presence of the /zca matrices disagree")
        if len(m.mean) != m.channels or len(m.std) != m.channels:
            raise bad(f"mean/std have {len(m.mean)}/{len(m.std)} entries for {m.channels} channels")
        if self.soft_labels is not None:
            if tuple(self.soft_labels.shape) != (x.shape[0], m.num_classes):
                raise bad(f"soft labels have shape {tuple(self.soft_labels.shape)}, expected "
                          f"[{x.shape[0]}, {m.num_classes}]")
            if not torch.isfinite(self.soft_labels).all():
                raise bad("soft labels contain NaN or infinite values")
        if self.lr is not None and not (np.isfinite(self.lr) and self.lr > 0):
            raise bad(f"learned lr {self.lr} is not a positive finite number")
        for name, t in self.compact.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise bad(f"/compact/{name} contains NaN or infinite values")
        if "images" in self.compact:
            c = self.compact["images"]
            if c.ndim != 4 or c.shape[1] != m.channels:
                raise bad(f"/compact/images has shape {tuple(c.shape)}, expected [n, {m.channels}, h, w]")
            if "labels" in self.compact and self.compact["labels"].shape[0] != c.shape[0]:
                raise bad(f"/compact holds {self.compact['labels'].shape[0]} labels for {c.shape[0]} images")
            cl = self.compact.get("labels")
            if cl is not None and cl.numel() and (int(cl.min()) < 0 or int(cl.max()) >= m.num_classes):
                raise bad(f"/compact/labels span [{int(cl.min())}, {int(cl.max())}] outside [0, {m.num_classes - 1}]")
            if "soft_labels" in self.compact and tuple(self.compact["soft_labels"].shape) != (c.shape[0], m.num_classes):
                raise bad(f"/compact/soft_labels has shape {tuple(self.compact['soft_labels'].shape)}, expected "
                          f"[{c.shape[0]}, {m.num_classes}]")
        if "compensators" in self.compact and tuple(self.compact["compensators"].shape[1:]) != (m.channels, m.height,
                                                                                               m.width):
            raise bad(f"/compact/compensators has shape {tuple(self.compact['compensators'].shape)}, expected "
                      f"[n, {m.channels}, {m.height}, {m.width}]")
        if self.zca is not None:
            d = m.channels * m.height * m.width
            z = self.zca
            if tuple(z.mean.shape) != (1, d) or tuple(z.matrix.shape) != (d, d) or tuple(z.inverse.shape) != (d, d):
                raise bad(f"the ZCA matrices do not fit {d}-value images")
            if not all(bool(torch.isfinite(t).all()) for t in (z.mean, z.matrix, z.inverse)):
                raise bad("the ZCA matrices contain NaN or infinite values")


def load(path: str | os.PathLike, soft: bool = False, dataset: Any = None,
         class_map: str | os.PathLike | None = None) -> SyntheticSet:
    """`condense.load("synth.h5")`: a validated SyntheticSet (a torch Dataset).

    With `dataset` (a name such as "fashion-mnist", a `DatasetInfo` or a `RealData`), the set's class
    manifest is compared with the dataset's and a different class order refused; `class_map` (a JSON
    file, see `condense.classes`) re-maps the labels to the dataset's order first."""
    s = SyntheticSet.load(path, soft=soft)
    if dataset is None:
        if class_map is not None:
            raise CondenseError("A class map re-maps a set onto a dataset's class order: name the dataset too (--dataset, or "
                                "dataset= in Python).")
        return s
    import condense.classes as classes
    from condense.data import load_dataset

    info = dataset if hasattr(dataset, "class_ids") else getattr(dataset, "info", None)
    info = info or load_dataset(str(dataset), lazy=True).info  # lazy: only folders read it, and need no decoding
    if class_map is not None:
        s = classes.remap(s, classes.read_class_map(Path(class_map), s.meta, info), info)
    classes.check(s.meta, info, str(path))
    return s


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


# --------------------------------------------------------------------------------------------
# exporters: the field's other formats


def export_pt(s: SyntheticSet, out_dir: str | os.PathLike) -> Path:
    """`images_best.pt`, `labels_best.pt` (and `lr_best.pt`) as MTT/DATM/DD-Ranking read them:
    images in model-input space, labels int64 (soft labels as `labels_best.pt` when present,
    as DATM does, with the hard ones in `hard_labels_best.pt`)."""
    out = Path(out_dir)
    with atomic_path(out, directory=True) as tmp:
        torch.save(s.images.detach().cpu().clone(), tmp / "images_best.pt")
        if s.soft_labels is not None:
            torch.save(s.soft_labels.detach().cpu().clone(), tmp / "labels_best.pt")
            torch.save(s.labels.detach().cpu().clone(), tmp / "hard_labels_best.pt")
        else:
            torch.save(s.labels.detach().cpu().clone(), tmp / "labels_best.pt")
        if s.lr is not None:
            torch.save(torch.tensor(s.lr), tmp / "lr_best.pt")
    return out


def export_imagefolder(s: SyntheticSet, out_dir: str | os.PathLike) -> Path:
    """One folder per class (`000_<name>/img_00000.png`), pixels in [0, 1] saved as 8-bit PNG."""
    from PIL import Image

    out = Path(out_dir)
    pixels = (s.to_pixels() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    with atomic_path(out, directory=True) as tmp:
        seen = [0] * s.meta.num_classes
        for img, c in zip(pixels, s.labels.tolist()):
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s.meta.class_names[c])
            d = tmp / f"{c:03d}_{safe}"
            d.mkdir(exist_ok=True)
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(d / f"img_{seen[c]:05d}.png")
            seen[c] += 1
    return out


def export(s: SyntheticSet, to: str, out_dir: str | os.PathLike) -> Path:
    """`condense export`: write the set in one of the field's other formats (pt, imagefolder)."""
    writers = {"pt": export_pt, "imagefolder": export_imagefolder}
    if to not in writers:
        raise CondenseError(f"--to '{to}' is not an export format; use pt or imagefolder.")
    return writers[to](s, out_dir)


def save_grid(s: SyntheticSet, path: str | os.PathLike, per_class: int = 10, upscale: int = 2) -> Path:
    """A PNG with one row per class (at most `per_class` images each), in pixel space."""
    if not 1 <= per_class <= 1000 or not 1 <= upscale <= 32:
        raise CondenseError(f"--per-class must be 1-1000 and --upscale 1-32 (got {per_class} and {upscale}).")
    from PIL import Image

    rows = []
    pix = s.to_pixels().cpu()
    c_, h, w = pix.shape[1:]
    for c in range(s.meta.num_classes):
        imgs = pix[s.labels.cpu() == c][:per_class]
        row = torch.ones(per_class, c_, h, w)
        row[: len(imgs)] = imgs
        rows.append(row)
    grid = torch.stack(rows)  # [K, per_class, C, H, W]
    pad = 2
    grid = torch.nn.functional.pad(grid, (pad, pad, pad, pad), value=1.0)
    k, n, c_, hh, ww = grid.shape
    canvas = grid.permute(0, 3, 1, 4, 2).reshape(k * hh, n * ww, c_)
    arr = (canvas * 255).round().to(torch.uint8).numpy()
    img = Image.fromarray(arr[..., 0] if c_ == 1 else arr)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
