"""Reading HDF5 files from others: only the file itself, only what the format allows, sizes first.

HDF5 can make a dataset read its bytes from other files (external storage), link names to objects
in other files (external links) or assemble a dataset from other files (virtual datasets); a file
using any of these could pull arbitrary local files into memory, or block forever on a FIFO. A
small file can also declare billions of elements (chunked and compressed). So before any data is
read: every object is reached through hard links only, no dataset is virtual or stored externally,
and every dataset's dtype and shape are checked against what the caller expects and a size bound.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from condense.errors import CondenseError

MAX_ELEMENTS = 2**31  # one dataset (8 GiB of float32): far above any synthetic set, far below a memory bomb


def refuse(path: Path, what: str) -> CondenseError:
    return CondenseError(f"{path}: {what}. condense reads only data stored inside the file itself; refusing to "
                         f"read it. Re-create the file with condense, or ask whoever sent it for one without that.")


def check_self_contained(f: Any, path: Path) -> None:
    """Refuse external links, soft links, external storage and virtual datasets anywhere in the file."""
    import h5py

    def walk(group: Any, prefix: str) -> None:
        for name in group:
            link = group.get(name, getlink=True)
            where = f"{prefix}/{name}"
            if isinstance(link, h5py.ExternalLink):
                raise refuse(path, f"{where} is a link to another file ({link.filename})")
            if not isinstance(link, h5py.HardLink):
                raise refuse(path, f"{where} is a {type(link).__name__}, not an object stored in the file")
            obj = group[name]
            if isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    raise refuse(path, f"{where} is a virtual dataset assembled from other files")
                if obj.external:
                    raise refuse(path, f"{where} keeps its data in external files ({obj.external[0][0]!r}...)")
            elif isinstance(obj, h5py.Group):
                walk(obj, where)

    walk(f, "")


def read_array(f: Any, name: str, path: Path, kinds: str, shape_ok: Callable[[tuple[int, ...]], bool],
               expected: str) -> np.ndarray:
    """Dataset `name` as an array, after checking its dtype kind (numpy kind letters, e.g. "f", "iu"),
    its declared shape (`shape_ok`, described by `expected`) and its size."""
    import h5py

    d = f.get(name)
    if not isinstance(d, h5py.Dataset):
        raise CondenseError(f"{path}: /{name} is missing or not a dataset; the file is incomplete. Re-create it "
                            f"with condense.")
    if d.dtype.kind not in kinds:
        raise CondenseError(f"{path}: /{name} holds {d.dtype} values where the format has "
                            f"{'integers' if kinds == 'iu' else 'numbers'}; the file is not a valid condense file.")
    shape = tuple(int(n) for n in d.shape)
    if int(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS:
        raise CondenseError(f"{path}: /{name} declares {shape}, more than {MAX_ELEMENTS} values; refusing to read it.")
    if not shape_ok(shape):
        raise CondenseError(f"{path}: /{name} declares shape {shape}, but {expected}; the file is inconsistent. "
                            f"Re-create it with condense.")
    return np.asarray(d)
