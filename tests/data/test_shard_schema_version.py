"""Readers of the shards (train, tune, evaluate) refuse a folder written with another schema version."""

from __future__ import annotations

import pytest

from pipeline.config import ModelConfig
from pipeline.data import shards as sh
from pipeline.data.schema import SCHEMA_VERSION
from pipeline.errors import UserError
from pipeline.storage import Storage
from tests.data.rows import shard_row


def _folder(tmp_path, manifest: dict) -> Storage:
    storage = Storage(tmp_path)
    rel = sh.shard_dir(storage, "dfew")
    sh.write_shard(storage, rel, [shard_row("a"), shard_row("b")], "h")
    sh.write_manifest(storage, rel, {"classes": ["happiness"], **manifest})
    return storage


@pytest.mark.parametrize(
    "manifest, found",
    [
        ({"schema_version": 0}, "shard schema version 0"),
        ({"schema_version": SCHEMA_VERSION + 1}, f"shard schema version {SCHEMA_VERSION + 1}"),
        ({}, "no schema version"),
    ],
)
def test_train_and_evaluate_refuse_another_schema_version(tmp_path, manifest, found):
    from pipeline.train.data import open_shards  # what train, full-mode tune and evaluate call

    storage = _folder(tmp_path, manifest)
    with pytest.raises(UserError) as err:
        open_shards(storage, "dfew")
    message = str(err.value)
    assert storage.path("shards/dfew/manifest.json") in message
    assert found in message and f"reads version {SCHEMA_VERSION}" in message
    assert "re-run preprocess with --overwrite" in message


def test_fast_tune_refuses_another_schema_version(tmp_path):
    from pipeline.tune.embeddings import ensure_embeddings

    storage = _folder(tmp_path, {"schema_version": 0})
    with pytest.raises(UserError, match=r"shard schema version 0.*re-run preprocess with --overwrite"):
        ensure_embeddings(storage, "dfew", ModelConfig(clip_model="dferclip-micro", pretrained=None), ["happiness"])


def test_current_schema_version_opens(tmp_path):
    from pipeline.train.data import open_shards

    shards = open_shards(_folder(tmp_path, {"schema_version": SCHEMA_VERSION}), "dfew")
    assert shards.class_names == ["happiness"] and len(shards.paths) == 1
