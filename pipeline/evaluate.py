"""Score a saved checkpoint — or zero-shot CLIP — on a split of the shards (``dferclip evaluate``).

    run_evaluate(cfg, *, checkpoint=None, split="test", fold=None, zero_shot=False, storage=None) -> dict

Reads ``<storage.root>/shards/<dataset>/`` (the fold's ``test`` split by default; ``val`` is the
validation hold-out carved from train exactly as training carves it; ``train`` the rest) and
the checkpoint (project format: it carries its model config, class names and descriptions).
``zero_shot=True`` evaluates the config's CLIP (``model.*``) with the experiment's description
set (:func:`pipeline.llm.selection.resolve_description_set`) and no training. Writes
``<storage.root>/evaluate/<name>/``: metrics.json (loss, UAR, WAR, per-class recall, confusion,
the description set's id), predictions.csv (per clip) and confusion.png; returns the metrics with
``output_dir`` added.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.names import check_name, to_name
from pipeline.storage import Storage

__all__ = ["run_evaluate", "EVALUATE_DIR", "SPLITS"]

logger = logging.getLogger(__name__)

EVALUATE_DIR = "evaluate"
SPLITS = ("test", "val", "train")


def _check(checkpoint: str | None, split: str, zero_shot: bool) -> None:
    if zero_shot == (checkpoint is not None):
        raise UserError("give exactly one of --checkpoint PATH or --zero-shot")
    if split not in SPLITS:
        raise UserError(f"--split: expected test, val or train, got {split!r}")


def _load_model(cfg: ExperimentConfig, checkpoint: str | None, storage: Storage) -> tuple[object, str, dict | None]:
    """The model to score, its label (the run name, or ``zeroshot-<clip model>``) and the record of
    its description set (the experiment's for zero-shot; the one the checkpoint was trained with)."""
    if checkpoint is None:
        from pipeline.llm.selection import resolve_description_set
        from pipeline.train.zeroshot import ZeroShotClip

        chosen = resolve_description_set(cfg, storage)
        model = ZeroShotClip(cfg.model, cfg.dataset.class_names, chosen.descriptions if chosen else None)
        return model, f"zeroshot-{cfg.model.clip_model}", chosen.record() if chosen else None
    from pipeline.model.checkpoint import load_checkpoint

    model, extra = load_checkpoint(checkpoint)
    run_name = extra.get("run_name")
    if run_name is not None:  # it names the output folder: a checkpoint may not place it elsewhere
        check_name(run_name, f"{checkpoint}: the checkpoint's run_name")
    return model, run_name or to_name(Path(checkpoint).parent.name, "checkpoint"), extra.get("description_set")


def _split_dataset(cfg: ExperimentConfig, storage: Storage, model, fold: int, split: str):
    """The split's clip ids and its evaluation dataset (frames as the model takes them)."""
    from pipeline.train.data import eval_dataset, open_shards, plan_splits

    shards = open_shards(storage.uri(), cfg.dataset.name)
    if shards.class_names is not None and list(shards.class_names) != list(model.class_names):
        raise UserError(
            f"the model's classes {model.class_names} differ from the shards' {shards.class_names} ({shards.uri})"
        )
    plan = plan_splits(
        shards.index(),
        fold,
        "validation" if split == "val" else "test",
        cfg.train.val_fraction,
        cfg.train.seed,
        shards.uri,
    )
    ids = getattr(plan, split)
    return ids, eval_dataset(shards, ids, num_frames=model.num_frames, image_size=model.image_size, keep_ids=True)


def _write(storage: Storage, out: tuple[str, str], metrics: dict, predictions: list[dict], cm) -> None:
    import polars as pl

    from pipeline.reports import confusion_png
    from pipeline.train.outputs import clean_json

    class_names = metrics["class_names"]
    storage.write_text(json.dumps(clean_json(metrics), indent=2) + "\n", *out, "metrics.json")
    rows = [{**p, "label_name": class_names[p["label"]], "pred_name": class_names[p["pred"]]} for p in predictions]
    storage.write_text(pl.DataFrame(rows, infer_schema_length=None).write_csv(), *out, "predictions.csv")
    storage.write_bytes(
        confusion_png(cm, class_names, f"{metrics['model']} — {metrics['split']}"), *out, "confusion.png"
    )


def run_evaluate(
    cfg: ExperimentConfig,
    *,
    checkpoint: str | None = None,
    split: str = "test",
    fold: int | None = None,
    zero_shot: bool = False,
    storage: Storage | None = None,
) -> dict:
    """Evaluate ``checkpoint`` (or zero-shot CLIP) on ``split`` of ``fold`` (default ``train.fold``).

    ``storage``: the run's :class:`Storage` of ``cfg.storage.root`` (built here when not given).
    """
    import torch

    from pipeline.metrics import EvalMetrics
    from pipeline.raycluster import ensure_ray
    from pipeline.train.evaluation import evaluate_model

    # validate
    _check(checkpoint, split, zero_shot)
    storage = storage or Storage(cfg.storage.root)
    fold = cfg.train.fold if fold is None else fold
    # build
    model, label, description_set = _load_model(cfg, checkpoint, storage)
    class_names = model.class_names
    ensure_ray()
    ids, dataset = _split_dataset(cfg, storage, model, fold, split)
    # run
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    logger.info("evaluate %s: %s fold %d %s (%d clips) on %s", label, cfg.dataset.name, fold, split, len(ids), device)
    cm, loss_sum, predictions = evaluate_model(
        model,
        dataset,
        len(class_names),
        batch_size=cfg.train.eval_batch_size,
        device=device,
        precision=cfg.train.precision,
    )
    m = EvalMetrics.from_confusion(cm, loss_sum)
    # write
    # The label is a checked run name or zeroshot-<architecture> (ViT-B/32: made folder-safe).
    name = f"{to_name(label, 'model')}-{cfg.dataset.name}-fold{fold}-{split}-{datetime.now():%Y%m%d-%H%M%S-%f}"
    out = (EVALUATE_DIR, name)
    metrics = {
        "model": label,
        "checkpoint": checkpoint,
        "zero_shot": zero_shot,
        "description_set": description_set,
        "dataset": cfg.dataset.name,
        "fold": fold,
        "split": split,
        "clips": m.count,
        "loss": m.loss,
        "uar": m.uar,
        "war": m.war,
        "recall": dict(zip(class_names, m.recall)),
        "confusion": m.confusion,
        "class_names": class_names,
    }
    _write(storage, out, metrics, predictions, cm)
    recall = ", ".join(f"{c} {100 * r:.1f}" for c, r in zip(class_names, m.recall) if r == r)
    logger.info(
        "%s on %s: UAR %.2f  WAR %.2f  loss %.4f  (recall %%: %s) -> %s",
        label,
        split,
        100 * m.uar,
        100 * m.war,
        m.loss,
        recall,
        storage.uri(*out),
    )
    metrics["output_dir"] = storage.uri(*out)
    return metrics
