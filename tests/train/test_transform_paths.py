"""The clip transform's other paths, each against a plain reference computed on copies: evaluation
on non-square frames, a clip whose frames differ in size, rotation with flip and brightness,
preselected rows, kept clip ids, one-frame clips, empty rows and SelectFrames' output."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipeline.train.sampling import sample_indices
from pipeline.train.transforms import AugmentSpec, ClipTransform, SelectFrames, _random_crop, clip_rng


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def _rgb(buf: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.5)


def _table(clips: list[list[bytes]], ids: list[str] | None = None) -> pa.Table:
    ids = ids or [f"clip{k}" for k in range(len(clips))]
    return pa.table(
        {
            "clip_id": pa.array(ids),
            "label": pa.array(list(range(len(clips))), pa.int32()),
            "num_frames": pa.array([len(c) for c in clips], pa.int32()),
            "frames": pa.array(clips, pa.list_(pa.binary())),
        }
    )


@pytest.mark.parametrize("h, w, S", [(48, 80, 32), (80, 48, 32), (20, 36, 32)], ids=["wide", "tall", "upscale"])
def test_evaluation_takes_the_centre_square(h, w, S):
    frames = [_jpeg(_noise(h, w, t)) for t in range(4)]
    video = ClipTransform(4, S, train=False)(_table([frames]))["video"][0]
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    interp = cv2.INTER_AREA if side > S else cv2.INTER_LINEAR  # shrink with area averaging
    for t, buf in enumerate(frames):
        square = np.ascontiguousarray(_rgb(buf)[y0 : y0 + side, x0 : x0 + side])
        assert np.array_equal(video[t], cv2.resize(square, (S, S), interpolation=interp)), t


def test_frames_of_another_size_are_brought_to_the_first_frames_size():
    small, large = _noise(40, 40, 0), _noise(56, 56, 1)  # both under 2 S: decoded at full size
    frames = [_jpeg(small), _jpeg(large)]
    video = ClipTransform(2, 32, train=False)(_table([frames]))["video"][0]
    first = cv2.resize(_rgb(frames[0]), (32, 32), interpolation=cv2.INTER_AREA)
    second = cv2.resize(
        cv2.resize(_rgb(frames[1]), (40, 40), interpolation=cv2.INTER_AREA), (32, 32), interpolation=cv2.INTER_AREA
    )
    assert np.array_equal(video[0], first) and np.array_equal(video[1], second)


def test_rotation_with_flip_and_brightness_matches_the_textbook_order():
    # rotate about the centre, crop, scale to S, brightness, mirror: one warp in the transform
    spec = AugmentSpec(scale=(0.5, 0.8), hflip=True, brightness=0.4, rotation_deg=10.0)
    frames = [_jpeg(_noise(48, 48, t)) for t in range(4)]  # under 2 S: decoded at full size
    checked = set()
    for seed in range(8):
        video = ClipTransform(4, 32, train=True, augment=spec, seed=seed)(_table([frames]))["video"][0]
        rng = clip_rng(seed, 0, "clip0")
        idx = sample_indices(4, 4, True, rng)
        x0, y0, cw, ch = _random_crop(rng, 48, 48, spec)
        angle = rng.uniform(-10.0, 10.0)
        flip = rng.random() < 0.5
        factor = rng.uniform(0.6, 1.4)
        checked.add(flip)
        rot = np.vstack([cv2.getRotationMatrix2D((24.0, 24.0), angle, 1.0), [0, 0, 1]])
        scale = np.array([[32 / cw, 0, -x0 * 32 / cw], [0, 32 / ch, -y0 * 32 / ch], [0, 0, 1]])
        for k, j in enumerate(idx):
            out = cv2.warpAffine(_rgb(frames[j]), (scale @ rot)[:2], (32, 32), flags=cv2.INTER_LINEAR)
            out = cv2.convertScaleAbs(out, alpha=factor)
            if flip:
                out = np.ascontiguousarray(out[:, ::-1])
            # the transform folds the mirror into the warp: the same pixels up to rounding
            assert np.abs(video[k].astype(int) - out.astype(int)).mean() < 1.5, (seed, k)
    assert checked == {True, False}


def test_preselected_rows_ids_and_labels():
    frames = [_jpeg(np.full((32, 32, 3), 20 * t, np.uint8)) for t in range(5)]
    table = _table([frames, frames[:1]], ids=["a", "b"])
    out = ClipTransform(8, 32, train=False, preselected=True, keep_ids=True)(table)
    # a preselected row that is not T frames long is sampled like an evaluation clip: 0 1 2 3 4 4 4 4
    levels = [int(np.median(f)) for f in out["video"][0]]
    assert levels == [0, 20, 40, 60, 80, 80, 80, 80]
    assert [int(np.median(f)) for f in out["video"][1]] == [0] * 8  # a one-frame clip repeats it
    assert out["clip_id"].dtype == object and out["clip_id"].tolist() == ["a", "b"]
    assert out["label"].dtype == np.int64 and out["label"].tolist() == [0, 1]
    assert "clip_id" not in ClipTransform(8, 32, train=False)(table)


def test_a_row_without_frames_is_named():
    table = _table([[_jpeg(np.zeros((8, 8, 3), np.uint8))], []], ids=["ok", "empty"])
    with pytest.raises(ValueError, match=r"^clip 'empty' has no frames in its shard row$"):
        ClipTransform(4, 8, train=False)(table)
    with pytest.raises(ValueError, match=r"^clips with no frames in their shard rows: \['empty'\]$"):
        SelectFrames(4)(table)


def test_a_frame_that_is_not_a_jpeg_is_named():
    table = _table([[_jpeg(np.zeros((8, 8, 3), np.uint8)), b"not a jpeg"]], ids=["bad"])
    with pytest.raises(ValueError, match=r"^clip 'bad': frame 1 of its sample is not a decodable JPEG$"):
        ClipTransform(2, 8, train=False)(table)


def test_select_frames_keeps_the_columns_and_t_frames_per_row():
    frames = [_jpeg(np.full((8, 8, 3), t, np.uint8)) for t in range(10)]
    out = SelectFrames(4)(_table([frames, frames[:1]], ids=["long", "one"]))
    assert out.column_names == ["clip_id", "label", "num_frames", "frames"]
    assert out.column("num_frames").to_pylist() == [10, 1]  # the stored count, not T
    picked = out.column("frames").to_pylist()
    assert picked[0] == [frames[i] for i in (1, 3, 6, 8)]  # middles of [0,2.5) [2.5,5) [5,7.5) [7.5,10)
    assert picked[1] == [frames[0]] * 4
    assert SelectFrames(4)(_table([frames])).column("frames").type == pa.list_(pa.binary())
