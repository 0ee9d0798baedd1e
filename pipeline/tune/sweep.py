"""Running a sweep with Ray Tune: search space, ASHA, concurrency, storage and resume.

The experiment folder is ``<storage.root>/tune/<sweep name>/`` (Tune's own state, one folder
per trial, and this project's ``sweep.json`` recording what the sweep was started with).
Running a sweep whose folder already holds Tune state *restores* it (``Tuner.restore``):
finished trials are kept, unfinished ones continue from their last checkpoint, errored ones are
retried from theirs. A folder started with different settings is refused rather than mixed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from pipeline import logs
from pipeline.config import TuneConfig
from pipeline.errors import UserError
from pipeline.names import check_name
from pipeline.storage import Storage
from pipeline.tune.space import param_space

__all__ = ["SWEEP_FILE", "sweep_rel", "run_sweep"]

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"


def sweep_rel(name: str) -> str:
    """Relative path of a sweep's folder below the storage root."""
    return f"tune/{check_name(name, 'tune.name')}"


def _check_same_sweep(storage: Storage, rel: str, signature: dict) -> None:
    if not storage.exists(rel, SWEEP_FILE):
        return
    old = json.loads(storage.read_text(rel, SWEEP_FILE)).get("signature", {})
    changed = sorted(k for k in set(old) | set(signature) if old.get(k) != signature.get(k))
    if changed:
        raise UserError(
            f"{storage.path(rel)} holds a sweep started with different settings ({', '.join(changed)} differ); "
            f"resuming would mix them. Set tune.name to a new name, or delete that folder to start over."
        )


def run_sweep(
    trainable: Callable,
    cfg: TuneConfig,
    *,
    storage: Storage,
    name: str,
    max_epochs: int,
    seed: int,
    signature: dict[str, Any],
    callbacks: list | None = None,
    keep_checkpoints: int = 2,
    record: dict[str, Any] | None = None,
    reuse_actors: bool = False,
):
    """Run (or resume) the sweep; returns Tune's ``ResultGrid``.

    ``trainable`` is a Tune function trainable already wrapped with its resources and
    parameters. ``signature`` identifies the sweep's settings (search space, metric, mode,
    model/train/data); a restore is refused when it differs. ``max_epochs`` bounds ASHA.
    ``callbacks`` (Ray Tune callbacks) apply to a new sweep; a restored one runs its own.
    ``record``: more of what the sweep was started with, written to ``sweep.json`` beside the
    signature (the description set's id and location); a restored sweep keeps its own.
    ``reuse_actors``: a finished or stopped trial's process runs the next trial (Tune's
    ``reuse_actors``) instead of a new process importing torch and the model code again.

    Tune's own console reporting (trial tables) only with -v (``RunConfig.verbose``: 1, or 2
    with -vv); otherwise one summary line when the sweep ends.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    rel = sweep_rel(name)
    path = storage.path(rel)
    fs = None if storage.is_local else storage.fs
    # Fast trials checkpoint every epoch (a few MB) and short epochs make that often: Tune's
    # advice to checkpoint less asks nothing of the user, so it goes to the log file only.
    logs.demote("Experiment state snapshotting has been triggered")
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        _check_same_sweep(storage, rel, signature)
        logger.info(f"[tune] resuming the interrupted sweep in {path}")
        # Errored trials resume from their last checkpoint too: an interruption (a killed
        # node, Ctrl+C mid-report) is the usual cause, not the trial's configuration. Tune
        # restores the search (trials not generated yet are generated now), the scheduler and
        # the callbacks the sweep was started with, from tuner.pkl and the experiment state:
        # ``callbacks`` given now are not used.
        tuner = tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
        return _fit(tuner, name, path)

    space, num_samples = param_space(cfg, seed)
    storage.write_text(
        json.dumps({"name": name, "signature": signature, **(record or {})}, indent=2, default=str) + "\n",
        rel,
        SWEEP_FILE,
    )
    scheduler = None
    if cfg.scheduler == "asha":
        # time_attr "epoch" (reported by the trial) rather than Tune's training_iteration: a full
        # trial that resumes its Train run mid-way restarts Tune's count but not the epoch number.
        # stop_last_trials=False: a trial that reaches max_t (its last epoch) ends by itself
        # instead of being stopped at its last report, while its Train run is still finishing.
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=max_epochs,
            grace_period=min(cfg.grace_period, max_epochs),
            reduction_factor=cfg.reduction_factor,
            stop_last_trials=False,
        )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode=cfg.mode,
            scheduler=scheduler,
            # Seeded for reproducible random search. The limit goes to the generator itself: Tune
            # ignores TuneConfig.max_concurrent_trials when given a generator instance.
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=cfg.max_concurrent_trials),
            num_samples=num_samples,
            reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage.path("tune"),
            storage_filesystem=fs,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints),
            callbacks=callbacks,
            verbose=_tune_verbosity(),
        ),
    )
    return _fit(tuner, name, path)


def _tune_verbosity() -> int:
    """Tune's RunConfig.verbose: 0 (silent) unless -v (1: trial tables) or -vv (2)."""
    return max(0, min(2, logs.verbosity()))


def _fit(tuner, name: str, path: str):
    start = time.monotonic()
    grid = tuner.fit()
    errors = grid.num_errors
    logger.log(
        logging.WARNING if errors else logging.INFO,
        f"[tune] sweep {name}: {len(grid)} trials ({grid.num_terminated} done, {errors} errored) "
        f"in {time.monotonic() - start:.0f} s -> {path}",
    )
    return grid
