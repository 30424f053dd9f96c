"""Teacher committees: named sets of BatchNorm networks trained on the real data.

The teacher-inversion methods (INFER, committee voting) and the soft-label protocols that evaluate
them must use the same teachers, so a committee has a name: `assets/committees/<dataset>.toml`
holds one table per committee (members, epochs, learning rate, batch, validation images held out).
Members are cached artifacts (`condense.artifacts`), trained on the training split minus a seeded
validation split of `val_per_class` images per class (the split `condense eval --select val`
holds out with its default seed and size), so every member's validation accuracy is measured on
images no member has seen. `condense teachers --committee NAME` builds one ahead of time.
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.artifacts import Artifacts, committee_recipe, key_of
from condense.data import RealData
from condense.errors import CondenseError
from condense.models import MODELS
from condense.run import assets_dir
from condense.runtime import derive_seed, make_generator
from condense.train import TrainConfig


@dataclass(frozen=True)
class CommitteeSpec:
    """Which networks, trained how, on which part of the data."""

    name: str
    members: tuple[tuple[str, int], ...]  # (architecture, seed)
    recipe: TrainConfig
    val_per_class: int = 500  # held out for validation accuracy (0: train on the whole split)
    description: str = ""
    pretrained: bool = False  # members are weights the user imports (condense.pretrained), not trained here

    def problems(self) -> list[str]:
        out = [f"unknown architecture '{a}'" for a, _ in self.members if a not in MODELS]
        if not self.members:
            out.append("no members")
        if self.pretrained and (any(seed for _, seed in self.members) or self.val_per_class):
            out.append("a pretrained committee names each architecture once and holds out no validation images")
        if self.recipe.epochs < 1 and not self.pretrained:
            out.append(f"epochs must be at least 1 (got {self.recipe.epochs})")
        if not self.recipe.lr > 0 or self.val_per_class < 0:
            out.append(f"lr must be positive and val_per_class not negative (got {self.recipe.lr}, {self.val_per_class})")
        return out


def _table(dataset: str) -> dict[str, Any]:
    path = assets_dir() / "committees" / f"{dataset.split(':')[0]}.toml"
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def committee_names(dataset: str) -> list[str]:
    """The committees `dataset` has in assets/committees/."""
    return sorted(_table(dataset))


def committee_spec(dataset: str, name: str = "") -> CommitteeSpec:
    """The named committee of `dataset` from assets/committees/<dataset>.toml; with no name, the
    dataset's only committee."""
    table = _table(dataset)
    if not name and len(table) == 1:
        name = next(iter(table))
    if name not in table:
        have = ", ".join(sorted(table)) or "none"
        raise CondenseError(f"{dataset} has no teacher committee '{name}' (committees: {have}; they live in "
                            f"assets/committees/). Name one of those (--committee, or --set committee=NAME).")
    t = table[name]
    archs = [str(a) for a in t["members"]]
    spec = CommitteeSpec(name, tuple((a, archs[:i].count(a)) for i, a in enumerate(archs)),
                         committee_recipe(int(t.get("epochs", 0)), float(t.get("lr", 0.1)), int(t.get("batch", 128)),
                                          str(t.get("optimizer", "sgd")), float(t.get("weight_decay", 5e-4))),
                         int(t.get("val_per_class", 0 if t.get("pretrained") else 500)), str(t.get("description", "")),
                         bool(t.get("pretrained", False)))
    _check(spec)
    return spec


def inversion_spec(real: RealData, name: str, method: str) -> CommitteeSpec:
    """The committee a teacher-inversion method (INFER, CV-DD) inverts; its teachers see normalized
    images, so a ZCA-whitened run is refused."""
    if real.pre.pixel_space == "zca":
        raise CondenseError(f"{method}'s teachers are trained on normalized images; distil it without --zca.")
    return committee_spec(real.info.name, name)


def adhoc_spec(archs: list[str], recipe: TrainConfig, num: int = 1, val_per_class: int = 0) -> CommitteeSpec:
    """An unnamed committee: `num` seeds of each architecture."""
    spec = CommitteeSpec("", tuple((a, s) for a in archs for s in range(num)), recipe, val_per_class)
    _check(spec)
    return spec


def _check(spec: CommitteeSpec) -> None:
    issues = spec.problems()
    if issues:
        raise CondenseError(f"Teacher committee {spec.name or '(from --arch)'}: {'; '.join(issues)}. Known "
                            f"architectures: {', '.join(MODELS.names())}.")


@dataclass
class Committee:
    """Trained members (frozen, eval mode) and what every result records about them."""

    spec: CommitteeSpec
    nets: list[nn.Module]
    records: list[dict[str, Any]]  # per member: arch, seed, cache key, test and validation accuracy, seconds

    def describe(self) -> dict[str, Any]:
        return {"committee": self.spec.name, "recipe": {"epochs": self.spec.recipe.epochs, "lr": self.spec.recipe.lr},
                "val_per_class": self.spec.val_per_class, "members": self.records}

    def table(self, dataset: str) -> tuple[str, list[tuple], tuple[str, ...]]:
        """What `condense teachers` prints: a title, one row per member, the column names."""
        r = self.spec.recipe
        title = (f"{dataset}: committee {self.spec.name} ({self.spec.description})" if self.spec.name else
                 f"{dataset}: SGD {r.lr}, {r.epochs} epochs, augment {r.augment}")
        rows = [(m["arch"], m["seed"], r.epochs, f"{100 * m['test_accuracy']:.2f}",
                 "-" if m["val_accuracy"] is None else f"{100 * m['val_accuracy']:.2f}", m["seconds"])
                for m in self.records]
        return title, rows, ("arch", "seed", "epochs", "test acc (%)", "val acc (%)", "train time (s)")


def training_split(real: RealData, val_per_class: int) -> tuple[RealData, tuple[torch.Tensor, torch.Tensor] | None]:
    """The data committee members train on, and the held-out validation images (None when 0)."""
    if val_per_class <= 0:
        return real, None
    return real.holdout(val_per_class, make_generator(derive_seed(0, "validation-split")))


def load_committee(store: Artifacts, real: RealData, spec: CommitteeSpec) -> Committee:
    """Every member from the cache, trained first where missing (progress, resumable, refused if it
    diverges). `real`: the whole training split (the validation images are held out here)."""
    if store.weights is not None and not spec.pretrained:
        raise CondenseError(f"--teacher-weights imports the members of a pretrained committee (pretrained = true in "
                            f"assets/committees/); committee {spec.name or '(from --arch)'} is trained by condense.")
    train, val = training_split(real, spec.val_per_class)
    nets, records = [], []
    for arch, seed in spec.members:
        if spec.pretrained:
            record = store.pretrained_record(train, arch)
            key = f"{record['meta']['weights_sha256'][:16]}"
        else:
            record = store.trained_record(train, arch, spec.recipe, seed, val=val)
            key = key_of(store.describe(train, arch, spec.recipe, seed))
        net = store.network(train, arch, record).requires_grad_(False)
        nets.append(net)
        m = record["meta"]
        records.append({"arch": arch, "seed": seed, "key": key,
                        "test_accuracy": round(float(m["test_accuracy"]), 4),
                        "val_accuracy": None if m.get("val_accuracy") is None else round(float(m["val_accuracy"]), 4),
                        "seconds": round(float(m["seconds"]))})
    return Committee(spec, nets, records)


# ---- CV-DD's distil-and-evaluate priors ---------------------------------------------------------

def priors_path(store: Artifacts, dataset: str, committee: Committee) -> Path:
    """Where a committee's measured priors are cached: keyed by its members' cache keys, so retrained
    members never meet stale priors."""
    key = key_of({"members": [m["key"] for m in committee.records]})
    return store.root / "priors" / f"{dataset.replace(':', '_')}-{committee.spec.name or 'adhoc'}-{key}.json"


def save_distill_priors(store: Artifacts, dataset: str, committee: Committee, priors: list[float],
                        how: dict[str, Any]) -> Path:
    path = priors_path(store, dataset, committee)
    store._store(path, lambda tmp: Path(tmp).write_text(json.dumps({"priors": priors, "how": how}, indent=1)))
    return path


def load_distill_priors(store: Artifacts, dataset: str, committee: Committee) -> list[float]:
    """The cached priors (accuracy in %, one per member), or a clear refusal saying how to measure them."""
    path = priors_path(store, dataset, committee)
    try:
        priors = json.loads(path.read_text())["priors"]
        if isinstance(priors, list) and len(priors) == len(committee.records) and \
                all(isinstance(v, (int, float)) and math.isfinite(v) for v in priors):
            return [float(v) for v in priors]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise CondenseError(f"prior=distill needs the distil-and-evaluate priors of committee {committee.spec.name} "
                        f"({path} is missing or unreadable). Measure them once with `condense teachers --dataset "
                        f"{dataset} --committee {committee.spec.name} --priors distill --preset cpu` (one CV-DD "
                        f"distillation and evaluation per member), or use --set prior=val.")
