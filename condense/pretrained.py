"""Pretrained weights that users bring (no model hub is reachable from condense): torchvision's ImageNet
checkpoints for the `tv_*` networks of `condense.zoo`, loaded safely and checked against the architecture.

`condense teachers --committee NAME --teacher-weights DIR` imports them once into the artifact cache, as
the members of a committee whose TOML says `pretrained = true`; distillation and evaluation then find them
there like trained members. A file is read with `torch.load(weights_only=True)` (tensors only, nothing
unpickled as code) and must fit the network exactly: every key, every shape.
"""
from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from condense.errors import CondenseError

# the names torchvision gives its downloads (resnet18-f37072fd.pth, ...), so DIR may be torch's hub cache
DOWNLOAD_NAMES = {"tv_resnet18": "resnet18-", "tv_resnet50": "resnet50-", "tv_mobilenet_v2": "mobilenet_v2-",
                  "tv_efficientnet_b0": "efficientnet_b0_", "tv_shufflenet_v2_x1_0": "shufflenetv2_x1-",
                  "tv_densenet121": "densenet121-"}
_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def find_weights(folder: Path, arch: str) -> Path:
    """`<arch>.pth` or `<arch>.pt` in `folder`, else torchvision's own file name for it."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CondenseError(f"--teacher-weights {folder} is not a folder. Pass the folder holding the weight files "
                            f"(e.g. ~/.cache/torch/hub/checkpoints, where torchvision keeps its downloads).")
    for name in (f"{arch}.pth", f"{arch}.pt"):
        if (folder / name).is_file():
            return folder / name
    prefix = DOWNLOAD_NAMES.get(arch)
    found = sorted(folder.glob(f"{prefix}*.pth")) if prefix else []
    if len(found) == 1:
        return found[0]
    hint = f" or torchvision's {prefix}<hash>.pth" if prefix else ""
    raise CondenseError(f"No weights for {arch} in {folder}: expected {arch}.pth{hint}"
                        f"{' (found several: ' + ', '.join(p.name for p in found) + ')' if len(found) > 1 else ''}.")


def load_weights(net: nn.Module, path: Path, arch: str) -> str:
    """Load a torchvision checkpoint into `net` (a `zoo.Torchvision`, whose keys are torchvision's with a
    `net.` prefix). Returns the file's SHA-256. Refuses anything that is not exactly this network."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CondenseError(f"{path} holds objects other than tensors, which condense does not unpickle. Save the "
                            f"network's state_dict() alone (torch.save(model.state_dict(), path)).") from None
    except Exception as e:  # noqa: BLE001  (a damaged or foreign file is one user problem)
        raise CondenseError(f"{path} cannot be read as PyTorch weights ({type(e).__name__}: {e}).") from None
    for key in ("state_dict", "model"):  # training scripts' checkpoints wrap it
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise CondenseError(f"{path} is not a state dict (a mapping of names to tensors).")
    state = {}
    for k, v in raw.items():
        k = k.removeprefix("module.")  # saved from DataParallel / DDP
        k = _DENSENET_OLD.sub(r"\1\2", k)  # torchvision's DenseNet files use the old 'norm.1' names
        state[f"net.{k}"] = v
    want = net.state_dict()
    for k, v in want.items():  # files older than BatchNorm's counter (DenseNet's of 2017) lack it; torch fills it too
        if k.endswith(".num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in want.items()
              if k in state and state[k].shape != v.shape]
    if missing or extra or shapes:
        parts = [f"{len(missing)} missing (e.g. {missing[0][4:]})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {extra[0][4:]})" if extra else "",
                 f"{len(shapes)} of another shape (e.g. {shapes[0][4:]})" if shapes else ""]
        raise CondenseError(f"{path} does not fit {arch}: {'; '.join(p for p in parts if p)} tensors. Check that "
                            f"it is the weights of this architecture, trained for this dataset's number of classes.")
    net.load_state_dict(state)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
