"""Frame readers: video files through PyAV and folders of still frames, both yielding BGR arrays.

Frames come out as ``uint8`` arrays ``(H, W, 3)`` in BGR order (OpenCV's native order, so the
detector and the JPEG encoder need no conversion), one at a time, in presentation order:

- Videos: any container/codec the bundled FFmpeg decodes. Variable frame rate is fine — every
  decoded frame is yielded once, in timestamp order, and ``fps`` is the stream's average rate.
  A display-rotation matrix (phones record portrait video as rotated landscape) is applied, so
  frames come out upright. Grayscale and odd-sized streams are converted to 3-channel BGR.
- Frame folders: ``.jpg/.jpeg/.png/.bmp/.webp`` files in natural order (``2.jpg`` before
  ``10.jpg``); grayscale and alpha images become 3-channel BGR.

Anything that cannot be read raises :class:`UnreadableClip` with a reason meant for the error table.

Caps (:class:`ClipLimits`, from ``preprocess.max_pixels``, ``max_clip_frames`` and
``max_clip_seconds``) bound what one clip may cost: a frame with more pixels, a clip with more
frames or a frame later than the seconds cap raises :class:`ClipOverCap` (an UnreadableClip whose
message names the clip and the cap's config key) as soon as the reader sees it — a video's frame
size before any frame is decoded, a frame folder's length before any image is read — so an
oversized clip costs at most one frame's memory and the capped amount of decoding.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from pipeline.storage import is_uri

__all__ = [
    "UnreadableClip",
    "ClipOverCap",
    "ClipLimits",
    "FrameStream",
    "open_frames",
    "natural_key",
    "list_frame_files",
    "FRAME_EXTENSIONS",
]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class UnreadableClip(Exception):
    """A clip's source cannot be decoded; the message is the reason stored in the error table."""


class ClipOverCap(UnreadableClip):
    """A clip is over one of the per-clip caps; ``key`` is the config key (``max_pixels``, ...)."""

    def __init__(self, source: str | os.PathLike, key: str, cap: float, detail: str):
        self.key, self.cap = key, cap
        shown = f"{cap:g}" if isinstance(cap, float) else str(cap)  # 8294400, not 8.2944e+06
        super().__init__(
            f"{source}: {detail}, over preprocess.{key} = {shown} (raise it, or null for no cap, to accept it)"
        )


@dataclass(frozen=True)
class ClipLimits:
    """Per-clip caps; None = no cap. ``of(prep)`` reads them from a PreprocessConfig."""

    max_pixels: int | None = None  # width x height of one frame
    max_frames: int | None = None  # frames in one clip
    max_seconds: float | None = None  # timestamp of a frame, from the clip's first frame

    @classmethod
    def of(cls, prep) -> ClipLimits:
        return cls(prep.max_pixels, prep.max_clip_frames, prep.max_clip_seconds)

    def check_pixels(self, source, width: int, height: int) -> None:
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise ClipOverCap(
                source, "max_pixels", self.max_pixels, f"{width}x{height} frames ({width * height} pixels each)"
            )

    def check_frames(self, source, count: int) -> None:
        """``count``: frames seen so far (or in the whole clip, when known up front)."""
        if self.max_frames is not None and count > self.max_frames:
            raise ClipOverCap(source, "max_clip_frames", self.max_frames, f"more than {self.max_frames} frames")

    def check_seconds(self, source, seconds: float) -> None:
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise ClipOverCap(
                source,
                "max_clip_seconds",
                self.max_seconds,
                f"longer than {self.max_seconds:g} s (a frame at {seconds:.2f} s)",
            )


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically: ``frame2`` < ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    try:
        names = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file()]
    except OSError as exc:
        raise UnreadableClip(f"cannot list frame folder: {exc.strerror or exc}") from None
    return sorted(names, key=lambda p: natural_key(p.name))


@dataclass
class FrameStream:
    """Lazily decoded frames of one clip. Iterate once; ``fps`` is None for frame folders."""

    frames: Iterator[np.ndarray]
    fps: float | None
    kind: str  # "video" or "frames"
    # The frame count the source states (a video container's, a folder's files), None when it
    # states none: a hint for planning (ClipCropper's pick), never a promise.
    count: int | None = None


def open_frames(source: str | os.PathLike, threads: int = 1, limits: ClipLimits | None = None) -> FrameStream:
    """Open a video file or a frame folder. Raises UnreadableClip when it cannot even be opened,
    ClipOverCap when ``limits`` already rule it out (frame size, number of frame files); frames
    over a cap raise ClipOverCap while iterating.

    ``source`` is a local path or a URI (``s3://``, ``gs://``, ``file://``: a dataset below a
    remote ``dataset.root``), which is read through pyarrow.fs (:mod:`pipeline.data.sources`);
    the caps of a URI source are checked on each frame it yields.
    """
    limits = limits or ClipLimits()
    if is_uri(source):
        from pipeline.data.sources import open_uri_frames

        stream = open_uri_frames(str(source), threads)
        if limits != ClipLimits():
            stream.frames = _capped(stream.frames, stream.fps, source, limits)
        return stream
    path = Path(source)
    if path.is_dir():
        files = list_frame_files(path)
        if not files:
            raise UnreadableClip(f"frame folder has no {'/'.join(FRAME_EXTENSIONS)} files")
        limits.check_frames(source, len(files))
        return FrameStream(_iter_images(files, source, limits), None, "frames", len(files))
    if not path.exists():
        raise UnreadableClip("file not found")
    if path.stat().st_size == 0:
        raise UnreadableClip("empty file (0 bytes)")
    return _open_video(path, threads, source, limits)


def _iter_images(files: list[Path], source, limits: ClipLimits) -> Iterator[np.ndarray]:
    for f in files:
        # np.fromfile + imdecode instead of imread: works with non-ASCII paths on every platform.
        try:
            data = np.fromfile(str(f), dtype=np.uint8)
        except OSError as exc:
            raise UnreadableClip(f"cannot read frame {f.name}: {exc.strerror or exc}") from None
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if img is None:
            raise UnreadableClip(f"cannot decode frame {f.name}")
        # Checked after the decode (OpenCV reads no header alone); its own limit is 2^30 pixels.
        limits.check_pixels(source, img.shape[1], img.shape[0])
        yield img


def _capped(frames: Iterator[np.ndarray], fps: float | None, source, limits: ClipLimits) -> Iterator[np.ndarray]:
    """The caps on decoded frames (a URI source's reader knows none); seconds at ``fps``."""
    for i, img in enumerate(frames):
        limits.check_pixels(source, img.shape[1], img.shape[0])
        limits.check_frames(source, i + 1)
        if fps:
            limits.check_seconds(source, i / fps)
        yield img


def _open_video(path: Path | BinaryIO, threads: int, source=None, limits: ClipLimits | None = None) -> FrameStream:
    """``path``: a local file, or a seekable binary file object (a remote clip's local copy).
    ``source``: the clip as named in cap errors (``path`` when None)."""
    import av

    source = path if source is None else source
    limits = limits or ClipLimits()
    try:
        # mode="r": a file object's own mode (w+b for a spooled temporary file) would make PyAV write.
        container = av.open(path if hasattr(path, "read") else str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise UnreadableClip(f"not a readable video: {exc}") from None
    if not container.streams.video:
        container.close()
        raise UnreadableClip("no video stream in file")
    stream = container.streams.video[0]
    # The probed frame size, before any frame is decoded (each frame is checked again below:
    # a stream may change size midway).
    try:
        limits.check_pixels(source, stream.codec_context.width, stream.codec_context.height)
    except ClipOverCap:
        container.close()
        raise
    # Frame-level threading only: slice threading changes nothing for small clips, and the
    # worker's CPU budget (cpus_per_worker) bounds how many threads are worth having.
    stream.thread_type = "FRAME" if threads > 1 else "SLICE"
    stream.thread_count = max(1, threads)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else None
    return FrameStream(_iter_video(container, stream, fps, source, limits), fps, "video", stream.frames or None)


def _iter_video(container, stream, fps: float | None, source, limits: ClipLimits) -> Iterator[np.ndarray]:
    import av

    decoded = 0
    first: float | None = None  # timestamp of the first frame, seconds
    try:
        for frame in container.decode(stream):
            # The caps before the frame is converted: an oversized frame costs no BGR copy.
            limits.check_pixels(source, frame.width, frame.height)
            limits.check_frames(source, decoded + 1)
            t = frame.time
            if t is None:  # no timestamp: its place at the stream's average rate
                t = decoded / fps if fps else None
            elif first is None:
                first = t
            if t is not None:
                limits.check_seconds(source, t - (first or 0.0))
            if frame.format.name == "yuv420p" and not (frame.width % 2 or frame.height % 2):
                # Twice as fast as swscale's bgr24 path; both use BT.601 coefficients.
                img = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
            else:
                img = frame.to_ndarray(format="bgr24")
            rotation = frame.rotation  # degrees counter-clockwise to display upright
            if rotation:
                img = _rotate(img, rotation)
            decoded += 1
            yield img
    except av.error.FFmpegError as exc:
        raise UnreadableClip(f"decode error after {decoded} frames: {exc}") from None
    finally:
        container.close()
    if decoded == 0:
        raise UnreadableClip("video stream has no decodable frames")


def _rotate(img: np.ndarray, degrees_ccw: float) -> np.ndarray:
    quarter = int(round(degrees_ccw / 90.0)) % 4
    if quarter == 1:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if quarter == 2:
        return cv2.rotate(img, cv2.ROTATE_180)
    if quarter == 3:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    return img
