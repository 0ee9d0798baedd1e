"""Captions for contrastive pretraining: the visible facial actions in words, never a class name.

The phrase bank below is written as a plain description of each facial action of
:class:`pipeline.synth.face.Actions` (what moves, in which direction, what creases), several
wordings per action so that the text tower learns the facial change rather than one phrase. It
was written for the actions themselves, not from the shipped class descriptions: zero-shot
transfer to the seven classes has to come from those descriptions' own words meeting the
vocabulary learned here (``docs/pretrain.md``).

A caption also carries attributes that have nothing to do with expression (hair, skin tone,
background, lighting, head tilt) in random order and subsets, so the text tower must work out
which words go with which facial change. No caption ever contains a class name or one of its
inflections (:func:`class_word_problem`; the tests check every generated caption).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pipeline.synth.face import Actions

__all__ = ["ACTION_PHRASES", "REST_PHRASES", "SceneAttributes", "caption", "class_word_problem", "visible_actions"]

# Intensity from which an action counts as visible and is described. Sampling draws active
# actions in [VISIBLE, 1] and idle motion well below it, so a caption never misses a change.
VISIBLE = 0.4
# Longest caption in words (about 35 CLIP tokens): see caption().
MAX_WORDS = 22

ACTION_PHRASES: dict[str, tuple[str, ...]] = {
    "brow_raise": (
        "brows hoisted up high",
        "raised eyebrows",
        "brows arched upward",
        "both brows pulled up, lining the forehead",
        "a lifted brow line with creases across the forehead",
        "forehead wrinkled by lifted brows",
    ),
    "brow_inner_raise": (
        "the inner ends of the brows lifted",
        "brows slanting up toward the middle",
        "inner corners of the eyebrows pulled upward",
        "eyebrows tilted up at the centre of the forehead",
    ),
    "brow_lower": (
        "lowered eyebrows",
        "brows pushed down over the eyes",
        "a heavy, low brow",
        "eyebrows drawn down",
    ),
    "brow_together": (
        "brows knitted together",
        "eyebrows squeezed toward each other",
        "vertical creases between the brows",
        "a furrowed brow",
    ),
    "eye_widen": (
        "eyes stretched open",
        "wide open eyes",
        "upper eyelids lifted to show the whites of the eyes",
        "staring, widened eyes",
    ),
    "eye_narrow": (
        "narrowed eyes",
        "squinting eyes",
        "tightened eyelids",
        "eyes half closed",
    ),
    "cheek_raise": (
        "raised cheeks",
        "cheeks pushed up under the eyes",
        "lifted cheeks with crinkles at the outer eye corners",
        "bunched up cheeks",
    ),
    "nose_wrinkle": (
        "a wrinkled nose",
        "nose scrunched up",
        "creases across the bridge of the nose",
        "a crinkled nose with lifted nostrils",
    ),
    "upper_lip_raise": (
        "upper lip lifted",
        "the upper lip curled up to bare the teeth",
        "a raised upper lip",
        "upper teeth showing under a lifted lip",
    ),
    "lip_corner_up": (
        "mouth corners turned up",
        "lip corners pulled upward",
        "an upturned mouth",
        "the corners of the lips curving up",
        "a grin",
        "a smile",
    ),
    "lip_corner_down": (
        "mouth corners turned down",
        "lip corners pulled downward",
        "a downturned mouth",
        "drooping corners of the lips",
    ),
    "lip_stretch": (
        "lips stretched wide",
        "the mouth pulled sideways",
        "lips drawn out toward the ears",
        "a wide, tense mouth",
    ),
    "lip_pucker": (
        "pursed lips",
        "puckered lips",
        "a small round mouth",
        "lips pushed forward into a ring",
    ),
    "lip_press": (
        "lips pressed together",
        "tight, thin lips",
        "lips clamped shut",
        "a pressed, narrow mouth",
    ),
    "jaw_drop": (
        "an open mouth",
        "the jaw dropped",
        "mouth hanging open",
        "lips parted wide",
    ),
}
assert set(ACTION_PHRASES) == set(Actions.names()), "every facial action needs phrases"

# A face with no visible action.
REST_PHRASES: tuple[str, ...] = (
    "a relaxed face with no movement",
    "a face at rest",
    "still features, nothing moving",
    "a blank, slack face",
    "a face with no muscle tension",
)

_OPENERS = ("a face with {}", "{}", "a person with {}", "close-up of a face: {}", "a drawn face showing {}")

# Class names and their inflections (stems matched at word starts, case-insensitive): a caption
# holding one would hand the text tower the class directly.
_CLASS_WORDS = re.compile(
    r"\b(happ\w*|sad\w*|neutral\w*|anger\w*|angr\w*|surpris\w*|disgust\w*|fear\w*|afraid|scar(e|ed|y)\b|"
    r"joy\w*|contempt\w*|emotion\w*|expression\w*)",
    re.IGNORECASE,
)


def class_word_problem(text: str) -> str | None:
    """The first class name (or inflection) in ``text``, or None."""
    m = _CLASS_WORDS.search(text)
    return m.group(0) if m else None


@dataclass(frozen=True)
class SceneAttributes:
    """What a caption may say besides the face's actions (none of it tied to expression)."""

    hair_style: int  # face.Identity.hair_style
    hair_dark: bool
    skin: str  # "light", "medium", "dark"
    background: str  # "bright", "dark", "colourful"
    light_side: str | None  # "left", "right" or None (even)
    tilt: str | None  # "left", "right" or None (upright)


_HAIR = {
    0: ("a bald head", "no hair"),
    1: ("short hair", "cropped hair"),
    2: ("short hair with a fringe", "bangs over the forehead"),
    3: ("long hair", "hair down to the shoulders"),
}


def _attribute_phrases(a: SceneAttributes, rng: np.random.Generator) -> list[str]:
    hair = str(rng.choice(_HAIR[a.hair_style]))
    if a.hair_style:
        hair = f"{'dark' if a.hair_dark else 'light brown'} {hair}"
    out = [hair, f"{a.skin} skin", f"a {a.background} background"]
    if a.light_side:
        out.append(str(rng.choice((f"lit from the {a.light_side}", f"light coming from the {a.light_side}"))))
    if a.tilt:
        out.append(str(rng.choice((f"head tilted to the {a.tilt}", f"head leaning {a.tilt}"))))
    return out


def visible_actions(actions: Actions) -> list[str]:
    return [name for name, v in zip(Actions.names(), actions.to_array(), strict=True) if v >= VISIBLE]


def _join(parts: list[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    if rng.random() < 0.5:
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return ", ".join(parts)


def _draw(names: list[str], attrs: SceneAttributes, rng: np.random.Generator, shortest: bool) -> str:
    if shortest:
        face = [min(ACTION_PHRASES[n], key=len) for n in rng.permutation(names)]
    else:
        face = [str(rng.choice(ACTION_PHRASES[n])) for n in rng.permutation(names)]
    face_text = _join(face, rng) if face else str(rng.choice(REST_PHRASES))
    text = str(rng.choice(_OPENERS)).format(face_text)
    extra = [] if shortest else [p for p in _attribute_phrases(attrs, rng) if rng.random() < 0.4]
    if extra:
        extra_text = ", ".join(extra[i] for i in rng.permutation(len(extra)))
        text = f"{extra_text}; {text}" if rng.random() < 0.3 else f"{text}; {extra_text}"
    return text


def caption(actions: Actions, attrs: SceneAttributes, rng: np.random.Generator) -> str:
    """One caption: every visible action in a random wording and order, plus a random subset of
    the scene attributes (before or after the face), at most :data:`MAX_WORDS` words where
    the face allows.

    The cap keeps captions within the short text context that pretraining trains at; a face
    with many actions gets another draw of wordings, and at worst each action's shortest
    phrase and no attributes (which may run a few words over) — never a caption that leaves an
    action out.
    """
    names = visible_actions(actions)
    for _ in range(8):
        text = _draw(names, attrs, rng, shortest=False)
        if len(text.split()) <= MAX_WORDS:
            return text
    return _draw(names, attrs, rng, shortest=True)
