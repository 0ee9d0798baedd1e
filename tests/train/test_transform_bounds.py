"""Edges of the clip transform that mutation testing found unchecked, each against a value worked
out by hand: torchvision's random-resized-crop acceptance test at its bounds (0 < w <= width,
0 < h <= height) and its ten tries, rotation at one degree, the JPEG decoder's fast mode and
error, preselected rows with more frames than T, mixed non-square frame sizes, the default seed,
OpenCV's thread count, the epoch clock and SelectFrames' edge cases."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pyarrow as pa
import pytest
import simplejpeg

from pipeline.train.transforms import (
    AugmentSpec,
    ClipTransform,
    EpochClock,
    SelectFrames,
    _random_crop,
    decode_rgb,
)
from tests.train.test_augment_effects import EDGE, SIZE, _clip_table, _drawn_angle
from tests.train.test_transform_paths import _jpeg, _noise, _rgb, _table

# ---- random resized crop at its acceptance bounds ----------------------------------------------


def _draws(h, w, spec, n=400, seed=0):
    rng = np.random.default_rng(seed)
    return [_random_crop(rng, h, w, spec) for _ in range(n)]


def test_a_crop_as_wide_as_the_frame_is_accepted():
    # 20x20 frame, area 1/4, aspect 4: w = sqrt(100 * 4) = 20 = width, h = sqrt(100 / 4) = 5.
    crops = _draws(20, 20, AugmentSpec(scale=(0.25, 0.25), ratio=(4.0, 4.0)))
    assert {(x0, cw, ch) for x0, _, cw, ch in crops} == {(0, 20, 5)}
    assert {y0 for _, y0, _, _ in crops} == set(range(16))  # drawn, not the centre fallback's 7


def test_a_crop_as_tall_as_the_frame_is_accepted():
    crops = _draws(20, 20, AugmentSpec(scale=(0.25, 0.25), ratio=(0.25, 0.25)))
    assert {(y0, cw, ch) for _, y0, cw, ch in crops} == {(0, 5, 20)}
    assert {x0 for x0, _, _, _ in crops} == set(range(16))


def test_a_one_pixel_crop_is_accepted():
    # 4x4 frame, area 1/16, aspect 1: a 1x1 crop anywhere (the fallback would be the whole frame).
    crops = _draws(4, 4, AugmentSpec(scale=(1 / 16, 1 / 16), ratio=(1.0, 1.0)))
    assert {c[2:] for c in crops} == {(1, 1)}
    assert {c[:2] for c in crops} == {(x, y) for x in range(4) for y in range(4)}


@pytest.mark.parametrize(
    "ratio, fallback",
    [
        # 10x10, area 1: aspect 1/100 gives w = round(0.1) = 0, h = 10: refused every try; the
        # centre fallback clamps to the ratio: h = 10, w = round(10 / 100) = 0, at x0 = 5.
        ((0.01, 0.01), (5, 0, 0, 10)),
        # aspect 100: w = 10, h = round(0.1) = 0: refused; fallback w = 10, h = round(10 / 100) = 0.
        ((100.0, 100.0), (0, 5, 10, 0)),
    ],
)
def test_a_crop_with_no_width_or_height_is_refused(ratio, fallback):
    assert set(_draws(10, 10, AugmentSpec(scale=(0.01, 0.01), ratio=ratio), n=50)) == {fallback}


def _tries_until_fit(seed, h, w, spec, tries):
    """How many of ``tries`` draws (area, then log-aspect, as torchvision) it takes to fit; None if none."""
    rng = np.random.default_rng(seed)
    for k in range(1, tries + 1):
        target = h * w * rng.uniform(*spec.scale)
        aspect = math.exp(rng.uniform(math.log(spec.ratio[0]), math.log(spec.ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return k
    return None


def test_ten_tries_then_the_centre_crop():
    # A seed whose first fitting draw is the 11th: ten tries, then the fallback (here the whole
    # square frame); one whose first fit is the 10th still draws its crop.
    spec = AugmentSpec(scale=(0.9, 1.0))
    eleventh = next(s for s in range(5000) if _tries_until_fit(s, 100, 100, spec, 11) == 11)
    assert _random_crop(np.random.default_rng(eleventh), 100, 100, spec) == (0, 0, 100, 100)
    tenth = next(s for s in range(5000) if _tries_until_fit(s, 100, 100, spec, 10) == 10)
    assert _random_crop(np.random.default_rng(tenth), 100, 100, spec) != (0, 0, 100, 100)


# ---- rotation, decoding, sizes, defaults -----------------------------------------------------


def test_a_one_degree_rotation_is_applied():
    spec = AugmentSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, rotation_deg=1.0)
    seed = next(k for k in range(100) if abs(_drawn_angle(k, "clip0", 8, 8, spec)) > 0.8)
    angle = _drawn_angle(seed, "clip0", 8, 8, spec)
    frame = ClipTransform(8, SIZE, train=True, augment=spec, seed=seed)(_clip_table([EDGE] * 8))["video"][0, 0]
    rotated = cv2.warpAffine(EDGE, cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle, 1.0), (SIZE, SIZE))
    to_rotated = np.abs(frame.astype(int) - rotated.astype(int)).mean()
    to_level = np.abs(frame.astype(int) - EDGE.astype(int)).mean()
    assert to_rotated < to_level / 3, (to_rotated, to_level)  # the rotated frame, not the level one


def test_fast_decode_uses_both_fast_dct_and_fast_upsampling():
    # Sharp colour edges in a 4:2:0 JPEG: nearest-neighbour chroma upsampling shows at the edges.
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, ::4] = (0, 0, 255)
    img[::3, :] = (255, 0, 0)
    data = np.frombuffer(_jpeg(img), np.uint8)
    fast = decode_rgb(data.tobytes(), 64, fast=True)
    both = simplejpeg.decode_jpeg(data, "RGB", fastdct=True, fastupsample=True)
    dct_only = simplejpeg.decode_jpeg(data, "RGB", fastdct=True, fastupsample=False)
    assert np.array_equal(fast, both) and not np.array_equal(fast, dct_only)
    exact = decode_rgb(data.tobytes(), 64)
    assert np.array_equal(exact, simplejpeg.decode_jpeg(data, "RGB"))


def test_decode_error_message():
    with pytest.raises(ValueError) as err:
        decode_rgb(b"\xff\xd8 not really a JPEG", 32)
    assert str(err.value) == "not a decodable JPEG"


def test_preselected_rows_with_more_frames_take_the_evaluation_sample():
    # 4 frames for T = 2: the middles of two segments of 2, frames int(2 * 0.5) = 1 and int(2 * 1.5) = 3.
    frames = [_jpeg(_noise(40, 40, k)) for k in range(4)]
    video = ClipTransform(2, 32, train=False, preselected=True)(_table([frames]))["video"][0]
    for t, k in enumerate((1, 3)):
        assert np.array_equal(video[t], cv2.resize(_rgb(frames[k]), (32, 32), interpolation=cv2.INTER_AREA))


def test_a_later_frame_of_another_shape_is_resized_width_by_height():
    # First frame 30 high x 40 wide; the second (45 x 60) is brought to 40 x 30 (cv2 sizes are
    # (width, height)), then both take the centre 30 x 30 square (x0 = 5), upscaled to 32.
    first, second = _noise(30, 40, 0), _noise(45, 60, 1)
    frames = [_jpeg(first), _jpeg(second)]
    video = ClipTransform(2, 32, train=False)(_table([frames]))["video"][0]
    a = _rgb(frames[0])[:, 5:35]
    b = cv2.resize(_rgb(frames[1]), (40, 30), interpolation=cv2.INTER_AREA)[:, 5:35]
    assert np.array_equal(video[0], cv2.resize(a, (32, 32), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(video[1], cv2.resize(b, (32, 32), interpolation=cv2.INTER_LINEAR))


def test_the_default_seed_is_zero():
    table = _table([[_jpeg(_noise(48, 48, k)) for k in range(6)]])
    default = ClipTransform(4, 32, train=True)(table)["video"]
    assert np.array_equal(default, ClipTransform(4, 32, train=True, seed=0)(table)["video"])
    assert not np.array_equal(default, ClipTransform(4, 32, train=True, seed=1)(table)["video"])


def test_opencv_runs_single_threaded_in_a_transform():
    cv2.setNumThreads(2)
    ClipTransform(2, 32, train=False)
    assert cv2.getNumThreads() == 1


def test_the_epoch_clock():
    clock = EpochClock()
    assert clock.get() == 0
    clock.set(np.int64(3))
    assert clock.get() == 3 and type(clock.get()) is int


# ---- SelectFrames ----------------------------------------------------------------------------


def test_select_frames_names_the_first_five_empty_clips():
    table = _table([[] for _ in range(7)], ids=[f"c{k}" for k in range(7)])
    with pytest.raises(ValueError) as err:
        SelectFrames(2)(table)
    assert str(err.value) == "clips with no frames in their shard rows: ['c0', 'c1', 'c2', 'c3', 'c4']"


def test_select_frames_of_no_rows_and_of_one_frame():
    empty = SelectFrames(2)(_table([[b"x"]]).slice(0, 0))
    assert empty.num_rows == 0 and empty.column("frames").type == pa.list_(pa.binary())
    # T = 1: the middle frame of each row, int(3 * 0.5) = 1
    out = SelectFrames(1)(_table([[b"a0", b"a1", b"a2"], [b"b0", b"b1", b"b2"]]))
    assert out.column("frames").to_pylist() == [[b"a1"], [b"b1"]]
