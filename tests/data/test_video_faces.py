"""Readers and the face cropper on real encoded media (no Ray)."""

from __future__ import annotations

import weakref

import cv2
import numpy as np
import pytest

from pipeline.data.faces import ClipCropper, HaarDetector, build_detector, square_crop, uniform_indices
from pipeline.data.video import ClipLimits, ClipOverCap, UnreadableClip, list_frame_files, natural_key, open_frames
from pipeline.errors import UserError


def decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def test_natural_sort(tmp_path):
    for name in ("10.jpg", "2.jpg", "1.png", "frame_3.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_frame_files(tmp_path)] == ["1.png", "2.jpg", "10.jpg", "frame_3.JPG"]
    assert sorted(["f10", "f9", "f100"], key=natural_key) == ["f9", "f10", "f100"]


def test_frame_folder_order_preserved(tmp_path):
    # Frame i has uniform brightness 20*i; names 1..12 unpadded, so a string sort would scramble them.
    for i in range(1, 13):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((40, 60, 3), 20 * i, np.uint8))
    res = ClipCropper(None, crop_size=32).run(open_frames(tmp_path).frames)
    means = [decode(f).mean() for f in res.frames]
    assert np.all(np.diff(means) > 10), means
    assert res.boxes[0] == [0.0, 0.0, 60.0, 40.0] and res.num_decoded == 12


def test_video_frame_count_fps_vfr_rotation_gray(media):
    s = open_frames(media["face_mp4"])
    frames = list(s.frames)
    assert len(frames) == 24 and frames[0].shape == (240, 320, 3) and s.fps == pytest.approx(25)
    assert len(list(open_frames(media["vfr_mp4"]).frames)) == 10
    rotated = list(open_frames(media["rotated_mp4"]).frames)
    assert rotated[0].shape == (320, 240, 3)  # displayed upright (portrait)
    assert len(HaarDetector().detect(rotated[0])) == 1  # an upside/sideways face would not be found
    gray = list(open_frames(media["gray_odd_mkv"]).frames)
    assert len(gray) == 8 and gray[0].shape == (243, 321, 3)
    png = list(open_frames(media["frames_gray_png_odd"]).frames)
    assert png[0].shape == (171, 223, 3)


@pytest.mark.parametrize(
    "key, reason",
    [
        ("zero_mp4", "empty file"),
        ("text_mp4", "not a readable video"),
        ("empty_dir", "no .jpg"),
        ("corrupt_mp4", "decode error|not a readable"),
    ],
)
def test_unreadable_sources(media, key, reason):
    with pytest.raises(UnreadableClip, match=reason):
        list(open_frames(media[key]).frames)


def test_crops_contain_the_face_and_follow_it(media, haar):
    res = ClipCropper(HaarDetector(), detect_every=5).run(open_frames(media["face_mp4"]).frames)
    assert len(res.frames) == 24 and not res.face_fallback and res.detector_calls == 6  # 0,5,..,20 + last
    for jpeg in res.frames[::6]:
        crop = decode(jpeg)
        assert crop.shape == (224, 224, 3)
        faces = haar.detectMultiScale(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), 1.1, 5)
        assert len(faces) == 1
        x, y, w, h = faces[0]
        assert abs(x + w / 2 - 112) < 30 and abs(y + h / 2 - 112) < 30  # centred
    centres = [(b[0] + b[2]) / 2 for b in res.boxes]
    # The face drifts right by 3 px a frame; interpolated boxes follow it in order.
    assert centres[-1] - centres[0] > 40 and np.all(np.diff(centres) > -2)
    drawn = 160 - 3 * 23 // 2 + 3 * np.arange(24)  # where drawing.face_frames put the face centre
    assert np.max(np.abs(np.array(centres) - drawn)) < 12


def test_no_face_one_frame_and_max_frames(media):
    cropper = ClipCropper(HaarDetector(), detect_every=3, crop_size=64)
    res = cropper.run(open_frames(media["noface_mp4"]).frames)
    assert res.face_fallback and len(res.frames) == 10
    assert res.boxes[0] == [40.0, 0.0, 280.0, 240.0]  # centre square of a 320x240 frame
    one = cropper.run(open_frames(media["one_frame_mp4"]).frames)
    assert len(one.frames) == 1 and not one.face_fallback
    capped = ClipCropper(HaarDetector(), max_frames=5, crop_size=64).run(open_frames(media["face_mp4"]).frames)
    assert len(capped.frames) == 5 and capped.num_decoded == 24
    assert uniform_indices(24, 5) == [0, 6, 12, 17, 23] and uniform_indices(3, 5) == [0, 1, 2]


def test_square_crop_at_border_pads():
    img = np.full((100, 80, 3), 200, np.uint8)
    crop = square_crop(img, np.array([0, 0, 80, 100], np.float32), 0.25, 50)
    assert crop.shape == (50, 50, 3)
    assert crop[25, 0].max() == 0 and crop[25, 25].min() == 200  # black padding left/right


def test_build_detector_errors(tmp_path):
    assert build_detector("none") is None
    with pytest.raises(UserError, match="yunet_model"):
        build_detector("yunet")
    with pytest.raises(UserError, match="not found"):
        build_detector("yunet", str(tmp_path / "missing.onnx"))
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="cannot load"):
        build_detector("yunet", str(tmp_path / "bad.onnx"))


def test_caps_raise_errors_naming_the_clip_and_the_key(media):
    face = media["face_mp4"]  # 320x240, 24 frames at 25 fps: the last at 0.92 s
    # The frame size is known from the probe: refused before any frame is decoded.
    with pytest.raises(ClipOverCap, match=r"max_pixels = 76799\b") as exc:
        open_frames(face, limits=ClipLimits(max_pixels=320 * 240 - 1))
    assert str(face) in str(exc.value) and "320x240" in str(exc.value) and exc.value.key == "max_pixels"
    with pytest.raises(ClipOverCap, match="more than 23 frames, over preprocess.max_clip_frames = 23") as exc:
        list(open_frames(face, limits=ClipLimits(max_frames=23)).frames)
    assert str(face) in str(exc.value)
    with pytest.raises(ClipOverCap, match=r"a frame at 0\.52 s\), over preprocess.max_clip_seconds = 0.5") as exc:
        list(open_frames(face, limits=ClipLimits(max_seconds=0.5)).frames)
    assert str(face) in str(exc.value)
    # At the caps exactly: accepted.
    assert len(list(open_frames(face, limits=ClipLimits(320 * 240, 24, 0.92)).frames)) == 24
    # Frame folders: the number of files before any image is read, the size of each image.
    with pytest.raises(ClipOverCap, match="max_clip_frames = 11") as exc:
        open_frames(media["frames_jpg"], limits=ClipLimits(max_frames=11))
    assert str(media["frames_jpg"]) in str(exc.value)
    with pytest.raises(ClipOverCap, match=r"223x171 frames .* preprocess\.max_pixels = 1000 \("):
        list(open_frames(media["frames_gray_png_odd"], limits=ClipLimits(max_pixels=1000)).frames)
    # Through the cropper, as preprocess and predict read a clip.
    cropper = ClipCropper(HaarDetector(), limits=ClipLimits(max_frames=10))
    with pytest.raises(ClipOverCap, match="max_clip_frames"):
        cropper.run_source(face)
    assert issubclass(ClipOverCap, UnreadableClip)  # an error row like any unreadable clip


def _tracked(frames, alive: list):
    """Yields copies of ``frames``; before each, records how many earlier ones are still alive."""
    refs = []
    for f in frames:
        alive.append(sum(r() is not None for r in refs))
        img = f.copy()
        refs.append(weakref.ref(img))
        yield img
        del img


def test_waiting_frames_are_bounded_and_crops_unchanged(media):
    """A clip with no face held every frame (the whole video) until its end; now at most
    ``buffer_bytes`` of frames wait, and the crops are the same bytes as with no bound."""
    frames = list(open_frames(media["noface_mp4"]).frames) * 3  # 30 frames of 320x240, no face
    nbytes = frames[0].nbytes
    unbounded = ClipCropper(HaarDetector(), detect_every=4, crop_size=64, buffer_bytes=1 << 40)
    alive: list[int] = []
    ref = unbounded.run(_tracked(frames, alive))
    assert max(alive) == len(frames) - 1  # everything waits: the old behaviour's memory
    bounded = ClipCropper(HaarDetector(), detect_every=4, crop_size=64, buffer_bytes=3 * nbytes)
    alive = []
    got = bounded.run(_tracked(frames, alive))
    assert max(alive) <= 3 and got.redecoded == 0  # no face came: one decode was enough
    assert got.face_fallback and got.frames == ref.frames and got.boxes == ref.boxes
    # With max_frames, only the crops kept are stored — as JPEG, made as the frames come.
    few = ClipCropper(HaarDetector(), detect_every=4, crop_size=64, max_frames=5, buffer_bytes=3 * nbytes)
    assert few.run(iter(frames)).frames == [ref.frames[i] for i in uniform_indices(30, 5)]


def test_a_face_after_a_long_wait_takes_a_second_decode(media):
    path = media["late_face_mp4"]  # 12 frames without a face, then 14 with one
    kw = dict(detect_every=4, crop_size=64)
    ref = ClipCropper(HaarDetector(), **kw).run_source(path)
    assert not ref.face_fallback and ref.redecoded == 0 and ref.fps == pytest.approx(25)
    small = ClipCropper(HaarDetector(), buffer_bytes=2 * 320 * 240 * 3, **kw)
    got = small.run_source(path)  # the waiting frames' boxes come from the first face: decoded again
    assert 0 < got.redecoded <= 26 and got.num_decoded == 26
    assert got.frames == ref.frames and got.boxes == ref.boxes
    # A one-shot iterator cannot be read twice: said plainly rather than cropped wrong.
    with pytest.raises(ValueError, match="reopen"):
        small.run(open_frames(path).frames)
    assert small.run(list(open_frames(path).frames)).frames == ref.frames  # a list can


class _Counting(ClipCropper):
    """Counts the crops it makes (each one a resize and a JPEG encode)."""

    made = 0

    def _crop(self, frame, box, margin):
        self.made += 1
        return super()._crop(frame, box, margin)


def _segment_middles(T: int):
    return lambda k: [min(int(k / T * (i + 0.5)), k - 1) if k >= T else min(i, k - 1) for i in range(T)]


@pytest.mark.parametrize(
    "source, detector, max_frames, T",
    [
        ("face_mp4", "haar", None, 8),
        ("frames_jpg", "haar", 10, 4),
        ("face2_mp4", "none", None, 6),
        ("vfr_mp4", "haar", None, 16),
    ],
)
def test_pick_crops_only_the_picked_frames_and_they_equal_a_full_run(media, source, detector, max_frames, T):
    """predict and serve use T of a clip's frames: with ``pick`` only those are cropped and
    encoded (planned from the count the source states), the same bytes and boxes as the full
    run's frames at those places; T over the clip's length repeats the last one."""
    kw = dict(detect_every=5, crop_size=64, max_frames=max_frames)
    full = ClipCropper(build_detector(detector), **kw).run_source(media[source])
    pick = _segment_middles(T)
    idx = pick(len(full.frames))
    cropper = _Counting(build_detector(detector), **kw)
    got = cropper.run_source(media[source], pick=pick)
    assert got.frames == [full.frames[i] for i in idx] and got.boxes == [full.boxes[i] for i in idx]
    assert got.redecoded == 0 and got.num_decoded == full.num_decoded
    assert got.detector_calls == full.detector_calls and got.face_fallback == full.face_fallback
    assert cropper.made == len(set(idx))  # not one crop per frame
    assert len(set(idx)) < full.num_decoded or T >= len(full.frames)


@pytest.mark.parametrize("stated", [10, 40, None])
def test_pick_with_a_wrong_or_no_stated_count_still_gives_the_picked_crops(media, stated):
    """The count a container states is a plan, not a promise: picked frames it did not plan
    for come from a second decode (or every frame is cropped when no count is stated), and the
    crops are those of a full run all the same."""
    path = media["face_mp4"]  # 24 frames
    kw = dict(detect_every=5, crop_size=64)
    full = ClipCropper(HaarDetector(), **kw).run_source(path)
    pick = _segment_middles(6)
    reopen = lambda: open_frames(path).frames  # noqa: E731
    cropper = _Counting(HaarDetector(), **kw)
    got = cropper.run(open_frames(path).frames, reopen=reopen, pick=pick, expected=stated)
    assert got.frames == [full.frames[i] for i in pick(24)] and got.boxes == [full.boxes[i] for i in pick(24)]
    if stated is None:  # no plan: every frame cropped as it comes, one decode
        assert got.redecoded == 0 and cropper.made == 24
    else:
        assert got.redecoded > 0 and cropper.made < 24
    # A one-shot iterator with a wrong count cannot be read twice: said, not cropped wrong.
    with pytest.raises(ValueError, match="reopen"):
        ClipCropper(HaarDetector(), **kw).run(open_frames(path).frames, pick=pick, expected=40)


def test_pick_when_the_frame_buffer_overflows(media):
    """Frames dropped from a full buffer are cropped early only when picked; a face found
    later still gives the full run's crops (second decode)."""
    path = media["late_face_mp4"]  # 12 frames without a face, then 14 with one
    kw = dict(detect_every=4, crop_size=64)
    ref = ClipCropper(HaarDetector(), **kw).run_source(path)
    pick = _segment_middles(5)
    small = _Counting(HaarDetector(), buffer_bytes=2 * 320 * 240 * 3, **kw)
    got = small.run_source(path, pick=pick)
    idx = pick(26)
    assert got.frames == [ref.frames[i] for i in idx] and got.boxes == [ref.boxes[i] for i in idx]
    assert small.made < 26
