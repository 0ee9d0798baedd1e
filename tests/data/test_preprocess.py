"""The preprocess job end to end on real Ray Data, real videos and real Parquet shards."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import DatasetConfig, PreprocessConfig, load_config
from pipeline.data import shards as sh
from pipeline.data.schema import SHARD_SCHEMA
from pipeline.errors import UserError
from pipeline.preprocess import is_up_to_date, run_preprocess
from pipeline.storage import Storage

GOOD = [
    "face_mp4",
    "face2_mp4",
    "vfr_mp4",
    "rotated_mp4",
    "gray_odd_mkv",
    "noface_mp4",
    "one_frame_mp4",
    "frames_jpg",
    "frames_gray_png_odd",
    "one_frame_dir",
]
BAD = ["corrupt_mp4", "zero_mp4", "text_mp4", "empty_dir"]
LABELS = ["happiness", "sadness", "anger", "fear", "surprise"]


def clip_list(media):
    return [
        {
            "clip_id": k,
            "path": str(media[k]),
            "label": LABELS[i % len(LABELS)],
            "split": "test" if i % 3 == 0 else "train",
        }
        for i, k in enumerate(GOOD + BAD)
    ]


@pytest.fixture(scope="module")
def haar_run(media, ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    # A tiny shard target so the clips spread over several shards.
    prep = PreprocessConfig(detector="haar", detect_every=4, crop_size=96, shard_target_mb=0.02, num_workers=2)
    lines: list[str] = []
    manifest = run_preprocess(str(root), DatasetConfig(name="demo"), prep, clips=clip_list(media), log=lines.append)
    return root, prep, manifest, lines


@pytest.mark.timeout(240)
def test_shards_manifest_and_errors(haar_run, media, haar):
    root, prep, manifest, lines = haar_run
    storage = Storage(root)
    rel = sh.shard_dir(storage, "demo")
    assert rel == "shards/demo" and (root / rel / "manifest.json").is_file()
    assert manifest == sh.read_manifest(storage, rel)
    counts = manifest["counts"]
    assert counts["clips"] == len(GOOD) and counts["duplicate_clip_ids"] == 0 and counts["face_fallback"] == 1
    expected_class: dict[str, int] = {}
    for i, _ in enumerate(GOOD):
        expected_class[LABELS[i % 5]] = expected_class.get(LABELS[i % 5], 0) + 1
    assert counts["per_class"] == dict(sorted(expected_class.items()))
    assert sum(counts["per_split"]["1:test"].values()) == 4 and sum(counts["per_split"]["1:train"].values()) == 6
    assert manifest["classes"][:3] == ["happiness", "sadness", "neutral"] and manifest["schema_version"] == 1
    assert manifest["config_hash"] and manifest["inputs_hash"] and manifest["preprocess"]["crop_size"] == 96
    assert len(manifest["shards"]) >= 3 and sum("shard part-" in line for line in lines) == len(manifest["shards"])

    errors = {r["clip_id"]: r["reason"] for r in sh.read_errors(storage, rel).to_pylist()}
    assert set(errors) == set(BAD)
    assert "empty file" in errors["zero_mp4"] and "not a readable video" in errors["text_mp4"]
    assert "no .jpg" in errors["empty_dir"] and errors["corrupt_mp4"]

    table = pq.read_table(sh.shard_paths(storage, rel), schema=SHARD_SCHEMA)
    rows = {r["clip_id"]: r for r in table.to_pylist()}
    assert rows["face_mp4"]["num_frames"] == 24 and len(rows["face_mp4"]["frames"]) == 24
    assert rows["vfr_mp4"]["num_frames"] == 10 and rows["one_frame_mp4"]["num_frames"] == 1
    assert rows["one_frame_dir"]["num_frames"] == 1 and rows["frames_gray_png_odd"]["num_frames"] == 5
    assert rows["noface_mp4"]["face_fallback"] and not rows["face_mp4"]["face_fallback"]
    assert rows["face_mp4"]["fps"] == pytest.approx(25) and rows["frames_jpg"]["fps"] is None
    assert rows["gray_odd_mkv"]["splits"] == ["1:train"]
    crop = cv2.imdecode(np.frombuffer(rows["face_mp4"]["frames"][12], np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (96, 96, 3)
    big = cv2.resize(crop, (224, 224))
    assert len(haar.detectMultiScale(cv2.cvtColor(big, cv2.COLOR_BGR2GRAY), 1.1, 5)) == 1
    # Frame order: the drawn face drifts right, so box centres increase through the stored list.
    centres = [(b[0] + b[2]) / 2 for b in rows["frames_jpg"]["boxes"]]
    assert centres[-1] > centres[0] + 20


@pytest.mark.timeout(240)
def test_readable_by_polars_and_ray_data_and_fold_selection(haar_run, ray_local):
    import polars as pl
    import ray

    root, _, _, _ = haar_run
    storage = Storage(root)
    rel = sh.shard_dir(storage, "demo")
    paths = sh.shard_paths(storage, rel)
    df = pl.read_parquet(paths)
    assert df.height == len(GOOD) and df["frames"].list.len().sum() == df["num_frames"].sum()
    test_ids = sh.select_clips(storage, rel, 1, "test")
    assert test_ids == sorted(df.filter(pl.col("splits").list.contains("1:test"))["clip_id"].to_list())
    assert len(test_ids) == 4 and sh.select_clips(storage, rel, 2, "test") == []
    ds = ray.data.read_parquet(paths).filter(sh.split_row_filter(1, "train"))
    ray_ids = sorted(r["clip_id"] for r in ds.take_all())
    arrow = pq.read_table(paths, schema=SHARD_SCHEMA).filter(sh.split_filter(1, "train"))
    assert ray_ids == sh.select_clips(storage, rel, 1, "train") == sorted(arrow["clip_id"].to_pylist())
    assert len(ray_ids) == 6


@pytest.mark.timeout(120)
def test_rerun_is_idempotent_and_ignores_hidden_temp_files(haar_run, media, caplog):
    root, prep, manifest, _ = haar_run
    storage = Storage(root)
    rel = sh.shard_dir(storage, "demo")
    # What a killed writer leaves behind: a hidden temp file next to finished shards.
    (root / rel / ".part-deadbeef.parquet.1234.tmp").write_bytes(b"PAR1 half written")
    before = sorted(p.name for p in (root / rel).glob("part-*.parquet"))
    caplog.set_level(logging.INFO, logger="pipeline.preprocess")
    again = run_preprocess(str(root), DatasetConfig(name="demo"), prep, clips=clip_list(media))  # logs, no callback
    first = caplog.records[0]
    assert first.name == "pipeline.preprocess" and first.levelno == logging.INFO
    assert f"{len(BAD)} failed before" in first.getMessage() and "0 to do" in first.getMessage()
    assert again["counts"] == manifest["counts"] and again["num_errors"] == len(BAD)
    assert sorted(p.name for p in (root / rel).glob("part-*.parquet")) == before
    assert pq.read_table(sh.shard_paths(storage, rel)).num_rows == len(GOOD)
    assert is_up_to_date(str(root), DatasetConfig(name="demo"), prep, clips=clip_list(media))
    changed = PreprocessConfig(**{**prep.__dict__, "crop_size": 64})
    assert not is_up_to_date(str(root), DatasetConfig(name="demo"), changed, clips=clip_list(media))
    with pytest.raises(UserError, match="other preprocess settings"):
        run_preprocess(str(root), DatasetConfig(name="demo"), changed, clips=clip_list(media))


@pytest.mark.timeout(240)
def test_stage_main_on_csv_with_detector_none(media, ray_local, tmp_path):
    from stages.preprocess import cli, main

    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.csv").write_text(
        f"path,label,split\n{media['frames_jpg']},anger,train\n{media['face_mp4']},fear,test\n"
    )
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text(
        f"storage:\n  root: {tmp_path / 'runs'}\ndataset:\n  name: csv\n  root: {data}\n"
        "preprocess:\n  detector: none\n  max_frames: 8\n  crop_size: 64\n  num_workers: 1\n"
    )
    manifest = main(load_config(cfg_file))
    assert manifest["counts"]["clips"] == 2 and manifest["num_errors"] == 0
    t = pq.read_table(sh.shard_paths(Storage(tmp_path / "runs"), "shards/csv"))
    assert sorted(t.column("num_frames").to_pylist()) == [8, 8]  # capped from 12 and 24 frames
    saved = json.loads((tmp_path / "runs" / "shards" / "csv" / "manifest.json").read_text())
    assert saved["preprocess"]["detector"] == "none"
    # overwrite rebuilds with new settings; a bad label is a clean exit-2 error.
    assert cli(["--config", str(cfg_file), "--set", "preprocess.crop_size=32", "--overwrite"]) == 0
    t = pq.read_table(sh.shard_paths(Storage(tmp_path / "runs"), "shards/csv"))
    crop = cv2.imdecode(np.frombuffer(t.column("frames")[0].as_py()[0], np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (32, 32, 3) and t.num_rows == 2
    (data / "labels.csv").write_text("path,label\nx.mp4,bored\n")
    assert cli(["--config", str(cfg_file)]) == 2
