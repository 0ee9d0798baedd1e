"""The seven expressions as facial actions, and their time course within a clip.

Each class is a profile of action intensities at its apex, loosely after the FACS prototypes
(Ekman & Friesen): happiness = cheek raise + lip-corner pull; sadness = inner-brow raise + lip
corners down; anger = brows lowered and drawn together + lips pressed; surprise = brows up +
eyes wide + jaw drop; disgust = nose wrinkle + upper-lip raise; fear = brows up and together +
eyes wide + lips stretched; neutral = nothing. Fear and surprise, and anger and disgust, share
actions on purpose: telling them apart needs more than one facial region.

A clip starts neutral, moves from onset to apex along a smooth ramp, then holds. Onset frame,
ramp length, apex intensity and the weight of every action vary per clip, and every clip (neutral
included) carries small idle motion of all actions, so no single frame or pixel gives the class
away: the class is in how the face changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.datasets import CLASSES_7
from pipeline.synth.face import Actions

__all__ = ["PROFILES", "Timeline", "random_timeline"]

PROFILES: dict[str, dict[str, float]] = {
    "happiness": {"lip_corner_up": 1.0, "cheek_raise": 0.9, "lip_stretch": 0.3, "jaw_drop": 0.15},
    "sadness": {"brow_inner_raise": 1.0, "brow_together": 0.4, "lip_corner_down": 1.0, "eye_narrow": 0.3},
    "neutral": {},
    "anger": {"brow_lower": 1.0, "brow_together": 1.0, "lip_press": 1.0, "eye_narrow": 0.35},
    "surprise": {"brow_raise": 1.0, "eye_widen": 1.0, "jaw_drop": 1.0, "lip_pucker": 0.6},
    "disgust": {
        "nose_wrinkle": 1.0,
        "upper_lip_raise": 1.0,
        "brow_lower": 0.4,
        "eye_narrow": 0.4,
        "lip_corner_down": 0.3,
    },
    "fear": {
        "brow_raise": 0.6,
        "brow_inner_raise": 0.6,
        "brow_together": 0.8,
        "eye_widen": 1.0,
        "lip_stretch": 1.0,
        "jaw_drop": 0.3,
    },
}
_NAMES = Actions.names()


@dataclass(frozen=True)
class Timeline:
    """Per-frame action intensities of one clip: ``values[t]`` is frame t's action vector."""

    label: str
    values: np.ndarray  # (T, A) in [0, 1]
    onset: int  # first frame of the change (meaningless for neutral)
    apex: int  # first frame at full intensity

    def actions(self, t: int) -> Actions:
        return Actions.from_array(self.values[t])


def _smooth_noise(rng: np.random.Generator, num_frames: int, dims: int, amplitude: float) -> np.ndarray:
    """Low-frequency noise (T, dims): a few random sinusoids, so idle motion drifts instead of flickering."""
    t = np.arange(num_frames)[:, None]
    out = np.zeros((num_frames, dims))
    for _ in range(2):
        freq = rng.uniform(0.02, 0.12, size=dims)
        phase = rng.uniform(0, 2 * np.pi, size=dims)
        out += np.sin(2 * np.pi * freq * t + phase)
    return amplitude * out / 2.0


def random_timeline(label: str, rng: np.random.Generator, num_frames: int) -> Timeline:
    """Draw the time course of ``label`` over ``num_frames`` frames.

    The first ~15 % of frames are always neutral (plus idle motion); onset then falls anywhere
    up to 45 % of the clip and the ramp takes 20-40 % of it, so apex is reached by 85 %.
    """
    if label not in PROFILES:
        raise ValueError(f"unknown expression {label!r}; known: {', '.join(CLASSES_7)}")
    onset = int(rng.integers(max(1, round(0.15 * num_frames)), max(2, round(0.45 * num_frames)) + 1))
    ramp = max(2, int(round(rng.uniform(0.2, 0.4) * num_frames)))
    t = np.arange(num_frames)
    x = np.clip((t - onset) / ramp, 0.0, 1.0)
    envelope = x * x * (3 - 2 * x)  # smoothstep: eases in and out like a real onset

    intensity = rng.uniform(0.6, 1.0)
    idle = np.abs(_smooth_noise(rng, num_frames, len(_NAMES), 0.07))  # (T, A)
    blink = int(rng.integers(1, num_frames - 1)) if rng.random() < 0.2 else None
    # One weight per action whatever the class, so the generator advances the same way for every
    # label: the same seed then gives the same idle motion (and first frames) in every class.
    weights = rng.uniform(0.8, 1.15, size=len(_NAMES))
    apex = np.zeros(len(_NAMES))
    for name, weight in PROFILES[label].items():
        i = _NAMES.index(name)
        apex[i] = weight * intensity * weights[i]
    values = envelope[:, None] * apex[None, :] + idle  # (T, A)
    if blink is not None:  # an occasional half blink, in any class
        values[blink : blink + 2, _NAMES.index("eye_narrow")] = 1.0
    return Timeline(label, np.clip(values, 0.0, 1.0), onset, min(num_frames - 1, onset + ramp))
