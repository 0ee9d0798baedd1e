"""Every validate() rule of the timeline, batch_predict and serve sections: the bad value is
refused with exactly one problem naming its key path, and the nearest good value (the bound
itself, where the rule has one) loads. As in test_config_rules.py, the boundary case catches a
comparison that is off by one and the exact problem list catches a rule that is gone.

The expected messages are written out by hand from the sections' documented bounds
(docs/predict.md, docs/serve.md), not read back from the code.
"""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.typed import ConfigError

# The rules here do not depend on the sweep space; one candidate instead of the default eight
# makes each load two validations instead of nine (this file runs against each of config.py's
# mutants: mutation/modules.toml).
ONE_CANDIDATE = "tune.space={model.n_ctx: [8]}"

# (bad overrides, the expected problem, good overrides at the boundary)
RULES = [
    # --- timeline: lengths and rates are positive, a track share is in (0, 1] ---
    *[
        ([f"timeline.{k}=0"], f"timeline.{k}: must be > 0, got 0.0", [f"timeline.{k}=0.001"])
        for k in ("window_s", "stride_s", "auto_after_s", "folder_fps")
    ],
    (["timeline.max_tracks=0"], "timeline.max_tracks: must be >= 1, got 0", ["timeline.max_tracks=1"]),
    (["timeline.min_coverage=0"], "timeline.min_coverage: must be in (0, 1], got 0.0", ["timeline.min_coverage=0.001"]),
    (["timeline.min_coverage=1.01"], "timeline.min_coverage: must be in (0, 1], got 1.01", ["timeline.min_coverage=1"]),
    # --- batch_predict: actor counts and batch sizes >= 1, resources > 0, retries 0..10 ---
    *[
        ([f"batch_predict.{k}=0"], f"batch_predict.{k}: must be >= 1, got 0", [f"batch_predict.{k}=1"])
        for k in ("loaders", "models", "batch_size", "loader_batch", "threads_per_loader")
    ],
    *[
        ([f"batch_predict.{k}=0"], f"batch_predict.{k}: must be > 0, got 0.0", [f"batch_predict.{k}=0.001"])
        for k in ("cpus_per_loader", "cpus_per_model", "gpus_per_model")
    ],
    (
        ["batch_predict.worker_retries=-1"],
        "batch_predict.worker_retries: must be in 0..10, got -1",
        ["batch_predict.worker_retries=0"],
    ),
    (
        ["batch_predict.worker_retries=11"],
        "batch_predict.worker_retries: must be in 0..10, got 11",
        ["batch_predict.worker_retries=10"],
    ),
    # --- serve ---
    (
        ['serve.host="  "'],
        "serve.host: must not be empty (127.0.0.1, 0.0.0.0, a host name)",
        ["serve.host=0.0.0.0"],
    ),
    (["serve.port=0"], "serve.port: must be in 1..65535, got 0", ["serve.port=1"]),
    (["serve.port=65536"], "serve.port: must be in 1..65535, got 65536", ["serve.port=65535"]),
    *[
        ([f"serve.{k}=0"], f"serve.{k}: must be > 0, got 0.0", [f"serve.{k}=0.001"])
        for k in ("max_upload_mb", "max_video_seconds", "request_timeout_s", "cpus_per_decoder", "cpus_per_model")
    ],
    *[
        ([f"serve.{k}=0"], f"serve.{k}: must be >= 1, got 0", [f"serve.{k}=1"])
        for k in ("max_video_frames", "max_ongoing_requests", "decoders", "decoder_threads", "models")
    ],
    # -1 is Ray Serve's "no limit": refused like 0
    (
        ["serve.max_queued_requests=-1"],
        "serve.max_queued_requests: must be >= 1 (a bounded queue), got -1",
        ["serve.max_queued_requests=1"],
    ),
    (
        ["serve.max_queued_requests=0"],
        "serve.max_queued_requests: must be >= 1 (a bounded queue), got 0",
        ["serve.max_queued_requests=1"],
    ),
    (["serve.gpus_per_model=-0.1"], "serve.gpus_per_model: must be >= 0, got -0.1", ["serve.gpus_per_model=0"]),
    (["serve.max_batch_size=0"], "serve.max_batch_size: must be in 1..256, got 0", ["serve.max_batch_size=1"]),
    (["serve.max_batch_size=257"], "serve.max_batch_size: must be in 1..256, got 257", ["serve.max_batch_size=256"]),
    (
        ["serve.batch_wait_s=-0.01"],
        "serve.batch_wait_s: must be in [0, 10] seconds, got -0.01",
        ["serve.batch_wait_s=0"],
    ),
    (
        ["serve.batch_wait_s=10.01"],
        "serve.batch_wait_s: must be in [0, 10] seconds, got 10.01",
        ["serve.batch_wait_s=10"],
    ),
]


@pytest.mark.parametrize("bad, problem, good", RULES, ids=[" ".join(r[0]) for r in RULES])
def test_each_rule_refuses_its_bad_value_and_accepts_the_bound(bad, problem, good):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*bad, ONE_CANDIDATE])
    assert err.value.problems == [problem]
    load_config(None, [*good, ONE_CANDIDATE])  # the bound itself (or the nearest valid value) is not refused
