"""Procedural drawing of one frontal face: identity, facial actions and pose -> pixels.

Every shape is built as a polygon in face-local units (x right, y down, origin at the centre of
the face ellipse, face half-width = 1), moved into the image by one similarity transform (the
head pose) and filled with OpenCV at sub-pixel precision. Keeping all geometry in face units is
what lets head translation, scale and roll jitter leave the expression itself untouched.

The facial actions loosely follow FACS action units (brow raise / lower, eyelid widen / narrow,
lip-corner pull, jaw drop, nose wrinkle ...), each an intensity in [0, 1]; 0 everywhere is the
identity's neutral face. Strokes are deliberately thick and high in contrast so that the
actions stay visible after a face crop is downscaled to 64-96 px.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from functools import cache

import cv2
import numpy as np

__all__ = ["Actions", "Identity", "Pose", "random_identity", "draw_face", "face_box"]

_SHIFT = 4  # fixed-point bits for cv2 drawing: coordinates are multiplied by 16
_SCALE = float(1 << _SHIFT)


@dataclass(frozen=True)
class Actions:
    """Intensities in [0, 1] of the facial actions one frame shows (0 = neutral)."""

    brow_raise: float = 0.0  # whole brows up (AU1+2), forehead lines
    brow_inner_raise: float = 0.0  # inner ends up only (AU1): the sad slant
    brow_lower: float = 0.0  # brows down, inner ends lowest (AU4)
    brow_together: float = 0.0  # inner ends drawn toward the nose, glabella lines (AU4)
    eye_widen: float = 0.0  # upper lid up, white above the iris (AU5)
    eye_narrow: float = 0.0  # lids closer (AU7)
    cheek_raise: float = 0.0  # cheeks and lower lids up, nasolabial folds (AU6)
    nose_wrinkle: float = 0.0  # bridge lines, nostrils up (AU9)
    upper_lip_raise: float = 0.0  # upper lip lifted off the teeth (AU10)
    lip_corner_up: float = 0.0  # smile (AU12)
    lip_corner_down: float = 0.0  # frown (AU15)
    lip_stretch: float = 0.0  # corners pulled sideways (AU20)
    lip_pucker: float = 0.0  # mouth narrower and rounder (AU18)
    lip_press: float = 0.0  # lips thinned and pressed (AU24)
    jaw_drop: float = 0.0  # mouth opens (AU26/27)

    def to_array(self) -> np.ndarray:
        return np.asarray(astuple(self), dtype=np.float64)

    @classmethod
    def from_array(cls, values: np.ndarray) -> Actions:
        clipped = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
        return cls(*(float(v) for v in clipped))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Identity:
    """What stays fixed for one drawn person: proportions and colours (RGB 0-255)."""

    face_height: float  # ellipse half-height, in face half-widths
    jaw_width: float  # lower face narrowing, 0.7 (pointed) .. 1.0 (round)
    eye_dx: float  # horizontal distance of each eye centre from the midline
    eye_y: float
    eye_w: float  # eye half-width
    eye_h: float  # upper-lid height of the open eye
    iris_r: float
    brow_gap: float  # brow height above the eye centre
    brow_thick: float
    brow_arch: float
    brow_len: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float  # mouth half-width
    lip_upper: float  # lip thicknesses
    lip_lower: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int  # 0 bald, 1 short, 2 short with a low fringe, 3 long
    hair_line: float  # forehead hair line (y), above the brows
    lip_colour: tuple[float, float, float]
    iris_colour: tuple[float, float, float]
    brow_colour: tuple[float, float, float]
    shirt: tuple[float, float, float]


@dataclass(frozen=True)
class Pose:
    """Where the face is: centre in pixels, pixels per face unit, roll in degrees."""

    cx: float
    cy: float
    scale: float
    roll: float = 0.0


def _rgb(rng: np.random.Generator, low: float, high: float) -> tuple[float, float, float]:
    return tuple(float(v) for v in rng.uniform(low, high, size=3))  # type: ignore[return-value]


def random_identity(rng: np.random.Generator) -> Identity:
    """Draw one person. Skin tones span light to dark, but always keep the eyes, brows and
    mouth clearly darker than the skin: the Haar cascade (and a small network) keys on that."""
    # Skin: a luminance, then a warm hue around it.
    lum = rng.uniform(105, 235)
    skin = (min(255.0, lum * rng.uniform(1.05, 1.18)), lum * rng.uniform(0.86, 0.95), lum * rng.uniform(0.68, 0.85))
    hair_lum = rng.uniform(10, 120)
    hair = (hair_lum * rng.uniform(0.9, 1.6), hair_lum * rng.uniform(0.7, 1.1), hair_lum * rng.uniform(0.4, 0.9))
    brow_lum = min(hair_lum, lum * 0.3)
    eye_y = rng.uniform(-0.24, -0.12)
    return Identity(
        face_height=rng.uniform(1.25, 1.42),
        jaw_width=rng.uniform(0.72, 0.95),
        eye_dx=rng.uniform(0.38, 0.47),
        eye_y=eye_y,
        eye_w=rng.uniform(0.19, 0.24),
        eye_h=rng.uniform(0.085, 0.115),
        iris_r=rng.uniform(0.07, 0.09),
        brow_gap=rng.uniform(0.24, 0.30),
        brow_thick=rng.uniform(0.065, 0.10),
        brow_arch=rng.uniform(0.02, 0.08),
        brow_len=rng.uniform(0.36, 0.46),
        nose_y=eye_y + rng.uniform(0.48, 0.58),
        nose_w=rng.uniform(0.13, 0.18),
        mouth_y=eye_y + rng.uniform(0.78, 0.9),
        mouth_w=rng.uniform(0.3, 0.38),
        lip_upper=rng.uniform(0.05, 0.075),
        lip_lower=rng.uniform(0.065, 0.095),
        skin=skin,
        hair=hair,
        hair_style=int(rng.choice(4, p=[0.1, 0.3, 0.3, 0.3])),
        hair_line=eye_y - rng.uniform(0.72, 0.88),
        lip_colour=(lum * rng.uniform(0.6, 0.75), lum * rng.uniform(0.3, 0.42), lum * rng.uniform(0.3, 0.42)),
        iris_colour=_rgb(rng, 15, 80),
        brow_colour=(brow_lum, brow_lum * 0.8, brow_lum * 0.65),
        shirt=_rgb(rng, 20, 235),
    )


# --- geometry helpers (face units) -------------------------------------------------------------


# Unit shapes are cached: a clip draws ~40 polygons per frame, and rebuilding the same
# trigonometric tables with linspace each time cost more than the filling itself.
@cache
def _circle(n: int) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)  # (n, 2)


@cache
def _unit(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n)


@cache
def _sin_half(n: int) -> np.ndarray:
    return np.sin(np.pi * _unit(n))


def _ellipse(cx: float, cy: float, ax: float, ay: float, n: int = 40) -> np.ndarray:
    return _circle(n) * (ax, ay) + (cx, cy)  # (n, 2)


def _arc(x0: float, x1: float, y: np.ndarray | float, n: int) -> np.ndarray:
    out = np.empty((n, 2))
    out[:, 0] = x0 + (x1 - x0) * _unit(n)
    out[:, 1] = y
    return out


def _bump(n: int, power: float = 1.0) -> np.ndarray:
    """0 at both ends, 1 in the middle: the profile of a lid or a lip across its width."""
    return _sin_half(n) if power == 1.0 else _sin_half(n) ** power


class _Canvas:
    """Draws face-unit polygons into an RGB image through the pose transform."""

    def __init__(self, img: np.ndarray, pose: Pose) -> None:
        self.img = img
        theta = np.deg2rad(pose.roll)
        c, s = np.cos(theta), np.sin(theta)
        self.m = pose.scale * np.array([[c, -s], [s, c]])  # (2, 2) face units -> pixels
        self.t = np.array([pose.cx, pose.cy])
        self.px = pose.scale

    def _pts(self, pts: np.ndarray) -> np.ndarray:
        img_pts = pts @ self.m.T + self.t
        return np.round(img_pts * _SCALE).astype(np.int32).reshape(-1, 1, 2)

    def fill(self, pts: np.ndarray, colour) -> None:
        cv2.fillPoly(self.img, [self._pts(pts)], colour, cv2.LINE_AA, _SHIFT)

    def line(self, pts: np.ndarray, colour, width: float) -> None:
        thickness = max(1, int(round(width * self.px)))
        cv2.polylines(self.img, [self._pts(pts)], False, colour, thickness, cv2.LINE_AA, _SHIFT)


def _shade(colour, k: float) -> tuple[float, float, float]:
    return tuple(float(min(255.0, c * k)) for c in colour)  # type: ignore[return-value]


# --- the face ----------------------------------------------------------------------------------


def _face_outline(ident: Identity, n: int = 64) -> np.ndarray:
    """Ellipse whose lower half narrows toward the chin by ``jaw_width``."""
    pts = _ellipse(0.0, 0.0, 1.0, ident.face_height, n)
    lower = pts[:, 1] > 0
    k = 1.0 - (1.0 - ident.jaw_width) * (pts[lower, 1] / ident.face_height) ** 1.5
    pts[lower, 0] *= k
    return pts


def face_box(ident: Identity, pose: Pose) -> tuple[float, float, float, float]:
    """The face's bounding box in pixels ``(x0, y0, x1, y1)``: brows/forehead to chin, cheek to
    cheek (the part a face detector is expected to find)."""
    pts = _face_outline(ident)
    pts = pts[pts[:, 1] >= ident.hair_line]
    theta = np.deg2rad(pose.roll)
    c, s = np.cos(theta), np.sin(theta)
    img = pts @ (pose.scale * np.array([[c, -s], [s, c]])).T + np.array([pose.cx, pose.cy])
    x0, y0 = img.min(axis=0)
    x1, y1 = img.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _draw_hair_back(cv: _Canvas, ident: Identity) -> None:
    if ident.hair_style == 3:  # long hair falls behind the face down to the shoulders
        h = ident.face_height
        cv.fill(_ellipse(0.0, -0.15, 1.22, h * 1.05, 48), ident.hair)
        cv.fill(np.array([[-1.22, -0.15], [1.22, -0.15], [1.22, h * 0.9], [-1.22, h * 0.9]]), ident.hair)


def _draw_hair_front(cv: _Canvas, ident: Identity) -> None:
    if ident.hair_style == 0:
        return
    h = ident.face_height
    top = _ellipse(0.0, 0.0, 1.06, h * 1.06, 64)
    cap = top[top[:, 1] <= ident.hair_line]
    cap = cap[np.argsort(np.arctan2(cap[:, 1], cap[:, 0]))]
    # Close the cap along a gently curved hair line.
    line = _arc(1.0, -1.0, ident.hair_line + 0.08 * (1.0 - _bump(16)), 16)
    cv.fill(np.concatenate([cap, line]), ident.hair)
    # Side hair over the temples (down past the ears for style 2): dark bands beside the cheeks
    # make the face stand out from any background, and lifted the Haar hit rate of wide-eyed,
    # open-mouthed faces from ~0.8 to ~0.9.
    bottom = ident.eye_y + (0.3 if ident.hair_style == 2 else 0.05)
    for sx in (-1.0, 1.0):
        side = np.array(
            [
                [sx * 1.06, ident.hair_line],
                [sx * 0.86, ident.hair_line + 0.05],
                [sx * 0.9, bottom - 0.1],
                [sx * 1.04, bottom],
            ]
        )
        cv.fill(side, ident.hair)


def _draw_brows(cv: _Canvas, ident: Identity, a: Actions) -> None:
    n = 12
    for sx in (-1.0, 1.0):
        inner_x = 0.12 + ident.eye_dx - ident.eye_w - 0.02 - 0.1 * a.brow_together
        outer_x = inner_x + ident.brow_len + 0.05 * a.brow_together
        u = _unit(n)  # 0 at the inner end
        xs = inner_x + (outer_x - inner_x) * u
        base = ident.eye_y - ident.brow_gap
        y = base - ident.brow_arch * _bump(n) - 0.03 * (1 - u)
        y = y - 0.17 * a.brow_raise
        y = y - 0.16 * a.brow_inner_raise * (1 - u) ** 1.5
        y = y + 0.18 * a.brow_lower * (1 - u) ** 0.8 + 0.03 * a.brow_lower
        half = ident.brow_thick * (0.55 + 0.45 * _bump(n, 0.5)) * (1.0 + 0.35 * a.brow_lower)
        upper = np.stack([sx * xs, y - half], axis=1)
        lower = np.stack([sx * xs, y + half], axis=1)[::-1]
        cv.fill(np.concatenate([upper, lower]), ident.brow_colour)
    line_col = _shade(ident.skin, 0.55)
    if a.brow_raise > 0.05:  # forehead lines
        for k in range(3):
            yy = ident.eye_y - ident.brow_gap - 0.24 - 0.09 * k - 0.1 * a.brow_raise
            if yy > ident.hair_line + 0.03:
                w = 0.45 - 0.07 * k
                cv.line(_arc(-w, w, yy - 0.03 * _bump(12), 12), _shade(ident.skin, 1 - 0.4 * a.brow_raise), 0.022)
    if a.brow_together > 0.05:  # vertical frown lines between the brows
        g = np.clip(a.brow_together, 0, 1)
        for sx in (-0.05, 0.05):
            top = ident.eye_y - ident.brow_gap - 0.08
            cv.line(np.array([[sx, top], [sx * 1.3, top + 0.18 * g]]), line_col, 0.035 * g + 0.01)


def _draw_eyes(cv: _Canvas, ident: Identity, a: Actions) -> None:
    n = 20
    socket_col = _shade(ident.skin, 0.62)
    white = (212.0, 208.0, 198.0)
    lid_col = _shade(ident.brow_colour, 0.9)
    openness = 1.0 + 0.6 * a.eye_widen - 0.55 * a.eye_narrow - 0.35 * a.cheek_raise
    up_h = ident.eye_h * max(0.12, openness)
    lo_h = ident.eye_h * 0.75 * max(0.12, 1.0 + 0.2 * a.eye_widen - 0.5 * a.eye_narrow - 0.6 * a.cheek_raise)
    for sx in (-1.0, 1.0):
        ex, ey = sx * ident.eye_dx, ident.eye_y + 0.03 * a.brow_lower - 0.02 * a.cheek_raise
        # Darker socket: what a real eye region looks like to a Haar feature.
        cv.fill(_ellipse(ex, ey - 0.02, ident.eye_w * 1.35, ident.eye_h * 2.1), socket_col)
        xs = ex - ident.eye_w + 2 * ident.eye_w * _unit(n)
        upper = np.stack([xs, ey - up_h * _bump(n, 0.8)], axis=1)
        lower = np.stack([xs, ey + lo_h * _bump(n, 0.8)], axis=1)
        almond = np.concatenate([upper, lower[::-1]])
        cv.fill(almond, white)
        # Iris, then skin back over whatever of it lies outside the almond.
        cv.fill(_ellipse(ex, ey + 0.005, ident.iris_r, ident.iris_r, 24), ident.iris_colour)
        cv.fill(_ellipse(ex, ey + 0.005, ident.iris_r * 0.45, ident.iris_r * 0.45, 16), (10.0, 10.0, 10.0))
        r = ident.iris_r + 0.02
        above = np.concatenate([upper, _arc(ex + ident.eye_w, ex - ident.eye_w, ey - r - 0.03, 2)])
        below = np.concatenate([lower, _arc(ex + ident.eye_w, ex - ident.eye_w, ey + r + 0.03, 2)])
        cv.fill(above, socket_col)
        cv.fill(below, socket_col)
        cv.line(upper, lid_col, 0.045)
        cv.line(lower, _shade(socket_col, 0.8), 0.015)
        if a.cheek_raise > 0.05:  # lower-lid bulge and crow's feet
            k = a.cheek_raise
            bulge = np.stack([xs, ey + lo_h + 0.05 + 0.03 * _bump(n)], axis=1)
            cv.line(bulge, _shade(ident.skin, 1 - 0.35 * k), 0.02)
            ox = ex + sx * (ident.eye_w + 0.04)
            for dy in (-0.04, 0.02, 0.08):
                cv.line(
                    np.array([[ox, ey + dy * 0.5], [ox + sx * 0.1, ey + dy]]), _shade(ident.skin, 1 - 0.4 * k), 0.018
                )


def _draw_nose(cv: _Canvas, ident: Identity, a: Actions) -> None:
    shadow = _shade(ident.skin, 0.7)
    ny = ident.nose_y - 0.04 * a.nose_wrinkle - 0.02 * a.upper_lip_raise
    w = ident.nose_w * (1.0 + 0.2 * a.nose_wrinkle)
    # Bridge shadow on one side, then the base with nostrils.
    cv.line(np.array([[-0.07, ident.eye_y + 0.05], [-0.09, ny - 0.12], [-w * 0.9, ny - 0.02]]), shadow, 0.03)
    base = _arc(-w, w, ny + 0.03 * _bump(12), 12)
    cv.line(base, shadow, 0.035)
    for sx in (-1.0, 1.0):
        cv.fill(_ellipse(sx * w * 0.5, ny - 0.005, 0.045, 0.025, 12), _shade(ident.skin, 0.4))
    if a.nose_wrinkle > 0.05:
        k = a.nose_wrinkle
        col = _shade(ident.skin, 1 - 0.5 * k)
        for i in range(3):
            yy = ident.eye_y + 0.03 + 0.06 * i
            cv.line(_arc(-0.1, 0.1, yy - 0.02 * _bump(8), 8), col, 0.02 + 0.012 * k)
        for sx in (-1.0, 1.0):  # creases from the bridge down over the nose wings
            cv.line(np.array([[sx * 0.1, ident.eye_y + 0.1], [sx * (w + 0.03), ny - 0.06]]), col, 0.02)


def _draw_cheeks_and_folds(cv: _Canvas, ident: Identity, a: Actions) -> None:
    fold = max(a.cheek_raise, 0.8 * a.upper_lip_raise, 0.6 * a.lip_corner_up)
    if fold < 0.05:
        return
    col = _shade(ident.skin, 1 - 0.4 * fold)
    for sx in (-1.0, 1.0):
        top = np.array([sx * (ident.nose_w + 0.05), ident.nose_y - 0.06])
        bottom = np.array(
            [sx * (ident.mouth_w + 0.09 + 0.05 * a.lip_stretch), ident.mouth_y + 0.02 - 0.06 * a.lip_corner_up]
        )
        mid = (top + bottom) / 2 + np.array([sx * 0.05, 0.0])
        cv.line(np.stack([top, mid, bottom]), col, 0.025)
        if a.cheek_raise > 0.05:
            cv.fill(
                _ellipse(sx * (ident.eye_dx + 0.05), ident.nose_y - 0.06 - 0.05 * a.cheek_raise, 0.17, 0.09),
                _shade(ident.skin, 1 + 0.08 * a.cheek_raise),
            )


def _draw_mouth(cv: _Canvas, ident: Identity, a: Actions) -> None:
    n = 24
    width = ident.mouth_w * (
        1.0 + 0.4 * a.lip_stretch + 0.12 * a.lip_corner_up - 0.4 * a.lip_pucker - 0.15 * a.lip_press
    )
    my = ident.mouth_y + 0.1 * a.jaw_drop * 0.5
    s = 2 * _unit(n) - 1
    # Mid-line: corners pulled up (smile) or down (frown) relative to the centre.
    corner = -0.14 * a.lip_corner_up + 0.13 * a.lip_corner_down + 0.04 * a.lip_stretch
    mid = my + corner * np.abs(s) ** 1.6
    bump = _bump(n, 0.6)
    thin = 1.0 - 0.85 * a.lip_press
    opening = 0.3 * a.jaw_drop + 0.05 * a.lip_stretch
    # Puckered mouths open round (peaked profile), stretched ones flat and wide (boxy profile).
    shape = 0.9 + 0.8 * a.lip_pucker - 0.3 * a.lip_stretch
    open_up = (0.35 * opening + 0.09 * a.upper_lip_raise) * _bump(n, shape)
    open_lo = 0.65 * opening * _bump(n, shape)
    # Cupid's bow: a small dip at the centre of the upper lip.
    bow = 1.0 - 0.25 * np.exp(-((s / 0.12) ** 2))
    up_outer = mid - open_up - ident.lip_upper * thin * bump * bow - 0.05 * a.upper_lip_raise * bump
    lo_outer = mid + open_lo + ident.lip_lower * thin * bump
    xs = s * width
    lips = np.concatenate([np.stack([xs, up_outer], 1), np.stack([xs, lo_outer], 1)[::-1]])
    cv.fill(lips, ident.lip_colour)
    inner_up = np.stack([xs, mid - open_up], 1)
    inner_lo = np.stack([xs, mid + open_lo], 1)
    if opening + a.upper_lip_raise > 0.02:
        cv.fill(np.concatenate([inner_up, inner_lo[::-1]]), (25.0, 8.0, 10.0))
        # Upper teeth: a band under the upper lip.
        teeth_lo = mid - open_up + np.minimum(open_up + open_lo, 0.06) * bump
        cv.fill(np.concatenate([inner_up, np.stack([xs, teeth_lo], 1)[::-1]]), (235.0, 232.0, 220.0))
    cv.line(inner_up if opening < 0.02 else np.stack([xs, mid + 0.0 * s], 1)[[0, -1]], (30.0, 10.0, 12.0), 0.02)
    if a.lip_press > 0.05:  # chin boss pushed up under pressed lips
        cv.line(_arc(-0.14, 0.14, my + 0.19 + 0.03 * _bump(8), 8), _shade(ident.skin, 1 - 0.45 * a.lip_press), 0.03)


def draw_face(img: np.ndarray, ident: Identity, actions: Actions, pose: Pose) -> None:
    """Draw the person ``ident`` showing ``actions`` at ``pose`` into ``img`` (H, W, 3 uint8 RGB)."""
    cv = _Canvas(img, pose)
    h = ident.face_height
    _draw_hair_back(cv, ident)
    # Neck and shoulders: a face floating in the void is rare in real video.
    neck = np.array([[-0.45, h * 0.6], [0.45, h * 0.6], [0.5, h + 0.6], [-0.5, h + 0.6]])
    cv.fill(neck, _shade(ident.skin, 0.8))
    shoulder_top = _ellipse(0.0, h + 0.9, 1.9, 0.5, 40)[20:]  # upper half, left to right
    cv.fill(np.concatenate([shoulder_top, [[1.9, h + 3.0], [-1.9, h + 3.0]]]), ident.shirt)
    for sx in (-1.0, 1.0):  # ears
        cv.fill(_ellipse(sx * 0.98, ident.eye_y + 0.2, 0.13, 0.24, 20), _shade(ident.skin, 0.88))
    outline = _face_outline(ident)
    cv.fill(outline, ident.skin)
    # A soft highlight down the forehead, nose and cheeks, darker at the rim: gives the face
    # the light-centre / darker-edge structure of a lit real face.
    cv.fill(_ellipse(0.0, -0.1, 0.72, h * 0.8), _shade(ident.skin, 1.06))
    _draw_hair_front(cv, ident)
    _draw_cheeks_and_folds(cv, ident, actions)
    _draw_brows(cv, ident, actions)
    _draw_eyes(cv, ident, actions)
    _draw_nose(cv, ident, actions)
    _draw_mouth(cv, ident, actions)
