"""Atomic file writes and cross-process locks: the one way ood-bench writes a file another process may read.

Every writer goes through :func:`write_atomic`: the content goes to a uniquely named temporary file in the
target's folder, is fsynced and renamed over the target, so a reader (another run, a killed run's resume)
sees the old complete file or the new complete one, never a torn or interleaved write, and two writers
never share a temporary name. :func:`file_lock` is a cross-platform exclusive lock (``filelock``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import filelock


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh temporary path next to ``path``; when the block succeeds it is fsynced and renamed over ``path``,
    when it fails it is removed. For writers that need a file name (HDF5) rather than a stream."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a fresh temporary file next to ``path``, fsync it and rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: Path, text: str) -> Path:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, value: Any, *, indent: int | None = 2) -> Path:
    """Atomically replace ``path`` with ``value`` as JSON (keys sorted; non-JSON values as strings)."""
    return write_text_atomic(path, json.dumps(value, indent=indent, sort_keys=True, default=str))


def stale_temporaries(folder: Path, name: str) -> list[Path]:
    """Temporary files of :func:`write_atomic` for ``name`` left in ``folder`` by a killed writer."""
    return sorted(Path(folder).glob(f".{name}.*.tmp"))


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent) across processes sharing the folder.

    Waits as long as another holder keeps it, calling ``on_wait`` once first when it is taken. The lock is
    released when the block ends or the holding process dies.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
