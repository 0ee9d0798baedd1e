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

from collections.abc import Iterable
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


@dataclass
class ClipCropper:
    """Turns one clip's frames into square face crops, with the tracking rule of the module doc.

    Frames wait in a buffer only until the next detection fixes their box, so memory is bounded
    by the gap between successful detections (the whole clip only when it has no face at all).
    """

    detector: object | None
    detect_every: int = 5
    margin: float = 0.25
    crop_size: int = 224
    jpeg_quality: int = 90
    max_frames: int | None = None
    smoothing: float = 0.6  # weight of the new detection in the moving average

    def _detect(self, frame, t, pending, last, emit, found):
        """Detect on frame ``t``; on success resolve every pending frame's box. Returns (last, found)."""
        faces = self.detector.detect(frame)
        if len(faces) == 0:
            return last, found
        areas = (faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])
        box = faces[int(np.argmax(areas))].astype(np.float32)
        if last is not None and _iou(last[1], box) >= 0.3:
            box = _smooth_size(last[1], box, self.smoothing)
        for tp, fp in pending:
            if last is None or tp >= t:
                emit(fp, box)
            else:  # linear interpolation between the previous and this detection
                a = (tp - last[0]) / (t - last[0])
                emit(fp, (1.0 - a) * last[1] + a * box)
        return (t, box), found + 1

    def run(self, frames: Iterable[np.ndarray]) -> CropResult:
        # Crops are kept raw when only a subset will be stored (the count is known only at the
        # end: container frame counts lie for VFR files) and JPEG-encoded right away otherwise.
        encode_now = self.max_frames is None
        out: list = []  # JPEG bytes or raw crops, one per decoded frame
        boxes: list[list[float]] = []
        pending: list[tuple[int, np.ndarray]] = []
        last: tuple[int, Box] | None = None  # (frame index, smoothed box) of the last detection
        found = calls = 0
        n = 0

        def emit(frame: np.ndarray, box: Box) -> None:
            crop = square_crop(frame, box, self.margin, self.crop_size)
            out.append(encode_jpeg(crop, self.jpeg_quality) if encode_now else crop)
            boxes.append([float(v) for v in box])

        for t, frame in enumerate(frames):
            n = t + 1
            if self.detector is None:
                h, w = frame.shape[:2]
                full = cv2.resize(
                    frame,
                    (self.crop_size, self.crop_size),
                    interpolation=cv2.INTER_AREA if max(h, w) > self.crop_size else cv2.INTER_LINEAR,
                )
                out.append(encode_jpeg(full, self.jpeg_quality) if encode_now else full)
                boxes.append([0.0, 0.0, float(w), float(h)])
                continue
            pending.append((t, frame))
            if t % self.detect_every == 0:
                calls += 1
                last, found = self._detect(frame, t, pending, last, emit, found)
                if last is not None and last[0] == t:
                    pending = []
        # The tail after the last detection frame: detect once more on the final frame so it
        # is interpolated rather than held.
        if pending and self.detector is not None and pending[-1][0] % self.detect_every:
            calls += 1
            last, found = self._detect(pending[-1][1], pending[-1][0], pending, last, emit, found)
            if last is not None and last[0] == pending[-1][0]:
                pending = []

        # No face anywhere: the centre square (no margin — it is not a face box) for every frame.
        fallback = last is None and bool(pending)
        for _, fp in pending:
            if last is not None:
                emit(fp, last[1])
            else:
                h, w = fp.shape[:2]
                s = min(h, w)
                centre = np.array([(w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2], np.float32)
                crop = square_crop(fp, centre, 0.0, self.crop_size)
                out.append(encode_jpeg(crop, self.jpeg_quality) if encode_now else crop)
                boxes.append([float(v) for v in centre])

        keep = uniform_indices(n, self.max_frames)
        frames_out = [out[i] if encode_now else encode_jpeg(out[i], self.jpeg_quality) for i in keep]
        return CropResult(frames_out, [boxes[i] for i in keep], fallback, n, found, calls)
