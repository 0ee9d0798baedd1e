"""Pretraining captions describe the facial actions that show, in varied words, and never name a class."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.datasets import CLASSES_7
from pipeline.llm import load_description_set
from pipeline.pretrain.captions import ACTION_PHRASES, MAX_WORDS, REST_PHRASES, class_word_problem, visible_actions
from pipeline.pretrain.data import ACTION_GROUPS, render_chunk, render_sample
from pipeline.pretrain.run import INDEPENDENT_DESCRIPTIONS
from pipeline.synth.expressions import PROFILES
from pipeline.synth.face import Actions


@pytest.mark.parametrize(
    "word",
    [
        "happiness",
        "Happy",
        "sadly",
        "neutral",
        "angry",
        "anger",
        "surprised",
        "disgusting",
        "fearful",
        "afraid",
        "scared",
    ],
)
def test_the_class_word_check_catches_names_and_inflections(word):
    assert class_word_problem(f"a face, {word} look") is not None


def test_captions_name_every_visible_action_and_no_class():
    rng = np.random.default_rng(7)
    seen_wordings: dict[str, set[str]] = {}
    for _ in range(150):
        sample = render_sample(rng, image_size=32, captions_per_image=3)
        names = visible_actions(sample.actions)
        for text in sample.captions:
            assert class_word_problem(text) is None, text
            if len(text.split()) > MAX_WORDS:  # only the fallback: each action's shortest phrase
                assert all(min(ACTION_PHRASES[n], key=len) in text for n in names), text
            for name in names:
                hits = [p for p in ACTION_PHRASES[name] if p in text]
                assert hits, f"{name} shows but {text!r} does not say so"
                seen_wordings.setdefault(name, set()).update(hits)
            if not names:
                assert any(p in text for p in REST_PHRASES), text
        assert len(set(sample.captions)) > 1 or not names  # varied phrasing per image
    # Every action turned up, in more than one wording.
    assert set(seen_wordings) == set(Actions.names())
    assert all(len(w) >= 2 for w in seen_wordings.values()), seen_wordings


def test_actions_are_random_combinations_not_the_class_profiles():
    rng = np.random.default_rng(3)
    drawn = [
        frozenset(visible_actions(render_sample(rng, image_size=32, captions_per_image=1).actions)) for _ in range(120)
    ]
    combos = set(drawn)
    profiles = {frozenset(n for n, w in p.items() if w >= 0.5) for p in PROFILES.values()} - {frozenset()}
    assert len(combos) > 60  # many different combinations ...
    assert sum(d in profiles for d in drawn) <= 6  # ... a class's main actions exactly only by chance
    for combo in combos:  # never two actions of one exclusive group
        assert all(len(combo & set(group)) <= 1 for group in ACTION_GROUPS)


def test_chunks_are_deterministic_and_independent_of_each_other():
    a_img, a_cap = render_chunk(5, 2, 6, image_size=32, crop_size=40, captions_per_image=2)
    b_img, b_cap = render_chunk(5, 2, 6, image_size=32, crop_size=40, captions_per_image=2)
    c_img, _ = render_chunk(5, 3, 6, image_size=32, crop_size=40, captions_per_image=2)
    assert a_img.shape == (6, 32, 32, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    assert not np.array_equal(a_img, c_img)


@pytest.mark.parametrize("source", ["default-7", str(INDEPENDENT_DESCRIPTIONS)])
def test_the_phrase_bank_does_not_copy_the_description_sets(source):
    """The bank may share single action words (cheeks, nose) but no phrase of three words or more."""
    texts = [t for ds in load_description_set(source, list(CLASSES_7)).values() for t in ds]
    bare = [p.removeprefix("a ").removeprefix("an ").removeprefix("the ") for ps in ACTION_PHRASES.values() for p in ps]
    copied = [p for p in bare + list(REST_PHRASES) if len(p.split()) >= 3 and any(p in t for t in texts)]
    assert not copied, copied
