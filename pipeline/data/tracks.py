"""Face tracks over a whole video: every face the detector finds, linked from detection to detection.

:class:`~pipeline.data.faces.ClipCropper` follows the largest face of a short clip. A long video
with several people needs each face followed on its own; this module does that with the same
detectors (:func:`~pipeline.data.faces.build_detector`) and the same crop rule
(:func:`~pipeline.data.faces.square_crop`, JPEG at the preprocess quality).

Tracking rule (simple and deterministic, no appearance model):

- the detector runs on frames 0, k, 2k, ... (``detect_every`` = k) and on the last frame;
- at each detection frame, the boxes are matched to the live tracks greedily, best pair first:
  a pair matches when its IoU is at least 0.3 or its centres are closer than half the track's
  box side (a face moving fast between two detections); pairs are ranked by IoU, then centre
  distance, then track and box order, so the same video always gives the same tracks;
- a box left unmatched starts a new track; a track unmatched for more than ``max_gap``
  detection frames ends (a face that comes back later is a new track);
- tracks are ranked by how many detections they have (then mean box area, then first frame)
  and the first ``max_tracks`` kept: track 0 is the face seen most. A one-off false detection
  makes a track of one detection and loses that ranking to any real face.

A track's box on a frame between two of its detections is linearly interpolated, as
ClipCropper interpolates; before its first and after its last detection the track has no box
(it is not on screen). Box sizes are not smoothed (ClipCropper's moving average follows one face;
here two faces may cross, and raw boxes keep the association honest).

With no face in any detection frame, the video gets one track of the centre square
(``fallback``), as preprocessing does. With ``detector: none`` the whole frame is the face: one
track spanning the video, its crops the whole frame resized (as ClipCropper does).

Memory: the scan keeps boxes only (a few floats per detection); frames are decoded again for
the crops (:func:`crop_frames`), and only the frames asked for are cropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.data.faces import _iou, encode_jpeg, square_crop

__all__ = ["Track", "TrackScan", "link_tracks", "scan_tracks", "crop_frames", "MATCH_IOU", "MATCH_CENTRE"]

MATCH_IOU = 0.3  # the IoU at which ClipCropper also treats two boxes as the same face
MATCH_CENTRE = 0.5  # centre distance, as a fraction of the track's box side, that still matches


@dataclass
class Track:
    """One face over time: its detections ``{frame index: box [x0, y0, x1, y1]}`` in frame order."""

    id: int
    detections: dict[int, np.ndarray] = field(default_factory=dict)
    fallback: bool = False  # the centre square of a video without any face
    whole_frame: bool = False  # detector "none": the frame is the face

    @property
    def first(self) -> int:
        return min(self.detections)

    @property
    def last(self) -> int:
        return max(self.detections)

    def covers(self, t: int) -> bool:
        return self.first <= t <= self.last

    def box_at(self, t: int) -> np.ndarray:
        """The box on frame ``t``: a detection, the interpolation between the two around it, or
        (outside the track's span) the nearest detection."""
        if t in self.detections:
            return self.detections[t]
        times = sorted(self.detections)
        if t <= times[0]:
            return self.detections[times[0]]
        if t >= times[-1]:
            return self.detections[times[-1]]
        i = int(np.searchsorted(times, t))
        t0, t1 = times[i - 1], times[i]
        a = (t - t0) / (t1 - t0)
        return ((1.0 - a) * self.detections[t0] + a * self.detections[t1]).astype(np.float32)

    def mean_area(self) -> float:
        return float(np.mean([(b[2] - b[0]) * (b[3] - b[1]) for b in self.detections.values()]))

    def to_dict(self) -> dict:
        return {
            "track": self.id,
            "first_frame": self.first,
            "last_frame": self.last,
            "detections": len(self.detections),
            "fallback": self.fallback,
        }


@dataclass
class TrackScan:
    """A video's frame count, frame rate (None: frame folder) and kept tracks (ranked)."""

    num_frames: int
    fps: float | None
    tracks: list[Track]
    frame_size: tuple[int, int]  # (width, height) of the first frame

    @property
    def face_fallback(self) -> bool:
        return any(t.fallback for t in self.tracks)


def _centre_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2))


def link_tracks(
    detections: Iterable[tuple[int, np.ndarray]], *, max_tracks: int, max_gap: int = 2, detect_every: int = 1
) -> list[Track]:
    """Link per-frame detections ``(frame index, boxes [N, 4])`` (in frame order) into tracks,
    by the module's rule; returns the ``max_tracks`` best, renumbered 0.. in rank order."""
    tracks: list[Track] = []
    live: list[Track] = []
    for t, boxes in detections:
        # A track unmatched for more than max_gap detection frames has ended.
        live = [tr for tr in live if t - tr.last <= (max_gap + 1) * detect_every]
        boxes = [np.asarray(b, np.float32) for b in boxes]
        order = sorted(range(len(boxes)), key=lambda i: (float(boxes[i][0]), float(boxes[i][1])))
        boxes = [boxes[i] for i in order]
        pairs = []
        for ti, tr in enumerate(live):
            prev = tr.detections[tr.last]
            side = max(prev[2] - prev[0], prev[3] - prev[1])
            for bi, box in enumerate(boxes):
                iou, dist = _iou(prev, box), _centre_distance(prev, box)
                if iou >= MATCH_IOU or dist <= MATCH_CENTRE * side:
                    pairs.append((-iou, dist, ti, bi))
        pairs.sort()
        used_t: set[int] = set()
        used_b: set[int] = set()
        for _, _, ti, bi in pairs:
            if ti in used_t or bi in used_b:
                continue
            used_t.add(ti)
            used_b.add(bi)
            live[ti].detections[t] = boxes[bi]
        for bi, box in enumerate(boxes):
            if bi not in used_b:
                tr = Track(len(tracks), {t: box})
                tracks.append(tr)
                live.append(tr)
    ranked = sorted(tracks, key=lambda tr: (-len(tr.detections), -tr.mean_area(), tr.first, tr.id))[:max_tracks]
    for i, tr in enumerate(ranked):
        tr.id = i
    return ranked


def scan_tracks(
    frames: Iterable[np.ndarray],
    detector,
    *,
    detect_every: int,
    max_tracks: int,
    fps: float | None = None,
    max_gap: int = 2,
) -> TrackScan:
    """One pass over a video's frames: detect every ``detect_every`` frames (and on the last),
    link the boxes into tracks. Holds one frame at a time (the last, for the final detection)."""
    found: list[tuple[int, np.ndarray]] = []
    n = 0
    size = (0, 0)
    last_frame: np.ndarray | None = None
    last_detected = -1
    for t, frame in enumerate(frames):
        if t == 0:
            size = (frame.shape[1], frame.shape[0])
        n = t + 1
        if detector is None:
            continue
        if t % detect_every == 0:
            found.append((t, detector.detect(frame)))
            last_detected = t
            last_frame = None
        else:
            last_frame = frame
    if n == 0:
        from pipeline.data.video import UnreadableClip

        raise UnreadableClip("no frames")
    if detector is not None and last_detected != n - 1 and last_frame is not None:
        found.append((n - 1, detector.detect(last_frame)))
    w, h = size
    if detector is None:
        whole = np.array([0, 0, w, h], np.float32)
        return TrackScan(n, fps, [Track(0, {0: whole, n - 1: whole}, whole_frame=True)], size)
    tracks = link_tracks(
        ((t, b) for t, b in found if len(b)), max_tracks=max_tracks, max_gap=max_gap, detect_every=detect_every
    )
    if not tracks:
        s = min(w, h)
        centre = np.array([(w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2], np.float32)
        tracks = [Track(0, {0: centre, n - 1: centre}, fallback=True)]
    return TrackScan(n, fps, tracks, size)


def crop_frames(
    frames: Iterator[np.ndarray],
    wanted: dict[int, list[Track]],
    *,
    margin: float,
    crop_size: int,
    jpeg_quality: int,
) -> dict[tuple[int, int], bytes]:
    """Crop the frames in ``wanted`` (frame index -> the tracks that need it) from a second pass
    over the video: ``{(track id, frame index): JPEG}``. Stops decoding after the last wanted frame."""
    out: dict[tuple[int, int], bytes] = {}
    if not wanted:
        return out
    end = max(wanted)
    try:
        for t, frame in enumerate(frames):
            for tr in wanted.get(t, ()):
                if tr.whole_frame:
                    h, w = frame.shape[:2]
                    interp = cv2.INTER_AREA if max(h, w) > crop_size else cv2.INTER_LINEAR
                    crop = cv2.resize(frame, (crop_size, crop_size), interpolation=interp)
                else:
                    # The centre square of a faceless video is not a face box: no margin (as preprocessing).
                    crop = square_crop(frame, tr.box_at(t), 0.0 if tr.fallback else margin, crop_size)
                out[(tr.id, t)] = encode_jpeg(crop, jpeg_quality)
            if t == end:
                break
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()  # stops the decoder of a generator left before its end
    missing = [t for t in wanted if all((tr.id, t) not in out for tr in wanted[t])]
    if missing:
        from pipeline.data.video import UnreadableClip

        raise UnreadableClip(f"the second decode ended before frame {min(missing)} (the first read {end + 1} or more)")
    return out
