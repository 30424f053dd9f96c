"""Class manifests: what label i of a set means, checked wherever a set meets a dataset.

Every `synth.h5` records its class list as identifiers (WordNet ids for the ImageNet family, folder
names for image folders, the class names otherwise) with a checksum (`condense.data.classes_digest`),
and every dataset reports the same (`DatasetInfo.manifest()`). `condense eval`, `condense export
--dataset` and `condense.load(..., dataset=...)` compare the two and refuse a different order,
naming the first classes that differ: a set whose label 7 means another class than the evaluator's
label 7 trains a network that is silently wrong, the field's most common "cannot reproduce".

`--class-map FILE` re-maps a set made with another class order, explicitly. The file is a JSON
object from the set's classes to the dataset's (each side an identifier, a name, or an index);
a set class it does not list maps to the dataset class with the same identifier, so `{}` says
"match the classes by identifier".
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from condense.data import DatasetInfo, classes_digest
from condense.errors import CondenseError


def set_ids(meta) -> list[str]:
    """The set's class identifiers (files written before manifests existed: their class names)."""
    return list(meta.class_ids or meta.class_names)


def check(meta, info: DatasetInfo, where: str) -> None:
    """Refuse a set whose labels mean other classes than the dataset's."""
    ids = set_ids(meta)
    if ids == list(info.class_ids):
        return
    if len(ids) != len(info.class_ids):
        raise CondenseError(f"{where} has {len(ids)} classes but {info.name} has {len(info.class_ids)}; the set does "
                            f"not belong to this dataset.")
    diff = [i for i, (a, b) in enumerate(zip(ids, info.class_ids)) if a != b]
    shown = "; ".join(f"label {i} is {_show(ids[i], meta.class_names[i])} in the set but "
                      f"{_show(info.class_ids[i], info.class_names[i])} in the dataset" for i in diff[:3])
    how = ("The set holds the same classes in another order: pass --class-map with a JSON file '{}' to match them "
           "by identifier" if sorted(ids) == sorted(info.class_ids) else
           "If they are the same classes under other names, pass --class-map FILE, a JSON object from the set's "
           "classes to the dataset's")
    raise CondenseError(f"{where}: its class order does not match {info.name} ({len(diff)} of {len(ids)} labels "
                        f"differ; {shown}). Training on it would teach wrong classes. {how} (or evaluate on the "
                        f"dataset it was distilled from).")


def _show(cid: str, name: str) -> str:
    return f"'{cid}'" if cid == name else f"'{cid}' ({name})"


def read_class_map(path: Path, meta, info: DatasetInfo) -> Tensor:
    """`perm` with perm[j] = the dataset's label for the set's label j, from a --class-map file."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CondenseError(f"--class-map {path} cannot be read as JSON ({e}). Expected an object from the set's "
                            f"classes to the dataset's, e.g. {{\"n01440764\": \"n01443537\"}} ({{}}: by identifier).") from None
    if not isinstance(raw, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in raw.values()):
        raise CondenseError(f"--class-map {path} must be a JSON object whose values are class identifiers, names or "
                            f"indices.")
    src_ids = set_ids(meta)
    src = _lookup(src_ids, meta.class_names)
    dst = _lookup(list(info.class_ids), info.class_names)
    perm = [-1] * len(src_ids)
    for k, v in raw.items():
        j = src.get(str(k))
        t = dst.get(str(v))
        if j is None or t is None:
            side, what = ("set", k) if j is None else ("dataset", v)
            raise CondenseError(f"--class-map {path}: {what!r} is not a class of the {side} (neither an identifier, "
                                f"a name nor an index).")
        perm[j] = t
    by_id = {c: i for i, c in enumerate(info.class_ids)}
    for j, cid in enumerate(src_ids):
        if perm[j] < 0:
            if cid not in by_id:
                raise CondenseError(f"--class-map {path} does not map the set's class {cid!r}, and {info.name} has no "
                                    f"class with that identifier. Add it to the map.")
            perm[j] = by_id[cid]
    if len(perm) != len(info.class_ids) or len(set(perm)) != len(perm):
        dup = next((t for t in perm if perm.count(t) > 1), None)
        raise CondenseError(f"--class-map {path} is not one-to-one: "
                            + (f"several set classes map to {info.class_ids[dup]!r}." if dup is not None else
                               f"the set has {len(perm)} classes, {info.name} {len(info.class_ids)}."))
    return torch.tensor(perm, dtype=torch.int64)


def _lookup(ids: list[str], names: list[str]) -> dict[str, int]:
    """Identifier, name or index (as text) -> label; identifiers win over names, names over indices."""
    out = {str(i): i for i in range(len(ids))}
    out.update({n: i for i, n in enumerate(names)})
    out.update({c: i for i, c in enumerate(ids)})
    return out


def remap(s, perm: Tensor, info: DatasetInfo):
    """The set with its labels in the dataset's order: hard labels, soft-label columns, compact labels
    and replayed logits permuted; the manifest becomes the dataset's. Images are untouched."""
    def cols(t: Tensor | None) -> Tensor | None:  # column j -> column perm[j]
        if t is None:
            return None
        out = torch.empty_like(t)
        out[..., perm.to(t.device)] = t
        return out

    m = s.meta
    compact = dict(s.compact)
    if "images" in compact and "labels" not in compact:  # implicit: k images of each class in order
        n = compact["images"].shape[0] // m.num_classes
        compact["labels"] = torch.arange(m.num_classes).repeat_interleave(n)
    if "labels" in compact:
        compact["labels"] = perm[compact["labels"].long()]
    if "soft_labels" in compact:
        compact["soft_labels"] = cols(compact["soft_labels"])
    meta = replace(m, class_names=list(info.class_names), class_ids=list(info.class_ids),
                   classes_sha256=classes_digest(list(info.class_ids)),
                   config={**m.config, "class_map": perm.tolist()})
    out = replace(s, labels=perm.to(s.labels.device)[s.labels], meta=meta, soft_labels=cols(s.soft_labels),
                  compact=compact, replay=None)
    if s.replay is not None:
        out.replay = replace(s.replay, logits=cols(s.replay.logits))
        out.replay.set_digest = out.replay_digest()
    return out
