"""Score a saved checkpoint — or zero-shot CLIP — on a split of the shards (``dferclip evaluate``).

    run_evaluate(cfg, *, checkpoint=None, split="test", fold=None, zero_shot=False, storage=None) -> dict

Reads ``<storage.root>/shards/<dataset>/`` (the fold's ``test`` split by default; ``val`` is the
validation hold-out carved from train exactly as training carves it; ``train`` the rest) and
the checkpoint (project format: it carries its model config, class names and descriptions).
``zero_shot=True`` evaluates the config's CLIP (``model.*``) with the experiment's description
set (:func:`pipeline.llm.selection.resolve_description_set`) and no training. Writes
``<storage.root>/evaluate/<name>/``: metrics.json (loss, UAR, WAR, per-class recall, confusion,
the description set's id, ECE), predictions.csv (per clip), confusion.png and reliability.png
(the reliability diagram, :mod:`pipeline.calibration`); returns the metrics with ``output_dir``
added. A checkpoint that ``dferclip calibrate`` gave a temperature is scored with its logits
divided by it (UAR and WAR do not change; loss, ECE and confidences do), and metrics.json holds
ECE and NLL both without and with it.
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


def _load_model(
    cfg: ExperimentConfig, checkpoint: str | None, storage: Storage
) -> tuple[object, str, dict | None, dict]:
    """The model to score, its label (the run name, or ``zeroshot-<clip model>``), the record of
    its description set (the experiment's for zero-shot; the one the checkpoint was trained with)
    and the checkpoint's ``extra`` (empty for zero-shot)."""
    if checkpoint is None:
        from pipeline.llm.selection import resolve_description_set
        from pipeline.train.zeroshot import ZeroShotClip

        chosen = resolve_description_set(cfg, storage)
        model = ZeroShotClip(cfg.model, cfg.dataset.class_names, chosen.descriptions if chosen else None)
        return model, f"zeroshot-{cfg.model.clip_model}", chosen.record() if chosen else None, {}
    from pipeline.model.checkpoint import load_checkpoint

    model, extra = load_checkpoint(checkpoint)
    run_name = extra.get("run_name")
    if run_name is not None:  # it names the output folder: a checkpoint may not place it elsewhere
        check_name(run_name, f"{checkpoint}: the checkpoint's run_name")
    label = run_name or to_name(Path(checkpoint).parent.name, "checkpoint")
    return model, label, extra.get("description_set"), extra


def split_dataset(cfg: ExperimentConfig, storage: Storage, model, fold: int, split: str):
    """The split's clip ids and its evaluation dataset (frames as the model takes them); also
    used by ``dferclip calibrate``, which fits on the ``val`` split carved here."""
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


def _write(
    storage: Storage, out: tuple[str, str], metrics: dict, predictions: list[dict], cm, reliability_png: bytes
) -> None:
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
    storage.write_bytes(reliability_png, *out, "reliability.png")


def score(cfg: ExperimentConfig, model, dataset, num_classes: int):
    """Run ``model`` over ``dataset`` in this process (CUDA when available): (confusion, loss_sum,
    per-clip predictions, logits (N, C)) as :func:`pipeline.train.evaluation.evaluate_model`."""
    import torch

    from pipeline.train.evaluation import evaluate_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return evaluate_model(
        model,
        dataset,
        num_classes,
        batch_size=cfg.train.eval_batch_size,
        device=device,
        precision=cfg.train.precision,
    )


def _reliability_png(cal: dict, title: str) -> bytes:
    from pipeline.calibration import Reliability, reliability_png

    curves = {"uncalibrated (T = 1)": Reliability(**cal["reliability"]["uncalibrated"])}
    if cal["reliability"]["calibrated"] is not None:
        curves[f"calibrated (T = {cal['temperature']:.3g})"] = Reliability(**cal["reliability"]["calibrated"])
    return reliability_png(curves, title)


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
    import numpy as np

    from pipeline import calibration
    from pipeline.metrics import EvalMetrics
    from pipeline.model.checkpoint import calibration_temperature
    from pipeline.raycluster import ensure_ray

    # validate
    _check(checkpoint, split, zero_shot)
    storage = storage or Storage(cfg.storage.root)
    fold = cfg.train.fold if fold is None else fold
    # build
    model, label, description_set, extra = _load_model(cfg, checkpoint, storage)
    temperature = calibration_temperature(extra, str(checkpoint))
    class_names = model.class_names
    ensure_ray()
    ids, dataset = split_dataset(cfg, storage, model, fold, split)
    # run
    logger.info("evaluate %s: %s fold %d %s (%d clips)", label, cfg.dataset.name, fold, split, len(ids))
    cm, _loss_sum, predictions, logits = score(cfg, model, dataset, len(class_names))
    labels = np.asarray([p["label"] for p in predictions], dtype=np.int64)
    cal = calibration.summary(logits, labels, temperature)
    if temperature != 1.0:  # confidences as predict reports them: at the stored temperature
        for p, q in zip(predictions, calibration.softmax(logits, temperature)):
            p["confidence"] = float(q.max())
    m = EvalMetrics.from_confusion(cm, cal["nll"] * len(labels))  # the loss at the applied temperature
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
        "ece": cal["ece"],
        "temperature": temperature,
        "recall": dict(zip(class_names, m.recall)),
        "confusion": m.confusion,
        "class_names": class_names,
        "calibration": cal,
    }
    title = f"{label} — {cfg.dataset.name} fold {fold} {split}"
    _write(storage, out, metrics, predictions, cm, _reliability_png(cal, title))
    recall = ", ".join(f"{c} {100 * r:.1f}" for c, r in zip(class_names, m.recall) if r == r)
    logger.info(
        "%s on %s: UAR %.2f  WAR %.2f  loss %.4f  ECE %.2f%s  (recall %%: %s) -> %s",
        label,
        split,
        100 * m.uar,
        100 * m.war,
        m.loss,
        100 * cal["ece"],
        ""
        if temperature == 1.0
        else f" at T={temperature:.3g} (uncalibrated: ECE {100 * cal['uncalibrated']['ece']:.2f}, "
        f"NLL {cal['uncalibrated']['nll']:.4f})",
        recall,
        storage.uri(*out),
    )
    metrics["output_dir"] = storage.uri(*out)
    return metrics
