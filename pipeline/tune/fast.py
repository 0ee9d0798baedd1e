"""The frozen-encoder trial: temporal model + prompt learner trained on cached frame embeddings.

One process per trial, no Ray Train: the image encoder is never run (its embeddings come
from :mod:`pipeline.tune.embeddings`), so a step costs the temporal Transformer on (B, T, E)
plus the frozen text tower that turns the learnable context into class embeddings.

Everything else follows the training loop (:mod:`pipeline.train.worker`) so that trials are
comparable with full runs: the same split plan (:func:`~pipeline.train.data.plan_splits`),
the same frame sampling rule and per-clip randomness (:func:`~pipeline.train.sampling.sample_indices`
with :func:`~pipeline.train.transforms.clip_rng` — a clip sees the same frames in epoch k
here as in a full run), the same optimiser, learning rates, schedule and initialisation seed,
the same metrics (:mod:`pipeline.metrics`: loss, UAR, WAR from one confusion matrix) and the same
reported keys (``epoch``, ``train_loss``, ``{split}_uar`` ...). What differs: no augmentation
(it acts on pixels), and the image encoder stays frozen (docs/tune.md).

Each epoch is checkpointed through Ray Tune (a few MB: only the trainable tensors), so a trial
that ASHA pauses or an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig, TrainConfig
from pipeline.metrics import EvalMetrics, confusion_matrix, is_better
from pipeline.model.build import build_model
from pipeline.train.data import plan_splits
from pipeline.train.optim import build_optimizer, build_scheduler
from pipeline.train.sampling import sample_indices
from pipeline.train.transforms import clip_rng
from pipeline.tune.embeddings import EmbeddingSet
from pipeline.tune.space import apply_params

__all__ = ["FastSetup", "fast_trial", "build_frozen_model"]

STATE_FILE = "state.pt"


@dataclass
class FastSetup:
    """What every trial of a frozen-encoder sweep shares (the swept values come per trial)."""

    model: ModelConfig
    train: TrainConfig
    class_names: list[str]
    descriptions: dict[str, list[str]] | None
    fold: int
    swept: list[str]
    where: str = "<embeddings>"  # names the data in error messages


def build_frozen_model(model_cfg: ModelConfig, train_cfg: TrainConfig, class_names: list[str],
                       descriptions: dict[str, list[str]] | None):
    """(model without its image encoder, optimiser parameter groups), initialised as the train loop does."""
    torch.manual_seed(train_cfg.seed)  # the same initial temporal model and context as a full run
    model = build_model(model_cfg, class_names, descriptions)
    groups = model.param_groups(train_cfg.lr_image_encoder, train_cfg.lr_temporal, train_cfg.lr_prompt,
                                train_image_encoder=False)
    model.image_encoder = nn.Identity()  # never run here; frees its memory (88M parameters at ViT-B/32)
    return model, groups


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n in keep}


def _gather(data: EmbeddingSet, rows: np.ndarray, T: int, train: bool, seed: int, epoch: int) -> torch.Tensor:
    """(B, T, E) frame embeddings of clips ``rows``, sampled by the shared rule."""
    out = np.empty((len(rows), T, data.frames.shape[1]), dtype=np.float32)
    for b, r in enumerate(rows):
        start, n = int(data.offsets[r]), int(data.offsets[r + 1] - data.offsets[r])
        rng = clip_rng(seed, epoch, data.clip_ids[r]) if train else None
        out[b] = data.frames[start + sample_indices(n, T, train, rng)]
    return torch.from_numpy(out)


def _index_table(data: EmbeddingSet) -> pa.Table:
    return pa.table({"clip_id": data.clip_ids, "label": data.labels, "splits": pa.array(data.splits, pa.list_(pa.string()))})


def fast_trial(config: dict, *, data: EmbeddingSet, setup: FastSetup) -> None:
    """Ray Tune function trainable (wrap with ``tune.with_parameters(fast_trial, data=..., setup=...)``)."""
    from ray import tune

    params = {k: config[k] for k in setup.swept if k in config}
    mcfg, tcfg = apply_params(setup.model, setup.train, params)
    plan = plan_splits(_index_table(data), setup.fold, tcfg.selection, tcfg.val_fraction, tcfg.seed, setup.where)
    row_of = {cid: i for i, cid in enumerate(data.clip_ids)}
    rows = {s: np.array([row_of[c] for c in getattr(plan, s)], dtype=np.int64) for s in ("train", "val", "test")}
    split = "test" if tcfg.selection == "test" else "val"
    metric, T, C = tcfg.best_metric, mcfg.num_frames, len(setup.class_names)

    import ray

    device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
    model, groups = build_frozen_model(mcfg, tcfg, setup.class_names, setup.descriptions)
    model.to(device)
    optimizer = build_optimizer(groups, tcfg)
    scheduler = build_scheduler(optimizer, tcfg)
    best: dict = {"epoch": None, "value": None}
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        best, best_state, start_epoch = dict(state["best"]), state["best_state"], int(state["epoch"]) + 1

    @torch.no_grad()
    def evaluate(name: str) -> EvalMetrics:
        model.eval()
        idx, preds, loss_sum = rows[name], [], 0.0
        for i in range(0, len(idx), tcfg.eval_batch_size):
            batch = idx[i:i + tcfg.eval_batch_size]
            logits = model.logits_from_frames(_gather(data, batch, T, False, tcfg.seed, 0).to(device))  # (B, C)
            labels = torch.from_numpy(data.labels[batch]).to(device)
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            preds.append(logits.argmax(1).cpu().numpy())
        pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
        return EvalMetrics.from_confusion(confusion_matrix(data.labels[idx], pred, C), loss_sum)

    for epoch in range(start_epoch, tcfg.epochs + 1):
        started = time.perf_counter()
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
        model.train()
        order = rows["train"][np.random.default_rng([tcfg.seed, epoch]).permutation(len(rows["train"]))]
        loss_sum = correct = 0.0
        for i in range(0, len(order), tcfg.batch_size):
            batch = order[i:i + tcfg.batch_size]
            x = _gather(data, batch, T, True, tcfg.seed, epoch).to(device)  # (B, T, E)
            labels = torch.from_numpy(data.labels[batch]).to(device)
            logits = model.logits_from_frames(x)  # (B, C)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch)
            correct += float((logits.argmax(1) == labels).sum())
        scheduler.step()
        n = max(1, len(order))
        row: dict = {"epoch": epoch, "train_loss": loss_sum / n, "train_acc": correct / n,
                     "lr": lrs.get("temporal", next(iter(lrs.values())))}
        row.update({f"lr_{k}": v for k, v in lrs.items() if k != "temporal"})
        result = evaluate(split)
        row.update(result.flat(split, setup.class_names))
        value = getattr(result, metric)
        if best["epoch"] is None or is_better(value, best["value"], metric):
            best, best_state = {"epoch": epoch, "value": value}, _trainable_state(model)
        row[f"best_{metric}"], row["best_epoch"] = best["value"], best["epoch"]
        if epoch == tcfg.epochs and split == "val":
            # As the train loop: the test split is evaluated once, with the best epoch's weights.
            current = _trainable_state(model)
            model.load_state_dict(best_state, strict=False)
            row.update(evaluate("test").flat("test", setup.class_names))
            model.load_state_dict(current, strict=False)
        row["seconds"] = round(time.perf_counter() - started, 3)
        with tempfile.TemporaryDirectory(prefix="fastckpt") as d:
            torch.save({"model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch,
                        "best": best, "best_state": best_state}, os.path.join(d, STATE_FILE))
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
