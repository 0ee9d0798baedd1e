"""dferclip serve: a real Ray Serve app on 127.0.0.1, hit with a real HTTP client (requests).

One app for the module (starting Serve and its replicas is the expensive part), with small
limits so each 4xx and the overload are reached with tiny generated clips.
"""

from __future__ import annotations

import base64
import json
import re
import threading

import cv2
import numpy as np
import pytest
import requests
import torch

from pipeline.datasets import CLASSES_7
from pipeline.model import build_model, save_checkpoint
from pipeline.predict import predict_paths
from pipeline.predict_output import json_row
from pipeline.synth import render_clip, write_video
from tests.conftest import free_port
from tests.micro import micro_model

pytestmark = pytest.mark.slow  # Serve and two replicas start once: ~20-50 s on 2 busy cores

LIMITS = [
    "serve.max_upload_mb=0.25",
    "serve.max_video_seconds=2",
    "serve.max_video_frames=30",
    "serve.request_timeout_s=60",
    "serve.max_ongoing_requests=2",
    "serve.max_queued_requests=2",
    "serve.cpus_per_decoder=0.5",
    "serve.cpus_per_model=0.5",
    "serve.max_batch_size=4",
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    write_video(
        root / "smile.mp4", render_clip("happiness", np.random.default_rng(1), num_frames=12, size=(160, 128)), 12
    )
    # 3 s at 12 fps: over serve.max_video_seconds = 2.
    write_video(root / "long.mp4", render_clip("sadness", np.random.default_rng(2), num_frames=36, size=(96, 80)), 12)
    frames = root / "frames"
    frames.mkdir()
    for t, rgb in enumerate(render_clip("anger", np.random.default_rng(4), num_frames=8, size=(160, 128))):
        cv2.imwrite(str(frames / f"{t:02d}.jpg"), rgb[:, :, ::-1])
    return root


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    from ray import serve

    from pipeline.serve.app import settings_from, start

    torch.manual_seed(0)
    model = build_model(micro_model(num_frames=4, n_ctx=2, text_source="class_names"), list(CLASSES_7))
    ckpt = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model.pt")
    settings = settings_from(str(ckpt), None, None, [f"serve.port={free_port()}", *LIMITS], "cpu")
    url = start(settings)
    try:
        yield url, ckpt
    finally:
        serve.shutdown()


def _same(answer: dict, expected: dict) -> None:
    """Equal JSON but for float rounding (the replica's torch runs with its own thread count)."""
    assert answer.keys() == expected.keys()
    for key, value in expected.items():
        if key == "probabilities":
            assert answer[key].keys() == value.keys()
            assert answer[key] == pytest.approx(value, abs=1e-5)
        elif key == "probability":
            assert answer[key] == pytest.approx(value, abs=1e-5)
        elif key == "top":
            assert [r["label"] for r in answer[key]] == [r["label"] for r in value]
        else:
            assert answer[key] == value, key


def test_health(server):
    url, _ = server
    r = requests.get(f"{url}/healthz", timeout=30)
    assert r.status_code == 200
    assert r.json()["classes"] == list(CLASSES_7) and r.json()["num_frames"] == 4


def test_a_video_answers_predicts_json_raw_and_multipart(server, clips):
    url, ckpt = server
    (expected,) = predict_paths(ckpt, [clips / "smile.mp4"], device="cpu")
    want = json.loads(json_row(expected, 3))
    want["path"] = "smile.mp4"
    data = (clips / "smile.mp4").read_bytes()
    raw = requests.post(f"{url}/predict", params={"name": "smile.mp4", "top": 3}, data=data, timeout=60)
    assert raw.status_code == 200, raw.text
    _same(raw.json(), want)
    form = requests.post(f"{url}/predict?top=3", files={"video": ("smile.mp4", data, "video/mp4")}, timeout=60)
    assert form.status_code == 200, form.text
    _same(form.json(), want)


def test_json_frames_answer_as_predict_on_the_frame_folder(server, clips):
    url, ckpt = server
    (expected,) = predict_paths(ckpt, [clips / "frames"], device="cpu")
    want = json.loads(json_row(expected, None)) | {"path": "anger-frames"}
    frames = [base64.b64encode(p.read_bytes()).decode() for p in sorted((clips / "frames").iterdir())]
    r = requests.post(f"{url}/predict", json={"frames": frames, "name": "anger-frames"}, timeout=60)
    assert r.status_code == 200, r.text
    _same(r.json(), want)
    assert r.json()["frames"] == 8


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"data": b""}, 400, "empty body"),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
        ({"json": {"frames": []}}, 400, "frames: must be a non-empty list"),
        ({"json": {"frames": ["QUJD", "@@@"]}}, 400, r"frames\[1\]: not valid base64"),
        ({"json": {"frames": ["QUJD"] * 31}}, 413, "31 frames, over serve.max_video_frames = 30"),
        ({"json": {"video": "x"}}, 400, "must be an object"),
        ({"data": b"x" * 300_000}, 413, r"over serve.max_upload_mb = 0.25"),
        ({"params": {"top": "0"}, "data": b"abc"}, 400, "top: must be a whole number >= 1"),
        (
            {
                "data": b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--",
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
            400,
            "no file part",
        ),
    ],
)
def test_bad_requests_get_4xx_naming_what_is_wrong(server, kwargs, status, message):
    url, _ = server
    r = requests.post(f"{url}/predict", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert re.search(message, r.json()["error"]), r.json()


def test_undecodable_and_too_long_videos_get_predicts_error_row(server, clips):
    url, _ = server
    r = requests.post(f"{url}/predict?name=bad.mp4", data=b"\x00\x00\x00\x18ftypmp42 not a video" * 20, timeout=60)
    assert r.status_code == 422
    body = r.json()
    assert body["ok"] is False and body["path"] == "bad.mp4" and body["label"] is None
    assert body["error"].startswith("not a readable video")
    r = requests.post(f"{url}/predict?name=long.mp4", data=(clips / "long.mp4").read_bytes(), timeout=60)
    assert r.status_code == 413, r.text
    assert "long.mp4: longer than 2 s" in r.json()["error"] and "serve.max_video_seconds = 2" in r.json()["error"]


def test_routes_and_methods(server):
    url, _ = server
    assert requests.get(f"{url}/predict", timeout=30).status_code == 405
    r = requests.get(f"{url}/nowhere", timeout=30)
    assert r.status_code == 404 and "POST /predict" in r.json()["error"]


def test_overload_is_503_not_an_unbounded_queue(server, clips):
    # 2 in progress + 2 queued at the ingress: of 24 simultaneous uploads some must be turned
    # away at once with 503, the others answered; afterwards the service is healthy.
    url, _ = server
    data = (clips / "smile.mp4").read_bytes()
    codes: list[int] = []
    barrier = threading.Barrier(24)

    def client():
        barrier.wait()
        codes.append(requests.post(f"{url}/predict", data=data, timeout=120).status_code)

    threads = [threading.Thread(target=client) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 4, codes
    assert requests.post(f"{url}/predict", data=data, timeout=60).status_code == 200


def test_a_hundred_malformed_requests_leave_it_healthy(server, clips):
    url, ckpt = server
    bad = [
        {"data": b"garbage" * 10},
        {"json": {"frames": "nope"}},
        {"data": b"\xff\xd8\xff", "headers": {"Content-Type": "application/json"}},
        {"json": {"frames": [base64.b64encode(b"not an image").decode()]}},
        {"data": b"--z\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=z"}},
    ]
    statuses = [requests.post(f"{url}/predict", timeout=60, **bad[i % len(bad)]).status_code for i in range(100)]
    assert all(400 <= s < 500 for s in statuses), statuses
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
    (expected,) = predict_paths(ckpt, [clips / "smile.mp4"], device="cpu")
    r = requests.post(f"{url}/predict?name=smile.mp4", data=(clips / "smile.mp4").read_bytes(), timeout=60)
    assert r.status_code == 200
    _same(r.json(), json.loads(json_row(expected, None)) | {"path": "smile.mp4"})
