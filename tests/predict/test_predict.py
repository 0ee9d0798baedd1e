"""dferclip predict: real videos and frame folders through the real crop path, a real checkpoint."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.config import PreprocessConfig
from pipeline.data.faces import ClipCropper, build_detector
from pipeline.data.video import open_frames
from pipeline.datasets import CLASSES_7
from pipeline.model import build_model, load_checkpoint, save_checkpoint
from pipeline.predict import crop_options, expand_inputs, predict_paths
from pipeline.predict_output import predict_command
from pipeline.preprocess import process_clip
from pipeline.synth import render_clip, write_video
from pipeline.train.transforms import ClipTransform, SelectFrames, model_layout
from stages.predict import cli
from tests.micro import micro_model

MICRO = micro_model(text_source="class_names", logit_scale=100.0)
LABELS = ["happiness", "sadness", "surprise"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(MICRO, list(CLASSES_7))
    # Random weights at the paper's logit scale 100 give near one-hot softmaxes; shrink the temporal output so
    # the probabilities are spread out and a wrong crop shows up as a clear difference.
    with torch.no_grad():
        for p in model.temporal.parameters():
            p.mul_(0.2)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    videos = root / "videos"
    videos.mkdir()
    # Names chosen so natural order (2 before 10) differs from plain string order.
    for name, label, seed in (
        ("clip10.mp4", "happiness", 1),
        ("clip2.mp4", "sadness", 2),
        ("clip3.mp4", "surprise", 6),
    ):
        write_video(videos / name, render_clip(label, np.random.default_rng(seed), num_frames=12, size=(160, 128)), 12)
    frames = root / "frames"
    frames.mkdir()
    for t, rgb in enumerate(render_clip("anger", np.random.default_rng(4), num_frames=10, size=(160, 128))):
        cv2.imwrite(str(frames / f"{t}.png"), rgb[:, :, ::-1])
    noface = root / "noface.mp4"
    rng = np.random.default_rng(5)
    write_video(
        noface,
        [np.full((96, 128, 3), 90, np.uint8) + rng.integers(0, 20, (96, 128, 3), dtype=np.uint8) for _ in range(9)],
        12,
    )
    broken = root / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    empty = root / "empty_dir"
    empty.mkdir()
    return {
        "root": root,
        "videos": videos,
        "frames": frames,
        "noface": noface,
        "broken": broken,
        "empty": empty,
        "video_files": [videos / "clip2.mp4", videos / "clip3.mp4", videos / "clip10.mp4"],
    }


def _eval_path_probs(model, path, prep: PreprocessConfig) -> np.ndarray:
    """What evaluation computes for ``path``: preprocess's shard row -> SelectFrames -> eval transform."""
    cropper = ClipCropper(
        build_detector(prep.detector, prep.yunet_model, prep.detect_max_side),
        detect_every=prep.detect_every,
        margin=prep.margin,
        crop_size=prep.crop_size,
        jpeg_quality=prep.jpeg_quality,
    )
    row, _ = process_clip(
        {"source": str(path), "clip_id": "c", "dataset": "d", "label": 0, "label_name": "x", "splits": ["1:test"]},
        cropper,
    )
    table = pa.table(
        {
            "clip_id": ["c"],
            "label": pa.array([0], pa.int64()),
            "num_frames": [row["num_frames"]],
            "frames": pa.array([row["frames"]], pa.list_(pa.binary())),
        }
    )
    selected = SelectFrames(model.num_frames)(table)
    video = ClipTransform(model.num_frames, model.image_size, train=False, preselected=True)(selected)["video"]
    with torch.no_grad():
        return model(model_layout(video)).softmax(dim=1)[0].numpy()


def _hand_probs(model, path, detector: str, crop_size: int) -> np.ndarray:
    """Crops made by hand with the preprocess functions, then sampled (segment middles) and resized
    to the model input independently of predict's code. ``crop_size`` < 2x the model input keeps
    the evaluation transform on a full JPEG decode (it uses DCT-scaled decoding above that)."""
    frames = list(open_frames(path).frames)
    crops = ClipCropper(build_detector(detector), crop_size=crop_size).run(frames)
    n, T, S = len(crops.frames), model.num_frames, model.image_size
    idx = [min(int(n / T * (i + 0.5)), n - 1) if n >= T else min(i, n - 1) for i in range(T)]
    clip = []
    for i in idx:
        bgr = cv2.imdecode(np.frombuffer(crops.frames[i], np.uint8), cv2.IMREAD_COLOR)
        clip.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (S, S), interpolation=cv2.INTER_AREA))
    video = torch.from_numpy(np.stack(clip)).permute(0, 3, 1, 2).unsqueeze(0)  # (1, T, 3, S, S)
    with torch.no_grad():
        return model(video).softmax(dim=1)[0].numpy()


def _probs(pred) -> np.ndarray:
    return np.array([pred.probabilities[c] for c in CLASSES_7])


def test_probabilities_are_softmax_of_the_model_on_the_face_crops(ckpt, inputs):
    model, _ = load_checkpoint(ckpt)
    paths = inputs["video_files"] + [inputs["frames"]]
    preds = predict_paths(ckpt, paths, crop_size=48, batch_size=8)
    assert [p.path for p in preds] == [str(p) for p in paths]
    # Logit scale 100 turns float noise from batching (B=4 here vs 1 by hand) into ~1e-5 differences.
    for path, p in zip(paths, preds):
        assert p.ok and not p.face_fallback, p
        probs = _probs(p)
        np.testing.assert_allclose(probs, _hand_probs(model, path, "haar", crop_size=48), atol=5e-5)
        assert p.label == CLASSES_7[int(probs.argmax())] and p.probability == pytest.approx(probs.max())
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert preds[3].frames == 10 and preds[0].frames == 12
    # The crop settings matter: a whole-frame resize gives other probabilities, equal to its own hand path.
    whole = predict_paths(model, [paths[0]], detector="none", crop_size=48)[0]
    np.testing.assert_allclose(_probs(whole), _hand_probs(model, paths[0], "none", crop_size=48), atol=5e-5)
    assert np.abs(_probs(whole) - _probs(preds[0])).max() > 1e-3


def test_predict_equals_evaluation_of_the_preprocessed_clip(ckpt, inputs):
    """Default settings: the same numbers as preprocess (shard row) -> evaluation transform."""
    model, _ = load_checkpoint(ckpt)
    paths = [inputs["video_files"][0], inputs["frames"]]
    for path, pred in zip(paths, predict_paths(model, paths, batch_size=1)):
        np.testing.assert_allclose(_probs(pred), _eval_path_probs(model, path, PreprocessConfig()), atol=1e-6)


def test_config_crop_settings_are_used(ckpt, inputs):
    model, _ = load_checkpoint(ckpt)
    prep = PreprocessConfig(margin=0.6, detect_every=3)
    path = inputs["video_files"][0]
    pred = predict_paths(model, [path], **crop_options(prep))[0]
    np.testing.assert_allclose(_probs(pred), _eval_path_probs(model, path, prep), atol=1e-6)
    assert np.abs(_probs(pred) - _eval_path_probs(model, path, PreprocessConfig())).max() > 1e-3


def test_batching_and_threads_give_the_same_results_as_one_by_one(ckpt, inputs):
    paths = [inputs["videos"], inputs["broken"], inputs["frames"], inputs["noface"]]
    batched = predict_paths(ckpt, paths, batch_size=3, workers=2)
    single = predict_paths(ckpt, paths, batch_size=1, workers=1)
    assert [p.path for p in batched] == [p.path for p in single]
    assert len(batched) == 6  # the folder of videos expanded to its 3 videos
    for a, b in zip(batched, single):
        assert (a.ok, a.label, a.face_fallback, a.error) == (b.ok, b.label, b.face_fallback, b.error)
        for c in a.probabilities:
            assert a.probabilities[c] == pytest.approx(b.probabilities[c], abs=1e-5)
    assert not batched[3].ok and batched[3].path == str(inputs["broken"])
    assert batched[5].ok and batched[5].face_fallback  # no face anywhere -> centre crop, flagged


def test_expand_inputs(inputs):
    got = expand_inputs([inputs["videos"], inputs["frames"], inputs["empty"], inputs["root"] / "missing.mp4"])
    assert [p for p, _ in got] == [str(p) for p in inputs["video_files"]] + [
        str(inputs["frames"]),
        str(inputs["empty"]),
        str(inputs["root"] / "missing.mp4"),
    ]
    assert [e is None for _, e in got] == [True, True, True, True, False, False]
    assert "no frame images" in got[4][1] and got[5][1] == "file not found"


def test_cli_json_lines_report_errors_and_exit_1(ckpt, inputs, capsys, caplog):
    rc = cli(
        [
            "--checkpoint",
            str(ckpt),
            "--json",
            "--top",
            "2",
            "--batch-size",
            "2",
            str(inputs["videos"]),
            str(inputs["broken"]),
            str(inputs["empty"]),
        ]
    )
    out, _ = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 1
    assert [r["path"] for r in rows] == [str(p) for p in inputs["video_files"]] + [
        str(inputs["broken"]),
        str(inputs["empty"]),
    ]
    for r in rows[:3]:
        assert r["ok"] and r["error"] is None and set(r["probabilities"]) == set(CLASSES_7)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["top"][0] == {"label": r["label"], "probability": r["probability"]} and len(r["top"]) == 2
    assert not rows[3]["ok"] and "not a readable video" in rows[3]["error"]
    assert not rows[4]["ok"] and "no frame images" in rows[4]["error"]
    assert "2 of 5" in caplog.text and "2 of 5" not in out  # a logged warning; stdout holds only the rows


def test_cli_table_for_good_inputs_exits_0(ckpt, inputs, capsys):
    rc = cli(["--checkpoint", str(ckpt), str(inputs["videos"]), str(inputs["frames"])])
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert rc == 0
    assert lines[0].split()[:4] == ["path", "label", "prob", "face"] and lines[0].split()[4:] == list(CLASSES_7)
    expected = predict_paths(ckpt, [inputs["videos"], inputs["frames"]])
    assert len(lines) == 1 + len(expected)
    for line, p in zip(lines[1:], expected):
        cells = line.split()
        assert cells[0] == p.path and cells[1] == p.label and float(cells[2]) == pytest.approx(p.probability, abs=1e-3)
        assert [float(v) for v in cells[4:]] == pytest.approx([p.probabilities[c] for c in CLASSES_7], abs=1e-3)


def test_predict_command_writes_its_rows_to_the_given_stream(ckpt, inputs, capsys):
    buf = io.StringIO()
    assert predict_command(str(ckpt), [str(inputs["frames"])], top=2, out=buf) == 0
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].split()[-2:] == ["top", "2"]
    expected = predict_paths(ckpt, [inputs["frames"]])[0]
    cells = lines[1].split()
    assert cells[:2] == [str(inputs["frames"]), expected.label] and cells[4] == expected.top(2)[0][0]
    assert capsys.readouterr().out == ""  # all of it went to ``out``


def test_cli_bad_checkpoint_or_option_exits_2(ckpt, inputs, tmp_path, capsys):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert cli(["--checkpoint", str(bogus), str(inputs["frames"])]) == 2
    assert str(bogus) in capsys.readouterr().err
    assert (
        cli(
            [
                "--checkpoint",
                str(ckpt),
                "--detector",
                "yunet",
                "--yunet-model",
                str(tmp_path / "no.onnx"),
                str(inputs["frames"]),
            ]
        )
        == 2
    )
    assert "no.onnx" in capsys.readouterr().err


def test_cli_crops_as_the_checkpoint_records_unless_told_otherwise(ckpt, inputs, tmp_path, capsys):
    """A checkpoint from the train stage carries its shards' preprocess settings; predict uses them."""
    model, extra = load_checkpoint(ckpt)
    recorded = PreprocessConfig(margin=0.0, crop_size=40, detect_every=3)
    with_crops = save_checkpoint(
        model, tmp_path / "with_crops.pt", {**extra, "preprocess": {**crop_options(recorded), "num_workers": 2}}
    )
    path = inputs["video_files"][0]

    def cli_probs(*args) -> np.ndarray:
        assert cli(["--checkpoint", str(with_crops), "--json", *args, str(path)]) == 0
        row = json.loads(capsys.readouterr().out.splitlines()[0])
        return np.array([row["probabilities"][c] for c in CLASSES_7])

    np.testing.assert_allclose(cli_probs(), _eval_path_probs(model, path, recorded), atol=1e-5)
    # a flag overrides one recorded setting and keeps the others
    np.testing.assert_allclose(
        cli_probs("--margin", "0.6"),
        _eval_path_probs(model, path, PreprocessConfig(margin=0.6, crop_size=40, detect_every=3)),
        atol=1e-5,
    )
    assert np.abs(cli_probs() - _eval_path_probs(model, path, PreprocessConfig())).max() > 1e-3


def test_clips_over_a_cap_get_an_error_naming_it(ckpt, inputs, tmp_path, capsys):
    """predict reads clips as preprocess does: the same per-clip caps, the error names clip and key."""
    video = inputs["video_files"][0]  # 160x128, 12 frames
    preds = predict_paths(ckpt, [video, inputs["frames"]], max_clip_frames=11)
    assert not preds[0].ok and preds[0].error.startswith(f"{video}: more than 11 frames")
    assert "over preprocess.max_clip_frames = 11" in preds[0].error
    assert preds[1].ok  # a folder of 10 frames is within the cap
    # A config's caps reach predict (crop_options carries them, as --config does on the command line).
    prep = PreprocessConfig(max_pixels=10_000)
    assert crop_options(prep)["max_pixels"] == 10_000
    config = tmp_path / "caps.yaml"
    config.write_text("preprocess:\n  max_pixels: 10000\n")
    assert cli(["--checkpoint", str(ckpt), "--json", "--config", str(config), str(video)]) == 1
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert not row["ok"] and "160x128 frames" in row["error"] and "preprocess.max_pixels = 10000" in row["error"]
