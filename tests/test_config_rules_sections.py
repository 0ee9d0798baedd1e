"""The config rules of the storage, dataset, tune and tracking sections and of the experiment as a
whole, the file errors of load_config, and config_hash: each bad value is refused with its exact
problem and key path, and the bound itself (or the nearest good value) loads. Messages and hashes
are written out by hand from docs/configuration.md and the rules, not read back from the code.
(test_config_rules.py has the model, describe, preprocess and train sections.)
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest

from pipeline.config import (
    DatasetConfig,
    ExperimentConfig,
    StorageConfig,
    TrackingConfig,
    TuneConfig,
    config_hash,
    load_config,
)
from pipeline.typed import ConfigError, to_dict


def problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(None, list(overrides))
    return err.value.problems


# ---- dataset and the experiment --------------------------------------------------------------


def test_unknown_dataset_names_the_known_ones():
    (problem,) = problems("dataset.name=affectnet")
    assert problem.startswith("dataset.name: unknown dataset 'affectnet' (known: ")
    known = problem.removeprefix("dataset.name: unknown dataset 'affectnet' (known: ").removesuffix(")").split(", ")
    assert {"dfew", "ferv39k", "mafw", "csv"} <= set(known)
    assert load_config(None, ["dataset.name=mafw"]).dataset.name == "mafw"


def test_class_names_come_from_the_section_else_the_registry():
    # DFEW's seven classes in the published label order (0 happiness ... 6 fear).
    assert DatasetConfig().class_names == ["happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear"]
    own = DatasetConfig(name="csv", classes=["calm", "tense"])
    names = own.class_names
    assert names == ["calm", "tense"]
    names.append("x")
    assert own.classes == ["calm", "tense"]  # a copy: the config is not changed through it


def test_experiment_name_and_fold():
    assert problems("name=a/b") == [
        "name: use letters, digits, '.', '_' or '-', starting with a letter or digit; got 'a/b'"
    ]
    assert load_config(None, ["name=a-b.1"]).name == "a-b.1"
    # FERV39k has one split: fold 1 only. An unknown dataset has no folds to check against.
    assert problems("dataset.name=ferv39k", "train.fold=2") == ["train.fold: ferv39k has folds [1], got 2"]
    assert load_config(None, ["dataset.name=ferv39k", "train.fold=1"]).train.fold == 1
    assert problems("dataset.name=nope", "train.fold=9")[0].startswith("dataset.name: unknown dataset 'nope'")
    assert len(problems("dataset.name=nope", "train.fold=9")) == 1


def test_storage_root_carries_no_credentials():
    (problem,) = problems("storage.root=s3://AKIA:secret@bucket/runs")
    assert problem.startswith("storage.root: ") and "secret" not in problem
    assert StorageConfig(root="s3://bucket/runs").validate() == []


# ---- load_config's file errors --------------------------------------------------------------


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert err.value.problems == [f"config file not found: {missing}"] and err.value.source == str(missing)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)  # a folder is not a config file
    assert err.value.problems == [f"config file not found: {tmp_path}"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    (problem,) = err.value.problems
    assert problem.startswith("not valid YAML: ") and err.value.source == str(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == ExperimentConfig()  # an empty file: every default
    assert load_config(None) == ExperimentConfig()


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: from-file\ntrain:\n  epochs: 7\n")
    cfg = load_config(path, ["train.epochs=3"])
    assert (cfg.name, cfg.train.epochs) == ("from-file", 3)
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.batch_size=0"])
    assert err.value.source == str(path)
    assert err.value.problems == ["train.batch_size: must be >= 1, got 0"]


# ---- config_hash -----------------------------------------------------------------------------


def test_config_hash_is_sha256_of_sorted_json():
    # The first 16 hex digits of SHA-256 of the section as JSON with sorted keys (json's default
    # ", " and ": " separators), written out here.
    assert config_hash(StorageConfig()) == hashlib.sha256(b'{"root": "runs"}').hexdigest()[:16]
    blob = b'{"annotations": null, "classes": ["b", "a"], "name": "csv", "root": "/data"}'
    assert (
        config_hash(DatasetConfig(name="csv", root="/data", classes=["b", "a"]))
        == (hashlib.sha256(blob).hexdigest()[:16])
    )
    assert len(config_hash(ExperimentConfig())) == 16


# ---- tune ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["tune.space={}"], "tune.space: give at least one parameter to sweep, e.g. {model.n_ctx: [2, 4, 8, 16]}"),
        (["tune.space={model.n_ctx: 4}"], "tune.space.model.n_ctx: expected a list of candidate values, got 4"),
        (["tune.space={model.n_ctx: []}"], "tune.space.model.n_ctx: give at least one value"),
        (["tune.space={model.n_ctx: [2, 4, 2, 4]}"], "tune.space.model.n_ctx: 2 is listed more than once"),
        (
            ["tune.space={model.n_ctx.x: [1]}"],
            "tune.space.model.n_ctx.x: not a config field (model.n_ctx is a value, not a section)",
        ),
        (
            ["tune.space={train.fold: [1, 2]}"],
            "tune.space.train.fold: may not be swept: train.fold is the data split: trials are only comparable "
            "on the same test clips; run one sweep per fold",
        ),
        (
            ["tune.space={storage.root: [a, b]}"],
            "tune.space.storage.root: may not be swept: storage.* is where every stage reads and writes; "
            "all trials of a sweep share one storage root",
        ),
        (
            ["tune.space={name: [a, b]}"],
            "tune.space.name: may not be swept: name names the experiment and its outputs, not a trial setting",
        ),
        (
            ["tune.space={train.epochs: [5, 10]}"],
            "tune.space.train.epochs: may not be swept: train.epochs bounds every trial: ASHA's max_t and the "
            "results' completed/stopped_early status use the sweep's one train.epochs",
        ),
        (
            ["tune.space={train.seed: [1, 2]}", "tune.num_samples=2"],
            "tune.space.train.seed: grid search with num_samples > 1 already sweeps train.seed "
            "(train.seed + 0, 1, ...); remove it from the space or set num_samples: 1",
        ),
        (
            ["tune.space={model.n_ctx: [2]}", "tune.n_ctx=[4]"],
            "tune.n_ctx: deprecated spelling of the tune.space entry model.n_ctx, given together with "
            "tune.space; move its values into tune.space",
        ),
        (
            ["tune.space={model.n_ctx: [2]}", "tune.lr_prompt=[0.1]"],
            "tune.lr_prompt: deprecated spelling of the tune.space entry train.lr_prompt, given together with "
            "tune.space; move its values into tune.space",
        ),
    ],
)
def test_tune_space_rules(overrides, expected):
    assert problems(*overrides) == [expected]


def test_tune_space_rules_accept_the_nearest_good_value():
    cfg = load_config(None, ["tune.space={train.seed: [1, 2]}", "tune.num_samples=1"])
    assert cfg.tune.space == {"train.seed": [1, 2]}
    cfg = load_config(None, ["tune.space={train.seed: [1, 2]}", "tune.search=random", "tune.num_samples=2"])
    assert cfg.tune.num_samples == 2
    assert load_config(None, ["tune.space={model.n_ctx: [2, 4]}"]).tune.space == {"model.n_ctx": [2, 4]}


def test_a_path_with_no_close_field_lists_the_fields_there():
    # (sections added later come after these)
    assert TuneConfig.path_problem("zzzz").startswith(
        "not a config field (the top level has: name, storage, dataset, model, describe, preprocess, train, "
        "tune, tracking"
    )
    # too far from storage.root for a suggestion: the section's fields
    assert TuneConfig.path_problem("storage." + "q" * 22) == "not a config field (storage has: root)"
    assert TuneConfig.path_problem("model.n_ctxx") == "not a config field (did you mean model.n_ctx?)"
    assert TuneConfig.path_problem("trian.epochs") == "not a config field (did you mean train?)"
    assert TuneConfig.path_problem("train.augment.hflp") == "not a config field (did you mean train.augment.hflip?)"
    # "tune.q" is close to "tune.name" / "tune.mode" (difflib ratio 2*5/15 = 0.67 >= 0.6): a suggestion
    assert TuneConfig.path_problem("tune.q").startswith("not a config field (did you mean tune.")
    # the suggestion is for the first part that is not a field, whatever follows it
    assert TuneConfig.path_problem("storage.rot." + "q" * 30) == "not a config field (did you mean storage.root?)"
    assert TuneConfig.path_problem("train.augment.hflip") is None
    assert TuneConfig.path_problem("train.augment") == (
        "is a section, not a value; sweep one of its fields (train.augment.random_resized_crop_scale, "
        "train.augment.hflip, train.augment.brightness, train.augment.rotation_deg, train.augment.fast_decode, "
        "train.augment.on_device)"
    )


@pytest.mark.parametrize(
    "path, why",
    [
        ("model.clip_model", "changes the frame embeddings, which this mode computes once and caches"),
        ("model.input_normalization", "changes the frame embeddings, which this mode computes once and caches"),
        ("train.augment.hflip", "acts on pixels, and this mode trains on cached embeddings without augmentation"),
        ("train.lr_image_encoder", "has no effect: this mode keeps the image encoder frozen"),
    ],
)
def test_frozen_encoder_mode_refuses_what_changes_the_embeddings(path, why):
    assert TuneConfig.path_problem(path, frozen_encoder=True) == (
        f"cannot be swept in frozen-encoder mode (tune.frozen_encoder: true): {path} {why}; "
        f"sweep it in full mode (tune.frozen_encoder: false)"
    )
    assert TuneConfig.path_problem(path) is None  # full mode sweeps it
    assert TuneConfig.path_problem("model.n_ctx", frozen_encoder=True) is None


def test_frozen_encoder_with_random_weights_may_not_sweep_the_seed():
    seed = ["tune.space={train.seed: [1, 2]}", "tune.frozen_encoder=true"]
    assert problems(*seed, "model.pretrained=null") == [
        "tune.space.train.seed: with random initial weights (no model.pretrained or model.weights) the seed also "
        "initialises the image encoder, whose frame embeddings frozen-encoder mode computes once; sweep it in "
        "full mode (tune.frozen_encoder: false)"
    ]
    assert load_config(None, seed).tune.frozen_encoder  # pretrained weights: the seed does not change them
    assert load_config(None, [*seed, "model.pretrained=null", "model.weights=w.pt"]).model.weights == "w.pt"
    load_config(None, ["tune.space={train.seed: [1, 2]}", "model.pretrained=null"])  # full mode: fine


def test_candidates_are_checked_in_the_whole_config():
    # A candidate whose problem is in another key: "with PATH=VALUE, <that key's problem>".
    assert problems("train.gpus_per_worker=0", "tune.space={train.use_gpu: [false, true]}") == [
        "tune.space.train.use_gpu[1]: with train.use_gpu=True, train.gpus_per_worker: must be > 0 with use_gpu, got 0.0"
    ]
    # The config's own problem is reported once, by its own rule, not again per candidate.
    assert problems("name=a/b", "tune.space={model.n_ctx: [2, 4]}") == [
        "name: use letters, digits, '.', '_' or '-', starting with a letter or digit; got 'a/b'"
    ]
    # A list-valued field: the index inside the candidate follows the leaf name.
    assert problems("tune.space={train.milestones: [[30, 40], [40, 30]]}") == [
        "tune.space.train.milestones[1]: milestones must be increasing epochs >= 1, got [40, 30]"
    ]


@pytest.mark.parametrize(
    "key", ["num_samples", "grace_period", "max_concurrent_trials", "embed_batch_size", "embed_workers"]
)
def test_tune_counts_are_at_least_one(key):
    assert problems(f"tune.{key}=0") == [f"tune.{key}: must be >= 1, got 0"]
    assert getattr(load_config(None, [f"tune.{key}=1"]).tune, key) == 1


@pytest.mark.parametrize("key", ["cpus_per_trial", "gpus_per_trial", "driver_cpus", "embed_cpus", "embed_gpus"])
def test_tune_resources_are_not_negative(key):
    assert problems(f"tune.{key}=-0.5") == [f"tune.{key}: must be >= 0, got -0.5"]
    assert getattr(load_config(None, [f"tune.{key}=0"]).tune, key) == 0


def test_tune_reduction_factor_and_name():
    assert problems("tune.reduction_factor=1") == ["tune.reduction_factor: must be > 1, got 1.0"]
    assert load_config(None, ["tune.reduction_factor=1.001"]).tune.reduction_factor == 1.001
    assert problems("tune.name=../x") == [
        "tune.name: use letters, digits, '.', '_' or '-', starting with a letter or digit; got '../x'"
    ]
    assert load_config(None, ["tune.name=sweep_1"]).tune.name == "sweep_1"


def test_with_params_sets_dotted_paths_in_a_copy():
    data = {"train": {"epochs": 5}, "model": 3}
    out = TuneConfig.with_params(data, {"train.lr_prompt": np.float64(0.5), "model.n_ctx": [np.int64(2)], "a.b.c": 1})
    assert out == {"train": {"epochs": 5, "lr_prompt": 0.5}, "model": {"n_ctx": [2]}, "a": {"b": {"c": 1}}}
    assert type(out["train"]["lr_prompt"]) is float  # a numpy scalar becomes a plain Python number
    assert data == {"train": {"epochs": 5}, "model": 3}  # the input is not changed
    values = [[30, 40], [20]]
    out = TuneConfig.with_params({}, {"model.x": values})
    values[0].append(50)
    assert out == {"model": {"x": [[30, 40], [20]]}}  # a deep copy of the value, too
    assert TuneConfig.with_params({"name": "a"}, {"name": "b"}) == {"name": "b"}  # a top-level path


def test_a_candidate_problem_whose_message_holds_a_colon():
    # The key is what comes before the first ": ", even when the message (a mapping's repr) holds one.
    assert problems("tune.space={model.n_ctx: [{a: 1}]}") == [
        "tune.space.model.n_ctx[0]: n_ctx expected int, got {'a': 1}"
    ]


def test_a_legacy_value_that_is_not_a_list_is_left_to_validate(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.config"):
        tune = TuneConfig(n_ctx=4)
    assert tune.space["model.n_ctx"] == 4
    assert [r.getMessage() for r in caplog.records] == [
        "tune.n_ctx is deprecated: write it as tune.space: {model.n_ctx: 4}"
    ]
    assert tune.validate() == ["space.model.n_ctx: expected a list of candidate values, got 4"]


def test_a_candidate_problem_inside_the_value_names_the_leaf_and_where():
    # a list element's problem: the leaf, then its index inside the candidate
    assert problems("tune.space={train.milestones: [[30, 40], [30, x]]}") == [
        "tune.space.train.milestones[1]: milestones[1] expected int, got 'x'"
    ]
    # a mapping entry's problem: the leaf, then the entry's key
    assert problems("tune.space={tracking.tags: [{team: 1}]}") == [
        "tune.space.tracking.tags[0]: tags.team expected str, got 1"
    ]


def test_frozen_encoder_mode_refuses_a_space_entry_it_cannot_honour():
    assert problems("tune.frozen_encoder=true", "tune.space={train.lr_image_encoder: [0.001]}") == [
        "tune.space.train.lr_image_encoder: cannot be swept in frozen-encoder mode (tune.frozen_encoder: true): "
        "train.lr_image_encoder has no effect: this mode keeps the image encoder frozen; sweep it in full mode "
        "(tune.frozen_encoder: false)"
    ]


def test_trial_config_errors_name_the_trial():
    base = to_dict(ExperimentConfig())
    cfg = TuneConfig.trial_config(base, {"model.n_ctx": 4, "train.augment.hflip": False})
    assert (cfg.model.n_ctx, cfg.train.augment.hflip) == (4, False)
    with pytest.raises(ConfigError) as err:
        TuneConfig.trial_config(base, {"model.n_ctx": 0}, "trial 7")
    assert err.value.source == "trial 7" and err.value.problems == ["model.n_ctx: must be >= 1, got 0"]


def test_space_problems_skips_what_validate_reports():
    # Called directly (load_config calls it only once the paths and lists are fine): a path that may
    # not be swept, or whose values are not a list, is left to TuneConfig.validate; the entries after
    # it are still checked. With frozen_encoder, full-mode-only paths are skipped too.
    tune = TuneConfig(space={"model.n_ctxx": [0], "train.fold": [9], "model.n_ctx": 0, "model.temporal_depth": [1, 0]})
    assert tune.space_problems(ExperimentConfig(tune=tune)) == [
        "tune.space.model.temporal_depth[1]: temporal_depth must be >= 1, got 0"
    ]
    frozen = TuneConfig(space={"train.lr_image_encoder": [-1.0], "model.n_ctx": [0]}, frozen_encoder=True)
    assert frozen.space_problems(ExperimentConfig(tune=frozen)) == [
        "tune.space.model.n_ctx[0]: n_ctx must be >= 1, got 0"
    ]


def test_a_nested_candidate_problem_names_the_leaf():
    # The leaf is the last part of the path (hflip), however deep the path.
    assert problems("tune.space={train.augment.hflip: [true, maybe]}") == [
        "tune.space.train.augment.hflip[1]: hflip expected bool, got 'maybe'"
    ]


def test_nested_space_entries_are_flattened_and_replace_dotted_ones():
    # What `--set tune.space.model.n_ctx=[4]` writes is a nested mapping: it becomes the dotted
    # path, at any depth, and wins over a dotted entry of the same path.
    space = {"model.n_ctx": [2], "model": {"n_ctx": [4]}, "train": {"augment": {"hflip": [True, False]}}}
    assert TuneConfig(space=space).space == {"model.n_ctx": [4], "train.augment.hflip": [True, False]}
    cfg = load_config(None, ["tune.space={model.n_ctx: [2]}", "tune.space.model.n_ctx=[8, 16]"])
    assert cfg.tune.space == {"model.n_ctx": [8, 16]}


def test_a_legacy_key_moves_into_the_default_space_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.config"):
        tune = TuneConfig(n_ctx=(2, 4), lr_prompt=[0.001])
    # the default space (context tokens x temporal depth) with the legacy values set into it
    assert tune.space == {"model.n_ctx": [2, 4], "model.temporal_depth": [1, 2, 3, 4], "train.lr_prompt": [0.001]}
    assert type(tune.space["model.n_ctx"]) is list and (tune.n_ctx, tune.lr_prompt) == (None, None)
    assert [r.getMessage() for r in caplog.records] == [
        "tune.n_ctx is deprecated: write it as tune.space: {model.n_ctx: [2, 4]}",
        "tune.lr_prompt is deprecated: write it as tune.space: {train.lr_prompt: [0.001]}",
    ]
    assert [(r.name, r.levelno) for r in caplog.records] == [("pipeline.config", logging.WARNING)] * 2


# ---- tracking --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, problem",
    [
        ("  ", "is empty; give a tracking URI, or null to turn tracking off"),
        (
            "/abs/mlflow.db",
            "'/abs/mlflow.db' has no scheme; for a local store write sqlite:///<absolute path>/mlflow.db "
            "(MLflow 3 refuses bare-path file stores)",
        ),
        (
            "C:/runs/mlflow.db",
            "'C:/runs/mlflow.db' has no scheme; for a local store write sqlite:///<absolute path>/mlflow.db "
            "(MLflow 3 refuses bare-path file stores)",
        ),
        (
            "ftp://host/x",
            "'ftp://host/x': unsupported scheme 'ftp' (use one of sqlite, http, https, file, postgresql, mysql, "
            "mssql, databricks)",
        ),
        (
            "sqlite://",
            "'sqlite://': write sqlite:///<relative path> or sqlite:////<absolute path> (a file, not in memory)",
        ),
        ("http://:5000", "'http://:5000': no host name"),
        ("https:///x", "'https:///x': no host name"),
    ],
)
def test_tracking_uri_rules(uri, problem):
    assert TrackingConfig.uri_problem(uri) == problem
    assert TrackingConfig(mlflow_uri=uri).validate() == [f"mlflow_uri: {problem}"]


@pytest.mark.parametrize(
    "uri",
    [
        "databricks",
        "databricks://profile",
        "sqlite:///mlflow.db",
        "SQLITE:///mlflow.db",
        "postgresql+psycopg2://db.example.com/mlflow",
        "http://127.0.0.1:5000",
        "file:///tmp/mlruns",
    ],
)
def test_tracking_uris_that_are_fine(uri):
    assert TrackingConfig.uri_problem(uri) is None
    assert TrackingConfig.uri_problem(f" {uri} ") is None  # surrounding blanks are not part of it


def test_tracking_section_rules():
    assert problems("tracking.mlflow_experiment=' '") == [
        "tracking.mlflow_experiment: 1 to 500 characters, or null for the experiment's name, got ' '"
    ]
    long = "e" * 501
    assert problems(f"tracking.mlflow_experiment={long}") == [
        f"tracking.mlflow_experiment: 1 to 500 characters, or null for the experiment's name, got '{long}'"
    ]
    assert load_config(None, [f"tracking.mlflow_experiment={'e' * 500}"]).tracking.mlflow_experiment == "e" * 500
    assert problems("tracking.artifact_location=' '") == [
        "tracking.artifact_location: is empty; give a location, or null for the default"
    ]
    tag_rule = (
        "a key of 1 to 250 characters, not starting with 'mlflow.' or 'dferclip.' (set by MLflow and this project)"
    )
    for key in ("mlflow.user", "dferclip.run", "", "k" * 251):
        assert TrackingConfig(tags={key: "v"}).validate() == [f"tags: {key!r}: {tag_rule}"]
    assert TrackingConfig(tags={"k" * 250: "v", "team": "x", "mlflowish": "y"}).validate() == []
    # the shortest name and key (one character) are fine
    assert TrackingConfig(mlflow_experiment="e", tags={"a": "v"}).validate() == []
    (problem,) = problems("tracking.mlflow_uri=http://u:pw@mlflow.example.com")
    assert problem.startswith("tracking.mlflow_uri: ") and "pw@" not in problem
    assert "MLFLOW_TRACKING_USERNAME" in problem  # where tracking credentials go, not the filesystem's
