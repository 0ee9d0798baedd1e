"""The preprocess output hash: it must change with everything that changes the rows written
(dataset, class order, each crop setting, the shard schema) so stale shards are rebuilt, and with
nothing else (workers, CPUs, shard size, per-clip caps), so a resource change rebuilds nothing."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.config import PreprocessConfig
from pipeline.data import schema
from pipeline.preprocess import output_hash

CLASSES = ["happiness", "sadness", "anger"]
BASE = output_hash("dfew", CLASSES, PreprocessConfig())

# A changed value for each crop setting (docs/preprocess.md), and for each resource setting.
CROP_CHANGES = {
    "detector": "none",
    "yunet_model": "face.onnx",
    "detect_every": 2,
    "detect_max_side": 640,
    "margin": 0.5,
    "crop_size": 112,
    "jpeg_quality": 75,
    "max_frames": 16,
}
RESOURCE_CHANGES = {
    "shard_target_mb": 64.0,
    "num_workers": 8,
    "cpus_per_worker": 2.0,
    "max_pixels": 1920 * 1080,
    "max_clip_frames": 100,
    "max_clip_seconds": 10.0,
    "worker_retries": 3,
}


def test_the_crop_settings_are_exactly_the_recorded_output_fields():
    assert set(PreprocessConfig.OUTPUT_FIELDS) == set(CROP_CHANGES)
    fields = {f.name for f in dataclasses.fields(PreprocessConfig)}
    assert fields == set(CROP_CHANGES) | set(RESOURCE_CHANGES)  # every setting is classified here


@pytest.mark.parametrize("name, value", CROP_CHANGES.items(), ids=list(CROP_CHANGES))
def test_each_crop_setting_changes_the_hash(name, value):
    assert output_hash("dfew", CLASSES, PreprocessConfig(**{name: value})) != BASE


@pytest.mark.parametrize("name, value", RESOURCE_CHANGES.items(), ids=list(RESOURCE_CHANGES))
def test_resource_settings_leave_the_hash(name, value):
    assert output_hash("dfew", CLASSES, PreprocessConfig(**{name: value})) == BASE


def test_dataset_class_order_and_schema_version_change_the_hash(monkeypatch):
    assert output_hash("mafw", CLASSES, PreprocessConfig()) != BASE
    assert output_hash("dfew", list(reversed(CLASSES)), PreprocessConfig()) != BASE  # labels are indices
    assert output_hash("dfew", CLASSES[:2], PreprocessConfig()) != BASE
    assert len(BASE) == 16 and all(c in "0123456789abcdef" for c in BASE)
    import pipeline.preprocess as pre

    monkeypatch.setattr(pre, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
    assert output_hash("dfew", CLASSES, PreprocessConfig()) != BASE
