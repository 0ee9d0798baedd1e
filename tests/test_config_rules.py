"""Every validate() rule of the model, describe, preprocess and train sections: the bad value is
refused with exactly one problem naming its key path, and the nearest good value (the bound
itself, where the rule has one) loads. The boundary case is what catches a rule whose comparison
is off by one (``<`` written as ``<=``); the exact problem list is what catches a rule that is
gone (another rule, or none, would have to produce the same message).

The expected messages are written out by hand from the rules in docs/configuration.md.
"""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.typed import ConfigError

# The rules here do not depend on the sweep space; one candidate instead of the default eight
# makes each load two validations instead of nine (this file runs against each of config.py's
# mutants: mutation/modules.toml).
ONE_CANDIDATE = "tune.space={model.n_ctx: [8]}"

# (bad overrides, the expected problem (or problems), good overrides at the boundary)
RULES = [
    # --- model ---
    *[
        ([f"model.{k}=0"], f"model.{k}: must be >= 1, got 0", [f"model.{k}=1"])
        for k in ("num_frames", "temporal_heads", "temporal_head_dim", "temporal_mlp_dim", "n_ctx")
    ],
    (["model.num_frames=257"], "model.num_frames: must be <= 256, got 257", ["model.num_frames=256"]),
    (["model.temporal_depth=0"], "model.temporal_depth: must be >= 1, got 0", ["model.temporal_depth=1"]),
    (["model.logit_scale=0"], "model.logit_scale: must be > 0 or null, got 0.0", ["model.logit_scale=0.001"]),
    (["model.logit_scale=-2.5"], "model.logit_scale: must be > 0 or null, got -2.5", ["model.logit_scale=null"]),
    # --- describe ---
    *[
        ([f"describe.{k}=0"], f"describe.{k}: must be >= 1, got 0", [f"describe.{k}=1"])
        for k in (
            "samples",
            "descriptions_per_answer",
            "max_tokens",
            "concurrency",
            "max_attempts",
            "max_invalid_answers",
            "min_words",
        )
    ],
    (
        ["describe.min_words=5", "describe.max_words=4"],
        "describe.max_words: must be >= min_words (5), got 4",
        ["describe.min_words=5", "describe.max_words=5"],
    ),
    *[
        ([f"describe.{k}=0"], f"describe.{k}: must be > 0, got 0.0", [f"describe.{k}=0.001"])
        for k in ("timeout_s", "max_backoff_s")
    ],
    (["describe.backoff_s=-0.5"], "describe.backoff_s: must be >= 0, got -0.5", ["describe.backoff_s=0"]),
    (["describe.temperature=-0.1"], "describe.temperature: must be in [0, 2], got -0.1", ["describe.temperature=0"]),
    (["describe.temperature=2.1"], "describe.temperature: must be in [0, 2], got 2.1", ["describe.temperature=2"]),
    (
        ["describe.output_name=a/b"],
        "describe.output_name: use letters, digits, '.', '_' or '-', starting with a letter or digit; got 'a/b'",
        ["describe.output_name=a-b.1"],
    ),
    (
        ["describe.base_url=ftp://127.0.0.1/v1"],
        "describe.base_url: expected an http:// or https:// URL like http://127.0.0.1:8000/v1, "
        "got 'ftp://127.0.0.1/v1'",
        ["describe.base_url=https://127.0.0.1/v1"],
    ),
    (
        ["describe.base_url=http:///v1"],
        "describe.base_url: expected an http:// or https:// URL like http://127.0.0.1:8000/v1, got 'http:///v1'",
        ["describe.base_url=http://localhost/v1"],
    ),
    (  # urlsplit refuses an unclosed IPv6 bracket: the same problem, not a crash
        ["describe.base_url=http://[::1/v1"],
        "describe.base_url: expected an http:// or https:// URL like http://127.0.0.1:8000/v1, got 'http://[::1/v1'",
        ["describe.base_url=http://[::1]/v1"],
    ),
    # --- preprocess ---
    *[
        ([f"preprocess.{k}=0"], f"preprocess.{k}: must be >= 1 or null (no cap), got 0", [f"preprocess.{k}=1"])
        for k in ("max_pixels", "max_clip_frames")
    ],
    (
        ["preprocess.max_clip_seconds=0"],
        "preprocess.max_clip_seconds: must be > 0 or null (no cap), got 0.0",
        ["preprocess.max_clip_seconds=0.001"],
    ),
    (
        ["preprocess.worker_retries=-1"],
        "preprocess.worker_retries: must be in 0..10, got -1",
        ["preprocess.worker_retries=0"],
    ),
    (
        ["preprocess.worker_retries=11"],
        "preprocess.worker_retries: must be in 0..10, got 11",
        ["preprocess.worker_retries=10"],
    ),
    *[
        ([f"preprocess.{k}=0"], f"preprocess.{k}: must be >= 1, got 0", [f"preprocess.{k}=1"])
        for k in ("detect_every", "num_workers")
    ],
    (
        ["preprocess.detect_max_side=63"],
        "preprocess.detect_max_side: must be >= 64, got 63",
        ["preprocess.detect_max_side=64"],
    ),
    (["preprocess.crop_size=7"], "preprocess.crop_size: must be in 8..1024, got 7", ["preprocess.crop_size=8"]),
    (
        ["preprocess.crop_size=1025"],
        "preprocess.crop_size: must be in 8..1024, got 1025",
        ["preprocess.crop_size=1024"],
    ),
    (["preprocess.jpeg_quality=0"], "preprocess.jpeg_quality: must be in 1..100, got 0", ["preprocess.jpeg_quality=1"]),
    (
        ["preprocess.jpeg_quality=101"],
        "preprocess.jpeg_quality: must be in 1..100, got 101",
        ["preprocess.jpeg_quality=100"],
    ),
    (["preprocess.margin=-0.01"], "preprocess.margin: must be in [0, 2], got -0.01", ["preprocess.margin=0"]),
    (["preprocess.margin=2.01"], "preprocess.margin: must be in [0, 2], got 2.01", ["preprocess.margin=2"]),
    (
        ["preprocess.max_frames=0"],
        "preprocess.max_frames: must be >= 1 or null (keep all), got 0",
        ["preprocess.max_frames=1"],
    ),
    (
        ["preprocess.shard_target_mb=0"],
        "preprocess.shard_target_mb: must be > 0, got 0.0",
        ["preprocess.shard_target_mb=0.001"],
    ),
    (
        ["preprocess.cpus_per_worker=0"],
        "preprocess.cpus_per_worker: must be > 0, got 0.0",
        ["preprocess.cpus_per_worker=0.001"],
    ),
    (
        ["preprocess.detector=yunet"],
        "preprocess.yunet_model: detector 'yunet' needs the path of the YuNet ONNX file",
        ["preprocess.detector=yunet", "preprocess.yunet_model=face_detection_yunet.onnx"],
    ),
    # --- train ---
    (
        ['train.init_checkpoint="  "'],
        "train.init_checkpoint: must be a checkpoint path or null, got an empty string",
        ["train.init_checkpoint=/ckpt/final/model.pt"],
    ),
    (
        ["train.epochs=0"],
        # warm-up 0 is no longer below epochs either: both rules speak
        ["train.epochs: must be >= 1, got 0", "train.warmup_epochs: must be in 0..epochs-1 (-1), got 0"],
        ["train.epochs=1", "train.milestones=[]"],
    ),
    *[
        ([f"train.{k}=0"], f"train.{k}: must be >= 1, got 0", [f"train.{k}=1"])
        for k in ("batch_size", "eval_batch_size", "num_workers")
    ],
    (["train.cache_train_mb=-1"], "train.cache_train_mb: must be >= 0, got -1.0", ["train.cache_train_mb=0"]),
    (["train.val_fraction=0"], "train.val_fraction: must be in (0, 1), got 0.0", ["train.val_fraction=0.001"]),
    (["train.val_fraction=1"], "train.val_fraction: must be in (0, 1), got 1.0", ["train.val_fraction=0.999"]),
    *[
        ([f"train.{k}=-0.1"], f"train.{k}: must be >= 0, got -0.1", [f"train.{k}=0"])
        for k in ("lr_image_encoder", "lr_temporal", "lr_prompt", "cpus_per_worker")
    ],
    (
        ["train.epochs=5", "train.milestones=[]", "train.warmup_epochs=5"],
        "train.warmup_epochs: must be in 0..epochs-1 (4), got 5",
        ["train.epochs=5", "train.milestones=[]", "train.warmup_epochs=4"],
    ),
    (["train.warmup_epochs=-1"], "train.warmup_epochs: must be in 0..epochs-1 (49), got -1", ["train.warmup_epochs=0"]),
    (
        ["train.milestones=[0, 10]"],
        "train.milestones: must be increasing epochs >= 1, got [0, 10]",
        ["train.milestones=[1, 10]"],
    ),
    (
        ["train.milestones=[20, 10]"],
        "train.milestones: must be increasing epochs >= 1, got [20, 10]",
        ["train.milestones=[10, 20]"],
    ),
    (
        ["train.use_gpu=true", "train.gpus_per_worker=0"],
        "train.gpus_per_worker: must be > 0 with use_gpu, got 0.0",
        ["train.use_gpu=false", "train.gpus_per_worker=0"],
    ),
    (
        ["train.use_gpu=true", "train.gpus_per_worker=0"],
        "train.gpus_per_worker: must be > 0 with use_gpu, got 0.0",
        ["train.use_gpu=true", "train.gpus_per_worker=0.5"],  # a fraction of a GPU per worker
    ),
    (["train.shuffle_buffer=-1"], "train.shuffle_buffer: must be >= 0 or null, got -1", ["train.shuffle_buffer=0"]),
    (
        ["train.fail_once_at_epoch=0"],
        "train.fail_once_at_epoch: must be an epoch in 1..50, got 0",
        ["train.fail_once_at_epoch=1"],
    ),
    (
        ["train.fail_once_at_epoch=51"],
        "train.fail_once_at_epoch: must be an epoch in 1..50, got 51",
        ["train.fail_once_at_epoch=50"],
    ),
]


def _id(rule) -> str:
    return " ".join(rule[0])


@pytest.mark.parametrize("bad, problem, good", RULES, ids=[_id(r) for r in RULES])
def test_each_rule_refuses_its_bad_value_and_accepts_the_bound(bad, problem, good):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*bad, ONE_CANDIDATE])
    assert err.value.problems == ([problem] if isinstance(problem, str) else problem)
    load_config(None, [*good, ONE_CANDIDATE])  # the bound itself (or the nearest valid value) is not refused


def test_base_url_with_credentials_names_the_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["describe.base_url=http://user:secret@127.0.0.1:8000/v1"])
    (problem,) = err.value.problems
    assert problem.startswith("describe.base_url: 'http://***@127.0.0.1:8000/v1' carries credentials")
    assert "secret" not in problem and "api_key_env names (OPENAI_API_KEY)" in problem


def test_all_problems_of_one_config_are_reported_together():
    # One load shows every bad value at once, each with its own key path: a section after a bad
    # one is still checked (it used to be skipped, hiding its problems until the first was fixed).
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.n_ctx=0", "describe.samples=0", "preprocess.jpeg_quality=0", "train.batch_size=0"])
    assert sorted(err.value.problems) == [
        "describe.samples: must be >= 1, got 0",
        "model.n_ctx: must be >= 1, got 0",
        "preprocess.jpeg_quality: must be in 1..100, got 0",
        "train.batch_size: must be >= 1, got 0",
    ]
