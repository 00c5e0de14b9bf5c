"""Atomic file writes: a crash at any moment leaves either the old file or the new one, never half.

A write that fails for want of space says so: `atomic_path` re-raises ENOSPC naming the file (a bare
write() error names none) and `write_failure` turns any writer's error into the words the user needs,
also for writers that lose the errno (torch.save reports a full disk as `enforce fail ... unexpected pos`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DISK_FULL = "no space left on device"
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NEARLY_FULL = 1 << 20  # bytes left after a failed write that mean it failed for want of space


def disk_full(exc: BaseException, path: str | Path) -> bool:
    """Whether writing `path` failed for want of space: ENOSPC or EDQUOT, the words in the message (Rust
    writers: safetensors), or, for writers that lose the errno, under 1 MiB left where `path` lives
    (a write that failed on a full disk leaves its partial file there until the caller cleans up)."""
    if isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS:
        return True
    if "No space left on device" in str(exc) or "StorageFull" in str(exc):
        return True
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        st = os.statvfs(where)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL


def write_failure(exc: BaseException, path: str | Path) -> str:
    """One line for a failed write of `path`: "no space left on device" when that is why, else the error's
    first line."""
    if disk_full(exc, path):
        return DISK_FULL
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in SPACE_ERRNOS and not exc.filename:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success rename it to `path` (replacing it if overwrite).

    The old directory, if any, is only removed after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
