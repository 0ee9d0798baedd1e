"""The tune stage in full mode: each trial a Ray Train run (Tune function + TuneReportCallback),
ASHA on, the description set a sweep dimension. One two-trial sweep checks all of it: a full
trial costs a Train run's start (controller, worker, datasets), so trials are few."""

from __future__ import annotations

import json
import math
import os
import time

import pandas as pd
import pytest
import yaml

import stages.tune as stage
from pipeline.config import load_config
from pipeline.datasets import CLASSES_7
from pipeline.llm.sets import read_description_set, shipped_set_paths
from pipeline.model import load_checkpoint
from pipeline.tune.space import DESCRIPTION_SET_KEY

from .conftest import EXAMPLE_CONFIG
from .test_sweep import trial_pids


def _live_placement_groups(ray) -> list[str]:
    return [pg for pg, info in ray.util.placement_group_table().items() if info["state"] != "REMOVED"]


def _uniform_set(path) -> str:
    """A description set that says the same of every class. With shared context tokens
    (model.class_specific_contexts: false) every class then gets the same text features, so
    the model's logits are equal for all classes whatever its weights: the loss is ln 7 on any
    clip, and its gradient is zero (the classes' equal Jacobians weighted by softmax - one-hot,
    which sums to zero), so training changes nothing."""
    path.write_text(
        yaml.safe_dump(
            {
                "format": 1,
                "name": "uniform-7",
                "provenance": {"source": "test", "purpose": "every class described alike"},
                "classes": [{"name": c, "descriptions": ["a face in a short video"]} for c in CLASSES_7],
            }
        )
    )
    return str(path)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_full_sweep_trains_each_trial_with_its_set_and_asha_stops_the_worse(ray_local, shard_root, tmp_path):
    # Two trials, one at a time, grid order: first the uniform set, whose validation loss is
    # ln 7 at every epoch, then default-7. ASHA (grace period 1) never stops the first trial of a
    # rung, and stops the second when its epoch-1 loss is above the first's: the random-weight
    # micro model has learnt nothing after one epoch of two steps, and an uninformative model's
    # cross-entropy on the class-balanced validation split is above ln 7 (Gibbs' inequality),
    # by far at a logit scale of 100 with small steps (at the backbone's 14.3 and the example's
    # learning rates it came within 0.04 of ln 7 after two steps, at 100 within 0.08, as those
    # steps calibrate the model towards uniform). So which trial is stopped is known in advance.
    # Trials run one at a time: a driver (0.5 CPU) + one Train worker (1 CPU) leaves the
    # session's other CPUs to Ray Data, so a Train placement group left behind by the stopped
    # trial would starve any later one (pipeline/tune/stopping.py); the end checks none is left.
    uniform = _uniform_set(tmp_path / "uniform-7.yaml")
    cfg = load_config(
        EXAMPLE_CONFIG,
        [
            f"storage.root={shard_root}",
            "model.text_source=descriptions",
            "model.class_specific_contexts=false",
            # The paper's logit scale, and steps too small to move the model far from its start:
            # default-7's uninformative model then stays far above ln 7.
            "model.logit_scale=100",
            "train.lr_temporal=0.00001",
            "train.lr_prompt=0.00001",
            "train.lr_image_encoder=0.0000001",
            f"tune.space={json.dumps({DESCRIPTION_SET_KEY: [uniform, 'default-7']})}",
            "tune.frozen_encoder=false",
            "tune.name=full",
            "train.cpus_per_worker=1.0",
            "train.epochs=2",
            "train.milestones=[1]",
        ],
    )
    assert cfg.tune.scheduler == "asha" and cfg.tune.grace_period == 1 and cfg.tune.max_concurrent_trials == 1
    out = stage.main(cfg)
    assert not out.interrupted

    table = pd.read_parquet(os.path.join(out.path, "results.parquet"))
    csv = pd.read_csv(os.path.join(out.path, "results.csv"))
    assert len(table) == len(csv) == 2 and sorted(table[DESCRIPTION_SET_KEY]) == sorted([uniform, "default-7"])
    for col in ("trial", "best_value", "best_epoch", "epochs_run", "wall_time_s", "status"):
        assert col in table
    assert (table["wall_time_s"] > 0).all()
    by_set = table.set_index(DESCRIPTION_SET_KEY)
    # The uniform trial: loss ln 7 at both epochs, run to the end, test evaluated once at the end.
    first, second = by_set.loc[uniform], by_set.loc["default-7"]
    assert first["best_value"] == pytest.approx(math.log(7), abs=1e-4)
    assert first["status"] == "completed" and first["epochs_run"] == cfg.train.epochs
    assert 0 <= first["test_uar"] <= 1
    # default-7's trial: worse after epoch 1, so ASHA stopped it there (the grace period).
    assert second["best_value"] > math.log(7)
    assert second["status"] == "stopped_early" and second["epochs_run"] == cfg.tune.grace_period
    # Best first (val_loss, mode min); best_config.yaml is the input config with the best value.
    assert list(table[DESCRIPTION_SET_KEY]) == [uniform, "default-7"] and out.best == {DESCRIPTION_SET_KEY: uniform}
    best = load_config(os.path.join(out.path, "best_config.yaml"))
    assert best.describe.description_set == uniform and best.describe.description_set != cfg.describe.description_set
    assert best.train.epochs == cfg.train.epochs and best.model.clip_model == cfg.model.clip_model
    assert (os.path.getsize(os.path.join(out.path, "heatmap.png"))) > 1000

    # Every trial trained through the train stage's driver, its Train run named after the trial.
    runs = os.path.join(out.path, "runs")
    assert sorted(os.listdir(runs)) == sorted(table["trial"].str.extract(r"^(full_trial_[0-9a-f]+_\d+)")[0])
    # The sweep records each value's set id (name@digest); each run trained with its own set:
    # the model's class texts are the set's, the run's config names the value, and the
    # finished run's summary.json records the id.
    recorded = json.loads(open(os.path.join(out.path, "sweep.json")).read())["description_sets"]
    assert {v: r["id"] for v, r in recorded.items()} == out.description_sets
    assert out.description_sets[uniform].startswith("uniform-7@")
    assert out.description_sets["default-7"].startswith("default-7@")
    assert table.set_index(DESCRIPTION_SET_KEY)["description_set"].to_dict() == out.description_sets
    sets = {uniform: read_description_set(uniform), "default-7": read_description_set(shipped_set_paths()["default-7"])}
    for trial, value in zip(table["trial"], table[DESCRIPTION_SET_KEY]):
        [name] = [n for n in os.listdir(runs) if trial.startswith(n)]
        model, _ = load_checkpoint(os.path.join(runs, name, "best", "model.pt"))
        assert model.spec["descriptions"] == sets[value].classes
        # Epoch 1's checkpoint, or epoch 2's: a stopped run may end before or after it saves epoch 2.
        ckpt = sorted(d for d in os.listdir(os.path.join(runs, name)) if d.startswith("checkpoint_epoch"))[-1]
        _, extra = load_checkpoint(os.path.join(runs, name, ckpt, "model.pt"))
        assert extra["config"]["describe"]["description_set"] == value
    [done] = [n for n in os.listdir(runs) if by_set.loc[uniform, "trial"].startswith(n)]
    summary = json.loads(open(os.path.join(runs, done, "summary.json")).read())
    assert summary["description_set"]["id"] == out.description_sets[uniform]

    # Each trial had a process of its own: stopping a full trial ends its process, whose
    # cleanup() aborts the Train run; a process reused for the next trial would skip that.
    first_pids, second_pids = trial_pids(out, table).values()
    assert first_pids.isdisjoint(second_pids)
    assert not os.path.exists(shard_root / "embeddings")  # full mode never builds the cache
    # Nothing of the stopped trial's Train run holds resources any more.
    deadline = time.monotonic() + 30
    while _live_placement_groups(ray_local) and time.monotonic() < deadline:
        time.sleep(1)
    assert _live_placement_groups(ray_local) == []
