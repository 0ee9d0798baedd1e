"""Classification metrics of the DFER benchmarks, all derived from one confusion matrix.

- WAR (weighted average recall) = accuracy = trace / total.
- UAR (unweighted average recall) = mean over classes of TP_c / (samples of class c).
  A class with no samples in the evaluated split has no recall; it is left out of the mean
  (and reported as NaN in the per-class list) rather than counted as 0 or 1.

Values are fractions in [0, 1]; tables print them as percentages like the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["confusion_matrix", "per_class_recall", "uar", "war", "is_better", "EvalMetrics"]


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows are true classes, columns predictions."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes})")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """(C,) recall per class; NaN for a class without samples."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.where(support > 0, support, 1), np.nan)


def uar(cm: np.ndarray) -> float:
    recall = per_class_recall(cm)
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else float("nan")


def war(cm: np.ndarray) -> float:
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


@dataclass
class EvalMetrics:
    """Everything one evaluation pass yields."""

    loss: float
    uar: float
    war: float
    recall: list[float]
    confusion: list[list[int]]
    count: int

    @classmethod
    def from_confusion(cls, cm: np.ndarray, loss_sum: float) -> EvalMetrics:
        cm = np.asarray(cm, dtype=np.int64)
        n = int(cm.sum())
        return cls(
            loss=float(loss_sum / n) if n else float("nan"),
            uar=uar(cm),
            war=war(cm),
            recall=[float(r) for r in per_class_recall(cm)],
            confusion=cm.tolist(),
            count=n,
        )

    def flat(self, prefix: str, class_names: list[str] | None = None) -> dict[str, float]:
        """``{prefix}_loss``, ``{prefix}_uar``, ``{prefix}_war`` and ``{prefix}_recall_<class>``."""
        out = {f"{prefix}_loss": self.loss, f"{prefix}_uar": self.uar, f"{prefix}_war": self.war}
        if class_names is not None:
            for name, r in zip(class_names, self.recall):
                out[f"{prefix}_recall_{name}"] = r
        return out


def is_better(value: float, best: float | None, metric: str) -> bool:
    """Whether ``value`` beats ``best`` for ``metric`` (loss: lower; uar/war: higher)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value < best if metric == "loss" else value > best
