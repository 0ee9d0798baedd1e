"""dferclip batch-predict: a real Ray Data job over generated videos, corrupt ones among them;
results against in-process predict, resume, retries, a killed actor, sizing, listings."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.batch_predict import list_inputs, read_results, run_batch_predict
from pipeline.config import BatchPredictConfig, PreprocessConfig, TimelineConfig
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.model import build_model, save_checkpoint
from pipeline.predict import predict_paths
from pipeline.synth import render_clip, write_video
from stages.batch_predict import cli
from tests.micro import micro_model
from tests.predict.test_timeline import two_faces

PREP = PreprocessConfig(crop_size=48, detect_every=4)
# One loader and one model actor: each is a process that imports torch, the main cost of a run here.
SIZING = BatchPredictConfig(loaders=1, cpus_per_loader=1.0, models=1, cpus_per_model=1.0, batch_size=4, loader_batch=2)
TIMELINE = TimelineConfig(mode="auto", auto_after_s=3.0)  # the 5 s two-face video only


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(micro_model(text_source="class_names", logit_scale=100.0), list(CLASSES_7))
    with torch.no_grad():  # spread the probabilities out (as test_predict does)
        for p in model.temporal.parameters():
            p.mul_(0.2)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    for name, label, seed in (("a.mp4", "happiness", 1), ("b.mp4", "sadness", 2), ("sub/c.mp4", "surprise", 3)):
        write_video(videos / name, render_clip(label, np.random.default_rng(seed), num_frames=12, size=(160, 128)), 12)
    write_video(videos / "sub" / "two.mp4", two_faces()[0], 12)
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    (videos / "empty.mp4").write_bytes(b"")
    extra = root / "extra.mp4"
    write_video(extra, render_clip("anger", np.random.default_rng(4), num_frames=12, size=(160, 128)), 12)
    return {"root": root, "videos": videos, "extra": extra}


@pytest.fixture(scope="module")
def first_run(ckpt, media, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "preds"
    lines: list[str] = []
    summary = run_batch_predict(
        str(ckpt), str(media["videos"]), str(out), SIZING, PREP, timeline=TIMELINE, log=lines.append
    )
    return {
        "out": out,
        "summary": summary,
        "lines": lines,
        "rows": {r["path"]: r for r in read_results(out).to_pylist()},
    }


def test_folder_listing_is_recursive_and_natural(media):
    v = media["videos"]
    assert list_inputs(str(v)) == [
        str(v / n) for n in ("a.mp4", "b.mp4", "corrupt.mp4", "empty.mp4", "sub/c.mp4", "sub/two.mp4")
    ]


@pytest.mark.slow
def test_errors_are_rows_and_the_rest_equals_in_process_predict(first_run, ckpt, media):
    v, rows = media["videos"], first_run["rows"]
    assert first_run["summary"]["inputs"] == 6
    assert (first_run["summary"]["predicted"], first_run["summary"]["errors"]) == (4, 2)
    assert rows[str(v / "corrupt.mp4")]["error"].startswith("not a readable video:")
    assert rows[str(v / "empty.mp4")]["error"] == "empty file (0 bytes)"
    assert any("corrupt.mp4 failed: not a readable video" in line for line in first_run["lines"])
    good = [v / "a.mp4", v / "b.mp4", v / "sub" / "c.mp4", v / "sub" / "two.mp4"]
    expected = predict_paths(ckpt, good, timeline=TIMELINE, **{"crop_size": 48, "detect_every": 4})
    for p in expected:
        row = rows[p.path]
        got = json.loads(row["prediction"])
        assert row["ok"] and row["label"] == p.label == got["label"] and row["frames"] == p.frames
        np.testing.assert_allclose(
            [got["probabilities"][c] for c in CLASSES_7], [p.probabilities[c] for c in CLASSES_7], atol=5e-5
        )
        assert ("timeline" in got) == (p.timeline is not None) == p.path.endswith("two.mp4")
    two = json.loads(rows[str(v / "sub" / "two.mp4")]["prediction"])["timeline"]
    assert len(two["tracks"]) == 2 and [len(t["windows"]) for t in two["tracks"]] == [4, 4]
    assert Path(two["png"]).parent == first_run["out"] / "timelines" and Path(two["png"]).is_file()
    # Shards are plain Parquet: one per model batch, all with the result schema.
    shards = sorted(first_run["out"].glob("part-*.parquet"))
    assert shards and sum(pq.read_metadata(s).num_rows for s in shards) == 6
    assert pq.read_schema(shards[0]).names == [
        "path",
        "ok",
        "label",
        "probability",
        "error",
        "face_fallback",
        "frames",
        "prediction",
    ]


@pytest.mark.slow
def test_resume_skips_done_inputs_and_retries_errors_on_request(first_run, ckpt, media, tmp_path):
    v, out = media["videos"], first_run["out"]
    # A CSV listing of the same videos (relative to the CSV) plus one new one.
    csv = v / "list.csv"
    names = ["a.mp4", "b.mp4", "corrupt.mp4", "empty.mp4", "sub/c.mp4", "sub/two.mp4", str(media["extra"])]
    csv.write_text("path,note\n" + "".join(f"{n},x\n" for n in names))
    try:
        # The new input and, asked to, the two that failed: the four predicted ones are skipped.
        retry = run_batch_predict(
            str(ckpt), str(csv), str(out), SIZING, PREP, timeline=TIMELINE, retry_errors=True, log=lambda _: None
        )
    finally:
        csv.unlink()
    assert retry["last_run"]["inputs"] == 3 and (retry["predicted"], retry["errors"]) == (5, 2)
    table = read_results(out)
    assert table.num_rows == 7 and sorted(table.column("path").to_pylist()) == sorted(
        str(v / n) if not n.startswith("/") else n for n in names
    )
    # Other crop settings than the results were made with: refused, nothing run.
    with pytest.raises(UserError, match="another checkpoint or other crop/timeline settings; re-run with --overwrite"):
        run_batch_predict(str(ckpt), str(v), str(out), SIZING, PreprocessConfig(crop_size=64), timeline=TIMELINE)


def test_sizing_is_checked_before_anything_runs(ckpt, media, ray_local, tmp_path):
    big = BatchPredictConfig(loaders=8, cpus_per_loader=1.0)
    with pytest.raises(UserError, match=r"8 x 1 CPUs for 8 batch-predict loaders.*lower batch_predict.loaders"):
        run_batch_predict(str(ckpt), str(media["videos"]), str(tmp_path / "o"), big, PREP, log=lambda _: None)
    assert not list((tmp_path / "o").glob("*"))  # no shard, no manifest
    with pytest.raises(UserError, match="batch-predict: loaders: must be >= 1, got 0"):
        run_batch_predict(str(ckpt), str(media["videos"]), str(tmp_path / "o"), BatchPredictConfig(loaders=0), PREP)


def test_listing_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="listing not found: .*nope"):
        list_inputs(str(tmp_path / "nope"))
    pq.write_table(pa.table({"file": ["a.mp4"]}), tmp_path / "l.parquet")
    with pytest.raises(UserError, match=r"l.parquet has no 'path' column \(it has file\)"):
        list_inputs(str(tmp_path / "l.parquet"))
    pq.write_table(pa.table({"path": ["a.mp4", "/x/b.mp4"]}), tmp_path / "ok.parquet")
    assert list_inputs(str(tmp_path / "ok.parquet")) == [str(tmp_path / "a.mp4"), "/x/b.mp4"]
    assert list_inputs(f"file://{tmp_path}/ok.parquet") == [f"file://{tmp_path}/a.mp4", "/x/b.mp4"]


@pytest.mark.slow
def test_cli_exit_status(first_run, ckpt, media, ray_local):
    # Everything is done already (failures are not retried unasked): no work, exit 1 as two inputs failed.
    code = cli(
        ["--checkpoint", str(ckpt), "--out", str(first_run["out"]), str(media["videos"]), "--config", _cfg(media)]
    )
    assert code == 1
    assert json.loads((first_run["out"] / "manifest.json").read_text())["last_run"]["inputs"] == 0
    assert cli(["--checkpoint", str(ckpt), "--out", str(first_run["out"]), str(media["videos"] / "missing")]) == 2


def _cfg(media) -> str:
    path = media["root"] / "cfg.yaml"
    path.write_text("preprocess:\n  crop_size: 48\n  detect_every: 4\ntimeline:\n  auto_after_s: 3.0\n")
    return str(path)


def _ray_workers(stop: threading.Event, kills: list[int], limit: int | None, victim) -> None:
    """SIGKILL (what the OOM killer sends) each Ray worker process for which ``victim(proc)`` is
    true, until ``stop`` or ``limit`` kills."""
    me = os.getpid()
    while not stop.is_set() and (limit is None or len(kills) < limit):
        for proc in Path("/proc").iterdir():
            # A process killed a moment ago can still show its open files: it counts once.
            if not proc.name.isdigit() or int(proc.name) == me or int(proc.name) in kills:
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                if b"ray::" in cmdline and victim(proc, cmdline):
                    os.kill(int(proc.name), signal.SIGKILL)
                    kills.append(int(proc.name))
                    if limit is not None and len(kills) >= limit:
                        return
            except OSError:  # the process ended or is not ours to read
                continue
        stop.wait(0.02)


def _has_open(path: str):
    return lambda proc, _cmdline: any(os.readlink(fd) == path for fd in (proc / "fd").iterdir())


def _kill_once(path: str, stop: threading.Event, kills: list[int]) -> None:
    """Kill the first Ray worker process seen with ``path`` open."""
    _ray_workers(stop, kills, 1, _has_open(path))


def _run_with_killer(killer_args: tuple, *args, **kwargs) -> dict:
    """run_batch_predict(*args, **kwargs) with ``_ray_workers(stop, *killer_args)`` beside it."""
    stop = threading.Event()
    killer = threading.Thread(target=_ray_workers, args=(stop, *killer_args), daemon=True)
    killer.start()
    try:
        return run_batch_predict(*args, **kwargs)
    finally:
        stop.set()
        killer.join()


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the worker through /proc (Linux)")
def test_a_killed_loader_actor_does_not_stop_the_job(ckpt, media, ray_local, tmp_path):
    from tests.data.drawing import face_frames

    victim = tmp_path / "victim.mp4"
    write_video(victim, face_frames(200, 320, 240, face=False), 25)  # ~1 s of decoding: the killer sees it open
    listing = tmp_path / "list.csv"
    listing.write_text(f"path\n{media['videos'] / 'a.mp4'}\n{victim}\n{media['videos'] / 'b.mp4'}\n")
    stop, kills = threading.Event(), []
    killer = threading.Thread(target=_kill_once, args=(str(victim), stop, kills), daemon=True)
    killer.start()
    try:
        summary = run_batch_predict(str(ckpt), str(listing), str(tmp_path / "o"), SIZING, PREP, log=lambda _: None)
    finally:
        stop.set()
        killer.join()
    assert len(kills) == 1  # its actor died once; Ray restarted it and tried the batch again
    assert (summary["predicted"], summary["errors"]) == (3, 0)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the worker through /proc (Linux)")
def test_an_input_that_kills_its_actor_every_time_is_an_error_row_and_its_batch_mates_complete(
    first_run, ckpt, media, ray_local, tmp_path
):
    """Its batch dies on every try (worker_retries 0: one), then each of its inputs runs alone:
    the batch-mates are predicted, the input that killed its actor again is an error row."""
    from tests.data.drawing import face_frames

    poison = tmp_path / "poison.mp4"
    write_video(poison, face_frames(200, 320, 240, face=False), 25)  # ~1 s of decoding: the killer sees it open
    v = media["videos"]
    listing = tmp_path / "list.csv"
    listing.write_text(f"path\n{v / 'a.mp4'}\n{poison}\n{v / 'b.mp4'}\n")
    sizing = dataclasses.replace(SIZING, worker_retries=0)  # one batch of 3 in one fused actor
    kills: list[int] = []
    lines: list[str] = []
    killed: list[bytes] = []  # the command lines of the processes killed

    def poison_open(proc, cmdline: bytes) -> bool:
        if _has_open(str(poison))(proc, cmdline):
            killed.append(cmdline)
            return True
        return False

    summary = _run_with_killer(
        (kills, None, poison_open),
        str(ckpt),
        str(listing),
        str(tmp_path / "o"),
        sizing,
        PREP,
        log=lines.append,
    )
    assert len(kills) == 2  # the batch's one try, then the poison's one try alone
    assert all(b"FusedActor" in c for c in killed)  # no GPU: one fused stage (batch_predict.fuse auto)
    assert (summary["predicted"], summary["errors"]) == (2, 1)
    rows = {r["path"]: r for r in read_results(tmp_path / "o").to_pylist()}
    assert rows[str(poison)]["error"].startswith(
        "the batch-predict actor process died on this input 1 time(s) when run alone"
    )
    for name in ("a.mp4", "b.mp4"):  # as the first run predicted them
        _assert_same_prediction(rows[str(v / name)], first_run["rows"][str(v / name)])
    assert any("trying each of them alone" in line for line in lines)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the worker through /proc (Linux)")
def test_a_model_actor_killed_mid_job_is_restarted_and_every_input_answered_once(
    first_run, ckpt, media, ray_local, tmp_path
):
    """The two-stage pipeline (what a GPU cluster runs): SIGKILL the model actor's process once
    its first result shard is written; Ray restarts it, the batches it held are tried again, and
    each input ends with exactly one row, equal to the fused pipeline's."""
    from tests.data.drawing import face_frames

    v, out = media["videos"], tmp_path / "o"
    slow = tmp_path / "slow.mp4"  # ~1 s of decoding: still loading when the model actor dies
    write_video(slow, face_frames(200, 320, 240, face=False), 25)
    inputs = [v / "a.mp4", v / "b.mp4", v / "sub" / "c.mp4", slow, v / "corrupt.mp4"]
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"{p}\n" for p in inputs))
    sizing = dataclasses.replace(SIZING, fuse="off", batch_size=1, loader_batch=1, cpus_per_loader=1.0)
    kills: list[int] = []

    def model_actor_after_first_shard(_proc, cmdline: bytes) -> bool:
        return b"ModelActor" in cmdline and any(out.glob("part-*.parquet"))

    summary = _run_with_killer(
        (kills, 1, model_actor_after_first_shard), str(ckpt), str(listing), str(out), sizing, PREP
    )
    assert len(kills) == 1
    assert (summary["inputs"], summary["predicted"], summary["errors"]) == (5, 4, 1)
    shards = list(out.glob("part-*.parquet"))
    paths = [p for s in shards for p in pq.read_table(s, columns=["path"]).column("path").to_pylist()]
    assert sorted(paths) == sorted(str(p) for p in inputs)  # every input once, none twice
    rows = {r["path"]: r for r in read_results(out).to_pylist()}
    for name in ("a.mp4", "b.mp4", "sub/c.mp4"):  # as the fused pipeline predicted them
        _assert_same_prediction(rows[str(v / name)], first_run["rows"][str(v / name)])


def _assert_same_prediction(row: dict, expected: dict) -> None:
    got, want = json.loads(row["prediction"]), json.loads(expected["prediction"])
    assert row["ok"] and got["label"] == want["label"] and got["frames"] == want["frames"]
    # Batched with other clips or alone: the forward pass may round differently in the last bits.
    np.testing.assert_allclose(
        [got["probabilities"][c] for c in CLASSES_7], [want["probabilities"][c] for c in CLASSES_7], atol=1e-6
    )


def test_a_fused_actor_predicts_its_batch_and_returns_a_storage_failure_for_the_driver(
    ckpt, media, ray_local, tmp_path
):
    """The fused actor in this process (2 decode threads): one shard for its batch, a bad input
    as an error row; a results folder it cannot write comes back as rows the driver stops on
    (Ray Data skips batches that raise: that is how a dead actor's batch is let go)."""
    import ray

    from pipeline.batch_predict import FusedActor
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.typed import to_dict

    model, _ = load_checkpoint(ckpt)
    v = media["videos"]
    batch = pa.table({"path": [str(v / "a.mp4"), str(v / "corrupt.mp4"), str(v / "b.mp4")]})

    def actor(out: Path) -> FusedActor:
        model_args = dict(model_ref=[ray.put(model)], device="cpu", batch_size=4, temperature=1.0, pngs=False)
        return FusedActor(
            model.num_frames, model.image_size, to_dict(PREP), None, threads=2, out=str(out), **model_args
        )

    rows = actor(tmp_path / "ok")(batch).to_pylist()
    assert [(r["ok"], r["fatal"]) for r in rows] == [(True, None), (False, None), (True, None)]
    assert rows[1]["error"].startswith("not a readable video:")
    expected = predict_paths(model, [v / "a.mp4", v / "b.mp4"], crop_size=48, detect_every=4)
    shards = list((tmp_path / "ok").glob("part-*.parquet"))
    assert len(shards) == 1
    written = {r["path"]: r for r in pq.read_table(shards[0]).to_pylist()}
    for p in expected:
        _assert_same_prediction(written[p.path], {"prediction": json.dumps(p.to_dict())})

    (tmp_path / "file").write_text("a file where the results folder should be")
    rows = actor(tmp_path / "file")(batch).to_pylist()
    assert [r["path"] for r in rows] == batch.column("path").to_pylist()
    assert all(not r["ok"] and r["fatal"] for r in rows)


def test_cpu_actors_get_the_model_as_torchscript_that_loads_without_open_clip(ckpt, tmp_path):
    """CPU actors get the model traced (TracedModel): in a fresh process it loads with torch
    alone — no open_clip, torchvision or torch._dynamo, seconds of CPU per actor — and gives the
    very logits of the model itself, at a batch size other than the one it was traced with.

    The fresh process rebuilds it from its state as an actor's unpickling does (``__setstate__``
    calls ``__init__`` with the TorchScript bytes and the class names); the test hands those over
    as a TorchScript file and a JSON list, and the tensors as weights-only torch files, so
    nothing here unpickles arbitrary objects."""
    import json
    import subprocess
    import sys

    from pipeline.batch_predict import traced_for_actors
    from pipeline.model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    model.eval()
    traced = traced_for_actors(model)
    assert traced is not None and traced.module is None  # shipped as bytes, loaded by the actor
    state = traced.__getstate__()
    assert sorted(state) == ["class_names", "script"]  # what Ray pickles: bytes and names only
    (tmp_path / "traced.pt").write_bytes(state["script"])
    (tmp_path / "classes.json").write_text(json.dumps(state["class_names"]))
    video = torch.randint(0, 256, (3, model.num_frames, 3, model.image_size, model.image_size), dtype=torch.uint8)
    torch.save(video, tmp_path / "video.pt")
    script = (
        "import json, sys, torch\n"
        "from pipeline.batch_predict import TracedModel\n"
        "m = TracedModel.__new__(TracedModel)\n"
        f"m.__setstate__({{'script': open({str(tmp_path / 'traced.pt')!r}, 'rb').read(), "
        f"'class_names': json.load(open({str(tmp_path / 'classes.json')!r}))}})\n"
        "m.load()\n"
        f"video = torch.load({str(tmp_path / 'video.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(video), {str(tmp_path / 'logits.pt')!r})\n"
        "print(m.class_names, [n for n in ('open_clip', 'torchvision', 'timm', 'torch._dynamo') if n in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{list(CLASSES_7)} []"
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "logits.pt", weights_only=True), model(video))


def test_a_model_that_does_not_trace_faithfully_is_shipped_as_itself(caplog):
    from torch import nn

    from pipeline.batch_predict import traced_for_actors

    class Toy(nn.Module):
        class_names, num_frames, image_size = ["a", "b"], 2, 4

        def __init__(self, batch_dependent: bool):
            super().__init__()
            self.batch_dependent = batch_dependent

        def text_features(self):
            return torch.eye(2)

        def forward(self, video):
            x = video.float().mean(dim=(1, 2, 3, 4))[:, None]
            if self.batch_dependent:  # a Python int the trace bakes in: a batch of 1 comes out wrong
                return x.repeat(1, 2) * float(video.shape[0])
            return {"logits": x.repeat(1, 2)}  # not a tensor: cannot be traced

    caplog.set_level("DEBUG", logger="pipeline.batch_predict")
    assert traced_for_actors(Toy(batch_dependent=True)) is None
    assert "the traced model's logits differ from the model's" in caplog.text
    caplog.clear()
    assert traced_for_actors(Toy(batch_dependent=False)) is None
    assert "the model does not trace" in caplog.text
