"""How shards store their frames (docs/preprocess.md#frame-storage): JPEG bytes PLAIN and
uncompressed, with no dictionary and no statistics, so a reader copies them and does nothing else;
the reader gets exactly the sampled frames back, from new shards and from shards written before."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.data import shards as sh
from pipeline.data.schema import SCHEMA_VERSION, SHARD_SCHEMA
from pipeline.storage import Storage
from tests.data.rows import shard_row

STORED = {"c48": 48, "c16": 16, "c5": 5}  # clip id -> stored frames


def _rows(prefix: str = "") -> list[dict]:
    rows = []
    for clip_id, n in STORED.items():
        clip_id = prefix + clip_id
        row = shard_row(clip_id)
        # Each frame's bytes name its clip and position, so a wrong pick cannot go unnoticed.
        row.update(num_frames=n, frames=[b"\xff\xd8" + f"{clip_id}/{t}".encode() * 50 for t in range(n)])
        row["boxes"] = [[0.0, 0.0, 1.0, 1.0]] * n
        rows.append(row)
    return rows


def _leaf(metadata: pq.FileMetaData, group: int, path: str):
    rg = metadata.row_group(group)
    return next(rg.column(j) for j in range(rg.num_columns) if rg.column(j).path_in_schema == path)


def test_writer_stores_frames_plain_uncompressed_without_statistics(tmp_path):
    storage = Storage(tmp_path)
    name, size = sh.write_shard(storage, "shards/dfew", _rows(), "h")
    metadata = pq.ParquetFile(storage.path("shards/dfew", name)).metadata
    assert size == (tmp_path / "shards/dfew" / name).stat().st_size and metadata.num_rows == 3
    for group in range(metadata.num_row_groups):
        frames = _leaf(metadata, group, "frames.list.element")
        # PLAIN values; RLE is only the list's repetition/definition levels.
        assert set(frames.encodings) == {"PLAIN", "RLE"}
        assert not frames.has_dictionary_page and frames.dictionary_page_offset is None
        assert not frames.is_stats_set
        assert frames.compression == "UNCOMPRESSED"
        assert frames.total_compressed_size == frames.total_uncompressed_size
        # The small columns keep what helps readers: statistics prune row groups by clip id,
        # the repeated names are dictionary-encoded.
        clip_id = _leaf(metadata, group, "clip_id")
        assert clip_id.is_stats_set and (clip_id.statistics.min, clip_id.statistics.max) == ("c16", "c5")
        assert _leaf(metadata, group, "dataset").has_dictionary_page
        assert _leaf(metadata, group, "splits.list.element").has_dictionary_page


def test_row_groups_hold_about_32_mb_of_clips(tmp_path):
    # 6 clips of 48 frames x 150 KB (7.2 MB each): 32 MB row groups hold 4 of them, so a reader
    # streams a big shard a few clips at a time instead of loading it whole.
    rows = []
    for k in range(6):
        row = shard_row(f"big{k}")
        row.update(num_frames=48, frames=[bytes([k, t]) * 75_000 for t in range(48)], boxes=[[0.0] * 4] * 48)
        rows.append(row)
    storage = Storage(tmp_path)
    name, _ = sh.write_shard(storage, "shards/dfew", rows, "h")
    metadata = pq.ParquetFile(storage.path("shards/dfew", name)).metadata
    assert [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)] == [4, 2]


def _v1_shard(storage: Storage, rel: str, rows: list[dict]) -> None:
    """A shard as the writer made it before frames were stored PLAIN: pyarrow's defaults (the
    frames dictionary-encoded, with statistics), uncompressed."""
    path = storage.path(rel, "part-0000000000000000.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), path, compression="none")
    frames = _leaf(pq.ParquetFile(path).metadata, 0, "frames.list.element")
    assert frames.has_dictionary_page and frames.is_stats_set  # really the old layout


def test_train_reader_returns_exactly_the_sampled_frames_of_new_and_old_shards(tmp_path, ray_local):
    from pipeline.train.data import _read, open_shards
    from pipeline.train.transforms import SelectFrames

    # One folder holding a shard of each writer, as a preprocess run resumed after the upgrade
    # leaves it (the writer settings do not change the output hash).
    storage = Storage(tmp_path)
    rel = sh.shard_dir(storage, "dfew")
    sh.write_shard(storage, rel, _rows("new-"), "h")
    _v1_shard(storage, rel, _rows("old-"))
    sh.write_manifest(storage, rel, {"schema_version": SCHEMA_VERSION, "classes": ["happiness"]})
    shards = open_shards(storage, "dfew")  # the same schema version: old shards open as they are
    assert len(shards.paths) == 2
    # Local shards are read memory-mapped (no copy into a read buffer before decoding the pages).
    assert shards.filesystem.equals(pafs.LocalFileSystem(use_mmap=True))
    ids = [p + c for p in ("new-", "old-") for c in STORED]
    ds = _read(shards, ids).map_batches(SelectFrames(16), batch_format="pyarrow", zero_copy_batch=True)
    got = {r["clip_id"]: list(r["frames"]) for r in ds.take_all()}
    # Evaluation takes the middle frame of each of 16 equal segments: every 3rd from 1 of 48
    # frames, all 16 of 16, and a short clip's 5 frames with the last repeated.
    picks = {"c48": list(range(1, 48, 3)), "c16": list(range(16)), "c5": [0, 1, 2, 3] + [4] * 12}
    want = {
        p + c: [b"\xff\xd8" + f"{p}{c}/{t}".encode() * 50 for t in idx]
        for p in ("new-", "old-")
        for c, idx in picks.items()
    }
    assert got == want
