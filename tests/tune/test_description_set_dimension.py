"""The description set as a sweep dimension (``tune.space: {describe.description_set: [...]}``):
each trial's class prompts use the set its value names, in fast and full mode, and the sweep
records every trial's set id. Full mode: tests/tune/test_full_sweep.py."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

import stages.tune as stage
from pipeline.config import TuneConfig, load_config
from pipeline.errors import UserError
from pipeline.llm.sets import read_description_set, shipped_set_paths
from pipeline.tune.space import DESCRIPTION_SET_KEY, TrialSets, apply_params
from pipeline.typed import ConfigError

from .conftest import EXAMPLE_CONFIG

SHUFFLED = str(shipped_set_paths()["shuffled-7"])


def _config(root, *overrides):
    # The example sweep, its class prompts from description sets, one trial per set.
    return load_config(
        EXAMPLE_CONFIG,
        [
            f"storage.root={root}",
            "model.text_source=descriptions",
            *overrides,
        ],
    )


def _sets_space(*values: str) -> str:
    return f"tune.space={json.dumps({DESCRIPTION_SET_KEY: list(values)})}"


def test_the_set_may_be_swept_in_both_modes_and_no_other_describe_field(tmp_path):
    assert TuneConfig.path_problem(DESCRIPTION_SET_KEY, frozen_encoder=True) is None
    assert TuneConfig.path_problem(DESCRIPTION_SET_KEY, frozen_encoder=False) is None
    assert "may not be swept: describe.*" in TuneConfig.path_problem("describe.model", frozen_encoder=True)
    cfg = _config(tmp_path, _sets_space("default-7", "shuffled-7"))
    trial = apply_params(cfg, {DESCRIPTION_SET_KEY: "shuffled-7"})
    assert trial.describe.description_set == "shuffled-7" and cfg.describe.description_set is None


def test_each_value_resolves_to_its_own_set_and_ids(tmp_path):
    copy = tmp_path / "mine.yaml"
    shutil.copyfile(SHUFFLED, copy)
    cfg = _config(tmp_path, _sets_space("default-7", str(copy)))
    sets = TrialSets.resolve(cfg)
    default, mine = read_description_set(str(shipped_set_paths()["default-7"])), read_description_set(SHUFFLED)
    assert sets.swept and sets.default is None
    assert sets.for_params({DESCRIPTION_SET_KEY: "default-7"}).descriptions["anger"] == default.classes["anger"]
    assert sets.for_params({DESCRIPTION_SET_KEY: str(copy)}).descriptions["anger"] == mine.classes["anger"]
    # shuffled-7 gives anger surprise's descriptions: the two choices really differ.
    assert mine.classes["anger"] == default.classes["surprise"] != default.classes["anger"]
    ids = sets.ids()
    assert ids["default-7"].startswith("default-7@") and ids[str(copy)].startswith("shuffled-7@")
    assert sets.record()["description_sets"][str(copy)]["location"] == str(copy)
    with pytest.raises(ValueError, match="not one of the sweep's sets"):
        sets.for_params({DESCRIPTION_SET_KEY: "default-11"})
    # Not swept: every trial gets the experiment's set.
    plain = TrialSets.resolve(_config(tmp_path, "tune.space={model.n_ctx: [2, 4]}"))
    assert not plain.swept and plain.for_params({"model.n_ctx": 2}).name == "default-7" and plain.ids() == {}


def test_a_missing_set_or_unused_sets_fail_before_any_trial(tmp_path):
    with pytest.raises(UserError, match=r"tune.space.describe.description_set\[1\]: .*not found: nope-7"):
        TrialSets.resolve(_config(tmp_path, _sets_space("default-7", "nope-7")))
    with pytest.raises(UserError, match="model.text_source=class_names, not descriptions"):
        TrialSets.resolve(_config(tmp_path, _sets_space("default-7"), "model.text_source=class_names"))
    with pytest.raises(ConfigError, match="describe.description_set.*listed more than once"):
        _config(tmp_path, _sets_space("default-7", "default-7"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fast_sweep_over_sets_gives_each_trial_its_set(ray_local, shard_root, tmp_path):
    # Three trials, one epoch each: the shipped set, a byte copy of it under another path, and
    # shuffled-7. Trials differ only in their class prompts, so the copy must score exactly as
    # the shipped set does and shuffled-7 differently — which only holds if each trial really
    # trains with the set its value names.
    copy = tmp_path / "default-copy.yaml"
    shutil.copyfile(shipped_set_paths()["default-7"], copy)
    values = ["default-7", str(copy), "shuffled-7"]
    cfg = _config(
        shard_root,
        _sets_space(*values),
        "tune.name=sets-fast",
        "tune.scheduler=none",
        "train.epochs=1",
        "tune.max_concurrent_trials=1",
    )
    out = stage.main(cfg)
    assert not out.interrupted
    table = pd.read_csv(os.path.join(out.path, "results.csv")).set_index(DESCRIPTION_SET_KEY)
    assert sorted(table.index) == sorted(values) and (table["status"] == "completed").all()
    sweep = json.loads(open(os.path.join(out.path, "sweep.json")).read())
    recorded = {v: r["id"] for v, r in sweep["description_sets"].items()}
    assert table["description_set"].to_dict() == recorded == out.description_sets
    assert recorded["default-7"] == recorded[str(copy)] != recorded["shuffled-7"]  # id: name + content
    loss = table["best_value"]  # val_loss
    assert loss[str(copy)] == pytest.approx(loss["default-7"], abs=1e-6)
    assert abs(loss["shuffled-7"] - loss["default-7"]) > 1e-4
    best = load_config(os.path.join(out.path, "best_config.yaml"))
    assert best.describe.description_set == table["best_value"].idxmin()
