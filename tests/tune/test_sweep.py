"""The tune stage end to end in frozen-encoder mode: 4 trials, ASHA, outputs, resume after an interrupt."""

from __future__ import annotations

import json
import os
import signal

import cv2
import numpy as np
import pandas as pd
import pytest
from ray import tune

import stages.tune as stage
from pipeline.config import load_config
from pipeline.errors import UserError

from .conftest import EXAMPLE_CONFIG

PARAMS = ["model.n_ctx", "model.temporal_depth"]


def _config(root, *overrides):
    return load_config(EXAMPLE_CONFIG, [f"storage.root={root}", *overrides])


def trial_pids(out, table) -> dict[str, set[int]]:
    """The processes each trial reported from (Tune adds ``pid`` to every result in result.json)."""
    pids = {}
    for trial in table["trial"]:
        with open(os.path.join(out.path, trial, "result.json")) as f:
            pids[trial] = {json.loads(line)["pid"] for line in f if line.strip()}
    return pids


def _check_outputs(out, cfg):
    table = pd.read_parquet(os.path.join(out.path, "results.parquet"))
    csv = pd.read_csv(os.path.join(out.path, "results.csv"))
    assert len(table) == len(csv) == 4
    assert sorted(map(tuple, table[PARAMS].to_numpy().tolist())) == [(2, 1), (2, 2), (8, 1), (8, 2)]
    for col in ("trial", "best_value", "best_epoch", "epochs_run", "wall_time_s", "status"):
        assert col in table
    assert (table["wall_time_s"] > 0).all() and table["best_value"].notna().all()
    # Best first (val_loss, mode min), and the best config is that trial's values.
    assert table["best_value"].is_monotonic_increasing
    assert out.best == {p: int(table.iloc[0][p]) for p in PARAMS}
    # ASHA stopped at least one trial after the grace period; the others ran every epoch.
    stopped = table[table["status"] == "stopped_early"]
    assert len(stopped) >= 1 and (stopped["epochs_run"] < cfg.train.epochs).all()
    assert (stopped["epochs_run"] >= cfg.tune.grace_period).all()
    done = table[table["status"] == "completed"]
    assert len(done) >= 1 and (done["epochs_run"] == cfg.train.epochs).all()
    assert done["test_uar"].between(0, 1).all()  # validation mode: test evaluated once at the end

    img = cv2.imread(os.path.join(out.path, "heatmap.png"))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100

    best = load_config(os.path.join(out.path, "best_config.yaml"))
    assert best.model.n_ctx == out.best["model.n_ctx"] and best.model.temporal_depth == out.best["model.temporal_depth"]
    assert best.train.epochs == cfg.train.epochs and best.model.clip_model == cfg.model.clip_model
    return table


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fast_sweep_outputs_and_early_stopping(ray_local, shard_root, mlflow_uri):
    cfg = _config(shard_root, f"tracking.mlflow_uri={mlflow_uri}")
    out = stage.main(cfg)
    assert not out.interrupted
    table = _check_outputs(out, cfg)
    # MLflow: the sweep's run, and one run per trial nested under it, ended as the trial ended.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.name).experiment_id])
    [sweep] = [r for r in runs if r.data.tags.get("dferclip.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert sweep.info.status == "FINISHED" and len(trials) == len(runs) - 1 == 4
    assert {"results.csv", "heatmap.png", "best_config.yaml"} <= {
        a.path for a in client.list_artifacts(sweep.info.run_id)
    }
    statuses = sorted(r.info.status for r in trials)
    expected = sorted("KILLED" if s == "stopped_early" else "FINISHED" for s in table["status"])
    assert statuses == expected
    assert {r.data.params["model.n_ctx"] for r in trials} == {"2", "8"}
    # One process ran the four trials one after another (Tune's reuse_actors): a fast trial is
    # seconds of work, and a fresh process would import torch and the model code every time.
    assert len(set().union(*trial_pids(out, table).values())) == 1
    # The cache was made once, below the storage root, keyed by backbone.
    assert len(os.listdir(shard_root / "embeddings" / "demo")) == 1

    # Same folder, different search space: refused instead of mixing two sweeps.
    with pytest.raises(UserError, match="different settings"):
        stage.main(_config(shard_root, "tune.space.model.n_ctx=[4, 8]"))


class _InterruptAfterFirstTrial(tune.Callback):
    """Ctrl+C as a user would press it, once, after the first trial has finished.

    Tune saves a sweep's callbacks with it (``tuner.pkl``) and a restored sweep runs them
    again, so "once" must survive the restore: Tune saves and restores a callback's
    ``get_state()`` with the experiment state.
    """

    def __init__(self):
        self.sent = False

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)

    def get_state(self):
        return {"sent": self.sent}

    def set_state(self, state):
        self.sent = state["sent"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_interrupted_sweep_resumes(ray_local, shard_root):
    # Two trials at a time: the interrupt usually leaves a trial that was running (resumed from
    # its last checkpoint) and trials the search had not generated yet (the restored search
    # generates them).
    cfg = _config(shard_root, "tune.name=resumed", "tune.max_concurrent_trials=2", "tune.cpus_per_trial=0.5")
    first = stage.main(cfg, callbacks=[_InterruptAfterFirstTrial()])
    assert first.interrupted and not os.path.exists(os.path.join(first.path, "best_config.yaml"))
    finished = first.table[first.table["status"].isin(["completed", "stopped_early"])]
    # Ctrl+C left trials unfinished, or stopped the sweep before it created them all.
    assert 1 <= len(finished) < 4 and (len(first.table) < 4 or (first.table["status"] == "unfinished").any())

    second = stage.main(cfg)
    assert not second.interrupted
    table = _check_outputs(second, cfg)
    # The first run's trials are kept, and the ones finished before the interrupt were not run again.
    assert set(first.table["trial"]) <= set(table["trial"])
    keep = ["trial", "best_value", "epochs_run", "wall_time_s"]
    again = table.set_index("trial").loc[finished["trial"], keep[1:]]
    np.testing.assert_allclose(again.to_numpy(dtype=float), finished.set_index("trial")[keep[1:]].to_numpy(dtype=float))
