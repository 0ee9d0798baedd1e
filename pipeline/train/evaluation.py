"""One evaluation pass over batches of clips: confusion matrix and summed cross-entropy.

Shared by the training workers (each evaluates its share; the sums are all-reduced) and by
``dferclip evaluate`` (one process). Metrics are derived in :mod:`pipeline.metrics`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.train.transforms import model_layout

__all__ = ["autocast_for", "evaluate_batches"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(device: torch.device, precision: str):
    """Mixed precision on GPU only; CPU training stays fp32 (CPU autocast is slower here)."""
    if device.type == "cuda" and precision in _DTYPES:
        return torch.autocast(device_type="cuda", dtype=_DTYPES[precision])
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[dict], num_classes: int, device: torch.device,
                     precision: str = "fp32", on_batch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``batches`` ({"video": (B, T, S, S, 3) from the data path, "label": (B,)}).

    Returns (confusion (C, C) float64, loss_sum () float64) as tensors on ``device`` so that a
    distributed caller can all-reduce them directly. ``on_batch(logits, batch)`` sees each batch
    (per-clip predictions in ``dferclip evaluate``).
    """
    model.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        video = model_layout(batch["video"]).to(device, non_blocking=True)  # (B, T, 3, S, S)
        labels = batch["label"] if torch.is_tensor(batch["label"]) else torch.from_numpy(np.array(batch["label"]))
        labels = labels.to(device=device, dtype=torch.long)
        with autocast_for(device, precision):
            logits = model(video)  # (B, C)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        preds = logits.argmax(dim=1)
        confusion += torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).double()
        if on_batch is not None:
            on_batch(logits, batch)
    return confusion.view(num_classes, num_classes), loss_sum


def evaluate_model(model: torch.nn.Module, dataset, num_classes: int, *, batch_size: int, device: torch.device,
                   precision: str = "fp32") -> tuple[np.ndarray, float, list[dict]]:
    """Evaluate in this process over a Ray Dataset of clips with ids (``keep_ids=True``).

    Returns (confusion (C, C) int64, loss_sum, per-clip predictions).
    """
    predictions: list[dict] = []

    def record(logits: torch.Tensor, batch: dict) -> None:
        probs = logits.softmax(dim=1).cpu().numpy()
        for cid, label, p in zip(batch["clip_id"], np.asarray(batch["label"]), probs):
            predictions.append({"clip_id": str(cid), "label": int(label), "pred": int(p.argmax()),
                                "confidence": float(p.max())})

    model.to(device)
    batches = dataset.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2)
    cm, loss_sum = evaluate_batches(model, batches, num_classes, device, precision, on_batch=record)
    return cm.cpu().numpy().round().astype(np.int64), float(loss_sum.cpu()), predictions
