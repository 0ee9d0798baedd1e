"""What a ``POST /predict`` carries, checked before any decoding: no Ray, no model here.

Three shapes of body (docs/serve.md):

- a video as the raw body (any ``Content-Type`` but the two below, e.g. ``video/mp4`` or
  ``application/octet-stream``); ``?name=clip.mp4`` names it in the answer (``path``);
- ``multipart/form-data`` with the video in a file field (``video``, else the first file);
  the field's file name names it;
- ``application/json``: ``{"frames": ["<base64 JPEG or PNG>", ...], "name": "optional"}``,
  one image per frame in time order (a frame folder, as predict reads one).

A body that is none of these, or is broken, raises :class:`BadRequest` with the HTTP status and a
message naming what is wrong. :func:`materialise` writes an upload where the preprocess stage's
own readers open it (:func:`pipeline.data.video.open_frames`: a file, or a folder of frames).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

__all__ = ["BadRequest", "Upload", "parse_upload", "materialise", "safe_name"]

DEFAULT_NAME = "upload"


class BadRequest(Exception):
    """An answer other than 200: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    name: str  # what the answer's "path" says
    video: bytes | None = None  # a video file's bytes, or
    frames: list[bytes] | None = None  # one encoded image per frame


def safe_name(name: str | None) -> str:
    """A client's name for its clip, shown back in ``path``: the last path part, printable, short."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^\w.\- ]", "_", name).strip()[:200]
    return name or DEFAULT_NAME


def _multipart(content_type: str, body: bytes) -> Upload:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not boundary:
        raise BadRequest(400, "multipart/form-data without a boundary in its Content-Type")
    delimiter = b"--" + boundary.group(1).encode("latin-1")
    files: list[tuple[str | None, str, bytes]] = []  # (field name, file name, bytes)
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest(400, "malformed multipart body: a part without a blank line after its headers")
        headers = HeaderParser().parsestr(head.decode("latin-1").strip("\r\n"))
        disposition = headers.get("Content-Disposition", "")
        filename = re.search(r'filename="([^"]*)"', disposition)
        field = re.search(r'\bname="([^"]*)"', disposition)
        if filename is not None:
            data = data[:-2] if data.endswith(b"\r\n") else data
            files.append((field.group(1) if field else None, filename.group(1), data))
    if not files:
        raise BadRequest(400, "multipart body has no file part; send the video as a file field named 'video'")
    name, filename, data = next((f for f in files if f[0] == "video"), files[0])
    return Upload(safe_name(filename), video=data)


def _frames(body: bytes, max_frames: int) -> Upload:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or "frames" not in doc:
        raise BadRequest(400, 'a JSON body must be an object {"frames": ["<base64 image>", ...]}')
    frames = doc["frames"]
    if not isinstance(frames, list) or not frames:
        raise BadRequest(400, "frames: must be a non-empty list of base64-encoded JPEG or PNG images")
    if len(frames) > max_frames:
        raise BadRequest(413, f"frames: {len(frames)} frames, over serve.max_video_frames = {max_frames}")
    out = []
    for i, item in enumerate(frames):
        if not isinstance(item, str):
            raise BadRequest(400, f"frames[{i}]: expected a base64 string, got {type(item).__name__}")
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(400, f"frames[{i}]: not valid base64") from None
        if not out[-1]:
            raise BadRequest(400, f"frames[{i}]: empty image")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequest(400, f"name: expected a string, got {type(name).__name__}")
    return Upload(safe_name(name), frames=out)


def parse_upload(content_type: str | None, body: bytes, name: str | None, max_frames: int) -> Upload:
    """The upload in a request body (already within the size limit). ``name``: the ``?name=``
    query value, for a raw body."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if not body:
        raise BadRequest(400, "empty body: POST a video file, a multipart form with one, or a JSON list of frames")
    if kind == "multipart/form-data":
        upload = _multipart(content_type or "", body)
    elif kind == "application/json":
        return _frames(body, max_frames)
    else:
        upload = Upload(safe_name(name), video=body)
    if not upload.video:
        raise BadRequest(400, "the uploaded video is empty (0 bytes)")
    return upload


def materialise(upload: Upload, folder: Path) -> Path:
    """Write ``upload`` into ``folder`` (a fresh temporary folder): the video file, or a folder
    of frames named in time order. Returns what :func:`~pipeline.data.video.open_frames` opens."""
    if upload.video is not None:
        path = folder / "video"
        path.write_bytes(upload.video)
        return path
    frames = folder / "frames"
    frames.mkdir()
    for i, data in enumerate(upload.frames or []):
        # The reader decodes by content (OpenCV), not by extension; .jpg only makes it a frame file.
        (frames / f"{i:06d}.jpg").write_bytes(data)
    return frames
