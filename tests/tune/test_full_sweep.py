"""The tune stage in full mode: each trial a Ray Train run (Tune function + TuneReportCallback), ASHA on."""

from __future__ import annotations

import os
import time

import pytest

import stages.tune as stage

from .test_sweep import _check_outputs, _config


def _live_placement_groups(ray) -> list[str]:
    return [pg for pg, info in ray.util.placement_group_table().items() if info["state"] != "REMOVED"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_full_sweep_runs_train_per_trial(ray_local, shard_root):
    # Trials one at a time: a driver (0.5 CPU) + one Train worker (1 CPU) leaves the session's
    # other CPUs to Ray Data — so a single Train placement group left behind by a trial that
    # ASHA stopped would starve every later trial (pipeline/tune/stopping.py).
    cfg = _config(
        shard_root,
        "tune.frozen_encoder=false",
        "tune.name=full",
        "train.cpus_per_worker=1.0",
        "train.epochs=2",
        "train.milestones=[1]",
    )
    out = stage.main(cfg)
    assert not out.interrupted
    table = _check_outputs(out, cfg)  # ASHA stopped at least one trial after epoch 1; others ran both
    assert set(table["status"]) <= {"completed", "stopped_early"}  # every trial ended
    # Every trial trained through the train stage's driver, its Train run named after the trial.
    runs = os.listdir(os.path.join(out.path, "runs"))
    assert sorted(runs) == sorted(table["trial"].str.extract(r"^(full_trial_[0-9a-f]+_\d+)")[0])
    assert not os.path.exists(shard_root / "embeddings")  # full mode never builds the cache
    # Nothing of the stopped trials' Train runs holds resources any more.
    deadline = time.monotonic() + 30
    while _live_placement_groups(ray_local) and time.monotonic() < deadline:
        time.sleep(1)
    assert _live_placement_groups(ray_local) == []
