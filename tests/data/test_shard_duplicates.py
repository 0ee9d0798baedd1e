"""A clip in two shards (two preprocess runs that wrote one folder at once) is refused by every
reader of the shard folder, with both files and the clip named, instead of being counted twice."""

from __future__ import annotations

import pytest

from pipeline.data import shards as sh
from pipeline.data.schema import SCHEMA_VERSION
from pipeline.errors import UserError
from pipeline.storage import Storage
from tests.data.rows import shard_row


@pytest.fixture
def doubled(tmp_path):
    """shards/dfew/ where clip b is in two shards: one run grouped a+b, another b+c."""
    storage = Storage(tmp_path)
    rel = sh.shard_dir(storage, "dfew")
    first, _ = sh.write_shard(storage, rel, [shard_row("a"), shard_row("b", 1)], "h")
    second, _ = sh.write_shard(storage, rel, [shard_row("b", 1), shard_row("c")], "h")
    sh.write_manifest(storage, rel, {"schema_version": SCHEMA_VERSION, "classes": ["happiness", "sadness"]})
    return storage, rel, storage.path(rel, first), storage.path(rel, second)


def _names_both(message: str, first: str, second: str) -> None:
    assert "clip 'b'" in message
    assert first in message and second in message
    assert "--overwrite" in message


def test_preprocess_rerun_refuses_duplicate_clips(doubled):
    storage, rel, first, second = doubled
    with pytest.raises(UserError) as err:
        sh.finished_clips(storage, rel)
    _names_both(str(err.value), *sorted((first, second)))


def test_training_refuses_to_open_shards_with_duplicate_clips(doubled):
    from pipeline.train.data import open_shards

    storage, _rel, first, second = doubled
    with pytest.raises(UserError) as err:
        open_shards(storage, "dfew")
    _names_both(str(err.value), *sorted((first, second)))


def test_unique_clips_open_normally(tmp_path):
    from pipeline.train.data import open_shards

    storage = Storage(tmp_path)
    rel = sh.shard_dir(storage, "dfew")
    sh.write_shard(storage, rel, [shard_row("a"), shard_row("b", 1)], "h")
    sh.write_shard(storage, rel, [shard_row("c")], "h")
    sh.write_manifest(storage, rel, {"schema_version": SCHEMA_VERSION, "classes": ["happiness", "sadness"]})
    assert sh.finished_clips(storage, rel) == ({"a", "b", "c"}, {"h"})
    assert len(open_shards(storage, "dfew").paths) == 2
