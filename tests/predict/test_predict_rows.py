"""What ``dferclip predict`` prints: the table's header and rows and the JSON lines, written out by
hand character by character (docs/predict.md), and predict_command's column width, exit status
and failure count on a real micro checkpoint."""

from __future__ import annotations

import inspect
import io
import json
import logging
import threading

import cv2
import numpy as np
import pytest
import torch

from pipeline.config import TimelineConfig
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.model import build_model, save_checkpoint
from pipeline.predict import Prediction
from pipeline.predict_output import json_row, predict_command, table_header, table_row, track_row
from tests.micro import micro_model

OK = Prediction(
    path="a.mp4",
    label="sad",
    probability=0.75,
    probabilities={"happiness": 0.125, "sad": 0.75, "anger": 0.125 / 2, "fear": 0.0625},
    frames=12,
)
CLASSES = ["happiness", "sad", "anger", "fear"]


def test_header_pads_every_column():
    # path to the given width, label to 14, prob right-aligned in 6, face to 4, then each class
    # right-aligned in max(len(name), 6).
    assert table_header(8, CLASSES, None) == (
        "path" + " " * 4 + "  " + "label" + " " * 9 + " " + "  prob" + "  " + "face" + "  "
        "happiness" + " " + "   sad" + " " + " anger" + " " + "  fear"
    )
    assert table_header(5, CLASSES, 3) == "path " + "  " + "label" + " " * 9 + " " + "  prob" + "  face" + "  top 3"


def test_rows_of_a_prediction():
    # probability 0.75 -> " 0.750" (6 wide, 3 decimals); a face was found -> "ok  ".
    assert table_row(OK, 8, CLASSES, None) == (
        "a.mp4" + " " * 3 + "  " + "sad" + " " * 11 + " " + " 0.750" + "  " + "ok  " + "  "
        "    0.125" + " " + " 0.750" + " " + " 0.062" + " " + " 0.062"  # 0.0625 rounds half to even
    )
    # top 2, most probable first; no face found -> "none"
    no_face = Prediction(**{**OK.__dict__, "face_fallback": True})
    assert table_row(no_face, 6, CLASSES, 2) == (
        "a.mp4 " + "  " + "sad" + " " * 11 + " " + " 0.750" + "  " + "none" + "  " + "sad 0.750, happiness 0.125"
    )
    failed = Prediction(path="b.mp4", error="file not found")
    assert table_row(failed, 7, CLASSES, None) == "b.mp4    ERROR: file not found"
    assert table_row(failed, 7, CLASSES, 2) == "b.mp4    ERROR: file not found"


def test_json_rows():
    plain = json.loads(json_row(OK, None))
    assert plain == {
        "path": "a.mp4",
        "ok": True,
        "label": "sad",
        "probability": 0.75,
        "probabilities": {"happiness": 0.125, "sad": 0.75, "anger": 0.0625, "fear": 0.0625},
        "face_fallback": False,
        "frames": 12,
        "error": None,
    }
    assert json.loads(json_row(OK, 2))["top"] == [
        {"label": "sad", "probability": 0.75},
        {"label": "happiness", "probability": 0.125},
    ]
    assert {k: v for k, v in json.loads(json_row(OK, 2)).items() if k != "top"} == plain
    failed = json.loads(json_row(Prediction(path="b.mp4", error="file not found"), 2))
    assert "top" not in failed and failed["ok"] is False and failed["error"] == "file not found"


def test_track_rows():
    # track id, its span with one decimal (0.25 and 4.96 round to 0.2 and 5.0), the number of its
    # windows, its label and probability with 3 decimals, the aggregate that made them.
    track = {"track": 2, "first_s": 0.25, "last_s": 4.96, "windows": [{}, {}, {}], "label": "fear"}
    assert track_row({**track, "probability": 0.4166}, "majority") == (
        "  track 2 [0.2-5.0 s, 3 windows]: fear 0.417 (majority)"
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(micro_model(num_frames=4, n_ctx=2, text_source="class_names"), list(CLASSES_7))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model.pt")


def _frames(folder):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for t in range(4):
        cv2.imwrite(str(folder / f"{t}.png"), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    return folder


def test_short_paths_get_the_four_wide_path_column_and_exit_0(ckpt, tmp_path, monkeypatch):
    _frames(tmp_path / "f")
    # The absolute path first: predict's lazy imports happen before the working directory moves
    # (a test run that finds the package through a relative sys.path entry, as mutmut's, needs that).
    assert (
        predict_command(str(ckpt), [str(tmp_path / "f")], crop_overrides={"detector": "none"}, out=io.StringIO()) == 0
    )
    monkeypatch.chdir(tmp_path)
    buf = io.StringIO()
    assert predict_command(str(ckpt), ["f"], crop_overrides={"detector": "none"}, out=buf, workers=1) == 0
    header, row = buf.getvalue().splitlines()
    assert header == "path" + "  " + "label" + " " * 9 + " " + "  prob" + "  " + "face" + "  " + (
        "happiness sadness neutral  anger surprise disgust   fear"
    )
    assert row.startswith("f     ") and row.split()[1] in CLASSES_7
    probs = [float(v) for v in row.split()[4:]]
    assert len(probs) == 7 and sum(probs) == pytest.approx(1.0, abs=4e-3)  # 7 values rounded to 3 decimals


def test_failures_make_exit_1_and_are_counted(ckpt, tmp_path, caplog):
    frames = str(_frames(tmp_path / ("x" * 70)))  # longer than the 60-character column cap
    missing = str(tmp_path / "missing.mp4")
    buf = io.StringIO()
    with caplog.at_level(logging.WARNING, logger="pipeline.predict_output"):
        # the failed input first: the count is of every failure, not the last input's
        rc = predict_command(str(ckpt), [missing, frames], crop_overrides={"detector": "none"}, out=buf, workers=1)
    assert rc == 1
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("path" + " " * 56 + "  label")  # the column is capped at 60
    assert lines[1] == f"{missing:<60}  ERROR: file not found"
    assert [r.getMessage() for r in caplog.records] == [
        "predict: 1 of 2 input(s) could not be read (see the ERROR rows above)"
    ]
    caplog.clear()
    buf = io.StringIO()
    with caplog.at_level(logging.WARNING, logger="pipeline.predict_output"):
        rc = predict_command(str(ckpt), [missing], json_lines=True, top=1, out=buf, workers=1)
    assert rc == 1
    assert [json.loads(line) for line in buf.getvalue().splitlines()] == [
        {
            "path": missing,
            "ok": False,
            "label": None,
            "probability": None,
            "probabilities": {},
            "face_fallback": False,
            "frames": 0,
            "error": "file not found",
        }
    ]
    assert [r.getMessage() for r in caplog.records] == [
        "predict: 1 of 1 input(s) could not be read (see the error fields above)"
    ]


class FlushLog(io.StringIO):
    """An output that records what had been written at each flush (``print(flush=True)`` calls it)."""

    def __init__(self):
        super().__init__()
        self.flushed: list[str] = []

    def flush(self):
        self.flushed.append(self.getvalue())
        super().flush()


def test_timeline_tracks_and_top_columns_stream_out_line_by_line(ckpt, tmp_path, monkeypatch):
    # 12 frames read at 4 fps as a timeline of 1 s windows every 1 s: windows (0, 4), (4, 8),
    # (8, 12); with detector none the whole frame is the one face, track 0, frames 0..11 =
    # 0.0 .. 2.75 s, printed with one decimal (2.75 rounds half to even: 2.8).
    folder = tmp_path / "clip"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for t in range(12):
        cv2.imwrite(str(folder / f"{t}.png"), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    cfg = TimelineConfig(mode="on", window_s=1.0, stride_s=1.0, folder_fps=4.0, aggregate="max")
    out = FlushLog()
    rc = predict_command(
        str(ckpt), ["clip"], crop_overrides={"detector": "none"}, top=2, timeline=cfg, out=out, workers=1
    )
    assert rc == 0
    header, row, track = out.getvalue().splitlines()
    assert header == "path" + "  " + "label" + " " * 9 + " " + "  prob" + "  face" + "  top 2"
    # path, label, prob, face "ok" (the detector override reached the crops), then the top 2
    # classes with their probabilities: the first is the label.
    name, label, prob, face, first, first_p, second, second_p = row.split()
    assert (name, face, first, first_p) == ("clip", "ok", label, prob + ",")
    assert second in CLASSES_7 and second != label and float(second_p) <= float(prob)
    # The video's label and probability are its track 0's aggregate.
    assert track == f"  track 0 [0.0-2.8 s, 3 windows]: {label} {prob} (max)"
    # Every line is flushed as it is written: a reader sees each row when its clip is done.
    lines = out.getvalue().splitlines(keepends=True)
    assert out.flushed == ["".join(lines[: i + 1]) for i in range(len(lines))]


def test_json_lines_carry_the_top_classes(ckpt, tmp_path):
    buf = io.StringIO()
    frames = str(_frames(tmp_path / "f"))
    assert predict_command(str(ckpt), [frames], json_lines=True, top=2, out=buf, workers=1) == 0
    (row,) = [json.loads(line) for line in buf.getvalue().splitlines()]
    ranked = sorted(row["probabilities"].items(), key=lambda kv: -kv[1])[:2]
    assert row["top"] == [{"label": c, "probability": v} for c, v in ranked]
    assert row["face_fallback"] is True  # the default detector finds no face in noise: crop settings reached it


@pytest.mark.parametrize(
    "option, message",
    [
        ({"top": 0}, r"^predict: --top: must be >= 1, got 0$"),
        ({"device": "no-such-device"}, r"^predict: bad device 'no-such-device'"),
        ({"batch_size": 0}, r"^predict: batch size must be >= 1, got 0$"),
        ({"workers": 0}, r"^predict: workers must be >= 1, got 0$"),
    ],
)
def test_options_reach_the_prediction(ckpt, tmp_path, option, message):
    with pytest.raises(UserError, match=message):
        predict_command(str(ckpt), [str(tmp_path / "clip.mp4")], out=io.StringIO(), **option)


def test_defaults_are_the_clis(ckpt, tmp_path):
    # docs/predict.md: --batch-size [8], --workers [2], --device [auto]; a Python caller gets the same.
    params = inspect.signature(predict_command).parameters
    assert {k: params[k].default for k in ("batch_size", "workers", "device")} == {
        "batch_size": 8,
        "workers": 2,
        "device": "auto",
    }
    # ... and they take effect: nine clips are a forward pass of 8 then one of 1, decoded by at
    # most 2 threads (torch's global forward hook sees every pass of the loaded model).
    inputs = [str(_frames(tmp_path / f"c{i}")) for i in range(9)]
    passes, loaders = [], set()

    def seen(module, args, output):
        if type(module).__name__ == "DferClip":
            passes.append(args[0].shape[0])
            loaders.update(t.name for t in threading.enumerate() if t.name.startswith("predict-load"))

    hook = torch.nn.modules.module.register_module_forward_hook(seen)
    try:
        assert predict_command(str(ckpt), inputs, crop_overrides={"detector": "none"}, out=io.StringIO()) == 0
    finally:
        hook.remove()
    assert passes == [8, 1] and 1 <= len(loaders) <= 2
