"""Calibration numerics (pipeline/calibration.py) against values worked out by hand, and the
temperature record a checkpoint carries (pipeline/model/checkpoint.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import calibration as cal
from pipeline.errors import UserError


def _probs(rows: list[tuple[float, int, bool]], classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Rows (top probability, predicted class, right?) -> probs (N, C) and labels (N,). The rest of
    each row's mass is spread evenly over the other classes (each below the top one)."""
    probs, labels = [], []
    for top, pred, right in rows:
        p = np.full(classes, (1.0 - top) / (classes - 1))
        p[pred] = top
        probs.append(p)
        labels.append(pred if right else (pred + 1) % classes)
    return np.array(probs), np.array(labels)


def test_ece_of_a_hand_worked_example_with_five_bins():
    # Bins of width 0.2. (0.8, 1]: 0.95 right, 0.85 wrong -> accuracy 1/2, confidence 0.9, gap 0.4.
    # (0.6, 0.8]: 0.7 right, 0.65 right, 0.75 wrong -> accuracy 2/3, confidence 0.7, gap 1/30.
    # (0.4, 0.6]: 0.5 wrong -> gap 0.5. ECE = 2/6 * 0.4 + 3/6 * 1/30 + 1/6 * 0.5 = 14/60.
    probs, labels = _probs(
        [(0.95, 0, True), (0.85, 1, False), (0.7, 2, True), (0.65, 0, True), (0.75, 1, False), (0.5, 2, False)]
    )
    rel = cal.reliability(probs, labels, bins=5)
    assert rel.count == [0, 0, 1, 3, 2]
    assert rel.accuracy[2:] == pytest.approx([0.0, 2 / 3, 0.5])
    assert rel.confidence[2:] == pytest.approx([0.5, 0.7, 0.9])
    assert np.isnan(rel.accuracy[0]) and np.isnan(rel.confidence[1])  # empty bins
    assert cal.expected_calibration_error(probs, labels, bins=5) == pytest.approx(14 / 60)


def test_default_is_fifteen_bins_and_a_bin_holds_its_upper_edge():
    # 0.90 (right) and 0.92 (wrong) share the 15-bin (13/15, 14/15]: |1/2 - 0.91| = 0.41.
    # With 10 bins they would be apart: (|1 - 0.9| + |0 - 0.92|) / 2 = 0.51.
    probs, labels = _probs([(0.90, 0, True), (0.92, 1, False)])
    assert cal.BINS == 15
    assert cal.expected_calibration_error(probs, labels) == pytest.approx(0.41)
    assert cal.expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.51)
    # 0.5 is the upper edge of (0.25, 0.5] with 4 bins (exact in binary), not the lower one of the next.
    probs, labels = _probs([(0.5, 0, True)])
    assert cal.reliability(probs, labels, bins=4).count == [0, 1, 0, 0]


def test_a_calibrated_set_has_zero_ece():
    # Two clips at 0.5 confidence, one right: accuracy equals confidence in the only bin.
    probs, labels = _probs([(0.5, 0, True), (0.5, 1, False)])
    assert cal.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_nll_and_softmax_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 0])
    # -log(e^2 / (e^2 + 1)) = log(1 + e^-2); -log(1 / (1 + e)) = log(1 + e)
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.e)) / 2
    assert cal.nll(logits, labels) == pytest.approx(expected)
    # at T = 2 the logits halve: log(1 + e^-1) and log(1 + e^0.5)
    assert cal.nll(logits, labels, 2.0) == pytest.approx((np.log1p(np.exp(-1.0)) + np.log1p(np.exp(0.5))) / 2)
    assert cal.softmax(logits, 2.0)[0] == pytest.approx([1 / (1 + np.exp(-1.0)), 1 / (1 + np.e)])


@pytest.mark.parametrize("true_t", [2.5, 0.6])
def test_fitting_recovers_a_known_temperature(true_t):
    """Labels drawn from softmax(z); the model shows z * true_t, so T = true_t undoes it."""
    rng = np.random.default_rng(7)
    z = rng.normal(0.0, 2.0, (6000, 5))
    p = cal.softmax(z)
    labels = (p.cumsum(axis=1) > rng.random((len(z), 1))).argmax(axis=1)
    shown = z * true_t
    t = cal.fit_temperature(shown, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    # the fit is the NLL minimum: nudging T either way costs
    assert cal.nll(shown, labels, t) < min(cal.nll(shown, labels, t * 1.1), cal.nll(shown, labels, t / 1.1))
    # and it calibrates: ECE falls well below the over/under-confident model's
    assert cal.expected_calibration_error(cal.softmax(shown, t), labels) < 0.5 * cal.expected_calibration_error(
        cal.softmax(shown), labels
    )


def test_fit_stays_within_bounds_and_refuses_empty_or_non_finite_input():
    # Every clip right by a wide margin: the NLL keeps falling as T -> 0 (sharper), never below T_MIN.
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert cal.T_MIN <= cal.fit_temperature(logits, np.array([0, 1])) < 0.5
    # Every clip confidently wrong: the NLL falls as T grows (towards uniform), never above T_MAX.
    assert 5.0 < cal.fit_temperature(logits, np.array([1, 0])) <= cal.T_MAX
    with pytest.raises(UserError, match="no clips"):
        cal.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(UserError, match="non-finite"):
        cal.fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))


def test_summary_reports_before_and_after():
    logits = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    labels = np.array([0, 1, 1, 0])  # 3 of 4 right, all at confidence sigmoid(4) = 0.982
    s = cal.summary(logits, labels, 4.0)
    conf = 1 / (1 + np.exp(-4.0))
    assert s["uncalibrated"]["ece"] == pytest.approx(conf - 0.75)
    assert s["ece"] == pytest.approx(abs(1 / (1 + np.exp(-1.0)) - 0.75))  # at T = 4: sigmoid(1) = 0.731
    assert s["nll"] == pytest.approx(cal.nll(logits, labels, 4.0)) and s["bins"] == 15
    assert s["reliability"]["calibrated"]["count"] != s["reliability"]["uncalibrated"]["count"]


def test_reliability_png_is_a_png():
    probs, labels = _probs([(0.9, 0, True), (0.6, 1, False)])
    rel = cal.reliability(probs, labels)
    assert cal.reliability_png({"a": rel, "b": rel}, "t").startswith(b"\x89PNG\r\n\x1a\n")


def test_checkpoint_stores_and_reads_the_temperature(tmp_path):
    from pipeline.model.build import build_model
    from pipeline.model.checkpoint import calibration_temperature, load_checkpoint, save_checkpoint, store_calibration
    from tests.micro import micro_model

    model = build_model(micro_model(text_source="class_names"), ["happiness", "sadness"], load_weights=False)
    path = save_checkpoint(model, tmp_path / "model.pt", {"epoch": 3})
    _, extra = load_checkpoint(path)
    assert calibration_temperature(extra) == 1.0  # none stored
    store_calibration(path, {"temperature": 1.75, "split": "val"}, tmp_path / "cal.pt")
    reloaded, extra = load_checkpoint(tmp_path / "cal.pt")
    assert calibration_temperature(extra) == 1.75 and extra["epoch"] == 3  # the rest is kept
    video = torch.randint(0, 256, (1, 8, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(reloaded(video), model.eval()(video))  # weights untouched
    _, extra = load_checkpoint(path)
    assert calibration_temperature(extra) == 1.0  # --out left the original alone
    with pytest.raises(UserError, match="no valid temperature"):
        calibration_temperature({"calibration": {"temperature": -1.0}}, "m.pt")
    with pytest.raises(UserError, match="not a DFER-CLIP checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "other.pt")
        store_calibration(tmp_path / "other.pt", {"temperature": 2.0})
