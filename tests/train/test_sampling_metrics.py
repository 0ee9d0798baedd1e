"""Unit tests of the sampling rule, the metrics and the clip transform (no Ray)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipeline.metrics import EvalMetrics, confusion_matrix, per_class_recall, uar, war
from pipeline.train.sampling import sample_indices
from pipeline.train.transforms import AugmentSpec, ClipTransform, SelectFrames, decode_rgb, model_layout

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
            img[:, size // 2 :] = (0, 0, 250)  # red on the right half
            img[: size // 4, : size // 4] = min(250, 10 * t)  # a frame counter patch
            frames.append(_jpeg(img + rng.integers(0, 3, img.shape, dtype=np.uint8)))
        rows["clip_id"].append(f"clip{k}")
        rows["label"].append(k)
        rows["num_frames"].append(n)
        rows["frames"].append(frames)
    return pa.table(
        rows,
        schema=pa.schema(
            [
                ("clip_id", pa.string()),
                ("label", pa.int32()),
                ("num_frames", pa.int32()),
                ("frames", pa.list_(pa.binary())),
            ]
        ),
    )


def test_decode_rgb_matches_opencv_and_scales_in_the_dct():
    rng = np.random.default_rng(0)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8), (0, 0), 3)
    buf = _jpeg(bgr)
    full = decode_rgb(buf, 64)  # 90 // 2 < 64: no reduction
    assert full.shape == (90, 130, 3)
    assert np.array_equal(full, cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)[..., ::-1])
    # The smallest DCT factor >= 2 that keeps both sides >= the output size, else none.
    for side, out, decoded in ((448, 224, 224), (600, 224, 225), (200, 32, 50), (300, 224, 300), (40, 32, 40)):
        assert decode_rgb(_jpeg(np.zeros((side, side, 3), np.uint8)), out).shape == (decoded, decoded, 3), side
    # fast DCT + fast chroma upsampling: close to the exact pixels, not equal
    fast = decode_rgb(buf, 64, fast=True).astype(int)
    assert fast.shape == full.shape and 0 < np.abs(fast - full).mean() < 3
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_rgb(b"not a jpeg", 32)
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_rgb(buf[: len(buf) // 3], 32)  # cut short


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


def test_train_transform_pixels_match_a_plain_reference():
    """Crop, brightness, flip and resize (done in place on the decoded frame) give exactly the
    pixels of the textbook order on copies, for every frame of a clip."""
    from pipeline.train.transforms import _random_crop, clip_rng

    table = _table(n_frames=(40,), size=48)
    spec = AugmentSpec(brightness=0.5, hflip=True)
    t = ClipTransform(16, 32, train=True, augment=spec, seed=11)
    frames = table.column("frames")[0].as_py()
    checked_flip = set()
    for epoch in range(6):
        t.epoch = epoch
        video = t(table)["video"][0]
        rng = clip_rng(11, epoch, "clip0")  # the transform's draws, in its order
        idx = sample_indices(40, 16, True, rng)
        x0, y0, cw, ch = _random_crop(rng, 48, 48, spec)
        flip = rng.random() < 0.5
        factor = rng.uniform(0.5, 1.5)
        checked_flip.add(flip)
        for k, j in enumerate(idx):
            rgb = cv2.imdecode(np.frombuffer(frames[j], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            crop = cv2.convertScaleAbs(np.ascontiguousarray(rgb[y0 : y0 + ch, x0 : x0 + cw]), alpha=factor)
            if flip:
                crop = np.ascontiguousarray(crop[:, ::-1])
            assert np.array_equal(video[k], cv2.resize(crop, (32, 32), interpolation=cv2.INTER_LINEAR)), (epoch, k)
    assert checked_flip == {True, False}


def test_fast_decode_applies_to_training_only():
    table = _table(n_frames=(40,))
    exact = ClipTransform(16, 32, train=True, augment=AugmentSpec(), seed=2)(table)["video"].astype(int)
    fast = ClipTransform(16, 32, train=True, augment=AugmentSpec(fast_decode=True), seed=2)(table)["video"].astype(int)
    assert 0 < np.abs(fast - exact).mean() < 3  # same draws, slightly different pixels
    ev = [ClipTransform(16, 32, train=False, augment=AugmentSpec(fast_decode=f))(table)["video"] for f in (False, True)]
    assert np.array_equal(*ev)


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
