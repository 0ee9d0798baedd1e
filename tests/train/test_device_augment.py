"""The augmentation on the training device (``train.augment.on_device``): the data tasks only
decode (into a fixed canvas) and ship each clip's draws; ``augment_batch`` applies them in torch.

- Against the CPU path (``ClipTransform`` in training mode, OpenCV, kept as the reference): the
  same clips, seed and epoch give the same pixels up to rounding. The bound for a crop: the CPU
  path rounds to uint8 twice (after brightness, after the resize: <= 0.5 + 0.5) and OpenCV's
  uint8 bilinear resize uses 11-bit fixed-point weights with intermediate shifts (<= 255 * 2^-11
  ~ 0.13, with the shifts < 0.3), so |device - cpu| <= 1.3 grey levels everywhere. For a rotation,
  ``cv2.warpAffine`` also rounds each source position to 1/32 px (<= 1/64 px per axis), which
  moves a value by at most f * (|dI/dx| + |dI/dy|) / 64 for brightness f: pixels whose footprint
  is inside the frame are bounded with the frame's largest neighbour differences G; those at the
  frame's edge, where the zeros outside make the step up to 255, with G + 255.
- Each effect against an expectation worked out by hand (hand-made draws, no OpenCV): the flip
  mirrors, brightness scales and saturates, the output is the drawn box, a rotation moves a dot
  where rotating about the centre by the drawn angle puts it.
- The decode-only rows: exact decodes in the canvas, the draws in the CPU path's order, errors.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.train.device_augment import augment_batch, source_maps
from pipeline.train.evaluation import frame_pairs
from pipeline.train.sampling import sample_indices
from pipeline.train.transforms import (
    PARAMS,
    AugmentSpec,
    ClipTransform,
    _random_crop,
    canvas_side,
    clip_rng,
    decode_rgb,
)
from tests.train.test_transform_paths import _jpeg, _noise, _table


def _clips(n: int, stored: int, frames: int = 6, sigma: float = 1.5) -> pa.Table:
    clips = [[_jpeg(_smooth(stored, 10 * k + t, sigma)) for t in range(frames)] for k in range(n)]
    return _table(clips)


def _smooth(size: int, seed: int, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), sigma)


def _device(video: np.ndarray, params: np.ndarray) -> np.ndarray:
    """augment_batch's output as (B, T, S, S, 3) float grey levels, for comparing with uint8."""
    out = augment_batch(torch.from_numpy(video), torch.from_numpy(params))
    return out.permute(0, 1, 3, 4, 2).numpy().astype(np.float64) * 255.0


def _row(**kw) -> np.ndarray:
    values = {"x0": 0, "y0": 0, "angle": 0.0, "flip": 0, "brightness": 1.0, **kw}
    return np.array([[values[name] for name in PARAMS]], np.float32)


# ---- against the CPU path --------------------------------------------------------------------


@pytest.mark.parametrize(
    "stored, S, spec",
    [
        (48, 32, AugmentSpec(brightness=0.5)),  # DFEW/MAFW: crop, flip, brightness (shrinking)
        (24, 32, AugmentSpec(scale=(0.05, 0.3), brightness=0.5)),  # small crops: enlarged
        (96, 32, AugmentSpec(brightness=0.5)),  # decoded at 1/2 in the DCT: canvas 48
    ],
    ids=["crop", "enlarge", "dct-half"],
)
def test_crop_path_equals_the_cpu_path_up_to_rounding(stored, S, spec):
    table = _clips(12, stored)
    for epoch in (0, 1):
        cpu = ClipTransform(4, S, train=True, augment=spec, seed=5)
        dev = ClipTransform(4, S, train=True, augment=spec, seed=5, decode_only=True, stored_size=stored)
        cpu.epoch = dev.epoch = epoch
        ref = cpu(table)["video"].astype(np.float64)
        out = dev(table)
        assert out["video"].shape[2:4] == (canvas_side(stored, S),) * 2
        assert set(out["augment"][:, PARAMS.index("flip")]) == {0.0, 1.0}  # both cases are in the batch
        diff = np.abs(_device(out["video"], out["augment"]) - ref)
        assert diff.max() <= 1.3, (epoch, diff.max())
        assert diff.mean() < 0.4


def test_rotation_path_equals_the_cpu_path_up_to_rounding_and_position_steps():
    # FERV39k's rotation, here with flip and brightness on top; frames of 48 px read at 32.
    spec = AugmentSpec(scale=(0.3, 1.0), brightness=0.4, rotation_deg=10.0)
    table = _clips(12, 48, sigma=1.0)
    ref = ClipTransform(4, 32, train=True, augment=spec, seed=2)(table)["video"].astype(np.float64)
    out = ClipTransform(4, 32, train=True, augment=spec, seed=2, decode_only=True, stored_size=48)(table)
    got = _device(out["video"], out["augment"])
    canvas = out["video"].astype(np.int32)
    G = np.abs(np.diff(canvas, axis=2)).max() + np.abs(np.diff(canvas, axis=3)).max()
    f = out["augment"][:, PARAMS.index("brightness")].astype(np.float64)[:, None, None, None, None]
    # Pixels whose bilinear footprint lies inside the frame: a white frame stays exactly white there.
    white = out["augment"].copy()
    white[:, PARAMS.index("brightness")] = 1.0
    inside = _device(np.full_like(out["video"], 255), white) == 255.0
    assert 0.9 < inside.mean() < 1.0  # the corners brought in by rotating are outside
    diff = np.abs(got - ref)
    bound_in = 1.3 + 0.5 * (f - 1).clip(0) + f * G / 64
    bound_edge = 1.3 + 0.5 * (f - 1).clip(0) + f * (G + 255) / 64
    assert (diff <= np.where(inside, bound_in, bound_edge)).all(), diff.max()
    assert diff.mean() < 0.5


def test_evaluation_ignores_decode_only_and_stays_exact():
    table = _clips(3, 48)
    plain = ClipTransform(4, 32, train=False)(table)
    asked = ClipTransform(4, 32, train=False, decode_only=True, stored_size=48)(table)
    assert set(asked) == {"video", "label"} and np.array_equal(asked["video"], plain["video"])


# ---- each effect, from hand-made draws --------------------------------------------------------

RAMP = np.broadcast_to((np.arange(32, dtype=np.uint8) * 8)[None, :, None, None], (1, 32, 32, 3))  # 8 x


def _ramp_video(T: int = 2) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(RAMP.transpose(0, 2, 1, 3), (1, T, 32, 32, 3)))


def test_flip_mirrors_the_output():
    video = np.ascontiguousarray(np.random.default_rng(0).integers(0, 256, (1, 2, 32, 32, 3), dtype=np.uint8))
    plain = _device(video, _row(cw=32, ch=32, h=32, w=32, size=32))
    mirrored = _device(video, _row(cw=32, ch=32, h=32, w=32, size=32, flip=1))
    # an S x S box at S: every output pixel is a source pixel (u = x exactly)
    assert np.allclose(plain[0], video[0], atol=1e-3)
    assert np.allclose(mirrored[0], video[0][:, :, ::-1], atol=1e-3)
    ramp = _device(_ramp_video(), _row(cw=32, ch=32, h=32, w=32, size=32, flip=1))[0, 0, 5, :, 0]
    assert ramp[0] == pytest.approx(248, abs=1e-3) and ramp[-1] == pytest.approx(0, abs=1e-3)


def test_brightness_scales_and_saturates():
    video = np.zeros((1, 2, 16, 16, 3), np.uint8)
    video[..., :8, :] = 100
    video[..., 8:, :] = 220
    out = _device(video, _row(cw=16, ch=16, h=16, w=16, size=16, brightness=1.3))
    assert np.allclose(out[0, :, :, :8], 130.0, atol=1e-3)  # 100 x 1.3
    assert np.allclose(out[0, :, :, 8:], 255.0)  # 220 x 1.3 = 286 saturates
    dim = _device(video, _row(cw=16, ch=16, h=16, w=16, size=16, brightness=0.5))
    assert np.allclose(dim[0, :, :, :8], 50.0, atol=1e-3) and np.allclose(dim[0, :, :, 8:], 110.0, atol=1e-3)
    # a factor of exactly 2 scales too, and black stays black (nothing is lifted off 0)
    video[..., :4, :] = 0
    double = _device(video, _row(cw=16, ch=16, h=16, w=16, size=16, brightness=2.0))
    assert np.allclose(double[0, :, :, :4], 0.0) and np.allclose(double[0, :, :, 4:8], 200.0, atol=1e-3)
    # saturation happens before the resize (as in the CPU path): at 2x enlargement the column
    # between 100 and 220 interpolates the saturated 255, not 1.3 x the interpolated value
    up = _device(video, _row(x0=6, cw=4, ch=16, h=16, w=16, size=8, brightness=1.3))[0, 0, 0, :, 0]
    # u = 6 + (x + 0.5) / 2 - 0.5: 6, 6.25, 6.75, 7.25, 7.75, 8.25, 8.75, 9 (clamped to the box)
    expected = [130, 130, 130, 130 + 0.25 * 125, 130 + 0.75 * 125, 255, 255, 255]
    assert np.allclose(up, expected, atol=1e-3)


def test_the_output_is_the_drawn_box():
    video = np.ascontiguousarray(np.random.default_rng(1).integers(0, 256, (2, 3, 40, 40, 3), dtype=np.uint8))
    params = np.concatenate(
        [_row(x0=5, y0=9, cw=16, ch=16, h=40, w=40, size=16), _row(x0=24, y0=0, cw=16, ch=16, h=40, w=40, size=16)]
    )
    out = _device(video, params)
    assert np.allclose(out[0], video[0, :, 9:25, 5:21], atol=1e-3)
    assert np.allclose(out[1], video[1, :, 0:16, 24:40], atol=1e-3)
    # a box twice the output: pixel x reads u = x0 + 2 x + 0.5 between two columns of the ramp
    wide = _device(_ramp_video(), _row(x0=4, y0=2, cw=16, ch=16, h=32, w=32, size=8))[0, 0, 3, :, 0]
    assert np.allclose(wide, [8 * (4 + 2 * x + 0.5) for x in range(8)], atol=1e-3)
    # and a box narrower than tall is stretched along x only
    tall = _device(_ramp_video(), _row(x0=10, y0=0, cw=8, ch=32, h=32, w=32, size=16))[0, 0, 7, :, 0]
    xs = [min(max(10 + (x + 0.5) / 2 - 0.5, 10), 17) for x in range(16)]  # clamped to the box
    assert np.allclose(tall, [8 * u for u in xs], atol=1e-3)


@pytest.mark.parametrize("angle", [-20.0, 7.5, 30.0])
def test_rotation_moves_a_dot_about_the_centre_by_the_angle(angle):
    # A 3 x 3 white dot at (44, 20) in a 64 x 64 frame; counter-clockwise on screen (y down):
    # x' = cx + (x - cx) cos a + (y - cy) sin a, y' = cy - (x - cx) sin a + (y - cy) cos a.
    video = np.zeros((1, 1, 64, 64, 3), np.uint8)
    video[0, 0, 19:22, 43:46] = 255
    out = _device(video, _row(cw=64, ch=64, h=64, w=64, size=64, angle=angle))[0, 0, ..., 0]
    ys, xs = np.mgrid[0:64, 0:64]
    cx_out, cy_out = (out * xs).sum() / out.sum(), (out * ys).sum() / out.sum()
    a = math.radians(angle)
    # pixel centres: the rotation is about (w/2, h/2) = (32, 32) in OpenCV's pixel coordinates
    x, y, c = 44.0, 20.0, 32.0
    assert cx_out == pytest.approx(c + (x - c) * math.cos(a) + (y - c) * math.sin(a), abs=0.05)
    assert cy_out == pytest.approx(c - (x - c) * math.sin(a) + (y - c) * math.cos(a), abs=0.05)
    assert out.sum() == pytest.approx(9 * 255, rel=0.01)  # moved, not lost


def test_rotation_with_a_crop_rotates_first_then_crops_and_scales():
    # A quarter turn (90 degrees, counter-clockwise on screen) about c = (16, 16) sends source
    # (u, v) to (v, 32 - u); then the box (0, 0, 16, 16) of the turned frame is scaled to 32 px:
    # output (x, y) is turned-frame point (x / 2, y / 2), which came from source (32 - y / 2, x / 2).
    row = _row(x0=0, y0=0, cw=16, ch=16, h=32, w=32, size=32, angle=90.0)
    m, lo, hi = source_maps(torch.from_numpy(row))
    expected = torch.tensor([[0.0, -0.5, 32.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(m[0], expected, atol=1e-6)
    assert torch.isinf(lo).all() and torch.isinf(hi).all()  # a warp is not clamped to its box
    out = _device(_ramp_video(1), row)[0, 0, ..., 0]  # the source is a row ramp, 8 u
    assert np.allclose(out[2:], np.array([8 * (32 - y / 2) for y in range(2, 32)])[:, None], atol=1e-3)
    assert np.allclose(out[0], 0.0)  # u = 32 is past the frame's last column: zeros, as BORDER_CONSTANT


def test_a_batch_must_share_one_output_size():
    video = np.zeros((2, 1, 8, 8, 3), np.uint8)
    params = np.concatenate([_row(cw=8, ch=8, h=8, w=8, size=8), _row(cw=8, ch=8, h=8, w=8, size=4)])
    with pytest.raises(
        ValueError, match=r"^augment_batch: clips of one batch must share the output size, got \[8\.0, 4\.0\]$"
    ):
        augment_batch(torch.from_numpy(video), torch.from_numpy(params))
    empty = augment_batch(torch.zeros((0, 3, 8, 8, 3), dtype=torch.uint8), torch.zeros((0, len(PARAMS))))
    assert empty.shape == (0, 3, 3, 0, 0) and empty.dtype == torch.float32  # no clip, no size: nothing


# ---- the decode-only rows ----------------------------------------------------------------------


def test_decode_only_rows_hold_the_exact_decodes_and_the_cpu_paths_draws():
    frames = [_jpeg(_noise(40, 40, t)) for t in range(10)]
    spec = AugmentSpec(scale=(0.3, 0.9), brightness=0.5, rotation_deg=6.0)
    out = ClipTransform(4, 32, train=True, augment=spec, seed=9, decode_only=True, stored_size=40)(
        _table([frames], ids=["someclip"])
    )
    assert out["video"].shape == (1, 4, 40, 40, 3) and out["augment"].dtype == np.float32
    rng = clip_rng(9, 0, "someclip")  # the order: frames, crop, angle, flip, brightness
    idx = sample_indices(10, 4, True, rng)
    x0, y0, cw, ch = _random_crop(rng, 40, 40, spec)
    angle = rng.uniform(-6.0, 6.0)
    flip = rng.random() < 0.5
    factor = rng.uniform(0.5, 1.5)
    assert out["augment"][0].tolist() == pytest.approx(
        [x0, y0, cw, ch, angle, float(flip), factor, 40, 40, 32], rel=1e-6
    )
    for k, j in enumerate(idx):
        assert np.array_equal(out["video"][0, k], decode_rgb(frames[j], 32))


def test_a_clip_gets_the_same_draws_in_any_batch():
    table = _clips(5, 40, frames=4)
    whole = ClipTransform(4, 32, train=True, augment=AugmentSpec(brightness=0.5), decode_only=True, stored_size=40)
    alone = whole(table.slice(3, 1))
    assert np.array_equal(whole(table)["augment"][3], alone["augment"][0])
    whole.epoch = 1
    assert not np.array_equal(whole(table)["augment"][3], alone["augment"][0])  # a new epoch draws anew


def test_smaller_and_larger_frames_fit_the_canvas():
    # canvas 40: a 24 px clip sits at the top left with zeros around it; a 56 px one (above the
    # shards' crop size, and under 2 S, so decoded whole) is shrunk to 40 first
    small = [_jpeg(_noise(24, 24, t)) for t in range(2)]
    large = [_jpeg(_noise(56, 56, t)) for t in range(2)]
    t = ClipTransform(2, 32, train=True, decode_only=True, stored_size=40)
    out = t(_table([small, large]))
    assert out["video"].shape == (2, 2, 40, 40, 3)
    assert np.array_equal(out["video"][0, 0, :24, :24], decode_rgb(small[0], 32))
    assert not out["video"][0, :, 24:].any() and not out["video"][0, :, :, 24:].any()
    shrunk = cv2.resize(decode_rgb(large[1], 32), (40, 40), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out["video"][1, 1], shrunk)
    h, w = PARAMS.index("h"), PARAMS.index("w")
    assert out["augment"][:, [h, w]].tolist() == [[24, 24], [40, 40]]
    # the small clip's crop was drawn within its own 24 x 24, so nothing of the zeros shows
    x0, y0, cw, ch = (out["augment"][0, PARAMS.index(k)] for k in ("x0", "y0", "cw", "ch"))
    assert x0 + cw <= 24 and y0 + ch <= 24
    assert _device(out["video"][:1], out["augment"][:1]).min() > 0


def test_a_bad_frame_is_named_in_decode_only_mode():
    table = _table([[_jpeg(np.zeros((8, 8, 3), np.uint8)), b"not a jpeg"]], ids=["bad"])
    with pytest.raises(ValueError, match=r"^clip 'bad': frame 1 of its sample is not a decodable JPEG$"):
        ClipTransform(2, 8, train=True, decode_only=True, stored_size=8)(table)


@pytest.mark.parametrize(
    "stored, S, side", [(224, 224, 224), (448, 224, 224), (40, 32, 40), (100, 32, 38), (300, 64, 75)]
)
def test_canvas_side_is_the_training_decode_size(stored, S, side):
    # libjpeg-turbo scales by 1/2, 3/8, 1/4 or 1/8, the smallest that keeps both sides >= S (never
    # less than 2x: 40 stays whole); 100 at 3/8 is ceil(37.5) = 38, 300 at 1/4 is 75
    assert canvas_side(stored, S) == side


# ---- where it runs -------------------------------------------------------------------------------


def test_frame_pairs_applies_the_draws_on_the_device():
    table = _clips(3, 40, frames=4)
    spec = AugmentSpec(brightness=0.5)
    rows = ClipTransform(4, 32, train=True, augment=spec, decode_only=True, stored_size=40)(table)
    ((video, labels),) = frame_pairs([{k: torch.from_numpy(v) for k, v in rows.items()}], torch.device("cpu"))
    assert video.dtype == torch.float32 and video.shape == (3, 4, 3, 32, 32)
    assert labels.tolist() == [0, 1, 2]
    cpu = ClipTransform(4, 32, train=True, augment=spec)(table)["video"]
    assert np.abs(video.permute(0, 1, 3, 4, 2).numpy() * 255 - cpu).max() <= 1.3


def test_on_device_setting_and_its_default():
    from pipeline.config import TrainConfig, load_config
    from pipeline.train.driver import augment_on_device
    from pipeline.typed import ConfigError

    assert augment_on_device(TrainConfig()) is False  # CPU: OpenCV in the data tasks is cheaper
    assert augment_on_device(TrainConfig(use_gpu=True)) is True
    cfg = load_config(None, ["train.augment.on_device=true"])
    assert cfg.train.augment.on_device is True and augment_on_device(cfg.train) is True
    assert augment_on_device(load_config(None, ["train.use_gpu=true", "train.augment.on_device=false"]).train) is False
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.augment.on_device=sometimes"])
    assert err.value.problems == ["train.augment.on_device: expected bool or null, got 'sometimes'"]


def test_frames_larger_than_the_canvas_keep_their_aspect_when_shrunk():
    # canvas 40 (stored 40 at S 32): tall 56 x 48 -> k = min(40/56, 40/48) -> 40 x 34; wide 48 x 56
    # -> 34 x 40; thin 200 x 4 -> k = 0.2 -> 40 x 1 and 4 x 200 -> 1 x 40 (a side never below 1)
    shapes = [(56, 48), (48, 56), (200, 4), (4, 200)]
    clips = [[_jpeg(_noise(h, w, t)) for t in range(2)] for h, w in shapes]
    out = ClipTransform(2, 32, train=True, decode_only=True, stored_size=40)(_table(clips))
    h, w = PARAMS.index("h"), PARAMS.index("w")
    assert out["augment"][:, [h, w]].tolist() == [[40, 34], [34, 40], [40, 1], [1, 40]]
    for k, (size, frames) in enumerate(zip([(40, 34), (34, 40), (40, 1), (1, 40)], clips)):
        shrunk = cv2.resize(decode_rgb(frames[1], 32), size[::-1], interpolation=cv2.INTER_AREA)
        assert np.array_equal(out["video"][k, 1, : size[0], : size[1]], shrunk), k
        assert not out["video"][k, 1, size[0] :].any() and not out["video"][k, 1, :, size[1] :].any()


def test_a_later_frame_of_another_size_is_brought_to_the_first_frames():
    # first frame 24 x 24, second 40 x 40 (the canvas' own size): resized to 24 x 24, as the CPU path does
    frames = [_jpeg(_noise(24, 24, 0)), _jpeg(_noise(40, 40, 1))]
    out = ClipTransform(2, 32, train=True, decode_only=True, stored_size=40)(_table([frames]))
    second = cv2.resize(decode_rgb(frames[1], 32), (24, 24), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out["video"][0, 1, :24, :24], second)
    assert not out["video"][0, 1, 24:].any() and not out["video"][0, 1, :, 24:].any()


def test_non_square_clips_equal_the_cpu_path():
    # 36 x 56 frames in a 56 canvas: the crop is drawn within the frame's own height and width
    clips = [[_jpeg(_noise(36, 56, 10 * k + t)) for t in range(4)] for k in range(6)]
    table = _table(clips)
    spec = AugmentSpec(scale=(0.3, 1.0), brightness=0.5)
    ref = ClipTransform(4, 32, train=True, augment=spec, seed=4)(table)["video"].astype(np.float64)
    out = ClipTransform(4, 32, train=True, augment=spec, seed=4, decode_only=True, stored_size=56)(table)
    assert np.abs(_device(out["video"], out["augment"]) - ref).max() <= 1.3
    x0, cw = PARAMS.index("x0"), PARAMS.index("cw")
    assert (out["augment"][:, x0] + out["augment"][:, cw]).max() > 36  # some crops reach past x = h
