"""The body checks of POST /predict (pipeline.serve.requests) and the serve config section, without Ray."""

from __future__ import annotations

import base64

import pytest

from pipeline.config import load_config
from pipeline.serve.requests import BadRequest, materialise, parse_upload, safe_name
from pipeline.typed import ConfigError


def _form(boundary: str, *parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for field, filename, data in parts:
        disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_a_raw_body_is_the_video_named_by_the_query():
    up = parse_upload("video/mp4", b"\x00\x01video", "dir/clip 1.mp4", 10)
    assert (up.name, up.video, up.frames) == ("clip 1.mp4", b"\x00\x01video", None)
    assert parse_upload(None, b"abc", None, 10).name == "upload"


def test_multipart_takes_the_video_field_byte_exact():
    # Bytes that look like delimiters and CRLFs inside the file must survive.
    payload = b"\r\n--x\r\n\x00\xff" * 3 + b"end\r\n"
    body = _form("XyZ", ("note", None, b"hello"), ("other", "a.txt", b"aaa"), ("video", "../c.mp4", payload))
    up = parse_upload('multipart/form-data; boundary="XyZ"', body, None, 10)
    assert up.name == "c.mp4" and up.video == payload
    # Without a "video" field, the first file.
    up = parse_upload("multipart/form-data; boundary=XyZ", _form("XyZ", ("f", "b.avi", b"BBB")), None, 10)
    assert (up.name, up.video) == ("b.avi", b"BBB")


@pytest.mark.parametrize(
    ("ctype", "body", "status", "message"),
    [
        ("video/mp4", b"", 400, "empty body"),
        ("multipart/form-data", b"--a\r\n", 400, "without a boundary"),
        ("multipart/form-data; boundary=a", _form("a", ("x", None, b"1")), 400, "no file part"),
        ("multipart/form-data; boundary=a", _form("a", ("video", "v.mp4", b"")), 400, "video is empty"),
        ("multipart/form-data; boundary=a", b"--a\r\nno blank line", 400, "malformed multipart"),
        ("application/json", b"[1, 2]", 400, "must be an object"),
        ("application/json", b'{"frames": [1]}', 400, r"frames\[0\]: expected a base64 string, got int"),
        ("application/json", b'{"frames": ["", "QQ=="]}', 400, r"frames\[0\]: empty image"),
        ("application/json", b'{"frames": ["QQ=="], "name": 3}', 400, "name: expected a string"),
        ("application/json", b'{"frames": ["QQ==", "QQ==", "QQ=="]}', 413, "3 frames, over serve.max_video_frames = 2"),
    ],
)
def test_bad_bodies_name_what_is_wrong(ctype, body, status, message):
    with pytest.raises(BadRequest, match=message) as info:
        parse_upload(ctype, body, None, 2)
    assert info.value.status == status


def test_frames_become_a_frame_folder_in_order(tmp_path):
    images = [bytes([i]) * 5 for i in range(12)]
    up = parse_upload("application/json; charset=utf-8", _json(images, "x/y"), None, 20)
    assert up.name == "y"
    folder = materialise(up, tmp_path)
    assert [p.read_bytes() for p in sorted(folder.iterdir())] == images  # sorted by name = time order
    (tmp_path / "v").mkdir()
    video = materialise(parse_upload("video/mp4", b"VID", None, 20), tmp_path / "v")
    assert video.read_bytes() == b"VID"


def _json(images: list[bytes], name: str) -> bytes:
    import json

    return json.dumps({"frames": [base64.b64encode(i).decode() for i in images], "name": name}).encode()


def test_safe_name_keeps_only_a_printable_last_part():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\clips\\a<b>.mp4") == "a_b_.mp4"
    assert safe_name("") == safe_name(None) == "upload"


def test_the_serve_section_is_checked_like_the_others():
    cfg = load_config(None, ["serve.port=9000", "serve.max_video_seconds=5"])
    assert (cfg.serve.port, cfg.serve.max_video_seconds) == (9000, 5.0)
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            [
                "serve.port=70000",
                "serve.max_queued_requests=0",
                "serve.max_upload_mb=0",
                "serve.max_batch_size=0",
                "serve.host=' '",
            ],
        )
    assert info.value.problems == [
        "serve.host: must not be empty (127.0.0.1, 0.0.0.0, a host name)",
        "serve.port: must be in 1..65535, got 70000",
        "serve.max_upload_mb: must be > 0, got 0.0",
        "serve.max_queued_requests: must be >= 1 (a bounded queue), got 0",
        "serve.max_batch_size: must be in 1..256, got 0",
    ]
