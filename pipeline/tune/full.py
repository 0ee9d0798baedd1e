"""The full trial: one complete Ray Train run (image encoder fine-tuned) per Tune trial.

Ray Train V2 cannot be handed to ``Tuner`` directly, so each trial is a small Tune function
(:func:`full_trial`) that builds the trial's :class:`~pipeline.train.driver.TrainJob` and calls
the train stage's own driver, :func:`pipeline.train.driver.fit`, with
``RunConfig(name=<trial name>, callbacks=[TuneReportCallback()])``: every epoch the Train
workers report, and the callback forwards the metrics to Tune, where ASHA can stop the trial.

The Train run is named after the trial, below the sweep folder (``runs/<trial name>``), so a
restored sweep restarts the trial's driver, which finds its Train checkpoints under the same
name and continues from the last finished epoch instead of starting over.

When Tune stops a trial (ASHA, Ctrl+C, the end of the sweep) the trial aborts its Train run
before its actor goes (:mod:`pipeline.tune.stopping`): otherwise the run's placement group
outlives the trial and starves the next one. :func:`full_trainable` wires that up.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ExperimentConfig
from pipeline.storage import Storage
from pipeline.tune.space import TrialSets

__all__ = ["FullSetup", "full_trial", "full_trainable", "RUNS_DIR"]

RUNS_DIR = "runs"  # a sweep's full trials keep their Train runs in <sweep>/runs/<trial name>/


@dataclass(frozen=True)
class FullSetup:
    experiment: ExperimentConfig  # the sweep's config; each trial fills in its swept values
    sets: TrialSets  # the description set of each trial (one for all unless the sweep ranges over sets)
    storage: Storage  # the experiment's storage root (shards)
    runs: Storage  # Ray storage_path of the trials' Train runs
    swept: tuple[str, ...]  # dotted config paths
    tracking: dict | None = None  # MLflow settings (runs nest under the sweep's run)


def full_trial(config: dict, *, setup: FullSetup) -> None:
    """Ray Tune function trainable; give it to Tune through :func:`full_trainable`."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train.driver import TrainJob, fit
    from pipeline.train.recipe import RunSpec
    from pipeline.tune.space import apply_params, trial_params
    from pipeline.tune.stopping import TrainRunGuard

    params = trial_params(config, list(setup.swept))
    cfg = apply_params(setup.experiment, params)
    chosen = setup.sets.for_params(params)  # summary.json of the trial's run records its id
    name = tune.get_context().get_trial_name()
    job = TrainJob(
        RunSpec.for_experiment(
            cfg,
            name,
            chosen.descriptions if chosen else None,
            setup.tracking,
            description_set=chosen.record() if chosen else None,
        ),
        setup.storage,
        runs=setup.runs,
    )
    guard = TrainRunGuard(tune.get_context().get_trial_id())
    try:
        fit(job, callbacks=[guard.callback(), TuneReportCallback()], progress=False)
    except Exception:
        if not guard.aborted:
            raise
        # Tune stopped the trial and its cleanup() aborted the Train run: nothing went wrong.
    finally:
        guard.close()


def full_trainable(setup: FullSetup, driver_cpus: float):
    """The Tune trainable of a full sweep: :func:`full_trial` with ``setup``, ``driver_cpus`` CPUs
    for the driver, and the mixin that aborts the trial's Train run when Tune stops the trial."""
    from ray import tune

    from pipeline.tune.stopping import StopTrainRunWithTrial

    fn = tune.with_parameters(full_trial, setup=setup)
    fn.__mixins__ = (StopTrainRunWithTrial,)  # read by Tune's wrap_function
    return tune.with_resources(fn, {"cpu": driver_cpus})
