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

import posixpath
from dataclasses import dataclass

from pipeline.config import ModelConfig, TrainConfig
from pipeline.tune.space import apply_params, apply_params_to_dict

__all__ = ["FullSetup", "full_trial", "full_trainable", "runs_path"]


@dataclass
class FullSetup:
    model: ModelConfig
    train: TrainConfig
    class_names: list[str]
    descriptions: dict[str, list[str]] | None
    storage_root: str
    dataset: str
    fold: int
    runs_path: str  # Ray storage_path of the trials' Train runs
    swept: list[str]
    experiment: dict  # the whole input config; each run stores it with the trial's values filled in


def full_trial(config: dict, *, setup: FullSetup) -> None:
    """Ray Tune function trainable; give it to Tune through :func:`full_trainable`."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train.driver import TrainJob, fit
    from pipeline.tune.stopping import TrainRunGuard

    params = {k: config[k] for k in setup.swept if k in config}
    mcfg, tcfg = apply_params(setup.model, setup.train, params)
    name = tune.get_context().get_trial_name()
    job = TrainJob(model=mcfg, train=tcfg, class_names=list(setup.class_names), descriptions=setup.descriptions,
                   storage_root=setup.storage_root, dataset=setup.dataset, fold=setup.fold,
                   storage_path=setup.runs_path, name=name,
                   experiment=apply_params_to_dict(setup.experiment, params))
    guard = TrainRunGuard(tune.get_context().get_trial_id())
    try:
        fit(job, name=name, callbacks=[guard.callback(), TuneReportCallback()])
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


def runs_path(sweep_path: str) -> str:
    """Where a sweep's full trials keep their Train runs (``<sweep>/runs/<trial name>/``)."""
    return posixpath.join(sweep_path, "runs")

