"""dferclip serve --onnx over real HTTP, and the request time limit.

One app for the module: the ONNX export of a micro checkpoint on onnxruntime, with a
``serve.request_timeout_s`` short enough to wait for, reached by an upload that stalls (a real
clip's answer must stay well inside it on loaded cores, once the replicas are warm).
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import torch

from pipeline.datasets import CLASSES_7
from pipeline.export import export_onnx
from pipeline.model import build_model, save_checkpoint
from pipeline.predict import predict_paths
from pipeline.predict_output import json_row
from pipeline.synth import render_clip, write_video
from tests.conftest import free_port
from tests.micro import micro_model

pytestmark = pytest.mark.slow  # Serve and two replicas start once: ~15-40 s on 2 busy cores

TIMEOUT_S = 10


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    from ray import serve

    from pipeline.serve.app import settings_from, start

    tmp = tmp_path_factory.mktemp("onnx-serve")
    torch.manual_seed(3)
    model = build_model(micro_model(num_frames=4, n_ctx=2, text_source="class_names"), list(CLASSES_7))
    ckpt = save_checkpoint(model, tmp / "model.pt")
    onnx = export_onnx(ckpt, tmp / "model.onnx").path
    write_video(
        tmp / "smile.mp4", render_clip("happiness", np.random.default_rng(7), num_frames=12, size=(160, 128)), 12
    )
    limits = [
        f"serve.port={free_port()}",
        f"serve.request_timeout_s={TIMEOUT_S}",
        "serve.cpus_per_decoder=0.5",
        "serve.cpus_per_model=0.5",
    ]
    url = start(settings_from(None, str(onnx), None, limits, "cpu"))
    try:
        # A replica's first request pays its first forward pass and handle set-up; on busy
        # cores that alone can take seconds. Warm up before the limit is what is tested.
        for _ in range(3):
            r = requests.post(f"{url}/predict", data=(tmp / "smile.mp4").read_bytes(), timeout=60)
            if r.status_code == 200:
                break
        yield url, ckpt, tmp / "smile.mp4"
    finally:
        serve.shutdown()


def test_onnx_answers_the_pytorch_backends_json(server):
    url, ckpt, clip = server
    health = requests.get(f"{url}/healthz", timeout=30).json()
    assert health["backend"] == "onnx" and health["model"] == "model.onnx"
    # predict on the checkpoint (PyTorch, in this process) is the reference answer.
    (expected,) = predict_paths(ckpt, [clip], device="cpu")
    want = json.loads(json_row(expected, 3)) | {"path": "smile.mp4"}
    r = requests.post(f"{url}/predict", params={"name": "smile.mp4", "top": 3}, data=clip.read_bytes(), timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got.keys() == want.keys()
    for key in ("path", "ok", "label", "face_fallback", "frames", "error"):
        assert got[key] == want[key], key
    assert got["probabilities"].keys() == want["probabilities"].keys()
    for name, p in want["probabilities"].items():
        assert abs(got["probabilities"][name] - p) <= 1e-4, name
    assert abs(got["probability"] - want["probability"]) <= 1e-4
    assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
    assert max(want["probabilities"].values()) - min(want["probabilities"].values()) > 1e-3  # not uniform


def _stalled_upload(url: str, sent: bytes, declared: int) -> tuple[int, dict, float]:
    """POST ``sent``, the first bytes of a body declared ``declared`` bytes long, then stall; the
    status and JSON body of the answer, and the seconds it took."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    head = (
        f"POST /predict?name=slow.mp4 HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: video/mp4\r\n"
        f"Content-Length: {declared}\r\nConnection: close\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=TIMEOUT_S + 30) as sock:
        sock.sendall(head + sent)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    took = time.monotonic() - started
    status = int(answer.split(b" ", 2)[1])
    return status, json.loads(answer.partition(b"\r\n\r\n")[2]), took


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30  # read until the server closes


def test_a_request_over_the_time_limit_gets_504_and_the_service_stays_healthy(server):
    url, _, clip = server
    data = clip.read_bytes()
    status, body, took = _stalled_upload(url, data[:1000], len(data))
    assert status == 504, body
    assert body["error"] == f"no answer within serve.request_timeout_s = {TIMEOUT_S} s"
    assert TIMEOUT_S - 0.5 <= took < TIMEOUT_S + 5  # the app's limit answered, before Serve's own (+5 s)
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
    r = requests.post(f"{url}/predict", params={"name": "smile.mp4"}, data=data, timeout=60)
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
