"""Cache of expensive by-products, and the recipes they are trained with: trained networks
(teachers, embedding nets, NCFM pools) and expert trajectories (trajectory matching).

No model hub is reachable from where condense must run, so everything a method needs is
trained by condense itself, once, and kept under `$CONDENSE_CACHE` (default
`~/.cache/condense/artifacts`). An artifact is keyed by what determines it: dataset, pixel
space, architecture, training recipe and seed. Building one shows progress, checkpoints every
epoch (an interrupted build resumes where it stopped) and is written atomically.

Layout:
    networks/<dataset>-<arch>-<key>.pt          {'init', 'trained', 'meta'} state dicts
    experts/<dataset>-<arch>-<key>/expert_<i>.h5  /params [epochs + 1, P] float32 flat parameters
                                                 at initialization and after every epoch; attrs:
                                                 recipe, dataset, pixel_space, arch, seed, names
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from condense.augment import DEFAULT_STRATEGY
from condense.data import RealData
from condense.errors import CondenseError
from condense.models import FlatParams, Network, build_model
from condense.progress import Reporter
from condense.runtime import make_generator
from condense.io import atomic_path, exclusive
from condense.train import TrainConfig, TrainData, accuracy, train_model

ARTIFACT_VERSION = 1


def _discard(path: Path) -> None:
    """Remove a partial build if there is one (in a cache that cannot be written there is none)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _val_accuracy(net: torch.nn.Module, val: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, y = val
    return accuracy(net, [(x[i:i + 512], y[i:i + 512]) for i in range(0, len(y), 512)])


@torch.no_grad()
def _collapsed(net: torch.nn.Module, real: RealData) -> bool:
    """Whether the network predicts one class for 95% or more of the test images (what a diverged
    network does; an undertrained one still varies its predictions)."""
    net.eval()
    preds = torch.cat([net(x).argmax(1) for x, _ in real.test_batches()])
    return bool(torch.bincount(preds).max() >= 0.95 * preds.numel())


def committee_recipe(epochs: int, lr: float = 0.1, batch: int = 128, optimizer: str = "sgd",
                     weight_decay: float = 5e-4) -> TrainConfig:
    """How committee teachers are trained (INFER's teachers follow the DDS recipe: SGD 0.1, momentum
    0.9, wd 5e-4, cosine, batch 128, random crop (a shift of up to 1/8 of the side) and flip; CV-DD's
    CIFAR teachers use Adam 1e-3, wd 1e-4, batch 512)."""
    return TrainConfig(epochs=epochs, batch=batch, optimizer=optimizer, lr=lr, momentum=0.9, weight_decay=weight_decay,
                       schedule="cosine", augment="crop_flip", augment_mode="all")


def cache_root(path: str | os.PathLike | None = None) -> Path:
    if path:
        return Path(path).expanduser()
    return Path(os.environ.get("CONDENSE_CACHE", "~/.cache/condense/artifacts")).expanduser()


def key_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recipe_fields(recipe: TrainConfig) -> dict[str, Any]:
    """The recipe's settings that differ from TrainConfig's defaults: adding a new setting (with a
    default) later keeps every cached artifact's key, and so its file, valid."""
    default = TrainConfig()
    return {k: v for k, v in asdict(recipe).items() if v != getattr(default, k)}


def teacher_recipe(epochs: int, lr: float = 0.01, augment: str = "none") -> TrainConfig:
    """How `condense teachers` trains a network on the whole training split (and so how the
    soft-label protocols' teachers are trained): SGD with momentum 0.9, weight decay 5e-4, batch
    256, cosine to 0. 15 epochs give a ConvNet-3 93.3% on Fashion-MNIST."""
    return TrainConfig(epochs=epochs, batch=256, lr=lr, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                       augment=augment)


def embedding_recipe(epochs: int) -> TrainConfig:
    """How herding's and k-center's embedding network is trained: short, plain, reproducible."""
    return TrainConfig(epochs=epochs, batch=256, lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                       augment="none")


def pool_recipe(epochs: int) -> TrainConfig:
    """How NCFM's feature-extractor pool is trained (official pretrain script: SGD 0.01, batch 128,
    decays x0.2 at 2/3 and 5/6, DSA color_crop in IDC mode plus CutMix)."""
    return TrainConfig(epochs=epochs, batch=128, lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="step",
                       milestones=(2 / 3, 5 / 6), gamma=0.2, augment="color_crop", augment_mode="idc", cutmix=0.5)


def expert_recipe(kind: str, epochs: int) -> TrainConfig:
    """How trajectory matching's experts are trained. mtt: plain SGD 0.01, no momentum or weight
    decay, DSA, batch 256 (MTT's buffer.py). smooth: AST's smooth experts, SGD 0.01 momentum 0.9,
    wd 1e-3, the clipping loss over the first 10 epochs and the input-gradient penalty (lambda 2)."""
    common = dict(epochs=epochs, batch=256, lr=0.01, augment=DEFAULT_STRATEGY, schedule="constant")
    if kind == "mtt":
        return TrainConfig(momentum=0.0, weight_decay=0.0, **common)
    if kind == "smooth":
        return TrainConfig(momentum=0.9, weight_decay=1e-3, clip_epochs=10, grad_penalty=2.0, **common)
    raise CondenseError(f"expert recipe must be 'mtt' or 'smooth', not '{kind}'.")


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(":", "_")


class Artifacts:
    """Trained networks and expert trajectories on demand (loaded from the cache or built)."""

    def __init__(self, root: str | os.PathLike | None = None, reporter: Reporter | None = None,
                 device: torch.device | str = "cpu", compile: bool = False, weights: Path | None = None) -> None:
        self.compile = compile  # torch.compile the training forward (the CLI turns it on)
        self.weights = weights  # a folder of pretrained weights to import (condense.pretrained), or None
        self.root = cache_root(root)
        self.reporter = reporter or Reporter()
        self.device = torch.device(device)
        self.warned = False

    # ---- trained networks ----------------------------------------------------------------------

    def describe(self, real: RealData, arch: str, recipe: TrainConfig, seed: int, kind: str = "trained-network"
                 ) -> dict[str, Any]:
        desc = {"kind": kind, "version": ARTIFACT_VERSION, "dataset": real.info.name,
                "pixel_space": real.pre.pixel_space, "arch": arch, "recipe": recipe_fields(recipe), "seed": seed}
        if real.subset:  # trained on part of the split (e.g. validation held out): another network
            desc["train_subset"] = real.subset
        return desc

    def path(self, desc: dict[str, Any]) -> Path:
        return self.root / "networks" / f"{_safe(desc['dataset'])}-{desc['arch']}-{key_of(desc)}.pt"

    def trained(self, real: RealData, arch: str, recipe: TrainConfig, seed: int = 0,
                which: str = "trained") -> Network:
        """A network of `arch` trained on `real`'s training split with `recipe` (built if missing).

        which: "trained" (final weights) or "init" (the same network at initialization)."""
        return self.network(real, arch, self.trained_record(real, arch, recipe, seed), which)

    def network(self, real: RealData, arch: str, record: dict[str, Any], which: str = "trained") -> Network:
        """The network of a stored record, in eval mode on the cache's device."""
        net = build_model(arch, real.info.channels, real.info.num_classes, real.info.size, seed=0).to(self.device)
        net.load_state_dict(record[which])
        return net.eval()

    def trained_record(self, real: RealData, arch: str, recipe: TrainConfig, seed: int = 0,
                       val: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
        """The stored record: {'init', 'trained', 'meta'}; meta has the recipe, seed, training seconds,
        test accuracy and, given `val` (held-out images and labels), validation accuracy. A network
        that diverged (non-finite weights, or chance accuracy) is refused, never cached."""
        desc = self.describe(real, arch, recipe, seed)
        path = self.path(desc)
        with exclusive(path, "building", wait=True):  # a second process waits, then loads the finished file
            return self._trained_record(real, arch, recipe, seed, val, desc, path)

    def _trained_record(self, real: RealData, arch: str, recipe: TrainConfig, seed: int,
                        val: tuple[torch.Tensor, torch.Tensor] | None, desc: dict[str, Any], path: Path) -> dict[str, Any]:
        if path.is_file():
            record = self._load(path)
            if val is not None and record["meta"].get("val_accuracy") is None:
                record["meta"]["val_accuracy"] = _val_accuracy(self.network(real, arch, record), val)
            return record
        net, init, _, seconds = self._train(real, arch, recipe, seed, path.with_suffix(".partial.pt"), False)
        acc = accuracy(net, real.test_batches())
        if recipe.epochs > 0 and _collapsed(net, real) and acc <= 1.2 / real.info.num_classes:
            _discard(path.with_suffix(".partial.pt"))
            raise CondenseError(f"Training {arch} on {real.info.name} (seed {seed}) ended at {acc:.1%} test accuracy, "
                                f"predicting one class for nearly every image: it diverged, so it was not cached. "
                                f"Train it with a smaller learning rate (--lr).")
        record = {"init": init, "trained": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                  "meta": {**desc, "test_accuracy": acc, "seconds": seconds,
                           "val_accuracy": None if val is None else _val_accuracy(net, val),
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}}
        if self._store(path, lambda tmp: torch.save(record, tmp)):
            self.reporter.log(f"cached {path.name}: test accuracy {acc:.2%} after {seconds:.0f}s")
        _discard(path.with_suffix(".partial.pt"))
        return record

    def pretrained_record(self, real: RealData, arch: str) -> dict[str, Any]:
        """A pretrained network the user brought (`condense.pretrained`): imported from `self.weights` when
        given (with its test accuracy measured once), else from the cache, else a refusal saying how."""
        desc = {"kind": "pretrained-network", "version": ARTIFACT_VERSION, "dataset": real.info.name,
                "pixel_space": real.pre.pixel_space, "arch": arch}
        path = self.path(desc)
        if self.weights is None:
            if path.is_file():
                return self._load(path)
            raise CondenseError(f"{arch} is a pretrained teacher of {real.info.name} that has not been imported. "
                                f"Import its weights once with `condense teachers --dataset {real.info.name} --committee "
                                f"NAME --teacher-weights DIR` (DIR: the folder of torchvision's .pth files).")
        from condense.pretrained import find_weights, load_weights

        file = find_weights(self.weights, arch)
        net = build_model(arch, real.info.channels, real.info.num_classes, real.info.size, seed=0)
        sha = load_weights(net, file, arch)
        t0 = time.time()
        acc = accuracy(net.to(self.device).eval(), real.test_batches())
        record = {"init": {}, "trained": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                  "meta": {**desc, "weights_file": file.name, "weights_sha256": sha, "test_accuracy": acc,
                           "val_accuracy": None, "seconds": 0, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}}
        if self._store(path, lambda tmp: torch.save(record, tmp)):
            self.reporter.log(f"imported {file.name} as {arch}: test accuracy {acc:.2%} ({time.time() - t0:.0f}s)")
        return record

    def summary(self, real: RealData, jobs: list[tuple[str, TrainConfig, int]]) -> list[tuple[str, ...]]:
        """(arch, seed, epochs, test accuracy %, training seconds, file name) of each (arch, recipe, seed),
        trained first where missing."""
        rows = []
        for arch, recipe, seed in jobs:
            m = self.trained_record(real, arch, recipe, seed=seed)["meta"]
            rows.append((arch, str(seed), str(recipe.epochs), f"{100 * m['test_accuracy']:.2f}", f"{m['seconds']:.0f}",
                         self.path(self.describe(real, arch, recipe, seed)).name))
        return rows

    # ---- expert trajectories -------------------------------------------------------------------

    def expert_path(self, real: RealData, arch: str, recipe: TrainConfig, index: int) -> Path:
        desc = self.describe(real, arch, recipe, 0, kind="expert")
        folder = self.root / "experts" / f"{_safe(desc['dataset'])}-{arch}-{key_of(desc)}"
        return folder / f"expert_{index:03d}.h5"

    def expert(self, real: RealData, arch: str, recipe: TrainConfig, index: int) -> torch.Tensor:
        """[recipe.epochs + 1, P] flat parameters of expert `index` at initialization and after every
        epoch (built and cached on first use)."""
        path = self.expert_path(real, arch, recipe, index)
        with exclusive(path, "building", wait=True):
            return self._expert(real, arch, recipe, index, path)

    def _expert(self, real: RealData, arch: str, recipe: TrainConfig, index: int, path: Path) -> torch.Tensor:
        import h5py

        if path.is_file():
            try:
                with h5py.File(path, "r") as f:
                    return torch.from_numpy(np.asarray(f["params"], dtype=np.float32))
            except (OSError, RuntimeError, KeyError, ValueError) as e:
                raise CondenseError(f"The cached expert {path} is damaged ({e}). Delete it; it will be rebuilt.") \
                    from None
        desc = self.describe(real, arch, recipe, index, kind="expert")
        net, _, traj, seconds = self._train(real, arch, recipe, index, path.with_suffix(".partial.pt"), True,
                                            label=f"expert {index}")
        params = torch.stack(traj)

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("params", data=params.numpy())
                f.attrs["meta"] = json.dumps({**desc, "seconds": seconds, "names": FlatParams(net).names})

        if self._store(path, write):
            self.reporter.log(f"cached {path.parent.name}/{path.name}: {params.shape[0] - 1} epochs in {seconds:.0f}s")
        _discard(path.with_suffix(".partial.pt"))
        return params

    def experts(self, real: RealData, arch: str, recipe: TrainConfig, num: int) -> tuple[Path, int]:
        """Experts 0..num-1 (built where missing): their folder and its size in bytes."""
        if num < 1 or recipe.epochs < 1:
            raise CondenseError(f"Experts need --num and --epochs of at least 1 (got {num} and {recipe.epochs}).")
        for i in range(num):
            self.expert(real, arch, recipe, i)
        folder = self.expert_path(real, arch, recipe, 0).parent
        return folder, sum(p.stat().st_size for p in folder.glob("*.h5"))

    def _store(self, path: Path, write) -> bool:
        """Write `path` atomically; if the cache cannot be written (read-only, full), warn once and go
        on: the caller keeps what it built in memory, and it is built again next time."""
        try:
            with atomic_path(path) as tmp:
                write(tmp)
            return True
        except CondenseError as e:
            if not self.warned:
                self.reporter.warn(f"the artifact cache {self.root} cannot be written ({e}) What is built now is used "
                                   f"from memory and not kept; set $CONDENSE_CACHE to a writable folder to keep it.")
                self.warned = True
            return False

    # ---- shared training with per-epoch checkpoints ----------------------------------------------

    def _load(self, path: Path) -> dict[str, Any]:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)  # CPU: generator states stay there
        except pickle.UnpicklingError:
            raise CondenseError(f"The cached artifact {path} holds objects other than tensors, numbers and text, "
                                f"which condense does not unpickle. Delete it; it will be rebuilt.") from None
        except Exception as e:  # noqa: BLE001  (a damaged cache file is one user problem)
            raise CondenseError(f"The cached artifact {path} is damaged ({type(e).__name__}). Delete it; "
                                f"it will be rebuilt on the next run.") from None

    def _train(self, real: RealData, arch: str, recipe: TrainConfig, seed: int, partial: Path, trajectory: bool,
               label: str | None = None) -> tuple[Network, dict, list[torch.Tensor], float]:
        """Train `arch` on the real data; checkpoint to `partial` every epoch and resume from it.
        Returns the network, its initial state dict, the flat parameters per epoch (if asked) and
        the seconds spent."""
        info = real.info
        net = build_model(arch, info.channels, info.num_classes, info.size, seed=seed).to(self.device)
        flat = FlatParams(net)
        init = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        traj = [flat.flatten(net).cpu()] if trajectory else []
        gen = make_generator(seed)
        start, opt_state, spent = 0, None, 0.0
        if partial.is_file():  # resume an interrupted build
            ck = self._load(partial)
            net.load_state_dict(ck["model"])
            init, opt_state, start, spent, traj = ck["init"], ck["opt"], ck["epoch"] + 1, ck["seconds"], ck["traj"]
            gen.set_state(ck["generator"])
        t0 = time.time() - spent
        with self.reporter.task(f"{label or 'train ' + arch} on {info.name} ({recipe.epochs} ep)", recipe.epochs) as update:
            update(advance=start)

            def on_epoch(epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
                if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # one sync per epoch
                    _discard(partial)
                    raise CondenseError(f"Training {arch} on {info.name} (seed {seed}) diverged in epoch {epoch + 1} "
                                        f"(non-finite weights), so it was not cached. Train it with a smaller "
                                        f"learning rate.")
                if trajectory:
                    traj.append(flat.flatten(model).cpu())
                state = {"model": model.state_dict(), "init": init, "opt": opt.state_dict(), "epoch": epoch,
                         "generator": gen.get_state(), "seconds": time.time() - t0, "traj": traj}
                self._store(partial, lambda tmp: torch.save(state, tmp))
                update()

            with torch.enable_grad():  # callers may hold no_grad while asking for a network
                train_model(net, TrainData.real(real), recipe, gen, on_epoch=on_epoch, start_epoch=start,
                            opt_state=opt_state, allow_flip=info.allow_flip, compile=self.compile)
        return net, init, traj, time.time() - t0
