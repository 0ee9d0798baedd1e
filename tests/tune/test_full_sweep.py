"""The tune stage in full mode: each trial a Ray Train run (Tune function + TuneReportCallback)."""

from __future__ import annotations

import os

import pytest

import stages.tune as stage

from .test_sweep import _check_outputs, _config


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_full_sweep_runs_train_per_trial(ray_local, shard_root):
    # Trials one at a time: a driver (0.5 CPU) + one Train worker (1 CPU) leaves the session's
    # other CPUs to Ray Data. No early stopping here: on this 2-core machine the placement group
    # of a Train run that ASHA stops was seen to outlive the trial and starve the next one
    # (DESIGN.md §6); ASHA itself is covered by the fast-mode test, with identical Tune wiring.
    cfg = _config(shard_root, "tune.frozen_encoder=false", "tune.name=full", "train.cpus_per_worker=1.0",
                  "tune.scheduler=none", "train.epochs=2", "train.milestones=[1]")
    out = stage.main(cfg)
    assert not out.interrupted
    table = _check_outputs(out, cfg, early_stopping=False)
    # Every trial trained through the train stage's driver, its Train run named after the trial.
    runs = os.listdir(os.path.join(out.path, "runs"))
    assert sorted(runs) == sorted(table["trial"].str.extract(r"^(full_trial_[0-9a-f]+_\d+)")[0])
    assert not os.path.exists(shard_root / "embeddings")  # full mode never builds the cache
