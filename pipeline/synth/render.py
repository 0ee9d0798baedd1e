"""One synthetic clip: a random person in a random scene showing one expression over time.

Everything that is not the expression — identity, skin and background colours, position and
size of the face, head motion, lighting drift, sensor noise — is drawn independently of the
class, so a classifier can only succeed by looking at how the face changes.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.synth.expressions import random_timeline
from pipeline.synth.face import Pose, draw_face, face_box, random_identity

__all__ = ["render_clip", "Box"]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random backdrop: two-colour gradient plus a few soft blocks (furniture, windows)."""
    c0, c1 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.cos(angle) * xx / width + np.sin(angle) * yy / height
    ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
    bg = (c0[None, None, :] * (1 - ramp[..., None]) + c1[None, None, :] * ramp[..., None]).astype(np.float32)
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 8, width // 2)), int(rng.integers(height // 8, height // 2))
        colour = rng.uniform(0, 255, size=3).tolist()
        cv2.rectangle(bg, (x0, y0), (x0 + w, y0 + h), colour, -1)
    return cv2.GaussianBlur(bg, (0, 0), 3.0)


def _poses(rng: np.random.Generator, num_frames: int, width: int, height: int, face_height: float) -> list[Pose]:
    """Face placement plus slow head motion: translation, scale and roll drift."""
    scale = rng.uniform(0.14, 0.21) * min(width, height * 1.25)  # px per face half-width
    # Keep hair line to chin (about -1.1 .. +face_height units) and both cheeks inside the frame.
    margin_x = 1.15 * scale + 0.03 * width
    top, bottom = 1.15 * scale + 0.03 * height, face_height * scale + 0.03 * height
    cx = rng.uniform(margin_x, width - margin_x)
    cy = rng.uniform(top, max(top, height - bottom))
    t = np.arange(num_frames)

    def drift(amplitude: float) -> np.ndarray:
        freq, phase = rng.uniform(0.02, 0.08), rng.uniform(0, 2 * np.pi)
        return amplitude * np.sin(2 * np.pi * freq * t + phase) + rng.normal(0, amplitude * 0.08, num_frames)

    dx, dy = drift(0.02 * width), drift(0.02 * height)
    ds, droll = drift(0.03), drift(rng.uniform(0.0, 3.0))
    return [Pose(cx + dx[i], cy + dy[i], scale * (1 + ds[i]), droll[i]) for i in range(num_frames)]


def render_clip(
    label: str,
    rng: np.random.Generator,
    *,
    num_frames: int = 24,
    size: tuple[int, int] = (320, 240),
    return_boxes: bool = False,
) -> list[np.ndarray] | tuple[list[np.ndarray], list[Box]]:
    """Render one clip of expression ``label`` (a name from ``CLASSES_7``).

    Returns ``num_frames`` frames, each (H, W, 3) uint8 RGB with ``size = (W, H)``; with
    ``return_boxes`` also the face's bounding box per frame (forehead hair line to chin, in pixels)
    — the ground truth a face detector should find. Deterministic given the state of ``rng``;
    two generators in the same state render the same person, scene, motion and first frames for
    any two labels, which then differ only from the expression's onset on.
    """
    width, height = size
    # Separate streams for the expression and for everything else: the same seed then renders the
    # same person, scene and motion whatever the label, which lets tests isolate the expression.
    expr_rng, rng = rng.spawn(2)
    timeline = random_timeline(label, expr_rng, num_frames)
    ident = random_identity(rng)
    bg = _background(rng, width, height)
    poses = _poses(rng, num_frames, width, height, ident.face_height)
    # Lighting: a slowly drifting global gain and a side light (left/right gradient) per clip.
    t = np.arange(num_frames)
    gain = 1.0 + rng.uniform(0.0, 0.12) * np.sin(2 * np.pi * rng.uniform(0.01, 0.06) * t + rng.uniform(0, 6.3))
    side = rng.uniform(-0.25, 0.25)
    light_row = 1.0 + side * np.linspace(-1.0, 1.0, width, dtype=np.float32)
    light = np.ascontiguousarray(np.broadcast_to(light_row[None, :, None], (height, width, 3)))  # (H, W, 3)
    # Sensor noise: one field per clip, seen through a random window each frame. Drawing a
    # fresh field per frame was 3/4 of the render time and looks no different.
    pad = 32
    noise = rng.standard_normal((height + pad, width + pad, 3), dtype=np.float32) * np.float32(rng.uniform(1.0, 4.0))
    offsets = rng.integers(0, pad, size=(num_frames, 2))

    frames, boxes = [], []
    bg_u8 = np.clip(bg, 0, 255).astype(np.uint8)
    for i in range(num_frames):
        img = bg_u8.copy()
        draw_face(img, ident, timeline.actions(i), poses[i])
        # Slight blur: drawn edges are sharper than any camera's.
        img = cv2.GaussianBlur(img, (3, 3), 0.8).astype(np.float32)
        img = cv2.multiply(img, light, scale=float(gain[i]))  # cv2: ~3x faster than numpy broadcasting here
        ox, oy = offsets[i]
        img += noise[oy : oy + height, ox : ox + width]
        np.clip(img, 0, 255, out=img)
        frames.append(img.astype(np.uint8))
        boxes.append(face_box(ident, poses[i]))
    return (frames, boxes) if return_boxes else frames
