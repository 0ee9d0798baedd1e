"""Metric edge cases with hand-computed values: single-sample classes, empty splits (NaN, and no
warning on the way), label checks at their bounds, and inputs given as floats."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from pipeline.metrics import EvalMetrics, confusion_matrix, per_class_recall, uar, war


def test_a_class_with_one_sample_has_a_recall():
    # class 0: 2 of 3 right; class 1: its one sample right; class 2: its one sample wrong
    cm = confusion_matrix([0, 0, 0, 1, 2], [0, 0, 1, 1, 0], 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert per_class_recall(cm).tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert uar(cm) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert war(cm) == pytest.approx(3 / 5)


def test_an_empty_split_gives_nan_without_warnings():
    empty = np.zeros((3, 3), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" / "invalid value" on the way
        assert math.isnan(uar(empty)) and math.isnan(war(empty))
        assert all(math.isnan(r) for r in per_class_recall(empty))
        m = EvalMetrics.from_confusion(empty, loss_sum=0.0)
    assert math.isnan(m.loss) and math.isnan(m.uar) and math.isnan(m.war) and m.count == 0
    assert m.confusion == [[0, 0, 0]] * 3


def test_from_confusion_fills_every_field_from_the_matrix():
    cm = [[3, 1], [2, 4]]  # by hand: recall 3/4 and 4/6, WAR 7/10
    m = EvalMetrics.from_confusion(np.array(cm, dtype=np.float64), loss_sum=5.0)  # e.g. summed as floats
    assert m.confusion == cm and all(type(v) is int for row in m.confusion for v in row)
    assert type(m.count) is int and m.count == 10
    assert m.loss == pytest.approx(0.5)
    assert m.war == pytest.approx(0.7)
    assert m.uar == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m.recall == pytest.approx([0.75, 4 / 6])


def test_float_labels_are_counted_as_class_indices():
    cm = confusion_matrix(np.array([0.0, 1.0, 1.0]), np.array([0.0, 1.0, 0.0]), 2)
    assert cm.tolist() == [[1, 0], [1, 1]] and cm.dtype == np.int64
    assert confusion_matrix([0, 1], np.array([1.0, 1.0]), 2).tolist() == [[0, 1], [0, 1]]


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        ([0, 1, 2], [0, 1], "y_true and y_pred differ in length: (3,) vs (2,)"),
        ([0, 3], [0, 1], "y_true has labels outside [0, 3)"),  # the first label past the end
        ([-1, 1], [0, 1], "y_true has labels outside [0, 3)"),  # negative, the max in range
        ([0, 1], [0, 3], "y_pred has labels outside [0, 3)"),
        ([0, 1], [-1, 2], "y_pred has labels outside [0, 3)"),
    ],
)
def test_bad_labels_are_refused_with_the_argument_named(y_true, y_pred, message):
    with pytest.raises(ValueError) as err:
        confusion_matrix(y_true, y_pred, 3)
    assert str(err.value) == message


def test_the_last_class_index_is_accepted():
    assert confusion_matrix([2], [2], 3).tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert confusion_matrix([], [], 3).tolist() == [[0, 0, 0]] * 3
