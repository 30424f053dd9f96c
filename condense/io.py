"""Small file helpers every layer uses: atomic writes and the installed version.

They sit in a module of their own so that data, artifacts, the driver and the evaluators can
write files without importing the synthetic-set format (and without import cycles).
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from condense.errors import CondenseError


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("condense-dd")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


_code: list[str] = []


def code_version() -> str:
    """The installed version plus a hash of the package's source: two builds of one version number
    from different source trees (an editable install being edited) are different code."""
    if not _code:
        import hashlib

        h = hashlib.sha256()
        root = Path(__file__).resolve().parents[1]
        for pkg in ("condense", "algorithms", "evaluators"):
            for path in sorted((root / pkg).rglob("*.py")):
                h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
        _code.append(f"{package_version()}+{h.hexdigest()[:12]}")
    return _code[0]


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
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        full = isinstance(e, OSError) and e.errno == errno.ENOSPC or _nearly_full(path.parent)
        if isinstance(e, OSError) or (full and isinstance(e, RuntimeError)):  # torch.save reports a full disk so
            kept = f"the previous {'folder' if directory else 'file'} is unchanged" if path.exists() else "nothing was written"
            raise CondenseError(f"Could not write {path}: {'the disk is full' if full else e.strerror or e}; {kept} "
                                f"and no temporary file is left. Free some space or choose another location.") from None
        raise


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def check_output(path: Path, inputs: tuple[Path, ...] = (), directory: bool = False, flag: str = "--out") -> None:
    """Before any work: `path` can be written (its folder exists or can be made, and is writable), it is
    not an existing folder (for a file) or file (for a folder), and it is none of the `inputs`."""
    path = Path(path)
    for i in inputs:
        if path.exists() and Path(i).exists() and path.resolve() == Path(i).resolve():
            raise CondenseError(f"{flag} {path} is also an input of this command; writing it would replace what "
                                f"is being read. Choose another {flag}.")
    if path.is_dir() and not directory:
        raise CondenseError(f"{flag} {path} is a folder; name a file inside it (e.g. {path / 'synth.h5'}).")
    if path.exists() and directory and not path.is_dir():
        raise CondenseError(f"{flag} {path} is a file; name a folder.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CondenseError(f"{flag} {path}: {parent} is not writable for this user. Choose a writable location.")


@contextmanager
def exclusive(path: Path, what: str = "writing", wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a hidden `.NAME.lock` beside it) for the block, so two
    processes never write the same output or checkpoint: a second one is refused at once, or with
    `wait` blocks until the first is done (two processes building one cached artifact)."""
    import fcntl

    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:  # a location nothing can be written to needs no guard against two writers
        fd = -1
    if fd < 0:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise CondenseError(f"Another condense process is {what} {path} (it holds {lock}). Wait for it to "
                                f"finish, or choose another output.") from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def tensor_digest(*tensors: Any) -> str:
    """A short SHA-256 of tensors' dtypes, shapes and bytes (what a cached result or a label file is of)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]
