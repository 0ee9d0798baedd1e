"""One evaluation pass over batches of clips: confusion matrix and summed cross-entropy.

Shared by the training recipe (each worker evaluates its share; the sums are all-reduced), the
frozen-encoder trial (cached embeddings) and ``dferclip evaluate`` (one process). Metrics are
derived in :mod:`pipeline.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.train.device_augment import augment_batch
from pipeline.train.precision import autocast_for
from pipeline.train.transforms import model_layout

__all__ = ["autocast_for", "frame_pairs", "evaluate_pairs", "evaluate_model"]


def frame_pairs(batches: Iterable[dict], device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(video (B, T, 3, S, S), labels (B,) long) on ``device`` from the data path's batches
    ({"video": (B, T, S, S, 3), "label": (B,)}, torch or numpy): uint8, or float in [0, 1] when
    the batch carries its clips' draws (``"augment"``, ``train.augment.on_device``), which are
    applied here on ``device`` to the decoded canvases (:func:`~pipeline.train.device_augment.augment_batch`)."""
    for batch in batches:
        video = batch["video"]
        if isinstance(video, np.ndarray) and not video.flags.writeable:
            video = video.copy()  # numpy batches from Ray Data are read-only views (evaluation only)
        if "augment" in batch:
            video = augment_batch(
                torch.as_tensor(video).to(device, non_blocking=True), torch.as_tensor(batch["augment"])
            )
        else:
            video = model_layout(video).to(device, non_blocking=True)
        labels = batch["label"] if torch.is_tensor(batch["label"]) else torch.tensor(np.asarray(batch["label"]))
        yield video, labels.to(device=device, dtype=torch.long)


@torch.no_grad()
def evaluate_pairs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    module: torch.nn.Module,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    device: torch.device,
    precision: str = "fp32",
    on_batch=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``forward`` (``module`` or one of its methods) over (inputs, labels) pairs.

    Returns (confusion (C, C) float64, loss_sum () float64) as tensors on ``device`` so that a
    distributed caller can all-reduce them directly. ``on_batch(logits)`` sees each batch's
    logits (per-clip predictions in ``dferclip evaluate``).
    """
    module.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for inputs, labels in pairs:
        with autocast_for(device, precision):
            logits = forward(inputs)  # (B, C)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        preds = logits.argmax(dim=1)
        confusion += torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).double()
        if on_batch is not None:
            on_batch(logits)
    return confusion.view(num_classes, num_classes), loss_sum


def evaluate_model(
    model: torch.nn.Module, dataset, num_classes: int, *, batch_size: int, device: torch.device, precision: str = "fp32"
) -> tuple[np.ndarray, float, list[dict], np.ndarray]:
    """Evaluate in this process over a Ray Dataset of clips with ids (``keep_ids=True``).

    Returns (confusion (C, C) int64, loss_sum, per-clip predictions, logits (N, C) float32 in the
    predictions' order: what calibration needs).
    """
    ids: list[str] = []
    labels: list[int] = []
    logits_seen: list[np.ndarray] = []

    def pairs():
        for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
            ids.extend(str(c) for c in batch["clip_id"])
            labels.extend(int(v) for v in np.asarray(batch["label"]))
            yield from frame_pairs([batch], device)

    model.to(device)
    cm, loss_sum = evaluate_pairs(
        model,
        model,
        pairs(),
        num_classes,
        device,
        precision,
        on_batch=lambda logits: logits_seen.append(logits.cpu().numpy()),
    )
    z = np.concatenate(logits_seen) if logits_seen else np.zeros((0, num_classes), dtype=np.float32)
    p = torch.from_numpy(z).softmax(dim=1).numpy()
    predictions = [
        {"clip_id": cid, "label": label, "pred": int(q.argmax()), "confidence": float(q.max())}
        for cid, label, q in zip(ids, labels, p)
    ]
    return cm.cpu().numpy().round().astype(np.int64), float(loss_sum.cpu()), predictions, z
