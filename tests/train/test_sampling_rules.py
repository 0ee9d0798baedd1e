"""The frame-sampling rule at its edges, with indices worked out by hand (T = 1, n = T, n = T + 1)
and the exact errors for what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.train.sampling import sample_indices


def test_one_frame_per_clip_is_allowed():
    assert sample_indices(10, 1, False).tolist() == [5]  # the middle of the one segment [0, 10)
    drawn = {int(sample_indices(10, 1, True, np.random.default_rng(s))[0]) for s in range(200)}
    assert drawn == set(range(10))  # any frame of the clip


def test_exactly_t_frames_take_each_frame_once():
    assert sample_indices(8, 8, False).tolist() == list(range(8))
    assert sample_indices(8, 8, True, np.random.default_rng(0)).tolist() == list(range(8))


def test_one_frame_more_than_t_gives_one_two_frame_segment():
    # n = 5, T = 4: segments floor(i * 5 / 4) -> [0,1) [1,2) [2,3) [3,5); eval middles 5/8 + 5/4 i
    assert sample_indices(5, 4, False).tolist() == [0, 1, 3, 4]
    draws = {tuple(sample_indices(5, 4, True, np.random.default_rng(s)).tolist()) for s in range(100)}
    assert draws == {(0, 1, 2, 3), (0, 1, 2, 4)}


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 4, False), "a clip needs at least one frame, got 0"),
        ((5, 0, False), "T must be >= 1, got 0"),
        ((5, -2, False), "T must be >= 1, got -2"),
        ((20, 4, True), "training-mode sampling needs an rng"),
    ],
)
def test_refusals_say_what_is_wrong(args, message):
    with pytest.raises(ValueError) as err:
        sample_indices(*args)
    assert str(err.value) == message
