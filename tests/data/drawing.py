"""Drawn faces and small real media files for the preprocess tests and bench/preprocess.py.

The face drawing (skin ellipse, hair, eyebrows, eyes with pupils and highlights, a shaded nose,
a mouth) was tuned until OpenCV's frontal-face Haar cascade finds it reliably on dark and
mid-gray backgrounds at 80-300 px face height.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SKIN = (150, 180, 220)  # BGR


def draw_face(img: np.ndarray, cx: int, cy: int, size: int) -> np.ndarray:
    """Draw a frontal face of height ``size`` centred on (cx, cy) into a BGR image, in place."""
    h, w = size, int(size * 0.78)
    cv2.ellipse(img, (cx, cy), (w // 2, h // 2), 0, 0, 360, SKIN, -1)
    cv2.ellipse(img, (cx, cy - int(h * 0.38)), (int(w * 0.52), int(h * 0.2)), 0, 180, 360, (30, 30, 40), -1)
    ey, ex = cy - int(h * 0.1), int(w * 0.2)
    for s in (-1, 1):
        x = cx + s * ex
        cv2.ellipse(img, (x, ey - int(h * 0.1)), (int(w * 0.14), int(h * 0.025)), 0, 0, 360, (40, 40, 60), -1)
        cv2.ellipse(img, (x, ey), (int(w * 0.11), int(h * 0.05)), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(img, (x, ey), int(h * 0.04), (30, 20, 20), -1)
        cv2.circle(img, (x + int(h * 0.012), ey - int(h * 0.012)), max(1, int(h * 0.01)), (255, 255, 255), -1)
    nose = np.array(
        [[cx, ey + int(h * 0.02)], [cx - int(w * 0.08), cy + int(h * 0.14)], [cx + int(w * 0.08), cy + int(h * 0.14)]]
    )
    cv2.fillPoly(img, [nose], tuple(int(c * 0.75) for c in SKIN))
    cv2.ellipse(img, (cx, cy + int(h * 0.27)), (int(w * 0.2), int(h * 0.05)), 0, 0, 360, (60, 50, 150), -1)
    return img


def face_frames(
    n: int,
    width: int = 320,
    height: int = 240,
    size: int = 120,
    *,
    face: bool = True,
    drift: int = 2,
    background: int = 60,
    seed: int = 0,
) -> list[np.ndarray]:
    """``n`` BGR frames of a face drifting right by ``drift`` px per frame over a noisy background."""
    rng = np.random.default_rng(seed)
    base = np.clip(background + rng.integers(-12, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    x0 = width // 2 - (drift * (n - 1)) // 2
    frames = []
    for t in range(n):
        img = base.copy()
        if face:
            draw_face(img, x0 + drift * t, height // 2, size)
        frames.append(img)
    return frames


def write_video(
    path: str | Path,
    frames: list[np.ndarray],
    *,
    fps: int = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    pts: list[int] | None = None,
) -> Path:
    """Encode BGR frames with PyAV. ``pts`` (in 1/1000 s) makes a variable-frame-rate file."""
    from fractions import Fraction

    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_frames(
    folder: str | Path, frames: list[np.ndarray], *, ext: str = ".jpg", start: int = 1, gray: bool = False
) -> Path:
    """Write frames as ``1.jpg, 2.jpg, ... 10.jpg`` (unpadded, so natural sort matters)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(frames):
        if gray:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(folder / f"{start + i}{ext}"), img)
    return folder
