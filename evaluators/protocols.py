"""Named, frozen evaluation protocols, one TOML file each in `assets/protocols/`.

A protocol is identified by its name and the hash of its parsed contents; both are printed and
saved with every result, so a number can always be traced to exactly how it was produced.
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, replace

from condense.errors import CondenseError
from condense.kd import LOSSES
from condense.registry import Registry
from condense.run import assets_dir
from condense.train import TrainConfig

PROTOCOLS: Registry["Protocol"] = Registry("protocol")
LABEL_MODES = ("hard", "static", "teacher", "replay")


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    train: TrainConfig
    runs: int = 5
    arch: str = "convnet"
    use_learned_lr: bool = True
    hash: str = ""
    labels: str = "hard"  # hard | static (one soft label per image: stored, else the teachers') | teacher (online)
    #                       | replay (the file's recorded per-epoch labels, condense.relabel)

    def with_epochs(self, epochs: int | None) -> "Protocol":
        """The same protocol with another epoch budget (reported as a modification)."""
        if epochs is None or epochs == self.train.epochs:
            return self
        note = (f"MODIFIED: {epochs} epochs instead of {self.train.epochs} (milestones are fractions of the "
                f"budget, so the decay moves with it); not comparable with published {self.name} numbers")
        return replace(self, name=f"{self.name}@{epochs}ep", description=f"{self.description}. {note}",
                       train=self.train.with_(epochs=epochs))

    def with_loss(self, loss: str | None) -> "Protocol":
        """The same soft-label protocol with another distillation loss (`condense.kd`), named in the result."""
        if loss is None or loss == self.train.loss:
            return self
        if self.labels == "hard" or loss == "ce":
            raise CondenseError(f"--kd-loss chooses the distillation loss of a soft-label protocol (kd-static, "
                                f"kd-sre2l); protocol {self.name} trains on hard labels with cross-entropy.")
        LOSSES.get(loss)
        return replace(self, name=f"{self.name}+{loss}", description=f"{self.description}. MODIFIED: loss {loss} "
                       f"instead of {self.train.loss}", train=self.train.with_(loss=loss))

    def without_augmentation(self) -> "Protocol":
        """The same protocol with no augmentation, CutMix or MixUp (the second arm of DD-Ranking's ARS)."""
        return replace(self, name=f"{self.name}-noaug", description=f"{self.description}. MODIFIED: no augmentation",
                       train=self.train.with_(augment="none", cutmix=0.0, mixup=0.0))

    def to_json(self) -> dict:
        return {"name": self.name, "hash": self.hash, "description": self.description, "runs": self.runs,
                "use_learned_lr": self.use_learned_lr, "labels": self.labels, "train": asdict(self.train)}


def _load_all() -> None:
    folder = assets_dir() / "protocols"
    for path in sorted(folder.glob("*.toml")):
        raw = tomllib.loads(path.read_text())
        digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]
        train = dict(raw.get("train", {}))
        if "milestones" in train:
            train["milestones"] = tuple(train["milestones"])
        try:
            proto = Protocol(raw["name"], raw.get("description", ""), TrainConfig(**train), raw.get("runs", 5),
                             raw.get("arch", "convnet"), raw.get("use_learned_lr", True), digest,
                             raw.get("labels", "hard"))
            if proto.labels not in LABEL_MODES or (proto.labels != "hard") != (proto.train.loss != "ce"):
                raise TypeError(f"labels = '{proto.labels}' with loss '{proto.train.loss}'")
            LOSSES.get(proto.train.loss)
        except (KeyError, TypeError, CondenseError) as e:
            raise CondenseError(f"Protocol file {path} is malformed ({e}).") from None
        PROTOCOLS.register(proto.name)(proto)


def get_protocol(name: str) -> Protocol:
    if not PROTOCOLS.names():
        _load_all()
    return PROTOCOLS.get(name)
