"""Soft-label evaluation: the teachers and the labels they give.

Two modes, as DD-Ranking names them. Mode S ("static", protocol kd-static): one soft label per
training image, fixed for the whole run: the file's stored `/soft_labels` when it has them,
otherwise the teachers' mean logits on the un-augmented image (INFER's static labels). Mode M
("teacher", protocol kd-sre2l): the teachers run on every augmented (and mixed) batch the student
sees and their mean logits are the target.

Teachers are networks trained on the whole real training split and cached by `condense
teachers` (same recipe, so `condense teachers --arch convnet --epochs 15` builds the default
one ahead of time); every result records which teachers produced its labels.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from condense.artifacts import Artifacts, key_of, teacher_recipe
from condense.committee import committee_spec, load_committee
from condense.data import RealData
from condense.errors import CondenseError
from condense.relabel import ensemble_logits


class Teacher(nn.Module):
    """A frozen ensemble: the mean logits of its networks (in eval mode), or a weighted sum
    (`weights`, CV-DD's prior weights), optionally with each batch's own BatchNorm statistics (`bssl`,
    running statistics untouched: `condense.relabel.batch_statistics`)."""

    def __init__(self, nets: list[nn.Module], description: dict, weights: list[float] | None = None,
                 bssl: bool = False) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.weights, self.bssl = weights, bssl
        self.description = {**description, **({"weights": weights} if weights else {}), **({"bssl": True} if bssl else {})}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # a teacher never leaves eval mode (BatchNorm statistics stay fixed)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if self.weights or self.bssl:
            return ensemble_logits(list(self.nets), x, self.weights, self.bssl)
        out = self.nets[0](x)
        for net in self.nets[1:]:
            out = out + net(x)
        return out / len(self.nets)

    @torch.no_grad()
    def label(self, images: Tensor, batch: int = 512) -> Tensor:
        """Static labels: the mean logits on each (un-augmented) image, [N, K]."""
        return torch.cat([self(images[i:i + batch]) for i in range(0, images.shape[0], batch)])


def load_teacher(store: Artifacts, real: RealData, archs: list[str], epochs: int, num: int = 1) -> Teacher:
    """The teachers (`num` seeds of each arch) from the artifact cache, trained first if missing."""
    if not archs or epochs < 1 or num < 1:
        raise CondenseError("Soft-label protocols need at least one teacher (--teacher ARCH, --teacher-epochs N >= 1).")
    recipe = teacher_recipe(epochs)
    nets, members = [], []
    for arch in archs:
        for seed in range(num):
            record = store.trained_record(real, arch, recipe, seed)
            nets.append(store.trained(real, arch, recipe, seed))
            desc = store.describe(real, arch, recipe, seed)
            members.append({"arch": arch, "seed": seed, "key": key_of(desc),
                            "test_accuracy": round(float(record["meta"]["test_accuracy"]), 4)})
    return Teacher(nets, {"members": members, "epochs": epochs, "recipe": "condense teachers (SGD 0.01, cosine)"})


def committee_teacher(store: Artifacts, real: RealData, name: str, weights: list[float] | None = None,
                      bssl: bool = False, members: list[int] | None = None) -> Teacher:
    """A named committee of `real`'s dataset as the teacher (its members' mean logits, or weighted by
    `weights`; `members`: only these, by index); `real` is the whole training split (the committee
    holds its own validation images out)."""
    committee = load_committee(store, real, committee_spec(real.info.name, name))
    keep = list(range(len(committee.nets))) if members is None else members
    numbers = weights is None or (isinstance(weights, list) and all(isinstance(w, (int, float)) and math.isfinite(w)
                                                                    for w in weights))
    if not isinstance(keep, list) or not keep or len(set(map(str, keep))) != len(keep) or not numbers or any(
            type(i) is not int or not 0 <= i < len(committee.nets) for i in keep) or \
            (weights is not None and len(weights) != len(keep)):
        raise CondenseError(f"The teacher names members {keep} with weights {weights} of committee {name}, which has "
                            f"{len(committee.nets)} members; the file does not belong to this committee.")
    description = committee.describe()
    description["members"] = [description["members"][i] for i in keep]
    return Teacher([committee.nets[i] for i in keep], description, weights, bssl)
