"""Clips below a URI dataset root: decoded through pyarrow.fs (file:// takes the s3:// code path)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import DatasetConfig, PreprocessConfig
from pipeline.data import shards as sh
from pipeline.data import sources
from pipeline.data.video import UnreadableClip, open_frames
from pipeline.preprocess import run_preprocess
from pipeline.storage import Storage


def test_uri_video_and_frame_folder_decode_like_local_paths(media):
    for key in ("face_mp4", "rotated_mp4", "gray_odd_mkv", "frames_jpg", "frames_gray_png_odd"):
        local, remote = open_frames(media[key]), open_frames(media[key].as_uri())
        a, b = list(local.frames), list(remote.frames)
        assert (remote.kind, remote.fps) == (local.kind, local.fps), key
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)), key


def test_uri_video_larger_than_the_memory_spool_spills_to_disk(media, monkeypatch):
    # Above SPOOL_BYTES the copy goes to a temporary file; PyAV reads it the same way.
    monkeypatch.setattr(sources, "SPOOL_BYTES", 1024)
    assert media["face_mp4"].stat().st_size > 1024
    s = open_frames(media["face_mp4"].as_uri())
    assert len(list(s.frames)) == 24 and s.fps == pytest.approx(25)


def test_a_consumer_may_stop_early(media):
    # max_frames stops reading: closing the generator must not hang on frames still in flight.
    frames = open_frames(media["frames_jpg"].as_uri()).frames
    assert next(frames).shape == (240, 320, 3)
    frames.close()
    frames = open_frames(media["face_mp4"].as_uri()).frames
    next(frames)
    frames.close()


@pytest.mark.parametrize(
    "key, reason",
    [
        ("corrupt_mp4", "decode error|not a readable video|no decodable"),
        ("zero_mp4", "empty file"),
        ("text_mp4", "not a readable video"),
        ("empty_dir", "frame folder has no"),
    ],
)
def test_unreadable_uri_sources_give_the_local_reasons(media, key, reason):
    with pytest.raises(UnreadableClip, match=reason):
        list(open_frames(media[key].as_uri()).frames)


def test_missing_and_malformed_uris(tmp_path):
    with pytest.raises(UnreadableClip, match="file not found"):
        open_frames((tmp_path / "gone.mp4").as_uri())
    with pytest.raises(UnreadableClip, match="not a valid URI"):
        open_frames(f"file://{tmp_path}/a b.mp4")


@pytest.mark.timeout(240)
def test_preprocess_a_csv_dataset_below_a_uri_root(media, ray_local, tmp_path):
    # The whole stage: the importer reads labels.csv through the URI, Ray workers decode the
    # clips from their URIs, and the shards record where each clip came from.
    data = tmp_path / "remote data"
    (data / "clips").mkdir(parents=True)
    shutil.copy(media["face_mp4"], data / "clips" / "face one.mp4")
    shutil.copytree(media["frames_jpg"], data / "clips" / "frames")
    (data / "labels.csv").write_text("path,label,split\nclips/face one.mp4,anger,train\nclips/frames,fear,test\n")
    prep = PreprocessConfig(detector="none", max_frames=8, crop_size=32, num_workers=1)
    manifest = run_preprocess(str(tmp_path / "runs"), DatasetConfig(name="csv", root=data.as_uri()), prep)
    assert manifest["counts"]["clips"] == 2 and manifest["num_errors"] == 0
    assert manifest["annotation_files"] == [f"{data.as_uri()}/labels.csv"]
    t = pq.read_table(sh.shard_paths(Storage(tmp_path / "runs"), "shards/csv"))
    assert sorted(t.column("source_path").to_pylist()) == [
        f"{data.as_uri()}/clips/face%20one.mp4",
        f"{data.as_uri()}/clips/frames",
    ]
    assert t.column("num_frames").to_pylist() == [8, 8]
