"""Search space, parameter application and the tune config section (no Ray cluster needed)."""

from __future__ import annotations

import pytest

from pipeline.config import ModelConfig, TrainConfig, TuneConfig, load_config
from pipeline.tune.space import apply_params, apply_params_to_dict, expected_trials, param_space, swept_keys
from pipeline.typed import ConfigError


def test_grid_space_defaults_to_paper_sweep():
    space, num_samples = param_space(TuneConfig(), base_seed=0)
    assert num_samples == 1
    assert space["n_ctx"] == {"grid_search": [2, 4, 8, 16]}
    assert space["temporal_depth"] == {"grid_search": [1, 2, 3, 4]}
    assert set(space) == {"n_ctx", "temporal_depth"}


def test_grid_repeats_get_their_own_seeds_and_random_search_samples():
    cfg = TuneConfig(n_ctx=[4], temporal_depth=[1, 2], lr_prompt=[1e-3, 1e-2], num_samples=3)
    space, n = param_space(cfg, base_seed=7)
    assert n == 1 and space["seed"] == {"grid_search": [7, 8, 9]}
    assert swept_keys(cfg) == ["n_ctx", "temporal_depth", "lr_prompt", "seed"]
    assert expected_trials(cfg) == 12 and expected_trials(TuneConfig()) == 16
    space, n = param_space(TuneConfig(search="random", num_samples=5, class_specific_contexts=[True, False]), 0)
    assert n == 5 and "seed" not in space
    assert sorted(space["class_specific_contexts"].categories) == [False, True]


def test_apply_params_fills_model_and_train_sections():
    model, train = apply_params(ModelConfig(), TrainConfig(), {"n_ctx": 16, "temporal_depth": 3, "lr_temporal": 0.5,
                                                               "class_specific_contexts": False, "seed": 4})
    assert (model.n_ctx, model.temporal_depth, model.class_specific_contexts) == (16, 3, False)
    assert (train.lr_temporal, train.seed, train.lr_prompt) == (0.5, 4, 1e-3)
    with pytest.raises(ValueError, match="not a swept parameter"):
        apply_params(ModelConfig(), TrainConfig(), {"epochs": 3})
    d = apply_params_to_dict({"name": "x", "model": {"n_ctx": 8}}, {"n_ctx": 2, "lr_prompt": 0.1})
    assert d == {"name": "x", "model": {"n_ctx": 2}, "train": {"lr_prompt": 0.1}}


def test_tune_section_errors_name_the_key():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["tune.n_ctx=[0, 4]", "tune.temporal_depth=[]", "tune.reduction_factor=1",
                           "tune.max_concurrent_trials=0", "tune.name=a/b", "tune.lr_prompt=[-1.0]"])
    text = str(exc.value)
    for key in ("tune.n_ctx", "tune.temporal_depth", "tune.reduction_factor", "tune.max_concurrent_trials",
                "tune.name", "tune.lr_prompt"):
        assert key in text
