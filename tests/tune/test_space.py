"""Search space (dotted config paths), parameter application and the tune config section (no Ray cluster needed).

Expected values are written out by hand.
"""

from __future__ import annotations

import logging
import types

import pandas as pd
import pytest

from pipeline.config import TuneConfig, load_config
from pipeline.tune.results import best_params, heatmap_png, results_table
from pipeline.tune.space import (
    apply_params,
    apply_params_to_dict,
    expected_trials,
    param_space,
    swept_keys,
    trial_params,
)
from pipeline.typed import ConfigError, from_dict, to_dict


def problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(None, list(overrides))
    return exc.value.problems


def test_default_space_is_the_papers_grid():
    cfg = TuneConfig()
    assert cfg.space == {"model.n_ctx": [2, 4, 8, 16], "model.temporal_depth": [1, 2, 3, 4]}
    space, num_samples = param_space(cfg, base_seed=0)
    assert num_samples == 1
    assert space == {
        "model.n_ctx": {"grid_search": [2, 4, 8, 16]},
        "model.temporal_depth": {"grid_search": [1, 2, 3, 4]},
    }
    assert swept_keys(cfg) == ["model.n_ctx", "model.temporal_depth"]
    assert expected_trials(cfg) == 16
    assert load_config(None).tune == cfg


def test_grid_repeats_get_their_own_seeds_and_random_search_samples():
    cfg = TuneConfig(
        space={"model.n_ctx": [4], "model.temporal_depth": [1, 2], "train.lr_prompt": [1e-3, 1e-2]}, num_samples=3
    )
    space, n = param_space(cfg, base_seed=7)
    assert n == 1
    assert space == {
        "model.n_ctx": {"grid_search": [4]},
        "model.temporal_depth": {"grid_search": [1, 2]},
        "train.lr_prompt": {"grid_search": [0.001, 0.01]},
        "train.seed": {"grid_search": [7, 8, 9]},
    }
    assert swept_keys(cfg) == ["model.n_ctx", "model.temporal_depth", "train.lr_prompt", "train.seed"]
    assert expected_trials(cfg) == 12

    cfg = TuneConfig(search="random", num_samples=5, space={"model.class_specific_contexts": [True, False]})
    space, n = param_space(cfg, 0)
    assert n == 5 and list(space) == ["model.class_specific_contexts"]
    assert sorted(space["model.class_specific_contexts"].categories) == [False, True]
    assert swept_keys(cfg) == ["model.class_specific_contexts"] and expected_trials(cfg) == 5


def test_tune_hands_the_trainable_dotted_keys():
    from ray.tune.search.variant_generator import generate_variants

    cfg = load_config(None, ["tune.space={model.n_ctx: [2, 4], train.lr_prompt: [0.001]}"])
    space, _ = param_space(cfg.tune, 0)
    configs = sorted((spec for _, spec in generate_variants(space)), key=lambda c: c["model.n_ctx"])
    assert configs == [{"model.n_ctx": 2, "train.lr_prompt": 0.001}, {"model.n_ctx": 4, "train.lr_prompt": 0.001}]
    trial = apply_params(cfg, trial_params(configs[1], swept_keys(cfg.tune)))
    assert (trial.model.n_ctx, trial.train.lr_prompt) == (4, 0.001)


def test_trial_params_picks_the_swept_keys():
    config = {"model.n_ctx": 2, "train.seed": 5, "unrelated": 1}
    assert trial_params(config, ["model.n_ctx", "train.seed"]) == {"model.n_ctx": 2, "train.seed": 5}
    with pytest.raises(ValueError, match="lacks swept parameter"):
        trial_params(config, ["model.n_ctx", "model.temporal_depth"])


def test_nested_spelling_from_set_overrides():
    cfg = load_config(None, ["tune.space.model.n_ctx=[4, 8]", "tune.space.train.lr_prompt=[0.001]"])
    assert cfg.tune.space == {"model.n_ctx": [4, 8], "train.lr_prompt": [0.001]}


def test_set_replaces_one_entry_of_a_files_space(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("tune:\n  space:\n    model.n_ctx: [2, 8]\n    model.temporal_depth: [1, 2]\n")
    assert load_config(path).tune.space == {"model.n_ctx": [2, 8], "model.temporal_depth": [1, 2]}
    cfg = load_config(path, ["tune.space.model.n_ctx=[16]"])
    assert cfg.tune.space == {"model.n_ctx": [16], "model.temporal_depth": [1, 2]}


def test_apply_params_returns_a_new_validated_config():
    cfg = load_config(None)
    out = apply_params(
        cfg,
        {
            "model.n_ctx": 16,
            "model.temporal_depth": 3,
            "train.lr_temporal": 0.5,
            "model.class_specific_contexts": False,
            "train.seed": 4,
        },
    )
    assert (out.model.n_ctx, out.model.temporal_depth, out.model.class_specific_contexts) == (16, 3, False)
    assert (out.train.lr_temporal, out.train.seed, out.train.lr_prompt) == (0.5, 4, 0.001)
    assert (cfg.model.n_ctx, cfg.train.seed) == (8, 0)  # the input is not changed
    lr = apply_params(cfg, {"train.lr_prompt": 1}).train.lr_prompt  # converted by the schema, as --set does
    assert lr == 1.0 and isinstance(lr, float)
    assert apply_params(cfg, {"train.augment.hflip": False}).train.augment.hflip is False


def test_apply_params_bad_value_fails_with_its_key_path():
    cfg = load_config(None)
    with pytest.raises(ConfigError) as exc:
        apply_params(cfg, {"model.n_ctx": 0}, where="trial 3")
    assert exc.value.problems == ["model.n_ctx: must be >= 1, got 0"]
    assert "invalid configuration in trial 3" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        apply_params(cfg, {"model.class_token_position": "top"})
    assert exc.value.problems == ["model.class_token_position: expected one of 'end', 'middle', 'front', got 'top'"]
    with pytest.raises(ConfigError) as exc:
        apply_params(cfg, {"model.n_ctxx": 2, "train.epochs": 3})
    assert exc.value.problems[0] == "model.n_ctxx: not a config field (did you mean model.n_ctx?)"
    assert exc.value.problems[1].startswith("train.epochs: may not be swept: train.epochs bounds every trial")
    frozen = load_config(None, ["tune.frozen_encoder=true"])
    with pytest.raises(ConfigError, match="model.clip_model: cannot be swept in frozen-encoder mode"):
        apply_params(frozen, {"model.clip_model": "ViT-B-16"})


def test_apply_params_to_dict_sets_dotted_paths_in_a_copy():
    config = {"name": "x", "model": {"n_ctx": 8}}
    out = apply_params_to_dict(config, {"model.n_ctx": 2, "train.lr_prompt": 0.1, "train.augment.hflip": False})
    assert out == {"name": "x", "model": {"n_ctx": 2}, "train": {"lr_prompt": 0.1, "augment": {"hflip": False}}}
    assert config == {"name": "x", "model": {"n_ctx": 8}}
    with pytest.raises(ConfigError, match="train.epoch: not a config field"):
        apply_params_to_dict(config, {"train.epoch": 3})


def test_a_new_dimension_needs_no_code_change():
    # Neither field was a sweep parameter before tune.space: nothing in the code lists them.
    cfg = load_config(None, ["tune.space={model.class_token_position: [end, middle], train.lr_temporal: [0.01, 0.1]}"])
    assert swept_keys(cfg.tune) == ["model.class_token_position", "train.lr_temporal"]
    assert expected_trials(cfg.tune) == 4
    space, _ = param_space(cfg.tune, 0)
    assert space == {
        "model.class_token_position": {"grid_search": ["end", "middle"]},
        "train.lr_temporal": {"grid_search": [0.01, 0.1]},
    }
    trial = apply_params(cfg, {"model.class_token_position": "middle", "train.lr_temporal": 0.1})
    assert (trial.model.class_token_position, trial.train.lr_temporal) == ("middle", 0.1)
    assert (trial.model.n_ctx, trial.model.temporal_depth) == (8, 1)  # not swept: the model section's values


def test_space_structure_errors_name_the_key_path():
    assert problems(
        "tune.space={model.n_ctxx: [2], model.temporal_depth: [], train.lr_prompt: 0.1, "
        "model.n_ctx: [4, 4], train.augment: [{hflip: false}], train.epochs.x: [1]}"
    ) == [
        "tune.space.model.n_ctxx: not a config field (did you mean model.n_ctx?)",
        "tune.space.model.temporal_depth: give at least one value",
        "tune.space.train.lr_prompt: expected a list of candidate values, got 0.1",
        "tune.space.model.n_ctx: 4 is listed more than once",
        "tune.space.train.augment: is a section, not a value; sweep one of its fields (train.augment.random_resized_crop_scale, "
        "train.augment.hflip, train.augment.brightness, train.augment.rotation_deg, train.augment.fast_decode, "
        "train.augment.on_device)",
        "tune.space.train.epochs.x: not a config field (train.epochs is a value, not a section)",
    ]
    assert problems("tune.space={storage: [a], dataset.nme: [b]}") == [
        "tune.space.storage: may not be swept: storage.* is where every stage reads and writes; "
        "all trials of a sweep share one storage root",
        "tune.space.dataset.nme: not a config field (did you mean dataset.name?)",
    ]
    assert problems("tune.space={}") == [
        "tune.space: give at least one parameter to sweep, e.g. {model.n_ctx: [2, 4, 8, 16]}"
    ]
    assert problems("tune.space={model.temporal_heads: [2], train.seed: [1, 2]}", "tune.num_samples=2") == [
        "tune.space.train.seed: grid search with num_samples > 1 already sweeps train.seed (train.seed + 0, 1, ...); "
        "remove it from the space or set num_samples: 1"
    ]


def test_candidate_values_are_validated_like_set_overrides():
    assert problems(
        "tune.space={model.n_ctx: [2, 4, 0], model.class_token_position: [end, top], "
        "train.lr_prompt: [-1.0], train.milestones: [[30, 40], [40, 30]], model.num_frames: [x]}"
    ) == [
        "tune.space.model.n_ctx[2]: n_ctx must be >= 1, got 0",
        "tune.space.model.class_token_position[1]: class_token_position expected one of 'end', 'middle', 'front', got 'top'",
        "tune.space.train.lr_prompt[0]: lr_prompt must be >= 0, got -1.0",
        "tune.space.train.milestones[1]: milestones must be increasing epochs >= 1, got [40, 30]",
        "tune.space.model.num_frames[0]: num_frames expected int, got 'x'",
    ]
    # A value whose problem shows in another field names both.
    assert problems("train.gpus_per_worker=0", "tune.space={train.use_gpu: [false, true]}") == [
        "tune.space.train.use_gpu[1]: with train.use_gpu=True, train.gpus_per_worker: must be > 0 with use_gpu, got 0.0"
    ]


@pytest.mark.parametrize(
    "path, why",
    [
        ("name", "names the experiment and its outputs"),
        ("storage.root", "all trials of a sweep share one storage root"),
        ("dataset.root", "run one sweep per dataset"),
        ("tune.metric", "holds the sweep's own settings"),
        ("preprocess.crop_size", "every trial reads the same shards"),
        ("describe.model", "never reaches training (the LLM settings)"),
        ("train.fold", "run one sweep per fold"),
    ],
)
def test_paths_that_may_not_be_swept(path, why):
    (problem,) = problems(f"tune.space={{{path}: [a]}}")
    assert problem.startswith(f"tune.space.{path}: may not be swept: ") and why in problem


def test_frozen_encoder_refuses_what_changes_the_embeddings_or_acts_on_pixels():
    space = (
        "tune.space={model.clip_model: [ViT-B-32, ViT-B-16], model.pretrained: [openai, null], "
        "model.weights: [null, w.pt], model.quick_gelu: [true, false], model.input_normalization: [clip, none], "
        "train.augment.hflip: [true, false], train.lr_image_encoder: [0.0, 0.00001], model.n_ctx: [2, 4]}"
    )
    assert load_config(None, [space]).tune.space["model.input_normalization"] == ["clip", "none"]  # full mode: fine
    found = problems(space, "tune.frozen_encoder=true")
    assert [p.split(":")[0] for p in found] == [
        "tune.space.model.clip_model",
        "tune.space.model.pretrained",
        "tune.space.model.weights",
        "tune.space.model.quick_gelu",
        "tune.space.model.input_normalization",
        "tune.space.train.augment.hflip",
        "tune.space.train.lr_image_encoder",
    ]
    for p in found:
        assert "cannot be swept in frozen-encoder mode (tune.frozen_encoder: true)" in p
        assert p.endswith("sweep it in full mode (tune.frozen_encoder: false)")
    assert "acts on pixels" in found[5] and "has no effect" in found[6]
    # What the temporal model and prompts use is fine; so is the seed with pretrained weights (fixed embeddings).
    ok = load_config(
        None,
        [
            "tune.frozen_encoder=true",
            "tune.space={model.n_ctx: [2], model.num_frames: [8, 16], train.lr_prompt: [0.001], train.seed: [0, 1]}",
        ],
    )
    assert expected_trials(ok.tune) == 4
    # With random initial weights the seed makes the encoder too: part of the embedding cache key.
    (problem,) = problems("tune.frozen_encoder=true", "model.pretrained=null", "tune.space={train.seed: [0, 1]}")
    assert problem.startswith("tune.space.train.seed: with random initial weights")


def test_legacy_keys_are_migrated_into_space_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.config"):
        cfg = load_config(
            None, ["tune.n_ctx=[4]", "tune.temporal_depth=[1, 2]", "tune.lr_prompt=[0.001, 0.01]", "tune.num_samples=3"]
        )
    assert [r.getMessage() for r in caplog.records] == [
        "tune.n_ctx is deprecated: write it as tune.space: {model.n_ctx: [4]}",
        "tune.temporal_depth is deprecated: write it as tune.space: {model.temporal_depth: [1, 2]}",
        "tune.lr_prompt is deprecated: write it as tune.space: {train.lr_prompt: [0.001, 0.01]}",
    ]
    t = cfg.tune
    assert t.space == {"model.n_ctx": [4], "model.temporal_depth": [1, 2], "train.lr_prompt": [0.001, 0.01]}
    assert (t.n_ctx, t.temporal_depth, t.lr_prompt) == (None, None, None)
    # The same trials as the old keys gave: 1 x 2 x 2 values x 3 seeded repeats.
    assert swept_keys(t) == ["model.n_ctx", "model.temporal_depth", "train.lr_prompt", "train.seed"]
    assert expected_trials(t) == 12
    assert param_space(t, 7) == (
        {
            "model.n_ctx": {"grid_search": [4]},
            "model.temporal_depth": {"grid_search": [1, 2]},
            "train.lr_prompt": {"grid_search": [0.001, 0.01]},
            "train.seed": {"grid_search": [7, 8, 9]},
        },
        1,
    )
    # A legacy key alone adds to the default context x depth grid, as it did: 4 x 4 x 2 trials.
    t = load_config(None, ["tune.class_specific_contexts=[true, false]"]).tune
    assert t.space == {
        "model.n_ctx": [2, 4, 8, 16],
        "model.temporal_depth": [1, 2, 3, 4],
        "model.class_specific_contexts": [True, False],
    }
    assert expected_trials(t) == 32
    assert TuneConfig(lr_temporal=[0.1]).space == {
        "model.n_ctx": [2, 4, 8, 16],
        "model.temporal_depth": [1, 2, 3, 4],
        "train.lr_temporal": [0.1],
    }
    # Migrated values are validated as space entries.
    assert problems("tune.n_ctx=[0, 4]") == ["tune.space.model.n_ctx[0]: n_ctx must be >= 1, got 0"]


def test_legacy_key_and_space_together_is_an_error():
    assert problems("tune.n_ctx=[2]", "tune.space={model.n_ctx: [4]}") == [
        "tune.n_ctx: deprecated spelling of the tune.space entry model.n_ctx, given together with tune.space; "
        "move its values into tune.space"
    ]


def test_tune_section_errors_name_the_key():
    found = problems("tune.reduction_factor=1", "tune.max_concurrent_trials=0", "tune.name=a/b")
    assert found == [
        "tune.max_concurrent_trials: must be >= 1, got 0",
        "tune.reduction_factor: must be > 1, got 1.0",
        "tune.name: use letters, digits, '.', '_' or '-', starting with a letter or digit; got 'a/b'",
    ]


def _result(name: str, config: dict, values: list[float], error=None):
    frame = pd.DataFrame({"epoch": list(range(1, len(values) + 1)), "val_uar": values})
    return types.SimpleNamespace(
        path=f"/x/{name}",
        config=config,
        metrics_dataframe=frame,
        metrics={"val_uar": values[-1], "time_total_s": 1.0},
        error=error,
    )


def test_results_are_keyed_by_dotted_path_and_feed_the_best_config():
    swept = ["model.logit_scale", "model.n_ctx"]
    grid = [
        _result("a", {"model.logit_scale": None, "model.n_ctx": 2}, [0.2, 0.3]),
        _result("b", {"model.logit_scale": 50.0, "model.n_ctx": 2}, [0.5, 0.4]),
        _result("c", {"model.logit_scale": None, "model.n_ctx": 4}, [0.1, 0.6]),
    ]
    table = results_table(grid, swept, "val_uar", "max", max_epochs=2)
    assert list(table.columns[:3]) == ["trial", "model.logit_scale", "model.n_ctx"]
    assert list(table["trial"]) == ["c", "b", "a"]
    assert list(table["model.logit_scale"]) == [None, 50.0, None] and list(table["model.n_ctx"]) == [4, 2, 2]
    best = best_params(table, swept)
    assert best == {"model.logit_scale": None, "model.n_ctx": 4} and type(best["model.n_ctx"]) is int
    cfg = from_dict(type(load_config(None)), apply_params_to_dict(to_dict(load_config(None)), best))
    assert (cfg.model.logit_scale, cfg.model.n_ctx) == (None, 4)
    png = heatmap_png(table, "val_uar", "max")  # axes: the first two dotted columns
    assert png.startswith(b"\x89PNG")
    assert heatmap_png(table, "val_uar", "max", params=["model.n_ctx"]).startswith(b"\x89PNG")
