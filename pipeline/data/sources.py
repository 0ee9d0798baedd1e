"""Dataset roots and clip sources on any pyarrow filesystem: a local folder, ``file://``, ``s3://``, ``gs://``.

The importers read a dataset's label and split files through :class:`DataRoot`, and every clip
source they hand on is a *location string* another process can open:

- below a plain local root (``/data/DFEW``), the absolute path, as before;
- below a URI root (``s3://bucket/DFEW``, ``file:///data/DFEW``), a URI of the same scheme, with
  each new path component percent-encoded (``Train%20%26%20Test%20Set``) because ``pyarrow.fs``
  parses URIs strictly, and the root's query string (``?region=...&endpoint_override=...``) kept
  so a worker reaches the same endpoint.

A preprocess worker opens a URI source with :func:`open_uri_frames` (called by
:func:`pipeline.data.video.open_frames`): a video is copied in one streaming read into a spooled
temporary file (memory up to ``SPOOL_BYTES``, then local disk) and decoded by PyAV from there —
object stores answer every small ranged read with a round trip, and demuxers seek; a frame folder
is listed once and its images are fetched a few at a time, ahead of the decoder.

``file://`` URIs go through the same code as ``s3://`` ones (pyarrow's LocalFileSystem), which is
how the tests exercise it without a bucket.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.data.video import FRAME_EXTENSIONS, FrameStream, UnreadableClip, _open_video, natural_key
from pipeline.errors import UserError
from pipeline.storage import is_uri

__all__ = ["DataRoot", "open_uri_frames", "read_location", "SPOOL_BYTES"]

# A remote video is held in memory up to this size, then spills to a local temporary file.
SPOOL_BYTES = 64 * 1024 * 1024
_COPY_CHUNK = 8 * 1024 * 1024
# Frame images in flight per clip: enough to hide an object store's latency, small in memory.
_PREFETCH = 8

FileType = pafs.FileType


def _from_uri(location: str, key: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise UserError(
            f"{key}: cannot open {location!r}: {exc}. Percent-encode spaces and other special characters "
            "in a URI (' ' is %20, '&' is %26)"
        ) from None
    except OSError as exc:  # e.g. an unknown bucket, no network, a scheme this pyarrow lacks
        raise UserError(f"{key}: cannot open {location!r}: {exc}") from None


class DataRoot:
    """A folder (or a single file) read through ``pyarrow.fs``; see the module doc.

    Paths below it are given as parts (``root.kind("Clip", "original")``); :meth:`location`
    turns parts into the string to store in a clip table or hand to a worker. Directory listings
    are cached: the importers look up thousands of clips in a few folders, which on an object
    store is one paged listing per folder instead of one request per clip.
    """

    def __init__(self, location: str, key: str = "dataset.root"):
        self.given, self.key = str(location), key
        self.is_uri = is_uri(self.given)
        if self.is_uri:
            self.fs, path = _from_uri(self.given, key)
            parts = urlsplit(self.given)
            self._scheme, self._netloc, self._query = parts.scheme, parts.netloc, parts.query
            self._uri_path = parts.path.rstrip("/") or "/"
        else:
            self.fs, path = pafs.LocalFileSystem(), str(Path(self.given).expanduser().absolute())
        self.path = path.rstrip("/") or "/"
        self._listings: dict[str, dict[str, FileType]] = {}

    def __repr__(self) -> str:
        return f"DataRoot({self.given!r})"

    def fs_path(self, *parts: str) -> str:
        """The filesystem path (for ``self.fs``) of ``parts`` below the root."""
        return posixpath.normpath(posixpath.join(self.path, *parts)) if parts else self.path

    def location(self, *parts: str) -> str:
        """What another process opens for ``parts``: an absolute path below a local root, a URI
        (same scheme, host and query as the root) below a URI root."""
        if not self.is_uri:
            return str(Path(self.path, *parts)) if parts else self.path
        path = posixpath.normpath(posixpath.join(self._uri_path, *(quote(p, safe="/") for p in parts)))
        return urlunsplit((self._scheme, self._netloc, path, self._query, ""))

    def kind(self, *parts: str) -> FileType:
        try:
            return self.fs.get_file_info(self.fs_path(*parts)).type
        except OSError as exc:
            raise UserError(f"cannot read {self.location(*parts)}: {exc}") from None

    def require(self, *parts: str, what: str) -> None:
        """UserError naming ``what`` and its location when nothing exists at ``parts``."""
        if self.kind(*parts) == FileType.NotFound:
            raise UserError(f"{what} not found: {self.location(*parts)}")

    def read_bytes(self, *parts: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.fs_path(*parts)) as f:
                return f.read()
        except OSError as exc:
            raise UserError(f"cannot read {self.location(*parts)}: {exc}") from None

    def children(self, *parts: str) -> dict[str, FileType]:
        """Names directly inside the folder ``parts`` and their types; {} when it is absent."""
        path = self.fs_path(*parts)
        if path not in self._listings:
            try:
                infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            except NotADirectoryError:  # a file where a folder was looked for: nothing inside it
                infos = []
            except OSError as exc:  # e.g. access denied: a clip must not silently become "not found"
                raise UserError(f"cannot list {self.location(*parts)}: {exc}") from None
            self._listings[path] = {i.base_name: i.type for i in infos}
        return self._listings[path]

    def has(self, *parts: str, kind: FileType | None = None) -> bool:
        """Whether ``parts`` exists (as ``kind`` if given), answered from the parent's listing."""
        *parent, name = parts
        found = self.children(*parent).get(name)
        return found is not None and (kind is None or found == kind)

    def parent(self) -> DataRoot:
        """The root of the folder that holds this root (e.g. a CSV's folder)."""
        if not self.is_uri:
            return DataRoot(str(Path(self.path).parent), self.key)
        up = posixpath.dirname(self._uri_path.rstrip("/")) or "/"
        return DataRoot(urlunsplit((self._scheme, self._netloc, up, self._query, "")), self.key)


def read_location(location: str) -> bytes | None:
    """The bytes of a file given as a path or URI; None when it does not exist or cannot be read."""
    try:
        if is_uri(location):
            fs, path = pafs.FileSystem.from_uri(location)
        else:
            fs, path = pafs.LocalFileSystem(), str(Path(location).expanduser().absolute())
        with fs.open_input_stream(path) as f:
            return f.read()
    except (OSError, pa.ArrowInvalid, ValueError):
        return None


# --- decoding a clip below a URI ------------------------------------------------------------


def open_uri_frames(uri: str, threads: int = 1):
    """The frames of the video file or frame folder at ``uri`` (a :class:`FrameStream`).

    Raises :class:`UnreadableClip` with the same reasons as a local source (not found, empty,
    not a video, a frame folder without images) plus the filesystem's own error.
    """
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise UnreadableClip(f"not a valid URI: {exc}") from None
    except OSError as exc:
        raise UnreadableClip(f"cannot reach the file: {exc}") from None
    if info.type == FileType.Directory:
        try:
            infos = fs.get_file_info(pafs.FileSelector(path))
        except OSError as exc:
            raise UnreadableClip(f"cannot list frame folder: {exc}") from None
        frames = sorted(
            (
                i
                for i in infos
                if i.type == FileType.File and posixpath.splitext(i.base_name)[1].lower() in FRAME_EXTENSIONS
            ),
            key=lambda i: natural_key(i.base_name),
        )
        if not frames:
            raise UnreadableClip(f"frame folder has no {'/'.join(FRAME_EXTENSIONS)} files")
        return FrameStream(_iter_images(fs, frames), None, "frames")
    if info.type == FileType.NotFound:
        raise UnreadableClip("file not found")
    if info.size == 0:
        raise UnreadableClip("empty file (0 bytes)")
    spool = _download(fs, path)
    try:
        stream = _open_video(spool, threads)
    except BaseException:
        spool.close()
        raise
    return FrameStream(_closing(stream.frames, spool), stream.fps, stream.kind)


def _download(fs: pafs.FileSystem, path: str):
    """The whole file in one streaming read, into memory up to SPOOL_BYTES, else a temporary file."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    try:
        with fs.open_input_stream(path) as src:
            shutil.copyfileobj(src, spool, _COPY_CHUNK)
    except OSError as exc:
        spool.close()
        raise UnreadableClip(f"cannot read file: {exc}") from None
    spool.seek(0)
    return spool


def _closing(frames: Iterator[np.ndarray], spool) -> Iterator[np.ndarray]:
    # The decoder closes its container; the spooled copy goes with it, also when the consumer
    # stops early (max_frames) and the generator is closed.
    try:
        yield from frames
    finally:
        spool.close()


def _read_file(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _iter_images(fs: pafs.FileSystem, infos: list[pafs.FileInfo]) -> Iterator[np.ndarray]:
    pool = ThreadPoolExecutor(max_workers=_PREFETCH, thread_name_prefix="frame-read")
    pending: deque[tuple[str, Future]] = deque()
    todo = iter(infos)
    try:
        for info in todo:
            pending.append((info.base_name, pool.submit(_read_file, fs, info.path)))
            if len(pending) < _PREFETCH:
                continue
            yield _decode(*pending.popleft())
        while pending:
            yield _decode(*pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode(name: str, future: Future) -> np.ndarray:
    try:
        data = future.result()
    except OSError as exc:
        raise UnreadableClip(f"cannot read frame {name}: {exc}") from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise UnreadableClip(f"cannot decode frame {name}")
    return img
