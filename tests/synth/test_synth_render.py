"""render_clip: faces a Haar cascade finds where we drew them, and expressions that unfold over time."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.datasets import CLASSES_7
from pipeline.synth import PROFILES, render_clip
from pipeline.synth.face import Actions

SIZE = (320, 240)
SMALL = (160, 120)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _box_mask(box, shape, grow: int = 0) -> np.ndarray:
    mask = np.zeros(shape[:2], bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask[max(0, y0 - grow) : y1 + grow, max(0, x0 - grow) : x1 + grow] = True
    return mask


def test_profiles_cover_the_seven_classes_with_known_actions():
    assert set(PROFILES) == set(CLASSES_7)
    names = set(Actions.names())
    for label, profile in PROFILES.items():
        assert set(profile) <= names, label
    assert PROFILES["neutral"] == {}


def test_frames_shape_dtype_and_determinism():
    frames, boxes = render_clip("fear", np.random.default_rng(3), num_frames=12, size=(160, 120), return_boxes=True)
    assert len(frames) == len(boxes) == 12
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in frames)
    again = render_clip("fear", np.random.default_rng(3), num_frames=12, size=(160, 120))
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))
    other = render_clip("fear", np.random.default_rng(4), num_frames=12, size=(160, 120))
    assert not np.array_equal(frames[0], other[0])


def test_unknown_label_is_rejected_with_the_known_ones():
    with pytest.raises(ValueError, match="happiness"):
        render_clip("joy", np.random.default_rng(0))


def test_haar_cascade_finds_the_drawn_face_where_it_was_drawn():
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    rng = np.random.default_rng(11)
    checked = found = on_target = 0
    for _ in range(2):
        for label in CLASSES_7:
            frames, boxes = render_clip(label, rng, num_frames=8, size=SIZE, return_boxes=True)
            for i in (0, 7):  # neutral start, apex
                gray = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
                dets = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)
                checked += 1
                if len(dets):
                    found += 1
                    x, y, w, h = max(dets, key=lambda d: d[2] * d[3])
                    on_target += _iou((x, y, x + w, y + h), boxes[i]) > 0.3
    assert found / checked >= 0.8, f"Haar found a face in {found}/{checked} frames"
    assert on_target / found >= 0.9, f"only {on_target}/{found} detections overlap the drawn face"


def test_first_frames_are_the_same_face_in_every_class_and_apex_differs_only_in_the_face():
    """With the same seed, every label renders the same person, scene and motion; so frame 0 is
    identical across classes (every clip starts neutral) and the apex frames differ from the
    neutral clip's inside the face box only."""
    seed = 5
    clips = {
        label: render_clip(label, np.random.default_rng(seed), num_frames=12, size=SIZE, return_boxes=True)
        for label in CLASSES_7
    }
    neutral_frames, boxes = clips["neutral"]
    for label, (frames, _) in clips.items():
        assert np.array_equal(frames[0], neutral_frames[0]), label

    face = _box_mask(boxes[-1], neutral_frames[-1].shape, grow=3)
    change = {}
    for label in CLASSES_7:
        if label == "neutral":
            continue
        diff = np.abs(clips[label][0][-1].astype(int) - neutral_frames[-1].astype(int)).sum(axis=2)
        assert diff[~face].max() == 0, f"{label}: pixels outside the face changed"
        change[label] = diff[face].astype(np.float32)
        # A visible change: a good share of the face moves by more than noise would.
        assert (change[label] > 30).mean() > 0.02, f"{label}: apex barely differs from neutral"
    # Expressions differ from one another, not just from neutral.
    labels = list(change)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            pa = clips[a][0][-1][face].astype(int)
            pb = clips[b][0][-1][face].astype(int)
            assert (np.abs(pa - pb).sum(axis=1) > 30).mean() > 0.01, f"{a} and {b} apexes look alike"


def test_expression_unfolds_from_a_neutral_start_to_a_held_apex():
    """Against the neutral clip of the same seed (same person, scene, motion, light and idle
    motion), an expressive clip is pixel-identical before its onset (at least the first 15 % of
    frames), then differs more and more inside the face, and holds near its peak at the end."""
    num_frames = 20
    for seed in (8, 9):
        neutral = render_clip("neutral", np.random.default_rng(seed), num_frames=num_frames, size=SMALL)
        for label in ("happiness", "sadness", "anger"):
            frames = render_clip(label, np.random.default_rng(seed), num_frames=num_frames, size=SMALL)
            change = np.array([np.abs(f.astype(int) - n.astype(int)).mean() for f, n in zip(frames, neutral)])
            onset = int(np.argmax(change > 0))
            assert onset >= 3 and (change[:onset] == 0).all(), (label, change)
            # Onset to apex: it starts small, grows, and holds near its peak to the end.
            assert change[-1] > 0.1 and change[onset] < 0.5 * change[-1], (label, change)
            assert change[-1] >= 0.8 * change.max(), (label, change)
