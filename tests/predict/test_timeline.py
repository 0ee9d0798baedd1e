"""Long videos as timelines: windows and time spans by hand, face tracks on a two-face video,
window probabilities against predict on the window's own frames, the aggregates, predict's JSON."""

from __future__ import annotations

import io
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from pipeline.config import TimelineConfig
from pipeline.data.tracks import link_tracks
from pipeline.datasets import CLASSES_7
from pipeline.model import build_model, save_checkpoint
from pipeline.predict import predict_paths
from pipeline.predict_output import predict_command
from pipeline.synth import render_clip, write_video
from pipeline.timeline import aggregate, windows
from tests.micro import micro_model

FPS = 12
N = 60  # frames: 5 s at 12 fps


def two_faces(num_frames: int = N) -> tuple[list[np.ndarray], list, list]:
    """Two people side by side (each a synth clip, 160x128), with their true face boxes."""
    left, lbox = render_clip(
        "happiness", np.random.default_rng(1), num_frames=num_frames, size=(160, 128), return_boxes=True
    )
    right, rbox = render_clip(
        "sadness", np.random.default_rng(2), num_frames=num_frames, size=(160, 128), return_boxes=True
    )
    rbox = [(x0 + 160, y0, x1 + 160, y1) for x0, y0, x1, y1 in rbox]
    return [np.concatenate([a, b], axis=1) for a, b in zip(left, right)], lbox, rbox


@pytest.fixture(scope="module")
def model_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(micro_model(text_source="class_names", logit_scale=100.0), list(CLASSES_7))
    with torch.no_grad():  # spread the probabilities out (as test_predict does)
        for p in model.temporal.parameters():
            p.mul_(0.2)
    return model, save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("timeline")
    frames, lbox, rbox = two_faces()
    write_video(root / "two.mp4", frames, FPS)
    folder = root / "frames"
    folder.mkdir()
    for t, rgb in enumerate(frames):
        cv2.imwrite(str(folder / f"{t}.png"), rgb[:, :, ::-1])
    return {"root": root, "video": root / "two.mp4", "folder": folder, "lbox": lbox, "rbox": rbox}


def test_windows_by_hand():
    # W = 2 s * 12 = 24 frames, S = 1 s * 12 = 12: starts 0, 12, 24, 36 (36 + 24 = 60 fits exactly).
    assert windows(60, 12.0, 2.0, 1.0) == [(0, 24), (12, 36), (24, 48), (36, 60)]
    # 65 frames: the stride leaves frames 60..64, so one more window ends at the last frame.
    assert windows(65, 12.0, 2.0, 1.0) == [(0, 24), (12, 36), (24, 48), (36, 60), (41, 65)]
    # At most one window long: the whole video is the one window (an ordinary clip).
    assert windows(24, 12.0, 2.0, 1.0) == [(0, 24)] and windows(5, 12.0, 2.0, 1.0) == [(0, 5)]
    # 25 fps, 1.5 s windows every 0.5 s: W = round(37.5) = 38 (banker's rounding), S = round(12.5) = 12.
    assert windows(62, 25.0, 1.5, 0.5) == [(0, 38), (12, 50), (24, 62)]


def test_link_tracks_by_hand():
    a0, b0 = np.array([10, 10, 50, 50.0]), np.array([200, 10, 240, 50.0])
    det = [
        (0, np.array([b0, a0])),  # listed right first: tracks are still made left to right
        (5, np.array([a0 + [30, 0, 30, 0], b0 + [2, 0, 2, 0]])),  # a jumps 30 px, b moves 2 px
        (10, np.array([a0 + [40, 0, 40, 0], b0, [120, 120, 130, 130.0]])),  # + a one-off false detection
        (40, np.array([b0])),  # b back after a gap of 5 detection steps: a new track
    ]
    tracks = link_tracks(det, max_tracks=5, max_gap=2, detect_every=5)
    spans = sorted((tr.first, tr.last, len(tr.detections)) for tr in tracks)
    # a: 0 (x 10..50), then at 5 its centre moved 30 px > 0.5 * 40 and IoU 10/70 < 0.3: a new track
    # from 5, which at 10 (moved 10 px, IoU 30/50) continues. b: 0, 5, 10; its box at 40 is a new track.
    assert spans == [(0, 0, 1), (0, 10, 3), (5, 10, 2), (10, 10, 1), (40, 40, 1)]
    # Ranked by detections (then area, then first frame): b, the moved a, then a, b's return, the false one.
    assert [(t.first, len(t.detections)) for t in tracks] == [(0, 3), (5, 2), (0, 1), (40, 1), (10, 1)]
    assert [t.id for t in tracks] == [0, 1, 2, 3, 4]
    assert tracks[0].box_at(2).tolist() == pytest.approx([200.8, 10, 240.8, 50])  # interpolated 0 -> 5
    assert len(link_tracks(det, max_tracks=2, max_gap=2, detect_every=5)) == 2


def test_aggregates_by_hand():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55]])
    k, p = aggregate(probs, "mean")
    assert k == 0 and p.tolist() == pytest.approx([1.75 / 3, 1.25 / 3])
    k, p = aggregate(probs, "majority")  # window labels 0, 1, 1
    assert k == 1 and p.tolist() == pytest.approx([1.75 / 3, 1.25 / 3])
    k, p = aggregate(probs, "max")  # the 0.9 window
    assert k == 0 and p.tolist() == [0.9, 0.1]
    k, _ = aggregate(np.array([[0.7, 0.3], [0.4, 0.6]]), "majority")  # a 1:1 tie: the higher mean (0.55)
    assert k == 0
    with pytest.raises(ValueError, match="unknown aggregate 'median'"):
        aggregate(probs, "median")


def test_two_faces_are_two_tracks_with_hand_derived_windows(model_ckpt, media):
    model, ckpt = model_ckpt
    cfg = TimelineConfig(mode="on", window_s=2.0, stride_s=1.0, max_tracks=3, aggregate="mean")
    (pred,) = predict_paths(ckpt, [media["video"]], crop_size=48, detect_every=4, timeline=cfg)
    tl = pred.timeline
    assert pred.ok and tl["fps"] == FPS and tl["frames"] == N and tl["seconds"] == pytest.approx(5.0)
    assert len(tl["tracks"]) == 2 and not pred.face_fallback
    for tr in tl["tracks"]:
        # The detector runs on frames 0, 4, ..., 56 and the last (59): 16 detections, both faces each time.
        assert (tr["first_frame"], tr["last_frame"], tr["detections"]) == (0, N - 1, 16)
        assert [(w["start_frame"], w["end_frame"]) for w in tr["windows"]] == [(0, 24), (12, 36), (24, 48), (36, 60)]
        assert [(w["start_s"], w["end_s"]) for w in tr["windows"]] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0)]
        mean = np.mean([[w["probabilities"][c] for c in CLASSES_7] for w in tr["windows"]], axis=0)
        assert [tr["probabilities"][c] for c in CLASSES_7] == pytest.approx(mean.tolist())
    # The video's label is its track 0's aggregate.
    assert (pred.label, pred.probability) == (tl["tracks"][0]["label"], pytest.approx(tl["tracks"][0]["probability"]))


def test_tracks_follow_each_face(model_ckpt, media):
    """Each track's boxes stay on one person: inside that person's true face box, every frame."""
    from pipeline.config import PreprocessConfig
    from pipeline.data.faces import build_detector
    from pipeline.data.tracks import scan_tracks
    from pipeline.data.video import open_frames

    scan = scan_tracks(open_frames(media["video"]).frames, build_detector("haar"), detect_every=4, max_tracks=3)
    assert len(scan.tracks) == 2 and PreprocessConfig().detector == "haar"
    sides = set()
    for tr in scan.tracks:
        side = "left" if tr.box_at(0)[0] < 160 else "right"
        sides.add(side)
        truth = media["lbox"] if side == "left" else media["rbox"]
        for t in range(N):
            cx, cy = (tr.box_at(t)[0] + tr.box_at(t)[2]) / 2, (tr.box_at(t)[1] + tr.box_at(t)[3]) / 2
            x0, y0, x1, y1 = truth[t]
            assert x0 < cx < x1 and y0 < cy < y1, (side, t)
    assert sides == {"left", "right"}


def test_window_probabilities_equal_predict_on_the_windows_own_frames(model_ckpt, media, tmp_path):
    """detector none (the frame is the face): window (12, 36) of a frame folder scores exactly as
    a folder holding only frames 12..35 does in plain predict."""
    model, ckpt = model_ckpt
    cut = tmp_path / "cut"
    cut.mkdir()
    for t in range(12, 36):
        shutil.copy(media["folder"] / f"{t}.png", cut / f"{t}.png")
    cfg = TimelineConfig(mode="on", window_s=2.0, stride_s=1.0, folder_fps=12.0)
    (pred,) = predict_paths(ckpt, [media["folder"]], detector="none", crop_size=48, timeline=cfg)
    (plain,) = predict_paths(ckpt, [cut], detector="none", crop_size=48)
    (track,) = pred.timeline["tracks"]
    window = track["windows"][1]
    assert (window["start_frame"], window["end_frame"], window["start_s"], window["end_s"]) == (12, 36, 1.0, 3.0)
    np.testing.assert_allclose(
        [window["probabilities"][c] for c in CLASSES_7], [plain.probabilities[c] for c in CLASSES_7], atol=5e-5
    )


def test_auto_mode_and_predicts_json_fields(model_ckpt, media, tmp_path):
    _, ckpt = model_ckpt
    out = io.StringIO()
    short = TimelineConfig(mode="auto", auto_after_s=6.0)  # the 5 s video is not long: one label, as before
    assert predict_command(str(ckpt), [str(media["video"])], json_lines=True, timeline=short, out=out) == 0
    row = json.loads(out.getvalue())
    assert list(row) == ["path", "ok", "label", "probability", "probabilities", "face_fallback", "frames", "error"]
    out = io.StringIO()
    long = TimelineConfig(mode="auto", auto_after_s=4.0, max_tracks=1)
    code = predict_command(
        str(ckpt), [str(media["video"])], json_lines=True, timeline=long, timeline_png=str(tmp_path / "png"), out=out
    )
    row = json.loads(out.getvalue())
    assert code == 0 and list(row)[:8] == [
        "path",
        "ok",
        "label",
        "probability",
        "probabilities",
        "face_fallback",
        "frames",
        "error",
    ]
    assert len(row["timeline"]["tracks"]) == 1 and row["timeline"]["aggregate"] == "mean"
    png = row["timeline"]["png"]
    assert png.startswith(str(tmp_path / "png" / "two-")) and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
