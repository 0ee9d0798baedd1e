"""Local files written all at once or not at all.

A reader (a resumed run, predict, a browser) must never see half a checkpoint or half a report:
the bytes go to a temporary file beside the target, under a name no other writer uses, are
flushed to disk, and replace the target in one rename. A failure at any point (a full disk, a
killed process's exception, a serialisation error mid-stream) removes the temporary file and
leaves the previous version of the target as it was. Object stores need none of this: one PUT is
already atomic (:meth:`pipeline.storage.Storage.write_bytes`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "temp_name"]


def temp_name(path: str | os.PathLike) -> Path:
    """A hidden, unique sibling of ``path`` (``.name.<hex>.tmp``): concurrent writers of one target
    never share a temporary file, and folder listings that skip dot-files never see it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _fsync_dir(folder: Path) -> None:
    # The rename is durable once the folder's entry is on disk (POSIX); not every OS or
    # filesystem lets a folder be opened or synced, and the data itself is already synced.
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a fresh temporary file, then make it ``path`` in one rename.

    ``write`` may stream (``torch.save(obj, f)``) instead of building the bytes in memory first.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    # Encoded before the file is opened: an unencodable character fails with nothing written.
    return atomic_write_bytes(path, text.encode(encoding))
