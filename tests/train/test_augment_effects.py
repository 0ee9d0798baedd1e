"""What the training augmentations do to the pixels, checked against independent derivations.

- Random resized crop: torchvision's rule (area fraction drawn from ``scale``, log-aspect from
  ``ratio``, a uniform position, after 10 failed tries a centre crop clamped to ``ratio``),
  written out by hand for cases where the result is forced, and its ranges over many draws.
- Rotation: the output equals the frame rotated about its centre by the clip's angle (textbook
  order: rotate, then crop, then resize), and a horizontal edge comes out tilted by that angle
  (measured from the pixels), the same for every frame of the clip, within +-rotation_deg.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipeline.train.sampling import sample_indices
from pipeline.train.transforms import AugmentSpec, ClipTransform, _random_crop, clip_rng

# ---- random resized crop ---------------------------------------------------------------------


def test_fixed_scale_and_ratio_give_a_fixed_size_at_every_position():
    rng = np.random.default_rng(0)
    spec = AugmentSpec(scale=(0.25, 0.25), ratio=(1.0, 1.0))
    xs, ys = set(), set()
    for _ in range(3000):
        x0, y0, cw, ch = _random_crop(rng, 64, 64, spec)
        assert (cw, ch) == (32, 32)  # sqrt(0.25 * 64 * 64)
        xs.add(x0)
        ys.add(y0)
    assert xs == ys == set(range(33))  # every position 0..64-32, both ends included


def test_drawn_crops_cover_the_scale_and_ratio_ranges():
    rng = np.random.default_rng(1)
    spec = AugmentSpec()  # scale (0.2, 1.0), ratio (3/4, 4/3)
    fractions, aspects = [], []
    for _ in range(2000):
        x0, y0, cw, ch = _random_crop(rng, 100, 100, spec)
        assert 0 <= x0 <= 100 - cw and 0 <= y0 <= 100 - ch
        fractions.append(cw * ch / 100**2)
        aspects.append(cw / ch)
    # rounding each side to whole pixels moves the area by up to ~1 % and the aspect by ~2 %
    assert 0.2 - 0.02 <= min(fractions) < 0.25 and 0.95 < max(fractions) <= 1.0
    assert 0.75 - 0.02 <= min(aspects) < 0.8 and 1.25 < max(aspects) <= 4 / 3 + 0.03


@pytest.mark.parametrize(
    "h, w, spec, expected",
    [
        # too narrow for any drawn crop (every width >= sqrt(0.2 * 1000 * 3/4) > 10): the centre
        # crop of the whole width and height w / (3/4) = 13.3 -> 13, centred: y0 = (100 - 13) // 2
        (100, 10, AugmentSpec(), (0, 43, 10, 13)),
        # too wide: the whole height and width 10 * 4/3 = 13.3 -> 13, centred: x0 = (100 - 13) // 2
        (10, 100, AugmentSpec(), (43, 0, 13, 10)),
        # a scale above 1 never fits; the frame's own aspect (0.8) is inside ratio: the whole frame
        (50, 40, AugmentSpec(scale=(2.0, 2.0)), (0, 0, 40, 50)),
    ],
)
def test_after_ten_failed_tries_the_centre_crop_is_clamped_to_ratio(h, w, spec, expected):
    assert _random_crop(np.random.default_rng(0), h, w, spec) == expected


def test_a_crop_that_does_not_fit_is_drawn_again_before_falling_back():
    # Area 90-100 % at aspects 3/4..4/3 fits a square frame only when the aspect is near 1: about
    # one try in five. With 10 tries the centre fallback (the whole frame) is the rare outcome
    # (~0.8^10 = 11 %); with a single try it would be the common one (~80 %).
    rng = np.random.default_rng(2)
    spec = AugmentSpec(scale=(0.9, 1.0))
    whole = sum(_random_crop(rng, 100, 100, spec) == (0, 0, 100, 100) for _ in range(1000))
    assert 30 < whole < 300


def _clip_table(frames: list[np.ndarray], clip_id: str = "clip0") -> pa.Table:
    bufs = [_jpeg(img) for img in frames]  # JPEG, as shard rows hold them
    return pa.table(
        {
            "clip_id": pa.array([clip_id]),
            "label": pa.array([0], pa.int32()),
            "num_frames": pa.array([len(frames)], pa.int32()),
            "frames": pa.array([bufs], pa.list_(pa.binary())),
        }
    )


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    return buf.tobytes()


def test_a_quarter_area_crop_shows_half_the_width():
    # A horizontal ramp (value = 4 x): a 32-px-wide window of the 64-px frame, resized to 32 px,
    # spans 4 * 31 = 124 grey levels instead of the whole frame's 252.
    ramp = np.repeat(np.repeat((np.arange(64) * 4).astype(np.uint8)[None, :, None], 64, 0), 3, 2)
    table = _clip_table([ramp] * 8)
    spec = AugmentSpec(scale=(0.25, 0.25), ratio=(1.0, 1.0), hflip=False)
    spans = set()
    for epoch in range(5):
        t = ClipTransform(8, 32, train=True, augment=spec, seed=epoch)
        row = t(table)["video"][0, 0, 16, :, 0].astype(int)
        assert 116 <= row[-1] - row[0] <= 132, epoch
        assert np.all(np.diff(row) >= 0)  # not flipped
        spans.add(int(row[0]) // 16)
    assert len(spans) > 1  # the window moves with the draw
    full = ClipTransform(8, 32, train=True, augment=AugmentSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False))
    row = full(table)["video"][0, 0, 16, :, 0].astype(int)
    assert 236 <= row[-1] - row[0] <= 252


# ---- rotation --------------------------------------------------------------------------------

SIZE = 64
EDGE = np.zeros((SIZE, SIZE, 3), np.uint8)
EDGE[: SIZE // 2] = 40  # dark top half, bright bottom half: a horizontal edge through the centre
EDGE[SIZE // 2 :] = 210


def _drawn_angle(seed: int, clip_id: str, n_frames: int, T: int, spec: AugmentSpec) -> float:
    # The transform's draws in its order: frame sample, crop, angle (then flip and brightness).
    rng = clip_rng(seed, 0, clip_id)
    sample_indices(n_frames, T, True, rng)
    _random_crop(rng, SIZE, SIZE, spec)
    return float(rng.uniform(-spec.rotation_deg, spec.rotation_deg))


def _edge_tilt_deg(frame: np.ndarray) -> tuple[float, float]:
    """(angle in degrees, counter-clockwise on screen; row of the edge at the centre column),
    fitted to where each central column crosses mid-grey."""
    grey = frame[..., 0].astype(float)
    xs, ys = [], []
    for x in range(SIZE // 4, 3 * SIZE // 4):
        col = grey[:, x]
        y = int(np.argmax(col >= 125))
        xs.append(x)
        ys.append(y - 1 + (125 - col[y - 1]) / (col[y] - col[y - 1]))
    slope, intercept = np.polyfit(xs, ys, 1)
    return -math.degrees(math.atan(slope)), intercept + slope * (SIZE / 2 - 0.5)


def test_rotation_turns_the_frame_about_its_centre_by_the_drawn_angle():
    spec = AugmentSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, rotation_deg=20.0)
    angles = []
    for k in range(12):
        clip_id = f"clip{k}"
        video = ClipTransform(8, SIZE, train=True, augment=spec, seed=7)(_clip_table([EDGE] * 8, clip_id))["video"][0]
        angle = _drawn_angle(7, clip_id, 8, 8, spec)
        angles.append(angle)
        # textbook: the whole frame rotated about its centre (the crop is the whole frame, S = size)
        rotated = cv2.warpAffine(EDGE, cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle, 1.0), (SIZE, SIZE))
        for frame in video:
            assert np.abs(frame.astype(int) - rotated.astype(int)).mean() < 1.0, (clip_id, angle)
            tilt, centre_row = _edge_tilt_deg(frame)
            assert tilt == pytest.approx(angle, abs=1.0), clip_id
            assert centre_row == pytest.approx(SIZE / 2 - 0.5, abs=1.0)
        assert abs(angle) <= 20.0
    assert min(angles) < -5 and max(angles) > 5  # both directions are drawn


def test_no_rotation_keeps_the_edge_level_and_small_angles_stay_small():
    level = AugmentSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    frame = ClipTransform(8, SIZE, train=True, augment=level)(_clip_table([EDGE] * 8))["video"][0, 0]
    assert _edge_tilt_deg(frame)[0] == pytest.approx(0.0, abs=0.2)
    small = AugmentSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, rotation_deg=4.0)  # the paper's FERV39k
    for k in range(8):
        frame = ClipTransform(8, SIZE, train=True, augment=small, seed=k)(_clip_table([EDGE] * 8))["video"][0, 3]
        assert abs(_edge_tilt_deg(frame)[0]) <= 4.0 + 0.5


def test_rotation_with_a_crop_matches_rotate_then_crop_then_resize():
    spec = AugmentSpec(scale=(0.3, 0.6), hflip=False, rotation_deg=15.0)
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), (0, 0), 2)
    video = ClipTransform(4, 32, train=True, augment=spec, seed=2)(_clip_table([img] * 4))["video"][0]
    draws = clip_rng(2, 0, "clip0")
    sample_indices(4, 4, True, draws)
    x0, y0, cw, ch = _random_crop(draws, SIZE, SIZE, spec)
    angle = draws.uniform(-15.0, 15.0)
    decoded = cv2.imdecode(np.frombuffer(_jpeg(img), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    rotated = cv2.warpAffine(decoded, cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle, 1.0), (SIZE, SIZE))
    expected = cv2.resize(np.ascontiguousarray(rotated[y0 : y0 + ch, x0 : x0 + cw]), (32, 32))
    # one fused warp vs two interpolations: close, not bit-equal
    assert np.abs(video[0].astype(int) - expected.astype(int)).mean() < 4.0
    assert np.array_equal(video[0], video[3])  # one draw for the whole clip
