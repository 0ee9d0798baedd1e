"""Fixtures for the tune stage: a small generated shard folder and a tiny sweep config."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.data.schema import SCHEMA_VERSION
from pipeline.data.shards import shard_counts, shard_dir, write_manifest, write_shard
from pipeline.datasets import CLASSES_7
from pipeline.storage import Storage

EXAMPLE_CONFIG = Path(__file__).parent / "sweep_example.yaml"


def _clip_frames(label: int, num_frames: int, rng: np.random.Generator, size: int = 32) -> list[bytes]:
    """A clip whose colour and brightness ramp depend on the class, plus noise: learnable, not trivial."""
    hue = np.array([(37 * label) % 256, (91 * label + 40) % 256, (151 * label + 80) % 256], np.float32)
    out = []
    for t in range(num_frames):
        img = hue + (t / max(1, num_frames - 1)) * (20.0 * (label - 3)) + rng.normal(0, 40, (size, size, 3))
        ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append(buf.tobytes())
    return out


def make_shards(root: Path, dataset: str = "demo", clips_per_class: int = 4, seed: int = 0) -> Storage:
    """Write real Parquet shards (two parts) of generated clips with the shard writer."""
    storage = Storage(root)
    rel = shard_dir(storage, dataset)
    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(CLASSES_7):
        for k in range(clips_per_class):
            n = int(rng.integers(6, 24))  # some clips shorter than 16 frames: padding path
            split = "1:test" if k == clips_per_class - 1 else "1:train"
            rows.append(
                {
                    "clip_id": f"{name}-{k:02d}",
                    "dataset": dataset,
                    "label": label,
                    "label_name": name,
                    "splits": [split],
                    "num_frames": n,
                    "frames": _clip_frames(label, n, rng),
                    "boxes": [[0.0, 0.0, 32.0, 32.0]] * n,
                    "face_fallback": False,
                    "source_path": f"/generated/{name}-{k:02d}",
                    "fps": 25.0,
                }
            )
    half = len(rows) // 2
    write_shard(storage, rel, rows[:half], "test")
    write_shard(storage, rel, rows[half:], "test")
    write_manifest(
        storage,
        rel,
        {
            "schema_version": SCHEMA_VERSION,
            "dataset": dataset,
            "classes": list(CLASSES_7),
            "counts": shard_counts(storage, rel),
        },
    )
    return storage


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune_store")
    make_shards(root)
    return root
