"""Checkpoints, the report page and storage files are replaced whole or not at all.

A failure in the middle of a write is a real one: the writer runs in a child process under a
file-size limit (RLIMIT_FSIZE), so the kernel refuses the write past it with EFBIG, as a full disk
would. The previous file must survive intact, with no temporary file left beside it.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from pipeline.data import shards as sh
from pipeline.datasets import CLASSES_7
from pipeline.model import build_model, load_checkpoint, save_checkpoint
from pipeline.report_page import face_grid_png
from pipeline.storage import Storage
from tests.micro import micro_model

REPO = Path(__file__).resolve().parents[1]
MICRO = micro_model(num_frames=4, temporal_head_dim=16, temporal_mlp_dim=32, n_ctx=2, text_source="class_names")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")


def run_with_file_size_limit(limit: int, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter whose files may not grow past ``limit`` bytes."""
    code = "import errno, resource, signal\n"
    code += "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG as an OSError, not a kill\n"
    code += f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
    code += textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return build_model(MICRO, list(CLASSES_7)), build_model(MICRO, list(CLASSES_7))


def test_a_failed_checkpoint_save_keeps_the_previous_one(models, tmp_path):
    path = save_checkpoint(models[0], tmp_path / "model.pt", {"epoch": 1})
    before = path.read_bytes()
    result = run_with_file_size_limit(
        len(before) // 2,
        f"""
        from pipeline.config import ModelConfig
        from pipeline.datasets import CLASSES_7
        from pipeline.model import build_model, save_checkpoint
        model = build_model(ModelConfig(**{dataclasses.asdict(MICRO)!r}), list(CLASSES_7))
        try:
            save_checkpoint(model, {str(path)!r}, {{"epoch": 2}})
        except (OSError, RuntimeError):  # torch.save reports the refused write as a RuntimeError
            print("refused")
        """,
    )
    assert result.stdout.strip() == "refused", result.stdout[-2000:] + result.stderr[-2000:]
    assert path.read_bytes() == before and load_checkpoint(path)[1] == {"epoch": 1}
    assert leftovers(tmp_path) == []


def test_checkpoint_writers_never_share_a_temporary_file(models, tmp_path):
    path = tmp_path / "model.pt"
    # Another writer's file in progress, under the name a fixed-name scheme would pick.
    theirs = tmp_path / ".model.pt.tmp"
    theirs.write_bytes(b"another writer, half way")
    save_checkpoint(models[0], path, {"writer": 0})
    assert theirs.read_bytes() == b"another writer, half way"
    theirs.unlink()

    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for _ in range(8):
                save_checkpoint(models[i], path, {"writer": i})
        except BaseException as exc:  # noqa: BLE001 — reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert load_checkpoint(path)[1]["writer"] in (0, 1)
    assert leftovers(tmp_path) == []


def test_a_failed_storage_write_keeps_the_previous_file(tmp_path):
    storage = Storage(tmp_path)
    storage.write_bytes(b"old contents\n", "runs", "summary.json")
    result = run_with_file_size_limit(
        4096,
        f"""
        from pipeline.storage import Storage
        try:
            Storage({str(tmp_path)!r}).write_bytes(b"x" * 100_000, "runs", "summary.json")
        except OSError as exc:
            print("EFBIG" if exc.errno == errno.EFBIG else exc)
        """,
    )
    assert result.stdout.strip() == "EFBIG", result.stderr[-2000:]
    assert (tmp_path / "runs" / "summary.json").read_bytes() == b"old contents\n"
    assert leftovers(tmp_path / "runs") == []


def _report_inputs(tmp_path: Path) -> dict:
    storage = Storage(tmp_path / "root")
    rel = sh.shard_dir(storage, "dfew")
    rng = np.random.default_rng(0)
    frames = [cv2.imencode(".jpg", rng.integers(0, 255, (32, 32, 3), np.uint8))[1].tobytes() for _ in range(6)]
    row = {
        "clip_id": "c1",
        "dataset": "dfew",
        "label": 0,
        "label_name": "happiness",
        "splits": ["1:test"],
        "num_frames": 6,
        "frames": frames,
        "boxes": [[0.0, 0.0, 32.0, 32.0]] * 6,
        "face_fallback": False,
        "source_path": "/videos/c1.mp4",
        "fps": 25.0,
    }
    name, _ = sh.write_shard(storage, rel, [row], "h")
    descriptions = tmp_path / "set.yaml"
    # Long enough that the page is far larger than the faces image written before it.
    many = [f"description number {i} of the raised cheeks and the pulled lip corners" for i in range(3000)]
    descriptions.write_text(yaml.safe_dump({"name": "big", "classes": [{"name": "happiness", "descriptions": many}]}))
    (tmp_path / "train").mkdir()
    (tmp_path / "eval").mkdir()
    return {
        "title": "report",
        "manifest": {"counts": {"clips": 1}, "shards": [name]},
        "description_set": str(descriptions),
        "train_dir": str(tmp_path / "train"),
        "evaluation": {"class_names": ["happiness"], "output_dir": str(tmp_path / "eval"), "uar": 0.5},
        "shard_files": [storage.path(rel, name)],
        "timings": {"train": 1.0},
    }


def test_a_failed_report_rewrite_keeps_the_previous_page(tmp_path):
    inputs = _report_inputs(tmp_path)
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.html").write_text("<html>the previous report</html>")
    faces = len(face_grid_png(inputs["shard_files"], ["happiness"]))
    # The faces image fits under the limit, the page (hundreds of KB) does not.
    result = run_with_file_size_limit(
        faces + 4096,
        f"""
        import json
        from pipeline.report_page import write_report
        try:
            write_report({str(out)!r}, **json.loads({json.dumps(inputs)!r}))
        except OSError as exc:
            print("EFBIG" if exc.errno == errno.EFBIG else exc)
        """,
    )
    assert result.stdout.strip() == "EFBIG", result.stderr[-2000:]
    assert (out / "report.html").read_text() == "<html>the previous report</html>"
    assert leftovers(out) == []

    # Without the limit the page is written whole.
    from pipeline.report_page import write_report

    page = write_report(out, **inputs)
    assert page == out / "report.html" and page.read_text().rstrip().endswith("</html>")
    assert "description number 2999" in page.read_text()
