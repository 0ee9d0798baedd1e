"""Config loading: every error names its key path; overrides share the same validation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.config import ExperimentConfig, config_hash, dump_config, load_config
from pipeline.typed import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_papers_recipe():
    cfg = load_config(None)
    t, m = cfg.train, cfg.model
    assert (t.epochs, t.batch_size, t.milestones, t.lr_gamma) == (50, 48, [30, 40], 0.1)
    assert (t.lr_image_encoder, t.lr_temporal, t.lr_prompt) == (1e-5, 1e-2, 1e-3)
    assert (t.momentum, t.weight_decay) == (0.9, 1e-4)
    assert (m.clip_model, m.pretrained, m.num_frames, m.n_ctx, m.temporal_depth) == ("ViT-B-32", "openai", 16, 8, 1)
    assert (m.temporal_heads, m.temporal_head_dim, m.temporal_mlp_dim) == (8, 64, 1024)
    assert m.class_specific_contexts and m.input_normalization == "clip"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name != "experiment", "a shipped config should name its experiment"


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "model.n_ctx=4"])
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


def test_tune_space_dumps_as_dotted_paths_and_loads_back(tmp_path):
    cfg = load_config(None, ["tune.space={model.n_ctx: [2, 4], train.milestones: [[30, 40], [20]]}"])
    text = dump_config(cfg)
    assert "    model.n_ctx:\n    - 2\n    - 4\n" in text
    assert load_config(write(tmp_path, text)) == cfg


def test_tune_space_values_are_checked_against_the_whole_config():
    # With train.epochs 10 a warm-up of 10 epochs is invalid (0..9): the candidate is checked in this
    # config, by TrainConfig.validate. A bad path is reported first (values are checked once paths are fine).
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=10", "tune.space={train.warmup_epochs: [0, 10], model.n_ctxx: [1]}"])
    assert info.value.problems == ["tune.space.model.n_ctxx: not a config field (did you mean model.n_ctx?)"]
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=10", "tune.space={train.warmup_epochs: [0, 10]}"])
    assert info.value.problems == [
        "tune.space.train.warmup_epochs[1]: warmup_epochs must be in 0..epochs-1 (9), got 10"
    ]


def test_every_problem_is_reported_with_its_key_path(tmp_path):
    p = write(tmp_path, "train:\n  epochs: ten\n  lr_temporal: fast\n  bogus: 1\nmodel:\n  class_token_position: top\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert "train.epochs: expected int, got 'ten'" in msg
    assert "train.lr_temporal: expected float" in msg
    assert "train.bogus: unknown key" in msg
    assert "model.class_token_position: expected one of 'end', 'middle', 'front', got 'top'" in msg
    assert str(p) in msg
    assert len(info.value.problems) == 4


def test_semantic_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"train.fold: dfew has folds \[1, 2, 3, 4, 5\], got 7"):
        load_config(None, ["train.fold=7"])
    with pytest.raises(ConfigError, match="dataset.name: unknown dataset 'affectnet'"):
        load_config(None, ["dataset.name=affectnet"])
    with pytest.raises(ConfigError, match="train.epochs: must be >= 1"):
        load_config(None, ["train.epochs=0"])
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        load_config(write(tmp_path, "train: 3\n"))


def test_overrides_use_the_same_validation():
    cfg = load_config(None, ["train.epochs=2", "train.milestones=[1]", "model.pretrained=null", "storage.root=/tmp/x"])
    assert cfg.train.epochs == 2 and cfg.train.milestones == [1] and cfg.model.pretrained is None
    with pytest.raises(ConfigError, match="train.epochs: expected int, got 'two'"):
        load_config(None, ["train.epochs=two"])
    with pytest.raises(ConfigError, match="train.nope: unknown key"):
        load_config(None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="train.epochs is not a mapping"):
        load_config(None, ["train.epochs=1", "train.epochs.x=2"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))


def test_config_hash_tracks_content():
    a, b = load_config(None), load_config(None, ["train.epochs=3"])
    assert config_hash(a.model) == config_hash(b.model)
    assert config_hash(a.train) != config_hash(b.train)


def test_dump_keeps_the_schema_order(tmp_path):
    # A run folder's config.yaml reads like the schema (name first, then storage, dataset, model,
    # ...), not alphabetically (which would start with batch_predict).
    text = dump_config(load_config(None))
    top = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert top == [
        "name",
        "storage",
        "dataset",
        "model",
        "describe",
        "preprocess",
        "train",
        "tune",
        "tracking",
        "timeline",
        "batch_predict",
        "serve",
    ]
    assert text.startswith("name: experiment\nstorage:\n  root: runs\ndataset:\n  name: dfew\n  root: null\n")


def test_config_hash_of_a_value_json_cannot_hold_hashes_its_text():
    # A path set by code (not read from YAML) hashes as its text: the JSON written out by hand.
    section = {"init_checkpoint": Path("/ckpt/model.pt"), "epochs": 3}
    blob = b'{"epochs": 3, "init_checkpoint": "/ckpt/model.pt"}'
    assert config_hash(section) == hashlib.sha256(blob).hexdigest()[:16]


def test_inside_a_ray_job_a_relative_root_is_refused(monkeypatch, tmp_path):
    # Ray sets this variable in a submitted job's driver; the config is checked there too.
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"metadata": {"job_submission_id": "raysubmit_7"}}')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, ["tune.space={model.n_ctx: [8]}"])
    (problem,) = info.value.problems
    assert problem.startswith(
        f"storage.root: 'runs' is a relative path, and this is Ray job raysubmit_7: it resolves inside Ray's "
        f"temporary copy of the working directory ({tmp_path}), "
    )
    assert load_config(None, ["storage.root=/shared/runs", "tune.space={model.n_ctx: [8]}"]).storage.root == (
        "/shared/runs"
    )


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="needs Linux's /proc")
def test_a_config_file_that_cannot_be_read_names_the_error():
    # /proc/self/mem is a regular file whose first bytes cannot be read (EIO, address 0 is unmapped).
    with pytest.raises(ConfigError) as info:
        load_config("/proc/self/mem")
    assert info.value.problems == ["cannot read the config file: Input/output error"]
    assert info.value.source == "/proc/self/mem"


def test_errors_of_a_config_without_file_say_defaults():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=0", "train.milestones=[]", "tune.space={model.n_ctx: [8]}"])
    assert info.value.source == "<defaults>"
    assert info.value.problems == [
        "train.epochs: must be >= 1, got 0",
        "train.warmup_epochs: must be in 0..epochs-1 (-1), got 0",
    ]
