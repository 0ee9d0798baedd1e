"""Unit tests of the sampling rule, the metrics and the clip transform (no Ray)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipeline.metrics import EvalMetrics, confusion_matrix, per_class_recall, uar, war
from pipeline.train.sampling import sample_indices
from pipeline.train.transforms import AugmentSpec, ClipTransform, SelectFrames, jpeg_size, model_layout, reduction_for


# ---- sampling --------------------------------------------------------------------------------

def test_eval_indices_are_segment_middles():
    # 32 frames, T = 16: segments of 2 frames, middles at 1, 3, 5, ...
    assert sample_indices(32, 16, train=False).tolist() == list(range(1, 32, 2))
    # 40 frames: tick 2.5 -> int(1.25 + 2.5 i)
    assert sample_indices(40, 16, train=False).tolist() == [int(1.25 + 2.5 * i) for i in range(16)]
    assert sample_indices(16, 16, train=False).tolist() == list(range(16))


def test_train_indices_one_random_frame_per_segment():
    rng = np.random.default_rng(0)
    n, T = 50, 16
    bounds = [(i * n // T, (i + 1) * n // T) for i in range(T)]
    seen = [set() for _ in range(T)]
    for _ in range(300):
        idx = sample_indices(n, T, train=True, rng=rng)
        assert idx.shape == (T,) and idx.dtype == np.int64
        for i, (lo, hi) in enumerate(bounds):
            assert lo <= idx[i] < hi
            seen[i].add(int(idx[i]))
    # every frame of every segment gets drawn eventually (it is random, not the middle)
    assert all(len(s) == hi - lo for s, (lo, hi) in zip(seen, bounds))


def test_short_clip_is_padded_with_its_last_frame():
    expected = [0, 1, 2, 3, 4] + [4] * 11
    assert sample_indices(5, 16, train=False).tolist() == expected
    assert sample_indices(5, 16, train=True, rng=np.random.default_rng(1)).tolist() == expected
    assert sample_indices(1, 4, train=True, rng=np.random.default_rng(1)).tolist() == [0, 0, 0, 0]


def test_train_sampling_is_seeded():
    a = sample_indices(100, 16, True, np.random.default_rng(7))
    b = sample_indices(100, 16, True, np.random.default_rng(7))
    c = sample_indices(100, 16, True, np.random.default_rng(8))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_sampling_rejects_bad_input():
    with pytest.raises(ValueError):
        sample_indices(0, 16, False)
    with pytest.raises(ValueError):
        sample_indices(20, 16, True)  # no rng


# ---- metrics ---------------------------------------------------------------------------------

def test_uar_war_on_a_known_confusion_matrix():
    y_true = [0] * 10 + [1] * 5 + [2] * 5
    y_pred = [0] * 8 + [1] * 2 + [1] * 4 + [2] * 1 + [2] * 5
    cm = confusion_matrix(y_true, y_pred, 4)  # class 3 never occurs
    assert cm[:3, :3].tolist() == [[8, 2, 0], [0, 4, 1], [0, 0, 5]]
    # by hand: recalls 8/10, 4/5, 5/5; WAR = 17/20; UAR = (0.8 + 0.8 + 1.0) / 3 (class 3 left out)
    assert war(cm) == pytest.approx(17 / 20)
    assert uar(cm) == pytest.approx((0.8 + 0.8 + 1.0) / 3)
    recall = per_class_recall(cm)
    assert recall[:3].tolist() == pytest.approx([0.8, 0.8, 1.0]) and math.isnan(recall[3])
    m = EvalMetrics.from_confusion(cm, loss_sum=10.0)
    assert m.count == 20 and m.loss == pytest.approx(0.5)
    flat = m.flat("val", ["a", "b", "c", "d"])
    assert flat["val_uar"] == pytest.approx(uar(cm)) and flat["val_recall_b"] == pytest.approx(0.8)


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)


# ---- transform -------------------------------------------------------------------------------

def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def _table(n_frames=(20, 5), size=64) -> pa.Table:
    rows = {"clip_id": [], "label": [], "num_frames": [], "frames": []}
    rng = np.random.default_rng(0)
    for k, n in enumerate(n_frames):
        frames = []
        for t in range(n):
            img = np.zeros((size, size, 3), np.uint8)
            img[:, : size // 2] = (250, 0, 0)  # BGR blue on the left half
            img[:, size // 2:] = (0, 0, 250)  # red on the right half
            img[: size // 4, : size // 4] = min(250, 10 * t)  # a frame counter patch
            frames.append(_jpeg(img + rng.integers(0, 3, img.shape, dtype=np.uint8)))
        rows["clip_id"].append(f"clip{k}")
        rows["label"].append(k)
        rows["num_frames"].append(n)
        rows["frames"].append(frames)
    return pa.table(rows, schema=pa.schema([("clip_id", pa.string()), ("label", pa.int32()),
                                            ("num_frames", pa.int32()), ("frames", pa.list_(pa.binary()))]))


def test_jpeg_header_size_and_reduction():
    buf = _jpeg(np.zeros((90, 130, 3), np.uint8))
    assert jpeg_size(buf) == (90, 130)
    assert jpeg_size(b"not a jpeg") is None
    assert reduction_for((224, 224), 224) == 1
    assert reduction_for((448, 448), 224) == 2 and reduction_for((200, 200), 32) == 4


def test_eval_transform_is_rgb_ordered_and_deterministic():
    table = _table()
    out = ClipTransform(16, 32, train=False)(table)
    video = out["video"]
    assert video.shape == (2, 16, 32, 32, 3) and video.dtype == np.uint8  # channels last
    assert tuple(model_layout(video).shape) == (2, 16, 3, 32, 32)
    assert out["label"].tolist() == [0, 1]
    # RGB: the left half is blue (channel 2 high), the right half red (channel 0 high)
    assert video[0, 0, 16, 2, 2] > 200 and video[0, 0, 16, 2, 0] < 50
    assert video[0, 0, 16, 30, 0] > 200 and video[0, 0, 16, 30, 2] < 50
    # the short clip (5 frames) repeats its last frame
    assert np.array_equal(video[1, 4], video[1, 15])
    # selecting the eval frames first (what is materialised) gives identical clips
    pre = ClipTransform(16, 32, train=False, preselected=True)(SelectFrames(16)(table))
    assert np.array_equal(pre["video"], video)


def test_train_transform_is_clip_consistent_seeded_and_varies_by_epoch():
    table = _table(n_frames=(40,))
    spec = AugmentSpec(brightness=0.5, hflip=True)
    t = ClipTransform(16, 32, train=True, augment=spec, seed=3)
    a, b = t(table)["video"], t(table)["video"]
    assert np.array_equal(a, b)  # same seed, epoch, clip -> same sample and augmentation
    t.epoch = 1
    assert not np.array_equal(a, t(table)["video"])
    # one flip and one crop for the whole clip: every frame keeps the same left/right colour layout
    left_is_blue = a[0, :, 16, 1, 2] > a[0, :, 16, 1, 0]
    assert left_is_blue.all() or (~left_is_blue).all()
    flips = set()
    for epoch in range(12):
        t.epoch = epoch
        v = t(table)["video"][0]
        flips.add(bool(v[0, 16, 1, 2] > v[0, 16, 1, 0]))
    assert flips == {True, False}  # the flip is random across epochs


def test_brightness_scales_the_clip():
    table = _table(n_frames=(40,))
    plain = ClipTransform(16, 32, train=True, augment=AugmentSpec(hflip=False), seed=5)(table)["video"]
    bright = ClipTransform(16, 32, train=True, augment=AugmentSpec(hflip=False, brightness=0.5), seed=5)(table)["video"]
    # same crop draws; one factor for the whole clip (the ratio of means is the same for every frame)
    ratios = bright.reshape(16, -1).mean(1) / plain.reshape(16, -1).mean(1)
    assert abs(ratios[0] - 1.0) > 0.01 and np.allclose(ratios, ratios[0], atol=0.03)


def test_rotation_path_runs_and_keeps_shape():
    t = ClipTransform(16, 32, train=True, augment=AugmentSpec(rotation_deg=4.0), seed=0)
    assert t(_table())["video"].shape == (2, 16, 32, 32, 3)
