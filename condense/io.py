"""Small file helpers every layer uses: atomic writes and the installed version.

They sit in a module of their own so that data, artifacts, the driver and the evaluators can
write files without importing the synthetic-set format (and without import cycles).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from condense.errors import CondenseError


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("condense-dd")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


EXPORT_MARK = ".condense-export"


@contextmanager
def atomic_path(path: Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; move it onto `path` only if the block succeeds.

    Files get the usual permissions (0666 minus the umask) and are flushed to disk before the
    rename. A directory target is replaced only if it is empty or was written by condense
    (it holds the EXPORT_MARK file); anything else is refused rather than deleted."""
    path = Path(path)
    if directory and path.exists() and (not path.is_dir() or (any(path.iterdir()) and
                                                              not (path / EXPORT_MARK).exists())):
        raise CondenseError(f"{path} exists and is not an empty folder or an earlier condense export; "
                            f"refusing to replace it. Choose a new output folder.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        raise CondenseError(f"Cannot write {path}: {e.strerror or e}. Choose a writable location.") from None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        if directory:
            (tmp / EXPORT_MARK).write_text("written by condense export\n")
            os.chmod(tmp, 0o777 & ~umask)
            if path.exists():  # swap: the old folder is removed only once the new one is in place
                old = path.with_name(f".{path.name}.old.{os.getpid()}")
                os.replace(path, old)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old, path)
                    raise
                shutil.rmtree(old, ignore_errors=True)
                return
        else:
            os.chmod(tmp, 0o666 & ~umask)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
