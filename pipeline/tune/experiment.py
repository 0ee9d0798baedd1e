"""A sweep of the tune stage, from config to outputs: validate, build the trainable, run, write.

``run_tune(cfg)`` is what ``dferclip tune`` (and ``dferclip run --tune``) calls. Each trial
trains DFER-CLIP with the train stage's recipe on ``<storage.root>/shards/<dataset>/``; ASHA
stops poor trials early on ``tune.metric``. Two modes:

- full (default): every trial is a complete Ray Train run (:mod:`.full`), image encoder fine-tuned;
- ``tune.frozen_encoder: true``: per-frame CLIP embeddings are computed once by a Ray Data job
  (cached in ``<storage.root>/embeddings/...``, :mod:`.embeddings`) and each trial trains only
  the temporal model and the prompts on them (:mod:`.fast`) — far cheaper; faithful only with a
  frozen image encoder (docs/tune.md).

The class prompts use the experiment's description set, the one training would use
(:func:`pipeline.llm.selection.resolve_description_set`: with ``describe.enabled``, the describe
stage's output); ``sweep.json`` records its id. With ``describe.description_set`` in
``tune.space`` each trial uses the set its value names (:class:`pipeline.tune.space.TrialSets`),
``sweep.json`` records every set's id and the results a ``description_set`` column with the
trial's. Outputs in ``<storage.root>/tune/<name>/``:
results.parquet/.csv (one row per trial), heatmap.png, best_config.yaml (ready for ``dferclip
train --config``). Running the same sweep again resumes it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.logs import run_log
from pipeline.storage import Storage
from pipeline.train.recipe import reported_metrics
from pipeline.typed import to_dict

__all__ = ["SweepOutcome", "run_tune", "validate_tune"]

logger = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    path: str
    table: object  # pandas.DataFrame
    best: dict | None
    interrupted: bool
    description_set: str | None = None  # the id of the set the class prompts used (None: class names, or swept)
    description_sets: dict | None = None  # swept value -> set id, when the sweep ranges over sets


def validate_tune(cfg: ExperimentConfig) -> None:
    """Refuse a metric the trials do not report, or a mode that contradicts it, and a start from
    a checkpoint (the frozen-encoder trials' cached embeddings are the config's CLIP encoder's)."""
    t = cfg.tune
    if cfg.train.init_checkpoint:
        raise UserError(
            "train.init_checkpoint: dferclip tune does not start trials from a checkpoint; set it to null for the "
            "sweep (dferclip train starts a run from one)"
        )
    reported = reported_metrics(cfg.train.selection, cfg.train.best_metric)
    if t.metric not in reported:
        hint = (
            (
                " — validation metrics need train.selection: validation (or select on test as the paper does: "
                "tune.metric: test_uar)"
            )
            if t.metric.startswith("val_")
            else ""
        )
        raise UserError(
            f"tune.metric: {t.metric!r} is not among the metrics every epoch reports with "
            f"train.selection={cfg.train.selection} ({', '.join(reported)}){hint}"
        )
    if t.metric.endswith("loss") and t.mode == "max":
        raise UserError(f"tune.mode: {t.metric} is a loss; use mode: min")


class _SweepRun:
    """The sweep's own MLflow run, which the trials' runs nest under (when tracking is on).

    Its id is kept in the sweep folder, so a resumed sweep continues the same parent run."""

    FILE = "mlflow_run.json"

    def __init__(self, cfg: ExperimentConfig, storage: Storage, rel: str, name: str):
        from pipeline.tracking import open_tracker, tracking_settings

        self.settings = tracking_settings(cfg.tracking, cfg.name)
        self.tracker = open_tracker(self.settings)
        self.storage, self.rel = storage, rel
        if self.tracker is None:
            return
        previous = json.loads(storage.read_text(rel, self.FILE))["run_id"] if storage.exists(rel, self.FILE) else None
        run_id = self.tracker.start(
            f"sweep {name}",
            params=to_dict(cfg),
            resume_run_id=previous,
            tags={"dferclip.kind": "sweep", "dferclip.sweep": name},
        )
        storage.write_text(json.dumps({"run_id": run_id}) + "\n", rel, self.FILE)
        self.settings = self.settings.nested_in(run_id)

    @property
    def trial_settings(self) -> dict | None:
        return self.settings.to_dict() if self.tracker is not None else None

    def end(self, status: str) -> None:
        """Close trials Tune tore down before they could (full-mode workers), upload the sweep's
        table and plots, end the parent run."""
        if self.tracker is None:
            return
        from pipeline.tracking import close_open_runs

        close_open_runs(self.settings, "KILLED")
        if status == "FINISHED":
            self.tracker.log_files(self.storage.uri(self.rel), ["results.csv", "heatmap.png", "best_config.yaml"])
        self.tracker.finish(status)


def _trainable(
    cfg: ExperimentConfig,
    storage: Storage,
    name: str,
    sets,  # pipeline.tune.space.TrialSets
    swept: tuple[str, ...],
    tracking: dict | None,
):
    """The Tune trainable of this sweep's mode, with its resources."""
    from ray import tune

    from pipeline.raycluster import check_resources
    from pipeline.tune.sweep import sweep_rel

    t = cfg.tune
    if not t.frozen_encoder:
        from pipeline.tune.full import RUNS_DIR, FullSetup, full_trainable

        # The driver only waits on its Train workers; they hold the trial's real resources.
        setup = FullSetup(cfg, sets, storage, storage.child(sweep_rel(name), RUNS_DIR), swept, tracking)
        return full_trainable(setup, driver_cpus=t.driver_cpus)
    from pipeline.tune.embeddings import ensure_embeddings, load_embeddings
    from pipeline.tune.fast import FastSetup, fast_trial

    check_resources(
        "a sweep trial", cpus=t.cpus_per_trial, gpus=t.gpus_per_trial, key="tune.cpus_per_trial / tune.gpus_per_trial"
    )
    info = ensure_embeddings(
        storage,
        cfg.dataset.name,
        cfg.model,
        cfg.dataset.class_names,
        seed=cfg.train.seed,
        batch_size=t.embed_batch_size,
        workers=t.embed_workers,
        cpus=t.embed_cpus,
        gpus=t.embed_gpus,
    )
    setup = FastSetup(cfg, sets, swept, storage.path(info.rel_dir), tracking)
    return tune.with_resources(
        tune.with_parameters(fast_trial, data=load_embeddings(storage, info), setup=setup),
        {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial},
    )


def run_tune(cfg: ExperimentConfig, *, callbacks: list | None = None) -> SweepOutcome:
    """Run (or resume) the sweep and write its outputs.

    ``callbacks``: extra Ray Tune callbacks for a new sweep. Tune saves them with the sweep and a
    resumed sweep runs those again (with the state their ``get_state()`` saved), not new ones.
    The sweep folder is locked while the sweep runs (:mod:`pipeline.locks`): a second
    ``dferclip tune`` with the same name is refused with a message naming the first.
    """
    from pipeline.locks import folder_lock
    from pipeline.tune.sweep import sweep_rel

    name = cfg.tune.name or cfg.name
    with folder_lock(Storage(cfg.storage.root), sweep_rel(name), what=f"tune sweep {name}"):
        return _run_tune_locked(cfg, callbacks)


def _run_tune_locked(cfg: ExperimentConfig, callbacks: list | None) -> SweepOutcome:
    from pipeline.data.shards import shard_dir, shard_files
    from pipeline.raycluster import ensure_ray
    from pipeline.tune import results as res
    from pipeline.tune.space import DESCRIPTION_SET_KEY, TrialSets, apply_params_to_dict, expected_trials, swept_keys
    from pipeline.tune.sweep import run_sweep, sweep_rel
    from pipeline.typed import from_dict

    # validate
    validate_tune(cfg)
    t, storage = cfg.tune, Storage(cfg.storage.root)
    name = t.name or cfg.name
    # The same set training would use (the describe stage's output with describe.enabled), or
    # one per value of a describe.description_set dimension, each resolved now.
    sets = TrialSets.resolve(cfg, storage)
    chosen = sets.default
    swept = tuple(swept_keys(t))
    mode = "fast" if t.frozen_encoder else "full"
    search = {
        k: v
        for k, v in to_dict(t).items()
        if k in ("space", "search", "num_samples", "metric", "mode", "scheduler", "grace_period", "reduction_factor")
    }
    signature = {
        "mode": mode,
        "dataset": to_dict(cfg.dataset),
        "model": to_dict(cfg.model),
        "train": to_dict(cfg.train),
        "descriptions": sets.signature(),
        "search": search,
    }
    if not shard_files(storage, shard_dir(storage, cfg.dataset.name)):
        raise UserError(
            f"no shards in {storage.path(shard_dir(storage, cfg.dataset.name))}: run `dferclip preprocess` first"
        )
    # build
    ensure_ray()
    rel = sweep_rel(name)
    tracking = _SweepRun(cfg, storage, rel, name)
    trainable = _trainable(cfg, storage, name, sets, swept, tracking.trial_settings)
    if chosen is not None:
        logger.info("[tune] class prompts: description set %s (%s)", chosen.id, chosen.location)
    for value, each in sets.by_value.items():
        logger.info(
            "[tune] class prompts with %s=%s: description set %s (%s)",
            DESCRIPTION_SET_KEY,
            value,
            each.id,
            each.location,
        )
    # run
    logger.info(
        "[tune] %s sweep %r: %s search over %s; metric %s (%s); up to %d epochs per trial, %d at a time",
        mode,
        name,
        t.search,
        ", ".join(swept),
        t.metric,
        t.mode,
        cfg.train.epochs,
        t.max_concurrent_trials,
    )
    with run_log(storage, rel, "driver.log"):  # the sweep driver's detailed log, Ray's lines included
        try:
            results = run_sweep(
                trainable,
                t,
                storage=storage,
                name=name,
                max_epochs=cfg.train.epochs,
                seed=cfg.train.seed,
                signature=signature,
                keep_checkpoints=cfg.train.keep_checkpoints,
                callbacks=callbacks,
                record=sets.record(),
                # A fast trial is seconds of work, so a fresh process per trial (imports, the
                # embeddings fetched) is much of its cost. A full trial's process must go when
                # Tune stops the trial: its cleanup() aborts the Train run (pipeline/tune/stopping.py),
                # and a reused actor is reset instead of cleaned up.
                reuse_actors=t.frozen_encoder,
            )
        except BaseException:
            tracking.end("FAILED")
            raise
    # write
    table = res.results_table(results, list(swept), t.metric, t.mode, cfg.train.epochs, res.trial_statuses(results))
    if sets.swept and len(table):  # each trial's set id beside the value it was given
        ids = sets.ids()
        table.insert(
            table.columns.get_loc(DESCRIPTION_SET_KEY) + 1,
            "description_set",
            [ids.get(v) for v in table[DESCRIPTION_SET_KEY]],
        )
    pq_path, csv_path = res.write_table(storage, rel, table)
    storage.write_bytes(
        res.heatmap_png(table, t.metric, t.mode, f"{name}: best {t.metric} ({mode} mode)"), rel, "heatmap.png"
    )
    # Interrupted: trials left unfinished, or (Ctrl+C between trials) some not even created yet.
    interrupted = len(table) < expected_trials(t) or bool((table["status"] == "unfinished").any())
    best = None
    if not interrupted and (table["status"] != "error").any():
        best = res.best_params(table, list(swept))
        best_cfg = apply_params_to_dict(to_dict(cfg), best)
        from_dict(ExperimentConfig, best_cfg, "best_config.yaml")  # it must load as a valid experiment
        top = table.iloc[0]
        header = [
            f"Best trial of sweep {name!r} ({mode} mode): {top['trial']}",
            f"{t.metric} = {top['best_value']:.4f} at epoch {top['best_epoch']}; values: {best}",
            f"Train it: dferclip train --config {storage.path(rel, 'best_config.yaml')}",
        ]
        if chosen is not None:
            header.append(f"Class prompts: description set {chosen.id} ({chosen.location})")
        elif sets.swept:
            header.append(f"Class prompts: description set {top['description_set']} (the best trial's)")
        if t.frozen_encoder:
            header.append(
                "Found with a frozen image encoder and no augmentation; full training fine-tunes "
                f"the encoder at train.lr_image_encoder={cfg.train.lr_image_encoder:g}."
            )
        storage.write_text(res.best_config_yaml(best_cfg, header), rel, "best_config.yaml")
    tracking.end("KILLED" if interrupted else "FINISHED")
    logger.info("%s", table.drop(columns=["error", "metric"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    logger.info("[tune] results: %s, %s, %s", pq_path, csv_path, storage.path(rel, "heatmap.png"))
    if interrupted:
        logger.warning("[tune] the sweep did not finish; run the same command again to resume it")
    elif best is not None:
        logger.info("[tune] best: %s -> %s", best, storage.path(rel, "best_config.yaml"))
    return SweepOutcome(storage.path(rel), table, best, interrupted, chosen.id if chosen else None, sets.ids() or None)
