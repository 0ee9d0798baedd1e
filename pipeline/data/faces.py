"""Face detection, box tracking over a clip, square crops and JPEG encoding.

Detectors (``PreprocessConfig.detector``):

- ``haar``: OpenCV's frontal-face Haar cascade (ships with opencv-python-headless 4.x). It runs
  on a grayscale copy downscaled so its longer side is at most ``detect_max_side`` pixels (320 by
  default) — faces in DFER clips fill a good part of the frame, and detection cost grows with
  the pixel count, so this is the main speed-up; boxes are scaled back to source pixels.
- ``yunet``: ``cv2.FaceDetectorYN`` with the ONNX model file the config names (more robust to
  pose and lighting; not bundled, the user supplies the file).
- ``none``: the clip is already face crops (DFEW ``clip_224x224``, FERV39k face crops): every
  whole frame is resized to the crop size, as the published DFER-CLIP code feeds them.

Tracking rule (:class:`ClipCropper`): the detector runs on frames 0, k, 2k, ... (``detect_every``
= k) and on the last frame. Of several faces the largest is kept. The box *size* of consecutive
detections is smoothed (exponential moving average, reset when the face jumps — IoU below 0.3 —
e.g. at a cut); the centre is not, so crops do not lag behind a moving face. Frames between two
detections get the linearly interpolated box; frames before the first detection take the first
box, frames after the last take the last (the "previous box" fallback for missed detections).
When no frame of the clip has a face, every frame gets the centre square crop (side = the
shorter frame side) and the row is flagged ``face_fallback``.

Crop rule: a square centred on the face box with side ``max(w, h) * (1 + 2 * margin)``; it is
shifted to stay inside the frame when it fits, and padded with black where it cannot; then
resized to ``crop_size`` and JPEG-encoded at ``jpeg_quality``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import UserError

__all__ = [
    "HaarDetector",
    "YuNetDetector",
    "build_detector",
    "ClipCropper",
    "CropResult",
    "square_crop",
    "encode_jpeg",
    "uniform_indices",
]

Box = np.ndarray  # float32 [4]: x0, y0, x1, y1 in source pixels


class HaarDetector:
    """Haar cascade on a downscaled grayscale frame; returns boxes ``[N, 4]`` in source pixels."""

    def __init__(
        self, max_side: int = 320, scale_factor: float = 1.15, min_neighbors: int = 5, min_face_fraction: float = 0.15
    ):
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise UserError(f"OpenCV's Haar cascade is missing ({path}); install opencv-python-headless 4.x")
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_fraction = min_face_fraction

    def detect(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = (
            bgr
            if scale == 1.0
            else cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        )
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        # Faces smaller than this share of the shorter side are not searched for: DFER clips are
        # framed on one person, and every smaller scale the cascade scans costs time.
        min_side = max(20, int(self.min_face_fraction * min(gray.shape)))
        if min(gray.shape) < min_side:
            return np.zeros((0, 4), np.float32)
        found = self.cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        if len(found) == 0:
            return np.zeros((0, 4), np.float32)
        xywh = np.asarray(found, np.float32) / scale
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


class YuNetDetector:
    """OpenCV's YuNet CNN detector from a user-supplied ONNX file."""

    def __init__(self, model_path: str, max_side: int = 640, score_threshold: float = 0.7):
        if not hasattr(cv2, "FaceDetectorYN"):
            raise UserError("preprocess.detector: yunet needs OpenCV >= 4.5.4 (cv2.FaceDetectorYN)")
        self.detector = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold)
        self.max_side = max_side
        self._size: tuple[int, int] | None = None

    def detect(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = (
            bgr
            if scale == 1.0
            else cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        )
        size = (small.shape[1], small.shape[0])
        if size != self._size:
            self.detector.setInputSize(size)
            self._size = size
        _, faces = self.detector.detect(small)
        if faces is None or len(faces) == 0:
            return np.zeros((0, 4), np.float32)
        xywh = np.asarray(faces[:, :4], np.float32) / scale
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def build_detector(kind: str, yunet_model: str | None = None, max_side: int = 320):
    """The detector a config asks for; ``None`` for ``none``. Bad settings raise UserError."""
    if kind == "none":
        return None
    if kind == "haar":
        return HaarDetector(max_side=max_side)
    if kind == "yunet":
        if not yunet_model:
            raise UserError("preprocess.yunet_model: detector 'yunet' needs the path of the YuNet ONNX file")
        if not Path(yunet_model).is_file():
            raise UserError(f"preprocess.yunet_model: file not found: {yunet_model}")
        try:
            return YuNetDetector(yunet_model, max_side=max(max_side, 320))
        except cv2.error as exc:
            raise UserError(f"preprocess.yunet_model: OpenCV cannot load {yunet_model}: {exc}") from None
    raise UserError(f"preprocess.detector: unknown detector {kind!r} (choose haar, yunet or none)")


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _smooth_size(prev: Box, new: Box, weight: float) -> Box:
    """Moving average of the box *size* only: Haar's scale jitters from frame to frame, while
    averaging the centre too would make the crop lag behind a moving face."""
    cx, cy = (new[0] + new[2]) / 2, (new[1] + new[3]) / 2
    w = weight * (new[2] - new[0]) + (1 - weight) * (prev[2] - prev[0])
    h = weight * (new[3] - new[1]) + (1 - weight) * (prev[3] - prev[1])
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


def square_crop(bgr: np.ndarray, box: Box, margin: float, size: int) -> np.ndarray:
    """Square around ``box`` enlarged by ``margin`` per side, kept inside the frame, resized."""
    h, w = bgr.shape[:2]
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    side = max(1, int(round(max(box[2] - box[0], box[3] - box[1]) * (1.0 + 2.0 * margin))))
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    # Shift inside the frame where the square fits; otherwise centre it and pad below.
    x0 = min(max(x0, 0), w - side) if side <= w else (w - side) // 2
    y0 = min(max(y0, 0), h - side) if side <= h else (h - side) // 2
    x1, y1 = x0 + side, y0 + side
    patch = bgr[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    # INTER_AREA only pays for itself on strong downscaling (it is ~5x slower near 1:1).
    interp = cv2.INTER_AREA if side > 2 * size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


def encode_jpeg(bgr: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def uniform_indices(n: int, keep: int | None) -> list[int]:
    """``keep`` indices spread uniformly over ``range(n)`` (first and last included); all if fewer."""
    if keep is None or n <= keep:
        return list(range(n))
    return np.linspace(0, n - 1, keep).round().astype(int).tolist()


@dataclass
class CropResult:
    frames: list[bytes]  # JPEG, temporal order
    boxes: list[list[float]]  # face box per kept frame, source pixels
    face_fallback: bool
    num_decoded: int
    detections: int  # detector calls that found a face
    detector_calls: int
    redecoded: int = 0  # frames decoded a second time (see ClipCropper: the bounded buffer)
    fps: float | None = None  # the source's average rate (run_source), None for frame folders


@dataclass
class _Waiting:
    """A frame waiting for its face box. ``frame`` is dropped when the buffer is full; the frame
    is then kept only as ``jpeg``, its crop with the box it would get if no face came later."""

    t: int
    frame: np.ndarray | None
    box: Box | None = None
    jpeg: bytes | None = None


@dataclass
class ClipCropper:
    """Turns one clip's frames into square face crops, with the tracking rule of the module doc.

    Memory is bounded whatever the clip: frames wait for their face box in a buffer of at most
    ``buffer_bytes`` (128 MB: about 20 1080p frames; the newest frame is always held). Most
    clips never fill it: a detection every ``detect_every`` frames empties it. When it is full
    (a long stretch with no face), the oldest waiting frame is cropped right away with the box it
    would get if no face came later (the last face box, or the centre square before any face),
    kept as JPEG, and dropped. That guess is right when no face follows — a clip with no face at
    all, a face that left the frame — and then the clip is decoded once. When a face does come
    later, the frames whose box changed are cropped from a second decode (``reopen``), so the
    crops are exactly those an unbounded buffer would give. Crops are JPEG-encoded as they are
    made (with ``max_frames``, the unkept ones are dropped at the end), ~20 KB each at 224 px.

    A caller that uses only some of the kept frames (predict and serve feed the model T of them)
    passes ``pick``: then only those frames are cropped and encoded, planned from the frame count
    the source states (``expected``: a video container's count, a folder's files). Every frame is
    still decoded and the detector runs on the same frames, so boxes and crops are exactly those
    of a full run; should the clip hold another number of frames than stated, the picked frames
    that were not cropped come from a second decode, as above.
    """

    detector: object | None
    detect_every: int = 5
    margin: float = 0.25
    crop_size: int = 224
    jpeg_quality: int = 90
    max_frames: int | None = None
    smoothing: float = 0.6  # weight of the new detection in the moving average
    buffer_bytes: int = 128 * 2**20
    limits: object | None = None  # pipeline.data.video.ClipLimits for run_source; None: no caps

    def run_source(self, source, threads: int = 1, pick: Callable[[int], Sequence[int]] | None = None) -> CropResult:
        """Open ``source`` (video file or frame folder) with this cropper's caps and crop it;
        a second decode, when needed, opens it again. Raises UnreadableClip / ClipOverCap.
        ``pick``: as in :meth:`run` (the frame count planned from is the one the source states)."""
        from pipeline.data.video import open_frames

        stream = open_frames(source, threads=threads, limits=self.limits)
        result = self.run(
            stream.frames,
            reopen=lambda: open_frames(source, threads=threads, limits=self.limits).frames,
            pick=pick,
            expected=stream.count,
        )
        result.fps = stream.fps
        return result

    def _detect(self, frame, t, pending, last, emit, found):
        """Detect on frame ``t``; on success resolve every pending frame's box. Returns (last, found)."""
        faces = self.detector.detect(frame)
        if len(faces) == 0:
            return last, found
        areas = (faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])
        box = faces[int(np.argmax(areas))].astype(np.float32)
        if last is not None and _iou(last[1], box) >= 0.3:
            box = _smooth_size(last[1], box, self.smoothing)
        for w in pending:
            if last is None or w.t >= t:
                emit(w, box)
            else:  # linear interpolation between the previous and this detection
                a = (w.t - last[0]) / (t - last[0])
                emit(w, (1.0 - a) * last[1] + a * box)
        return (t, box), found + 1

    def _crop(self, frame: np.ndarray, box: Box, margin: float) -> bytes:
        if self.detector is None:  # already a face crop: the whole frame, resized
            h, w = frame.shape[:2]
            interp = cv2.INTER_AREA if max(h, w) > self.crop_size else cv2.INTER_LINEAR
            full = cv2.resize(frame, (self.crop_size, self.crop_size), interpolation=interp)
            return encode_jpeg(full, self.jpeg_quality)
        return encode_jpeg(square_crop(frame, box, margin, self.crop_size), self.jpeg_quality)

    def _kept(self, n: int, pick: Callable[[int], Sequence[int]] | None) -> list[int]:
        """The frame indices the result holds, in its order, for a clip of ``n`` frames."""
        keep = uniform_indices(n, self.max_frames)
        return keep if pick is None else [keep[int(i)] for i in pick(len(keep))]

    @staticmethod
    def _centre(frame: np.ndarray) -> Box:
        h, w = frame.shape[:2]
        s = min(h, w)
        return np.array([(w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2], np.float32)

    def run(
        self,
        frames: Iterable[np.ndarray],
        reopen: Callable[[], Iterable[np.ndarray]] | None = None,
        pick: Callable[[int], Sequence[int]] | None = None,
        expected: int | None = None,
    ) -> CropResult:
        """Crop one clip's frames (an iterable, consumed once). ``reopen`` returns the same frames
        again, for the second decode; a list of frames needs none.

        ``pick(k)``: positions (repeats allowed) among the ``k`` kept frames that the result
        holds, in its order (None: all of them). With ``expected``, the number of frames the
        clip is expected to have (a list's own length when None), only the picked frames are
        cropped and encoded."""
        if expected is None and isinstance(frames, Sequence):
            expected = len(frames)
        # Frames to crop as they come (None: every frame).
        planned = set(self._kept(expected, pick)) if pick is not None and expected else None
        out: dict[int, bytes] = {}  # JPEG per frame index
        boxes: dict[int, list[float]] = {}
        redo: dict[int, tuple[Box, float]] = {}  # uncropped frames (dropped, or not planned): (box, margin)
        pending: list[_Waiting] = []
        held = 0  # bytes of the frames held in ``pending``
        oldest = 0  # index in ``pending`` of the oldest frame still held
        last: tuple[int, Box] | None = None  # (frame index, smoothed box) of the last detection
        found = calls = 0
        n = 0

        def emit(w: _Waiting, box: Box, margin: float | None = None) -> None:
            margin = self.margin if margin is None else margin
            boxes[w.t] = [float(v) for v in box]
            if planned is not None and w.t not in planned:
                redo[w.t] = (box, margin)  # cropped at the end only if it is picked after all
            elif w.frame is not None:
                out[w.t] = self._crop(w.frame, box, margin)
            elif w.box is not None and np.array_equal(w.box, box):
                out[w.t] = w.jpeg  # the guess made when it was dropped holds
            else:
                redo[w.t] = (box, margin)
            w.frame = w.jpeg = None

        for t, frame in enumerate(frames):
            n = t + 1
            if self.detector is None:
                h, w = frame.shape[:2]
                boxes[t] = [0.0, 0.0, float(w), float(h)]
                if planned is None or t in planned:
                    out[t] = self._crop(frame, None, 0.0)
                else:
                    redo[t] = (None, 0.0)
                continue
            pending.append(_Waiting(t, frame))
            held += frame.nbytes
            # Full: crop the oldest held frames with the box they get if no face follows.
            while held > self.buffer_bytes and oldest < len(pending) - 1:
                w = pending[oldest]
                w.box = last[1] if last is not None else self._centre(w.frame)
                if planned is None or w.t in planned:
                    w.jpeg = self._crop(w.frame, w.box, self.margin if last is not None else 0.0)
                held -= w.frame.nbytes
                w.frame = None
                oldest += 1
            del frame  # the buffer alone decides which frames stay alive
            if t % self.detect_every == 0:
                calls += 1
                last, found = self._detect(pending[-1].frame, t, pending, last, emit, found)
                if last is not None and last[0] == t:
                    pending, held, oldest = [], 0, 0
        # The tail after the last detection frame: detect once more on the final frame so it
        # is interpolated rather than held.
        if pending and self.detector is not None and pending[-1].t % self.detect_every:
            calls += 1
            tail = pending[-1]
            last, found = self._detect(tail.frame, tail.t, pending, last, emit, found)
            if last is not None and last[0] == tail.t:
                pending = []

        # No face anywhere: the centre square (no margin — it is not a face box) for every frame.
        fallback = last is None and bool(pending)
        for w in pending:
            if last is not None:
                emit(w, last[1])
            else:
                emit(w, w.box if w.frame is None else self._centre(w.frame), 0.0)
        pending = []

        keep = self._kept(n, pick)
        redecoded = self._redo(frames, reopen, {t: redo[t] for t in keep if t not in out}, out)
        return CropResult([out[i] for i in keep], [boxes[i] for i in keep], fallback, n, found, calls, redecoded)

    def _redo(self, frames, reopen, redo: dict[int, tuple[Box, float]], out: dict[int, bytes]) -> int:
        """Crop the frames in ``redo`` from a second pass over the clip; returns frames decoded."""
        if not redo:
            return 0
        if reopen is None:
            if not isinstance(frames, Sequence):
                raise ValueError(
                    "ClipCropper.run: this clip needs a second pass over its frames (a face was found after "
                    "the frame buffer overflowed, or a picked frame was not planned for); pass reopen=, or use "
                    "run_source"
                )
            reopen = lambda: frames  # noqa: E731 — a list can be read twice
        from pipeline.data.video import UnreadableClip

        end = max(redo)
        again = reopen()
        decoded = 0
        try:
            for t, frame in enumerate(again):
                decoded = t + 1
                if t in redo:
                    box, margin = redo[t]
                    out[t] = self._crop(frame, box, margin)
                if t == end:
                    break
        finally:
            close = getattr(again, "close", None)
            if close is not None:
                close()  # stops the decoder of a generator left before its end
        if decoded <= end:
            raise UnreadableClip(f"the second decode ended after {decoded} frames, the first read {end + 1} or more")
        return decoded
