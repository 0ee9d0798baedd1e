"""The training dataset, streamed from the shards or held in the object store."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.config import TrainConfig
from pipeline.train.data import open_shards, plan_splits, train_dataset
from pipeline.train.transforms import AugmentSpec


def _samples(ds) -> list[tuple[int, str]]:
    """(label, digest of the sampled and augmented video) of every row, order-free."""
    return sorted((int(r["label"]), hashlib.sha1(r["video"].tobytes()).hexdigest()) for r in ds.take_all())


def test_cached_train_data_gives_the_same_samples_as_streaming(train_store):
    shards = open_shards(str(train_store), "dfew")
    index = shards.index()
    plan = plan_splits(index, 1, "test", 0.1, 0, "test")
    whole = shards.share_mb(index.num_rows, index.num_rows)
    assert 0 < shards.share_mb(len(plan.train), index.num_rows) < whole
    assert shards.share_mb(len(plan.train), index.num_rows) == pytest.approx(whole * len(plan.train) / index.num_rows)

    spec = AugmentSpec(scale=(0.5, 1.0), brightness=0.3)

    def make(cache):
        return train_dataset(shards, plan.train, num_frames=8, image_size=32, augment=spec, seed=3, cache=cache)

    streamed, cached = _samples(make(False)), _samples(make(True))
    assert len(streamed) == len(plan.train)
    # Sampling and augmentation are seeded per clip, not per read order: caching changes nothing.
    assert cached == streamed


def test_cache_limit_must_not_be_negative():
    assert any("cache_train_mb" in p for p in TrainConfig(cache_train_mb=-1).validate())
    assert not TrainConfig(cache_train_mb=0).validate()
