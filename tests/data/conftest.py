"""Generated media for the preprocess tests: real PyAV-encoded videos and image folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.data.drawing import face_frames, write_frames, write_video


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """One of each kind of clip the preprocess stage must handle, keyed by a short name."""
    root = tmp_path_factory.mktemp("media")
    m: dict[str, Path] = {}
    m["face_mp4"] = write_video(root / "face.mp4", face_frames(24, 320, 240, size=120, drift=3))
    m["face2_mp4"] = write_video(root / "face2.mp4", face_frames(16, 320, 240, size=110, drift=-2, seed=1))
    # Variable frame rate: irregular timestamps (ms).
    pts = [0, 40, 80, 200, 240, 260, 280, 400, 440, 480]
    m["vfr_mp4"] = write_video(root / "vfr.mp4", face_frames(10, 320, 240), pts=pts)
    # Portrait phone video: stored landscape with a display rotation of 90 degrees.
    m["rotated_mp4"] = write_video(
        root / "rotated.mp4", [np.rot90(f, -1).copy() for f in face_frames(8, 240, 320, size=110)], rotation=90
    )
    # Grayscale, odd-sized, another container and codec.
    gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in face_frames(8, 321, 243, size=120)]
    m["gray_odd_mkv"] = write_video(
        root / "gray_odd.mkv", [cv2.cvtColor(g, cv2.COLOR_GRAY2BGR) for g in gray], codec="ffv1", pix_fmt="gray"
    )
    m["noface_mp4"] = write_video(root / "noface.mp4", face_frames(10, 320, 240, face=False))
    m["one_frame_mp4"] = write_video(root / "one.mp4", face_frames(1, 320, 240))
    m["frames_jpg"] = write_frames(root / "frames_jpg", face_frames(12, 320, 240, size=120, drift=3))
    m["frames_gray_png_odd"] = write_frames(
        root / "frames_png", face_frames(5, 223, 171, size=100), ext=".png", gray=True
    )
    m["one_frame_dir"] = write_frames(root / "one_frame_dir", face_frames(1, 320, 240))
    # Over the tiny per-clip caps of test_preprocess.py (pixels, frames, seconds), each over one only.
    m["big_mp4"] = write_video(root / "big.mp4", face_frames(2, 400, 300, size=150))
    m["many_frames_mp4"] = write_video(root / "many_frames.mp4", face_frames(40, 160, 120, size=80), fps=100)
    m["long_mp4"] = write_video(root / "long.mp4", face_frames(8, 160, 120, size=80), fps=2)
    # No face for 12 frames, then a face: frames wait past a small buffer and need a second decode.
    m["late_face_mp4"] = write_video(
        root / "late_face.mp4", face_frames(12, 320, 240, face=False, seed=3) + face_frames(14, 320, 240, seed=3)
    )
    data = m["face_mp4"].read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    m["corrupt_mp4"] = root / "truncated.mp4"
    (root / "zero.mp4").write_bytes(b"")
    m["zero_mp4"] = root / "zero.mp4"
    (root / "text.mp4").write_text("this is not a video\n")
    m["text_mp4"] = root / "text.mp4"
    (root / "empty_dir").mkdir()
    m["empty_dir"] = root / "empty_dir"
    return m


@pytest.fixture(scope="session")
def haar():
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
