"""Confidence calibration: expected calibration error, reliability diagrams, temperature scaling.

A classifier is calibrated when, of the clips it predicts with confidence 0.8, 80 % are right.
Fine-tuned CLIP models at the paper's fixed logit scale (100) are usually over-confident, so the
probabilities ``predict`` prints read higher than the model's real hit rate.

- **ECE** (Guo et al., 2017): the clips are put in ``bins`` equal-width bins of their confidence
  (the top class's softmax probability), bin ``m`` holding confidences in ``((m-1)/M, m/M]``;
  ECE = sum over bins of (clips in bin / all clips) * |accuracy in bin - mean confidence in bin|.
  The standard ``M = 15`` is the default everywhere in this project.
- **Temperature scaling**: one scalar ``T > 0`` divides the logits before the softmax. It leaves
  every argmax, hence UAR and WAR, unchanged and only rescales confidences. ``T`` is fitted by
  minimising the mean negative log-likelihood on held-out clips (L-BFGS on ``log T``, so ``T``
  stays positive), bounded to [:data:`T_MIN`, :data:`T_MAX`].

Used by ``dferclip evaluate`` (ECE and the diagram in every evaluation) and ``dferclip
calibrate`` (fits ``T`` and stores it in the checkpoint, see :mod:`stages.calibrate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError

__all__ = [
    "BINS",
    "T_MIN",
    "T_MAX",
    "Reliability",
    "reliability",
    "expected_calibration_error",
    "softmax",
    "nll",
    "fit_temperature",
    "summary",
    "reliability_png",
    "run_calibrate",
]

BINS = 15  # equal-width confidence bins, the standard of Guo et al. (2017)
# Bounds of a fitted temperature: a set the model gets entirely right drives the NLL-optimal T
# towards 0 (ever sharper); the bound keeps such a fit finite and is reported when hit.
T_MIN, T_MAX = 0.05, 20.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64 (stable: the row max is subtracted)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (cross-entropy) of ``labels`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    m = z.max(axis=1, keepdims=True)
    log_norm = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


@dataclass
class Reliability:
    """Per-bin statistics of one set of predictions: what a reliability diagram draws."""

    edges: list[float]  # M + 1 bin edges, 0 .. 1
    count: list[int]  # clips per bin
    confidence: list[float]  # mean confidence per bin (NaN for an empty bin)
    accuracy: list[float]  # fraction right per bin (NaN for an empty bin)

    @property
    def ece(self) -> float:
        n = sum(self.count)
        if n == 0:
            return float("nan")
        return float(sum(c / n * abs(a - f) for c, a, f in zip(self.count, self.accuracy, self.confidence) if c > 0))

    def to_dict(self) -> dict:
        return {"edges": self.edges, "count": self.count, "confidence": self.confidence, "accuracy": self.accuracy}


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin ``probs`` (N, C) by their top probability into ``bins`` equal-width bins ``(lo, hi]``."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be (N, C) with N = len(labels); got {probs.shape} and {labels.shape}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    right = (probs.argmax(axis=1) == labels) if len(probs) else np.zeros(0, dtype=bool)
    # (lo, hi]: searchsorted(side="left") puts a confidence equal to an edge in the bin below it.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        acc = np.bincount(idx, weights=right.astype(np.float64), minlength=bins) / count
    return Reliability(
        [float(e) for e in edges],
        [int(c) for c in count],
        [float(v) for v in mean_conf],
        [float(v) for v in acc],
    )


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE of ``probs`` (N, C) against ``labels`` (N,) with ``bins`` equal-width confidence bins."""
    return reliability(probs, labels, bins).ece


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising the mean NLL of ``labels`` under ``softmax(logits / T)``.

    L-BFGS (strong Wolfe line search) on ``log T`` from ``T = 1``, in float64; the result is
    clipped to [T_MIN, T_MAX]."""
    import torch

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits must be (N, C) with N = len(labels); got {logits.shape} and {labels.shape}")
    if len(labels) == 0:
        raise UserError("calibrate: no clips to fit a temperature on")
    if not np.isfinite(logits).all():
        raise UserError("calibrate: the model produced non-finite logits; cannot fit a temperature")
    z = torch.from_numpy(logits)
    y = torch.from_numpy(labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")
    lo, hi = float(np.log(T_MIN)), float(np.log(T_MAX))

    def closure():
        opt.zero_grad()
        # Clamped inside the loss too, so the line search never explores T = exp(+-large).
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(lo - 1, hi + 1).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(np.exp(log_t.item()), T_MIN, T_MAX))


def summary(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = BINS) -> dict:
    """ECE and NLL of ``logits`` before (T = 1) and at ``temperature``, and both bin tables.

    ``{"bins", "temperature", "ece", "nll", "uncalibrated": {"ece", "nll"}, "reliability":
    {"uncalibrated": ..., "calibrated": ...}}``; ``ece``/``nll`` are at ``temperature``."""
    raw = reliability(softmax(logits), labels, bins) if len(labels) else None
    cal = reliability(softmax(logits, temperature), labels, bins) if len(labels) else None
    nan = float("nan")
    return {
        "bins": bins,
        "temperature": float(temperature),
        "ece": cal.ece if cal else nan,
        "nll": nll(logits, labels, temperature),
        "uncalibrated": {"ece": raw.ece if raw else nan, "nll": nll(logits, labels)},
        "reliability": {
            "uncalibrated": raw.to_dict() if raw else None,
            "calibrated": cal.to_dict() if cal and temperature != 1.0 else None,
        },
    }


def reliability_png(curves: dict[str, Reliability], title: str = "") -> bytes:
    """A reliability diagram per entry of ``curves`` (e.g. ``{"T = 1": ..., "T = 1.8": ...}``), side by
    side: accuracy per confidence bin as bars against the diagonal of perfect calibration, the
    gap to the bin's mean confidence shaded, clip counts under the bars, ECE in the panel title."""
    from pipeline.reports import _png, _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 4.4), squeeze=False)
    for ax, (label, rel) in zip(axes[0], curves.items()):
        edges = np.asarray(rel.edges)
        width = np.diff(edges)
        count = np.asarray(rel.count)
        acc = np.nan_to_num(np.asarray(rel.accuracy))
        conf = np.asarray(rel.confidence)
        has = count > 0
        ax.bar(
            edges[:-1][has], acc[has], width=width[has], align="edge", color="tab:blue", edgecolor="k", label="accuracy"
        )
        gap_lo = np.minimum(acc, np.nan_to_num(conf))
        gap = np.abs(np.nan_to_num(conf) - acc)
        ax.bar(
            edges[:-1][has],
            gap[has],
            bottom=gap_lo[has],
            width=width[has],
            align="edge",
            color="tab:red",
            alpha=0.3,
            hatch="//",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        for x, w, c in zip(edges[:-1][has], width[has], count[has]):
            ax.text(x + w / 2, 0.01, str(int(c)), ha="center", va="bottom", fontsize=6, rotation=90, color="white")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"confidence ({len(count)} equal-width bins)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{label}: ECE {100 * rel.ece:.2f}%", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _png(fig)


def run_calibrate(
    cfg,
    checkpoint: str,
    *,
    split: str = "val",
    fold: int | None = None,
    out: str | None = None,
    storage=None,
) -> dict:
    """``dferclip calibrate``: fit a temperature on ``split`` of ``fold`` and store it in the checkpoint.

    ``split``: ``val`` (default) is the hold-out carved from the fold's training clips by
    ``train.val_fraction`` and ``train.seed``, exactly as training with ``train.selection:
    validation`` carves it; ``train`` or ``test`` name those splits. ``fold``: default the one the
    checkpoint records, else ``train.fold``. ``out``: write the calibrated checkpoint there instead
    of in place. Also writes ``<storage.root>/evaluate/<name>-calibrate-<time>/``: calibration.json
    (the stored record) and reliability.png (before and after). Returns the record.
    """
    import json
    import logging
    from datetime import UTC, datetime
    from pathlib import Path

    from pipeline.evaluate import EVALUATE_DIR, SPLITS, score, split_dataset
    from pipeline.model.checkpoint import load_checkpoint, store_calibration
    from pipeline.names import to_name
    from pipeline.raycluster import ensure_ray
    from pipeline.storage import Storage

    log = logging.getLogger(__name__)
    if split not in SPLITS:
        raise UserError(f"--split: expected val, train or test, got {split!r}")
    storage = storage or Storage(cfg.storage.root)
    model, extra = load_checkpoint(checkpoint)
    if fold is None:
        fold = extra.get("fold") if isinstance(extra.get("fold"), int) else cfg.train.fold
    if split == "val" and extra.get("selection") == "test":
        log.warning(
            "%s was trained with train.selection=test: its whole training split, the val clips included, "
            "was trained on, so a temperature fitted on them corrects too little; prefer a checkpoint "
            "trained with train.selection=validation",
            checkpoint,
        )
    elif split != "val":
        log.warning(
            "fitting the temperature on the %s split: an ECE measured on these clips afterwards is optimistic", split
        )
    ensure_ray()
    ids, dataset = split_dataset(cfg, storage, model, fold, split)
    _cm, _loss, predictions, logits = score(cfg, model, dataset, len(model.class_names))
    labels = np.asarray([p["label"] for p in predictions], dtype=np.int64)
    t = fit_temperature(logits, labels)
    before, after = summary(logits, labels, 1.0), summary(logits, labels, t)
    record = {
        "temperature": t,
        "at_bound": bool(t <= T_MIN or t >= T_MAX),
        "dataset": cfg.dataset.name,
        "fold": int(fold),
        "split": split,
        "val_fraction": cfg.train.val_fraction if split == "val" else None,
        "seed": cfg.train.seed if split == "val" else None,
        "clips": len(labels),
        "bins": BINS,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "nll_before": before["nll"],
        "nll_after": after["nll"],
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    written = store_calibration(checkpoint, record, out)
    name = f"{to_name(Path(str(checkpoint)).parent.name, 'checkpoint')}-calibrate-{datetime.now():%Y%m%d-%H%M%S-%f}"
    folder = (EVALUATE_DIR, name)
    storage.write_text(json.dumps({**record, "checkpoint": str(written)}, indent=2) + "\n", *folder, "calibration.json")
    rel_before = Reliability(**before["reliability"]["uncalibrated"])
    rel_after = Reliability(**(after["reliability"]["calibrated"] or before["reliability"]["uncalibrated"]))
    png = reliability_png(
        {"before (T = 1)": rel_before, f"after (T = {t:.3g})": rel_after},
        f"{cfg.dataset.name} fold {fold} {split}: {len(labels)} clips",
    )
    storage.write_bytes(png, *folder, "reliability.png")
    log.info(
        "calibrated on %s fold %d %s (%d clips): T = %.4g%s; ECE %.2f%% -> %.2f%%, NLL %.4f -> %.4f "
        "(accuracy unchanged) -> %s",
        cfg.dataset.name,
        fold,
        split,
        len(labels),
        t,
        " (at its bound)" if record["at_bound"] else "",
        100 * record["ece_before"],
        100 * record["ece_after"],
        record["nll_before"],
        record["nll_after"],
        written,
    )
    return {**record, "checkpoint": str(written), "output_dir": storage.uri(*folder)}
