"""Evaluate stage: score a saved checkpoint — or zero-shot CLIP — on a split of the shards.

Reads ``<storage.root>/shards/<dataset>/`` (the fold's ``test`` split by default; ``val`` is the
validation hold-out carved from train exactly as training carves it; ``train`` the rest) and
the checkpoint (project format: it carries its model config, class names and descriptions).
``--zero-shot`` evaluates the config's CLIP (``model.*``) with the class descriptions and no
training (an EmoCLIP-style baseline). Writes ``<storage.root>/evaluate/<name>/``: metrics.json
(loss, UAR, WAR, per-class recall, confusion), predictions.csv (per clip) and confusion.png.

    dferclip evaluate --config configs/dfew.yaml --checkpoint runs/train/<run>/final/model.pt
    dferclip evaluate --config configs/dfew.yaml --zero-shot --split test --fold 2
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.errors import UserError


def main(cfg: ExperimentConfig, *, checkpoint: str | None = None, split: str = "test", fold: int | None = None,
         zero_shot: bool = False, log=print) -> dict:
    import polars as pl
    import torch

    from pipeline.metrics import EvalMetrics
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.raycluster import ensure_ray
    from pipeline.reports import confusion_png
    from pipeline.storage import Storage
    from pipeline.train.data import eval_dataset, open_shards, plan_splits
    from pipeline.train.evaluation import evaluate_model
    from pipeline.train.experiment import resolve_descriptions
    from pipeline.train.outputs import clean_json
    from pipeline.train.zeroshot import ZeroShotClip

    # validate
    if zero_shot == (checkpoint is not None):
        raise UserError("give exactly one of --checkpoint PATH or --zero-shot")
    if split not in ("test", "val", "train"):
        raise UserError(f"--split: expected test, val or train, got {split!r}")
    fold = cfg.train.fold if fold is None else fold
    # build
    if zero_shot:
        model = ZeroShotClip(cfg.model, cfg.dataset.class_names, resolve_descriptions(cfg))
        label = f"zeroshot-{cfg.model.clip_model}"
    else:
        model, extra = load_checkpoint(checkpoint)
        label = extra.get("run_name") or Path(checkpoint).parent.name
    class_names = model.class_names
    ensure_ray()
    shards = open_shards(cfg.storage.root, cfg.dataset.name)
    if shards.class_names is not None and list(shards.class_names) != list(class_names):
        raise UserError(f"the model's classes {class_names} differ from the shards' {shards.class_names} "
                        f"({shards.uri})")
    plan = plan_splits(shards.index(), fold, "validation" if split == "val" else "test", cfg.train.val_fraction,
                       cfg.train.seed, shards.uri)
    ids = getattr(plan, split)
    dataset = eval_dataset(shards, ids, num_frames=model.num_frames, image_size=model.image_size, keep_ids=True)
    # run
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log(f"evaluate {label}: {cfg.dataset.name} fold {fold} {split} ({len(ids)} clips) on {device}")
    cm, loss_sum, predictions = evaluate_model(model, dataset, len(class_names), batch_size=cfg.train.eval_batch_size,
                                               device=device, precision=cfg.train.precision)
    m = EvalMetrics.from_confusion(cm, loss_sum)
    # write
    storage = Storage(cfg.storage.root)
    name = f"{label}-{cfg.dataset.name}-fold{fold}-{split}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out = ("evaluate", name)
    metrics = {"model": label, "checkpoint": checkpoint, "zero_shot": zero_shot, "dataset": cfg.dataset.name,
               "fold": fold, "split": split, "clips": m.count, "loss": m.loss, "uar": m.uar, "war": m.war,
               "recall": dict(zip(class_names, m.recall)), "confusion": m.confusion, "class_names": class_names}
    storage.write_text(json.dumps(clean_json(metrics), indent=2) + "\n", *out, "metrics.json")
    rows = [{**p, "label_name": class_names[p["label"]], "pred_name": class_names[p["pred"]]} for p in predictions]
    storage.write_text(pl.DataFrame(rows, infer_schema_length=None).write_csv(), *out, "predictions.csv")
    storage.write_bytes(confusion_png(cm, class_names, f"{label} — {split}"), *out, "confusion.png")
    recall = ", ".join(f"{c} {100 * r:.1f}" for c, r in zip(class_names, m.recall) if r == r)
    log(f"{label} on {split}: UAR {100 * m.uar:.2f}  WAR {100 * m.war:.2f}  loss {m.loss:.4f}  "
        f"(recall %: {recall})\n-> {storage.path(*out)}")
    metrics["output_dir"] = storage.path(*out)
    return metrics


def cli(argv=None) -> int:
    parser = stage_parser("dferclip evaluate", __doc__)
    parser.add_argument("--checkpoint", help="a project checkpoint (e.g. <run>/final/model.pt)")
    parser.add_argument("--zero-shot", action="store_true", help="CLIP + descriptions, no training (baseline)")
    parser.add_argument("--split", default="test", choices=["test", "val", "train"], help="which split (default test)")
    parser.add_argument("--fold", type=int, help="fold to evaluate (default: train.fold of the config)")
    args = parser.parse_args(argv)
    return run_cli(lambda: main(load_config(args.config, args.overrides), checkpoint=args.checkpoint,
                                split=args.split, fold=args.fold, zero_shot=args.zero_shot) and 0)


if __name__ == "__main__":
    raise SystemExit(cli())
