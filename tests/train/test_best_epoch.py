"""Best-epoch comparison: lower is better for loss, higher for UAR and WAR, ties keep the earlier
epoch, and an evaluation that produced no number (NaN, None) never becomes the best."""

from __future__ import annotations

import math

import pytest

from pipeline.metrics import is_better

NAN = math.nan


@pytest.mark.parametrize(
    "value, best, metric, expected",
    [
        (0.40, 0.50, "loss", True),  # lower loss wins
        (0.60, 0.50, "loss", False),
        (0.50, 0.50, "loss", False),  # a tie keeps the earlier epoch
        (0.60, 0.50, "uar", True),  # higher recall wins
        (0.40, 0.50, "uar", False),
        (0.50, 0.50, "uar", False),
        (0.71, 0.70, "war", True),
        (0.69, 0.70, "war", False),
        (0.70, 0.70, "war", False),
        (0.90, None, "loss", True),  # the first evaluated epoch is the best so far
        (0.10, None, "uar", True),
        (0.90, NAN, "loss", True),  # a NaN best (empty split) is replaced by any number
        (NAN, 0.50, "loss", False),  # a NaN never wins, whichever direction the metric goes
        (NAN, 0.50, "uar", False),
        (NAN, None, "uar", False),
        (None, 0.5, "war", False),
    ],
)
def test_is_better(value, best, metric, expected):
    assert is_better(value, best, metric) is expected
