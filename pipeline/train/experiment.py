"""Runs of the train stage: one fold, the k-fold protocol, and resuming an interrupted run.

Layout below ``<storage.root>/train/`` (Ray's ``storage_path``)::

    <experiment>-fold<k>-<timestamp>/     one run (Ray Train's folder + ours, see outputs.py),
                                          with descriptions.yaml: the description set it trains on
    <experiment>-kfold-<timestamp>/       folds.csv, folds.md, summary.json of a k-fold protocol
    latest.json                           the latest completed run (and k-fold table)
    .<run>.lock                           while a run trains: who trains it (pipeline.locks)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import posixpath
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import yaml

from pipeline.config import ExperimentConfig, dump_config
from pipeline.datasets import get_dataset
from pipeline.errors import UserError
from pipeline.llm.selection import ChosenSet, read_set_copy, resolve_description_set
from pipeline.locks import folder_lock
from pipeline.logs import run_log
from pipeline.names import check_name
from pipeline.storage import Storage, is_uri
from pipeline.train.driver import TrainJob, fit, new_run_name
from pipeline.train.outputs import clean_json
from pipeline.train.recipe import RunSpec
from pipeline.typed import apply_override, from_dict

__all__ = [
    "run_train",
    "run_descriptions",
    "run_fold",
    "run_folds",
    "resume_run",
    "parse_folds",
    "fold_table",
    "TRAIN_DIR",
]

logger = logging.getLogger(__name__)

TRAIN_DIR = "train"
RUN_SET_FILE = "descriptions.yaml"  # in each run folder: the description set the run trains on


def run_descriptions(
    cfg: ExperimentConfig, storage: Storage, name: str, init_spec: dict | None = None
) -> ChosenSet | None:
    """The description set of run ``name``: the copy in its folder when it has one (a resumed run
    keeps the descriptions it started with), else the texts of the checkpoint the run starts from
    (``init_spec``: the model was trained with them), else the experiment's
    (:func:`~pipeline.llm.selection.resolve_description_set`), copied into the folder."""
    if cfg.model.text_source != "descriptions":
        return None
    if storage.exists(TRAIN_DIR, name, RUN_SET_FILE):
        return read_set_copy(storage.uri(TRAIN_DIR, name, RUN_SET_FILE), cfg.dataset.class_names)
    if init_spec is not None and init_spec.get("descriptions"):
        from pipeline.train.init_checkpoint import INIT_KEY, resolve_location

        location = resolve_location(cfg.train.init_checkpoint)
        texts = init_spec["descriptions"]
        chosen = ChosenSet(
            name=f"texts of {posixpath.basename(location)}",
            location=location,
            chosen_by=INIT_KEY,
            descriptions={c: list(texts[c]) for c in cfg.dataset.class_names},
        )
        storage.write_text(chosen.copy_text(), TRAIN_DIR, name, RUN_SET_FILE)
        return chosen
    chosen = resolve_description_set(cfg, storage)
    storage.write_text(chosen.copy_text(), TRAIN_DIR, name, RUN_SET_FILE)
    return chosen


def parse_folds(text: str | None, dataset: str, default: int) -> list[int]:
    """``all`` -> the registry's folds; ``1,3`` -> [1, 3]; None -> [default]."""
    known = list(get_dataset(dataset).folds)
    if text is None:
        return [default]
    if text.strip().lower() == "all":
        return known
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--folds: expected 'all' or comma-separated fold numbers, got {text!r}") from None
    bad = [f for f in folds if f not in known]
    if not folds or bad:
        raise UserError(f"--folds: {dataset} has folds {known}, got {text!r}")
    return folds


def _write_latest(storage: Storage, data: dict) -> None:
    storage.write_text(json.dumps(clean_json(data), indent=2) + "\n", TRAIN_DIR, "latest.json")


def _run(cfg: ExperimentConfig, storage: Storage, name: str) -> dict:
    from pipeline.tracking import tracking_settings

    settings = tracking_settings(cfg.tracking, cfg.name)  # resolved once here, None when off
    init, init_spec = None, None
    if cfg.train.init_checkpoint:
        from pipeline.train.init_checkpoint import run_init_record

        # Checked here, before Ray starts workers: a file that is no checkpoint, or one of another model.
        init, init_spec = run_init_record(cfg, storage, (TRAIN_DIR, name))
        logger.info("[%s] starts from %s (sha256 %s...)", name, init["location"], init["sha256"][:16])
    chosen = run_descriptions(cfg, storage, name, init_spec)
    if chosen is not None:
        logger.info("[%s] class prompts: description set %s (%s)", name, chosen.id, chosen.location)
    spec = RunSpec.for_experiment(
        cfg,
        name,
        chosen.descriptions if chosen else None,
        settings.to_dict() if settings else None,
        description_set=chosen.record() if chosen else None,
        init_checkpoint=init,
    )
    job = TrainJob(spec, storage, runs=storage.child(TRAIN_DIR))
    with run_log(storage, TRAIN_DIR, name, "driver.log"):  # the driver's detailed log, Ray's lines included
        result = fit(job)
    if result.error is not None:
        raise result.error
    summary = json.loads(storage.read_text(TRAIN_DIR, name, "summary.json"))
    test = summary["test"]
    logger.info(
        "[%s] done: best epoch %s (%s selection on %s); test UAR %.2f WAR %.2f; model %s",
        name,
        summary["best_epoch"],
        summary["selection"],
        summary["best_metric"],
        100 * (test["uar"] or math.nan),
        100 * (test["war"] or math.nan),
        summary["paths"]["final_checkpoint"],
    )
    _write_latest(
        storage,
        {
            "run_name": name,
            "run_dir": storage.path(TRAIN_DIR, name),
            "summary": storage.path(TRAIN_DIR, name, "summary.json"),
            "final_checkpoint": summary["paths"]["final_checkpoint"],
            "experiment": cfg.name,
            "dataset": cfg.dataset.name,
            "fold": cfg.train.fold,
            "description_set": (summary.get("description_set") or {}).get("id"),
            "test": {"uar": test["uar"], "war": test["war"]},
            "completed_at": summary["completed_at"],
        },
    )
    return summary


def run_fold(cfg: ExperimentConfig, fold: int, storage: Storage | None = None) -> dict:
    """Train one fold as a fresh run; returns its summary.json."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, fold=fold))
    storage = storage or Storage(cfg.storage.root)
    name = new_run_name(cfg.name, fold)
    with folder_lock(storage, TRAIN_DIR, name, what=f"training run {name}"):
        # Saved first, so `--resume` can rebuild this exact run even if it dies in epoch 1.
        storage.write_text(dump_config(cfg), TRAIN_DIR, name, "config.yaml")
        return _run(cfg, storage, name)


def fold_table(summaries: list[dict]) -> list[dict]:
    """Per-fold rows (percentages) plus mean and standard deviation rows."""
    rows = []
    for s in summaries:
        row = {
            "fold": str(s["fold"]),
            "run": s["run_name"],
            "best_epoch": s["best_epoch"],
            "test_uar": 100 * s["test"]["uar"],
            "test_war": 100 * s["test"]["war"],
        }
        if s["selection"] == "validation":
            row["val_uar"] = 100 * s["best"]["val_uar"]
            row["val_war"] = 100 * s["best"]["val_war"]
        rows.append(row)
    metrics = [k for k in rows[0] if k.endswith(("_uar", "_war"))]
    for label, fn in (
        ("mean", lambda v: sum(v) / len(v)),
        ("std", lambda v: math.sqrt(sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v))),
    ):
        rows.append(
            {
                "fold": label,
                "run": "",
                "best_epoch": None,
                **{m: fn([r[m] for r in rows[: len(summaries)]]) for m in metrics},
            }
        )
    return rows


def _markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda v: "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run_folds(cfg: ExperimentConfig, folds: list[int], storage: Storage | None = None) -> dict:
    """The k-fold protocol: one fresh run per fold, one after the other, then the table."""
    storage = storage or Storage(cfg.storage.root)
    summaries = []
    for k in folds:
        if len(folds) > 1:
            logger.info("== %s: fold %d (%d/%d) ==", cfg.name, k, len(summaries) + 1, len(folds))
        summaries.append(run_fold(cfg, k, storage))
    if len(folds) == 1:
        return {"runs": summaries}
    import polars as pl

    rows = fold_table(summaries)
    name = f"{cfg.name}-kfold-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    storage.write_text(pl.DataFrame(rows, infer_schema_length=None).write_csv(), TRAIN_DIR, name, "folds.csv")
    table = _markdown(rows)
    storage.write_text(table, TRAIN_DIR, name, "folds.md")
    mean = rows[len(summaries)]
    summary = {
        "experiment": cfg.name,
        "dataset": cfg.dataset.name,
        "folds": folds,
        "runs": [s["run_name"] for s in summaries],
        "rows": rows,
        "mean": {"test_uar": mean["test_uar"], "test_war": mean["test_war"]},
        "table_csv": storage.path(TRAIN_DIR, name, "folds.csv"),
        "table_md": storage.path(TRAIN_DIR, name, "folds.md"),
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_text(json.dumps(clean_json(summary), indent=2) + "\n", TRAIN_DIR, name, "summary.json")
    latest = json.loads(storage.read_text(TRAIN_DIR, "latest.json"))
    _write_latest(
        storage,
        {
            **latest,
            "kfold": {
                "dir": storage.path(TRAIN_DIR, name),
                "summary": storage.path(TRAIN_DIR, name, "summary.json"),
                "mean": summary["mean"],
            },
        },
    )
    logger.info("%s: %d folds (UAR/WAR in %%)\n%s", cfg.name, len(folds), table)
    return {"runs": summaries, "kfold": summary}


def resume_run(ref: str, *, root: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Continue an interrupted run from its latest checkpoint.

    ``ref`` is the run folder, or its name below ``<root>/train``. The run's own config.yaml
    is used, with ``overrides`` (``train.epochs=80`` to train further) applied on top.
    """
    if is_uri(ref) or Path(ref).expanduser().is_dir():
        storage = Storage(ref.rstrip("/"))
    elif root is not None:
        storage = Storage(root).child(TRAIN_DIR, check_name(ref, "--resume"))
    else:
        raise UserError(f"--resume {ref!r}: no such folder; give the run folder, or its name with --config")
    run_uri = storage.uri()
    if not storage.exists("config.yaml"):
        raise UserError(f"--resume: {storage.path('config.yaml')} not found (is {run_uri} a training run folder?)")
    data = yaml.safe_load(storage.read_text("config.yaml")) or {}
    source = storage.path("config.yaml")
    for text in overrides:
        apply_override(data, text)
    cfg: ExperimentConfig = from_dict(ExperimentConfig, data, source)
    name = check_name(posixpath.basename(run_uri.rstrip("/")), "--resume: the run folder's name")
    root_storage = Storage(cfg.storage.root)
    if root_storage.child(TRAIN_DIR, name).path() != storage.path():
        raise UserError(
            f"--resume: {run_uri} is not below its config's storage root {cfg.storage.root}; "
            "runs must be resumed where they were started"
        )
    # One writer per run folder: a second --resume of the same run is refused, naming the first.
    with folder_lock(root_storage, TRAIN_DIR, name, what=f"training run {name} (resumed)"):
        if storage.exists("summary.json"):
            done = json.loads(storage.read_text("summary.json"))
            if done.get("epochs") == cfg.train.epochs:
                logger.info(
                    "[%s] already complete (%d epochs); nothing to resume (raise train.epochs with --set to train "
                    "further)",
                    name,
                    done["epochs"],
                )
                return done
        storage.write_text(dump_config(cfg), "config.yaml")
        logger.info("[%s] resuming from its latest checkpoint (up to %d epochs)", name, cfg.train.epochs)
        return _run(cfg, root_storage, name)


def run_train(
    cfg: ExperimentConfig | None,
    *,
    folds: str | None = None,
    resume: str | None = None,
    overrides: Sequence[str] = (),
    storage: Storage | None = None,
    init_from: str | None = None,
) -> dict:
    """The train stage: ``folds`` of ``cfg`` (None: ``train.fold``; ``all``; ``1,3``) as fresh
    runs, or the run ``resume`` (a run folder, or its name below ``<storage.root>/train`` with
    ``cfg`` given) continued with its own config and ``overrides``. Returns ``{"runs": [summary,
    ...]}`` plus ``"kfold"`` for several folds. Ray is joined (``RAY_ADDRESS``) or started locally.
    ``init_from`` (``--init-from``) sets ``train.init_checkpoint``: new runs start from that checkpoint."""
    from pipeline.raycluster import ensure_ray

    if init_from is not None:
        if resume is not None or cfg is None:
            raise UserError("--init-from starts a new run: it needs --config and cannot be combined with --resume")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_checkpoint=init_from))

    if resume is not None:
        if folds is not None:
            raise UserError("--resume continues one run; it cannot be combined with --folds")
        ensure_ray()
        return {"runs": [resume_run(resume, root=cfg.storage.root if cfg else None, overrides=list(overrides))]}
    if cfg is None:
        raise UserError("--config is required (or --resume RUN)")
    fold_list = parse_folds(folds, cfg.dataset.name, cfg.train.fold)
    ensure_ray()
    return run_folds(cfg, fold_list, storage)
