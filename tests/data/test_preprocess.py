"""The preprocess job end to end on real Ray Data, real videos and real Parquet shards."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

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
from tests.data.drawing import face_frames, write_video

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
# Over one of haar_run's per-clip caps each: CAPPED[clip] = the config key its error names.
CAPPED = {"big_mp4": "max_pixels", "many_frames_mp4": "max_clip_frames", "long_mp4": "max_clip_seconds"}
BAD += list(CAPPED)
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
    # Tiny caps that every GOOD clip passes (the largest frames are 321x243, the longest clip
    # 24 frames or 0.92 s) and each CAPPED clip fails on one count.
    prep = PreprocessConfig(
        detector="haar",
        detect_every=4,
        crop_size=96,
        shard_target_mb=0.02,
        num_workers=2,
        max_pixels=100_000,
        max_clip_frames=30,
        max_clip_seconds=3.0,
    )
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
    for clip, key in CAPPED.items():  # the reason names the clip and the cap's config key
        assert f"{media[clip]}: " in errors[clip] and f"over preprocess.{key} = " in errors[clip], errors[clip]

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


def test_cap_and_retry_keys_are_validated():
    assert PreprocessConfig().validate() == []
    assert PreprocessConfig(max_pixels=None, max_clip_frames=None, max_clip_seconds=None).validate() == []
    problems = PreprocessConfig(max_pixels=0, max_clip_frames=-1, max_clip_seconds=0.0, worker_retries=-1).validate()
    assert [p.split(":")[0] for p in problems] == [
        "max_pixels",
        "max_clip_frames",
        "max_clip_seconds",
        "worker_retries",
    ]
    # A 1920x1080, 2-minute, 25 fps video is within the defaults.
    d = PreprocessConfig()
    assert d.max_pixels >= 1920 * 1080 and d.max_clip_frames >= 3000 and d.max_clip_seconds >= 120


def _kill_readers(path: str, stop: threading.Event, kills: list[int]) -> None:
    """SIGKILL (what the kernel's OOM killer sends) every Ray worker process that has ``path``
    open, until ``stop``: whichever worker is decoding that clip dies, every time it tries."""
    me = os.getpid()
    while not stop.is_set():
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == me:
                continue
            try:
                if b"ray::" not in (proc / "cmdline").read_bytes():
                    continue
                if any(os.readlink(fd) == path for fd in (proc / "fd").iterdir()):
                    os.kill(int(proc.name), signal.SIGKILL)
                    kills.append(int(proc.name))
            except OSError:  # the process ended or is not ours to read
                continue
        stop.wait(0.05)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the worker through /proc (Linux)")
def test_a_clip_whose_worker_is_killed_every_time_ends_as_an_error_row(media, ray_local, tmp_path):
    """Ray Data retried a batch whose worker died forever; now a clip that gets its worker killed
    on every try is an error row after worker_retries + 1 tries alone, and the job completes.
    The clip that shared its batch is retried alone and lands in the shards."""
    # ~1-3 s of decoding per try: long enough for the killer to see it open.
    victim = write_video(tmp_path / "victim.mp4", face_frames(400, 320, 240, face=False))
    good = ["face_mp4", "face2_mp4", "vfr_mp4", "noface_mp4", "one_frame_mp4", "frames_jpg", "one_frame_dir"]
    clips = [{"clip_id": k, "path": str(media[k]), "label": "anger", "split": "train"} for k in good]
    clips.insert(3, {"clip_id": "victim", "path": str(victim), "label": "fear", "split": "train"})
    # 8 clips, 1 worker: batches of 2, so the victim shares its first batch with vfr_mp4.
    prep = PreprocessConfig(detect_every=4, crop_size=48, num_workers=1, worker_retries=1)
    stop, kills = threading.Event(), []
    killer = threading.Thread(target=_kill_readers, args=(str(victim), stop, kills), daemon=True)
    killer.start()
    lines: list[str] = []
    try:
        manifest = run_preprocess(
            str(tmp_path / "store"), DatasetConfig(name="demo"), prep, clips=clips, log=lines.append
        )
    finally:
        stop.set()
        killer.join()
    storage = Storage(tmp_path / "store")
    errors = {r["clip_id"]: r["reason"] for r in sh.read_errors(storage, "shards/demo").to_pylist()}
    assert list(errors) == ["victim"] and manifest["num_errors"] == 1
    assert errors["victim"].startswith(f"{victim}: the preprocess worker process died on this clip 2 time(s)")
    assert sorted(sh.finished_clips(storage, "shards/demo")[0]) == sorted(good)
    assert len(kills) == 4  # its batch: 2 tries; then alone: 2 tries
    assert any("trying each of them alone" in line for line in lines)


def test_a_worker_that_cannot_write_its_shard_returns_the_failure_for_the_driver(media, tmp_path):
    """Ray Data skips batches that raise (that is how a dead worker's batch is let go), so a
    storage failure comes back as a row the driver stops on, not as an exception."""
    import pyarrow as pa

    from pipeline.preprocess import ClipWorker
    from pipeline.typed import to_dict

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "demo").write_text("a file where the shard folder should be")
    worker = ClipWorker(str(tmp_path), "shards/demo", to_dict(PreprocessConfig(crop_size=32)), "hash", 1)
    clip = {"clip_id": "c", "source": str(media["face_mp4"]), "label": 0, "label_name": "happiness"}
    rows = worker(pa.Table.from_pylist([{**clip, "splits": ["1:train"], "dataset": "demo"}])).to_pylist()
    assert len(rows) == 1 and not rows[0]["ok"] and rows[0]["clip_id"] == "c" and rows[0]["fatal"]
