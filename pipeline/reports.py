"""Plots of a training or evaluation run, rendered to PNG bytes (matplotlib, Agg backend).

Returning bytes instead of writing files lets the caller store them through
:class:`pipeline.storage.Storage` (atomic, local or object storage).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["confusion_png", "curves_png"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display anywhere this runs (Ray workers, CI)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def confusion_png(cm, class_names: Sequence[str], title: str = "") -> bytes:
    """Row-normalised confusion matrix (recall per true class) with the raw counts in each cell."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.int64)
    support = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros(cm.shape, dtype=np.float64), where=support > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{norm[i, j] * 100:.0f}%\n({cm[i, j]})",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="recall")
    if title:
        ax.set_title(title)
    return _png(fig)


def curves_png(history: Sequence[dict], title: str = "") -> bytes:
    """Loss (left) and UAR/WAR (right) per epoch for every split present in ``history`` rows."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))

    def series(key):
        pts = [
            (row["epoch"], row[key])
            for row in history
            if row.get(key) is not None and not (isinstance(row[key], float) and math.isnan(row[key]))
        ]
        return zip(*pts) if pts else ((), ())

    for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
        xs, ys = series(f"{split}_loss")
        if xs:
            ax_loss.plot(xs, ys, style, marker="o", label=f"{split} loss")
        for metric, color in (("uar", "tab:blue"), ("war", "tab:orange")):
            xs, ys = series(f"{split}_{metric}")
            if xs:
                ax_acc.plot(
                    xs, [100 * y for y in ys], style, marker="o", color=color, label=f"{split} {metric.upper()}"
                )
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("%")
    for ax in (ax_loss, ax_acc):
        if epochs:
            ax.set_xticks(sorted(set(epochs)) if len(set(epochs)) <= 20 else ax.get_xticks())
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _png(fig)
