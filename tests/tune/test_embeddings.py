"""The frozen-encoder cache: a real Ray Data job over generated shards, reuse, and faithfulness."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.data.shards import shard_dir, shard_paths
from pipeline.datasets import CLASSES_7
from pipeline.model.build import build_model
from pipeline.storage import Storage
from pipeline.train.sampling import sample_indices
from pipeline.train.transforms import ClipTransform, model_layout
from pipeline.tune.embeddings import MANIFEST, backbone_key, ensure_embeddings, load_embeddings
from tests.micro import micro_model

# 16 frames and 8 context tokens: the config defaults.
MICRO = micro_model(num_frames=ModelConfig.num_frames, n_ctx=ModelConfig.n_ctx, text_source="class_names")


def test_backbone_key_separates_what_changes_an_embedding():
    key, fields = backbone_key(MICRO, seed=0)
    assert key.startswith("dferclip-micro-random0-") and fields["image_size"] == 32
    assert backbone_key(MICRO, seed=1)[0] != key  # random weights: the seed is the encoder
    import dataclasses

    assert backbone_key(dataclasses.replace(MICRO, input_normalization="none"), 0)[0] != key
    assert backbone_key(dataclasses.replace(MICRO, n_ctx=2, temporal_depth=4), 0)[0] == key  # swept: no effect


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cache_is_computed_once_and_matches_the_training_eval_path(ray_local, shard_root):
    storage = Storage(shard_root)
    info = ensure_embeddings(storage, "demo", MICRO, list(CLASSES_7), seed=0, batch_size=4)
    assert not info.reused and info.num_clips == 28 and info.embed_dim == 64

    # The stored schema is the documented one: one row per clip, every stored frame embedded.
    data_dir = info.data_dir(storage)
    table = pq.read_table(storage.path(data_dir))
    assert table.schema.field("embeddings").type == pa.list_(pa.list_(pa.float32(), 64))
    shards = pa.concat_tables([pq.read_table(p) for p in shard_paths(storage, shard_dir(storage, "demo"))])
    stored = dict(zip(shards.column("clip_id").to_pylist(), shards.column("num_frames").to_pylist()))
    assert {
        c: len(e) for c, e in zip(table.column("clip_id").to_pylist(), table.column("embeddings").to_pylist())
    } == stored

    again = ensure_embeddings(storage, "demo", MICRO, list(CLASSES_7), seed=0)
    assert again.reused and again.rel_dir == info.rel_dir and again.seconds == 0.0

    # Faithful: the cached embeddings of the evaluation frames equal what the full model computes
    # from the training code's own evaluation transform of the same clip.
    es = load_embeddings(storage, info)
    torch.manual_seed(0)
    model = build_model(MICRO, list(CLASSES_7)).eval()
    row = shards.filter(pa.compute.equal(shards.column("clip_id"), es.clip_ids[3]))
    video = ClipTransform(16, 32, train=False)(row.select(["clip_id", "label", "num_frames", "frames"]))["video"]
    with torch.no_grad():
        expected = model.encode_frames(model_layout(video))[0].numpy()  # (16, E)
    n = int(es.offsets[4] - es.offsets[3])
    cached = es.frames[es.offsets[3] + sample_indices(n, 16, False)]
    np.testing.assert_allclose(cached, expected, rtol=1e-4, atol=1e-4)

    # Other shards than the cache was made from: recomputed, the old data folder removed.
    old = json.loads(storage.read_text(info.rel_dir, MANIFEST))["data_dir"]
    path = shard_paths(storage, shard_dir(storage, "demo"))[0]
    t = pq.read_table(path)
    pq.write_table(t.slice(0, t.num_rows - 1).replace_schema_metadata(t.schema.metadata), path)
    redo = ensure_embeddings(storage, "demo", MICRO, list(CLASSES_7), seed=0)
    assert not redo.reused and redo.num_clips == 27 and not storage.exists(info.rel_dir, old)
