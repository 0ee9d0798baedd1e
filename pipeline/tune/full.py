"""The full trial: one complete Ray Train run (image encoder fine-tuned) per Tune trial.

Ray Train V2 cannot be handed to ``Tuner`` directly, so each trial is a small Tune function
(:func:`full_trial`) that builds the trial's :class:`~pipeline.train.driver.TrainJob` and calls
the train stage's own driver, :func:`pipeline.train.driver.fit`, with
``RunConfig(name=<trial name>, callbacks=[TuneReportCallback()])``: every epoch the Train
workers report, and the callback forwards the metrics to Tune, where ASHA can stop the trial.

The Train run is named after the trial, below the sweep folder (``runs/<trial name>``), so a
restored sweep restarts the trial's driver, which finds its Train checkpoints under the same
name and continues from the last finished epoch instead of starting over.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from pipeline.config import ModelConfig, TrainConfig
from pipeline.tune.space import apply_params, apply_params_to_dict

__all__ = ["FullSetup", "full_trial", "runs_path"]


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
    """Ray Tune function trainable: ``tune.with_resources(tune.with_parameters(full_trial, setup=...), {"cpu": 0.5})``."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train.driver import TrainJob, fit

    params = {k: config[k] for k in setup.swept if k in config}
    mcfg, tcfg = apply_params(setup.model, setup.train, params)
    name = tune.get_context().get_trial_name()
    job = TrainJob(model=mcfg, train=tcfg, class_names=list(setup.class_names), descriptions=setup.descriptions,
                   storage_root=setup.storage_root, dataset=setup.dataset, fold=setup.fold,
                   storage_path=setup.runs_path, name=name,
                   experiment=apply_params_to_dict(setup.experiment, params))
    fit(job, name=name, callbacks=[TuneReportCallback()])


def runs_path(sweep_path: str) -> str:
    """Where a sweep's full trials keep their Train runs (``<sweep>/runs/<trial name>/``)."""
    return posixpath.join(sweep_path, "runs")

