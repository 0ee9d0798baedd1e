"""One storage root for every stage: a local folder or object storage through pyarrow.fs.

Stages address artifacts by relative paths below the root (``shards/dfew/part-0000.parquet``),
so the same config works on a laptop and on a cluster whose nodes share a bucket. Every write
is atomic — written under a temporary name, then renamed (on object stores a single PUT is
already atomic) — so a killed job never leaves a half-written file that readers would trust.

Relative paths stay below the root: a part that is absolute (``/tmp/x``, ``s3://...``) or has a
``..`` component is refused with a ValueError naming it, so no name that reaches a path (an
experiment name, a run name read from a checkpoint) can place files outside ``storage.root``
(names themselves are checked earlier, by :mod:`pipeline.names`).
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.atomic import atomic_write_bytes

__all__ = ["Storage", "is_uri", "relative_part_problem"]


def is_uri(location: str | os.PathLike) -> bool:
    """True for an object-storage (or ``file://``) URI, False for a plain local path."""
    return "://" in str(location)


def relative_part_problem(part: str) -> str | None:
    """Why ``part`` may not be joined below a root (absolute, a URI, a ``..`` component), or None."""
    text = os.fspath(part)
    if not isinstance(text, str):
        return f"{text!r} is not a text path"
    if text.startswith("/") or is_uri(text) or re.match(r"[A-Za-z]:[\\/]", text):
        return f"{text!r} is absolute; give a path relative to the storage root"
    if ".." in text.split("/"):
        return f"{text!r} has a '..' component, which would leave the storage root"
    return None


class Storage:
    """A root path plus the pyarrow filesystem that serves it.

    Build one per run from the config's root and pass it down; :meth:`child` gives the storage
    of a sub-folder (a run folder, a sweep) and :meth:`uri` the location string to hand to
    another process (Ray's ``storage_path``, a worker's config), so no caller has to know
    whether the root is a local folder or a bucket.
    """

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        if is_uri(root):
            self.fs, base = pafs.FileSystem.from_uri(root)
            self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        else:
            self.fs, base = pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())
            self.is_local = True
        self.root = base.rstrip("/") or "/"
        # Remote roots keep their scheme for other processes; local ones become absolute paths.
        self.uri_root = self.root if self.is_local and not is_uri(root) else root.rstrip("/")

    def __repr__(self) -> str:
        return f"Storage({self.uri_root!r})"

    def _check(self, parts: tuple[str, ...]) -> None:
        for part in parts:
            if why := relative_part_problem(part):
                raise ValueError(f"storage path part {why} (root {self.uri_root})")

    def uri(self, *parts: str) -> str:
        """A location of ``parts`` that another process can open: the URI below a remote root
        (``s3://bucket/prefix/a/b``), the absolute path below a local one."""
        self._check(parts)
        if not parts:
            return self.uri_root
        if self.is_local:
            return self.path(*parts)
        return posixpath.join(self.uri_root, *parts)

    def child(self, *parts: str) -> Storage:
        """The storage rooted at the sub-folder ``parts`` (same filesystem)."""
        return Storage(self.uri(*parts))

    def path(self, *parts: str) -> str:
        """Full filesystem path (for pyarrow) of a relative artifact path."""
        self._check(parts)
        return posixpath.join(self.root, *parts) if parts else self.root

    def local_path(self, *parts: str) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri_root} is not a local path; use the pyarrow filesystem API")
        return Path(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> str:
        p = self.path(*parts)
        self.fs.create_dir(p, recursive=True)
        return p

    def list(self, *parts: str, suffix: str = "") -> list[str]:
        """Relative names (not paths) of the files directly inside a folder, sorted; [] if absent."""
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Atomically write ``data`` to the relative path ``parts``; returns the full path."""
        final = self.path(*parts)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        if not self.is_local:
            with self.fs.open_output_stream(final) as f:
                f.write(data)
            return final
        atomic_write_bytes(final, data)
        return final

    def write_text(self, text: str, *parts: str) -> str:
        return self.write_bytes(text.encode("utf-8"), *parts)

    def delete(self, *parts: str) -> None:
        p = self.path(*parts)
        info = self.fs.get_file_info(p)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(p)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(p)
