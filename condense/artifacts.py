"""Cache of expensive by-products: trained networks (teachers, embedding nets, NCFM pools).

No model hub is reachable from where condense must run, so everything a method needs is
trained by condense itself, once, and kept under `$CONDENSE_CACHE` (default
`~/.cache/condense/artifacts`). An artifact is keyed by what determines it: dataset, pixel
space, architecture, training recipe and seed. Building one shows progress, checkpoints every
epoch (an interrupted build resumes where it stopped) and is written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from condense.data import RealData
from condense.errors import CondenseError
from condense.models import Network, build_model
from condense.progress import Reporter
from condense.runtime import make_generator
from condense.synthetic import atomic_path
from condense.train import TrainConfig, TrainData, accuracy, train_model

ARTIFACT_VERSION = 1


def cache_root(path: str | os.PathLike | None = None) -> Path:
    if path:
        return Path(path).expanduser()
    return Path(os.environ.get("CONDENSE_CACHE", "~/.cache/condense/artifacts")).expanduser()


def key_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Artifacts:
    """Trained networks on demand: `trained(real, arch, recipe, seed)` loads or builds one."""

    def __init__(self, root: str | os.PathLike | None = None, reporter: Reporter | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.root = cache_root(root)
        self.reporter = reporter or Reporter()
        self.device = torch.device(device)

    def describe(self, real: RealData, arch: str, recipe: TrainConfig, seed: int) -> dict[str, Any]:
        return {"kind": "trained-network", "version": ARTIFACT_VERSION, "dataset": real.info.name,
                "pixel_space": real.pre.pixel_space, "arch": arch, "recipe": asdict(recipe), "seed": seed}

    def path(self, desc: dict[str, Any]) -> Path:
        return self.root / "networks" / f"{desc['dataset'].replace('/', '_').replace(':', '_')}-{desc['arch']}-{key_of(desc)}.pt"

    def trained(self, real: RealData, arch: str, recipe: TrainConfig, seed: int = 0,
                which: str = "trained") -> Network:
        """A network of `arch` trained on the whole real training split with `recipe`.

        which: "trained" (final weights) or "init" (the same network at initialization)."""
        record = self.trained_record(real, arch, recipe, seed)
        net = build_model(arch, real.info.channels, real.info.num_classes, real.info.size, seed=0).to(self.device)
        net.load_state_dict(record[which])
        return net.eval()

    def trained_record(self, real: RealData, arch: str, recipe: TrainConfig, seed: int = 0) -> dict[str, Any]:
        """The stored record: {'init', 'trained', 'meta'} (meta has the test accuracy and time)."""
        desc = self.describe(real, arch, recipe, seed)
        path = self.path(desc)
        if path.is_file():
            return self._load(path)
        return self._build(real, arch, recipe, seed, desc, path)

    def _load(self, path: Path) -> dict[str, Any]:
        try:
            return torch.load(path, map_location="cpu")  # CPU first: generator states must stay there
        except Exception as e:  # noqa: BLE001  (a damaged cache file is one user problem)
            raise CondenseError(f"The cached artifact {path} is damaged ({type(e).__name__}). Delete it; "
                                f"it will be rebuilt on the next run.") from None

    def _build(self, real: RealData, arch: str, recipe: TrainConfig, seed: int, desc: dict[str, Any],
               path: Path) -> dict[str, Any]:
        info = real.info
        net = build_model(arch, info.channels, info.num_classes, info.size, seed=seed).to(self.device)
        init = {k: v.detach().clone() for k, v in net.state_dict().items()}
        gen = make_generator(seed)
        partial = path.with_suffix(".partial.pt")
        start, opt_state, spent = 0, None, 0.0
        if partial.is_file():  # resume an interrupted build
            ck = self._load(partial)
            net.load_state_dict(ck["model"])
            init, opt_state, start, spent = ck["init"], ck["opt"], ck["epoch"] + 1, ck["seconds"]
            gen.set_state(ck["generator"])
        t0 = time.time() - spent
        label = f"train {arch} on {info.name} ({recipe.epochs} ep)"
        with self.reporter.task(label, recipe.epochs) as update:
            update(advance=start)

            def on_epoch(epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
                with atomic_path(partial) as tmp:
                    torch.save({"model": model.state_dict(), "init": init, "opt": opt.state_dict(), "epoch": epoch,
                                "generator": gen.get_state(), "seconds": time.time() - t0}, tmp)
                update()

            with torch.enable_grad():  # callers may hold no_grad while asking for a network
                train_model(net, TrainData.real(real), recipe, gen, on_epoch=on_epoch, start_epoch=start,
                            opt_state=opt_state, allow_flip=info.allow_flip)
        seconds = time.time() - t0
        acc = accuracy(net, real.test_batches())
        record = {"init": init, "trained": {k: v.detach().clone() for k, v in net.state_dict().items()},
                  "meta": {**desc, "test_accuracy": acc, "seconds": seconds,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}}
        with atomic_path(path) as tmp:
            torch.save(record, tmp)
        partial.unlink(missing_ok=True)
        self.reporter.log(f"cached {path.name}: test accuracy {acc:.2%} after {seconds:.0f}s")
        return record
