"""Pretraining data: face crops with random facial actions, each with captions of what shows.

One sample is one still frame rendered like a demo frame (:mod:`pipeline.synth.render`: a random
person, backdrop, side light, sensor noise, 320x240), cropped the way ``dferclip preprocess``
crops the demo (a square on the face box with margin 0, ``crop_size`` px, JPEG at quality 90)
and resized to the model's input. The face box is jittered in place and size as a detector's
box would be. The actions are **random combinations**, not the seven class profiles: each of
:data:`ACTION_GROUPS` (mutually exclusive actions share a group) is active with some
probability at an intensity in [VISIBLE, 1], on top of faint idle motion that no caption
mentions. Every sample gets ``captions_per_image`` independent captions (:mod:`.captions`).

Samples are rendered in chunks, each from its own generator seeded by ``(seed, chunk)``, so
the data are the same whatever the number of parallel tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.data.faces import square_crop
from pipeline.pretrain.captions import VISIBLE, SceneAttributes, caption
from pipeline.synth.face import Actions, Pose, draw_face, face_box, random_identity

# The renderer's private helpers: one still must look exactly like a frame of a demo clip.
from pipeline.synth.render import _background, _poses

__all__ = ["ACTION_GROUPS", "Sample", "random_actions", "render_sample", "render_chunk", "CHUNK"]

CHUNK = 250  # samples per render task (and per seed stream)
JPEG_QUALITY = 90  # preprocess's default
MAX_TILT_DEG = 10.0

# Actions that cannot show together (brows up vs down, ...) are one group: at most one of each.
ACTION_GROUPS: tuple[tuple[str, ...], ...] = (
    ("brow_raise", "brow_lower"),
    ("brow_inner_raise",),
    ("brow_together",),
    ("eye_widen", "eye_narrow"),
    ("cheek_raise",),
    ("nose_wrinkle",),
    ("upper_lip_raise",),
    ("lip_corner_up", "lip_corner_down"),
    ("lip_stretch", "lip_pucker"),
    ("lip_press", "jaw_drop"),
)
# How many groups are active: 0 (a face at rest) to 6, most often 2-4 as in real expressions.
_COUNT_P = np.array([0.06, 0.14, 0.22, 0.24, 0.18, 0.11, 0.05])
_NAMES = Actions.names()


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (S, S, 3) uint8 RGB
    actions: Actions
    captions: tuple[str, ...]


def random_actions(rng: np.random.Generator) -> Actions:
    values = np.abs(rng.normal(0.0, 0.04, size=len(_NAMES))).clip(0.0, 0.12)  # idle motion, never described
    count = int(rng.choice(len(_COUNT_P), p=_COUNT_P))
    for g in rng.choice(len(ACTION_GROUPS), size=count, replace=False):
        name = str(rng.choice(ACTION_GROUPS[g]))
        values[_NAMES.index(name)] = rng.uniform(VISIBLE + 0.05, 1.0)
    return Actions.from_array(values)


def _attributes(ident, bg: np.ndarray, side: float, roll: float) -> SceneAttributes:
    skin = float(np.mean(ident.skin))
    bg_lum = float(bg.mean())
    return SceneAttributes(
        hair_style=ident.hair_style,
        hair_dark=float(np.mean(ident.hair)) < 55.0,
        skin="light" if skin > 170 else "dark" if skin < 125 else "medium",
        background="bright" if bg_lum > 160 else "dark" if bg_lum < 90 else "grey",
        light_side=("right" if side > 0 else "left") if abs(side) > 0.12 else None,
        tilt=("right" if roll > 0 else "left") if abs(roll) > 4.0 else None,
    )


def render_sample(
    rng: np.random.Generator,
    *,
    image_size: int,
    crop_size: int = 40,
    frame_size: tuple[int, int] = (320, 240),
    captions_per_image: int = 3,
    actions: Actions | None = None,
) -> Sample:
    """One face crop with random actions (or ``actions``) and its captions."""
    width, height = frame_size
    actions = random_actions(rng) if actions is None else actions
    ident = random_identity(rng)
    bg = _background(rng, width, height)
    pose = _poses(rng, 1, width, height, ident.face_height)[0]
    roll = float(rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG))
    pose = Pose(pose.cx, pose.cy, pose.scale, roll)
    img = np.clip(bg, 0, 255).astype(np.uint8)
    draw_face(img, ident, actions, pose)
    img = cv2.GaussianBlur(img, (3, 3), 0.8).astype(np.float32)
    side = float(rng.uniform(-0.25, 0.25))
    light = 1.0 + side * np.linspace(-1.0, 1.0, width, dtype=np.float32)
    img *= light[None, :, None] * np.float32(1.0 + rng.uniform(-0.08, 0.12))
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1.0, 4.0))
    frame = np.clip(img, 0, 255).astype(np.uint8)
    # A detector's box: the true face box moved by up to 8 % and scaled by 0.9-1.1.
    x0, y0, x1, y1 = face_box(ident, pose)
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + rng.uniform(-0.08, 0.08) * w, (y0 + y1) / 2 + rng.uniform(-0.08, 0.08) * h
    k = rng.uniform(0.9, 1.1) / 2
    crop = square_crop(frame, (cx - k * w, cy - k * h, cx + k * w, cy + k * h), 0.0, crop_size)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    crop = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else crop
    image = cv2.resize(crop, (image_size, image_size), interpolation=cv2.INTER_AREA)
    attrs = _attributes(ident, bg, side, roll)
    texts = tuple(caption(actions, attrs, rng) for _ in range(captions_per_image))
    return Sample(np.ascontiguousarray(image), actions, texts)


def render_chunk(
    seed: int, chunk: int, count: int, *, image_size: int, crop_size: int, captions_per_image: int
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Samples ``chunk * CHUNK`` .. ``+ count`` of the dataset ``seed``: images (N, S, S, 3) uint8
    and each image's captions."""
    rng = np.random.default_rng([seed, chunk])
    samples = [
        render_sample(rng, image_size=image_size, crop_size=crop_size, captions_per_image=captions_per_image)
        for _ in range(count)
    ]
    return np.stack([s.image for s in samples]), [s.captions for s in samples]
