"""Fixtures for the train stage: generated frame folders -> real preprocess (detector none) ->
shards of a 2-fold "dfew" subset, and a tiny experiment config writer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

CLASSES = ["happiness", "sadness", "anger"]
CLIPS_PER_CLASS = 8
FRAME_SIZE = 40  # stored crop; the micro model reads 32 px

# Tiny but learnable: class-coloured frames with a class-dependent brightness ramp, plus noise.
_PALETTE = np.array([[40, 200, 230], [200, 90, 40], [60, 50, 210]], np.float32)  # BGR per class


def clip_frames(label: int, n: int, rng: np.random.Generator, size: int = FRAME_SIZE) -> list[np.ndarray]:
    frames = []
    for t in range(n):
        ramp = (t / max(1, n - 1) - 0.5) * 30.0 * (label - 1)
        img = _PALETTE[label] + ramp + rng.normal(0, 25, (size, size, 3))
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def write_clip_folders(root: Path, seed: int = 0) -> list[dict]:
    """Frame folders of CLIPS_PER_CLASS clips per class; even clips train in fold 1, odd in fold 2."""
    rng = np.random.default_rng(seed)
    records = []
    for label, name in enumerate(CLASSES):
        for k in range(CLIPS_PER_CLASS):
            n = int(rng.choice([8, 12, 16, 20]))  # 8 and 12 < T = 16: the padding path
            folder = root / f"{name}_{k:02d}"
            folder.mkdir(parents=True)
            for t, img in enumerate(clip_frames(label, n, rng)):
                cv2.imwrite(str(folder / f"{t + 1:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            splits = ["1:train", "2:test"] if k % 2 == 0 else ["1:test", "2:train"]
            records.append({"path": str(folder), "label": name, "splits": splits, "clip_id": f"{name}_{k:02d}"})
    return records


@pytest.fixture(scope="session")
def train_store(tmp_path_factory, ray_local) -> Path:
    """A storage root holding shards/dfew/ made by the real preprocess stage."""
    from pipeline.config import DatasetConfig, PreprocessConfig
    from pipeline.preprocess import run_preprocess

    base = tmp_path_factory.mktemp("train_store")
    records = write_clip_folders(base / "frames")
    root = base / "store"
    run_preprocess(
        str(root),
        DatasetConfig(name="dfew", classes=list(CLASSES)),
        PreprocessConfig(detector="none", crop_size=FRAME_SIZE, jpeg_quality=95, num_workers=1),
        clips=records,
        log=lambda _msg: None,
    )
    return root


def tiny_config(root: Path, path: Path, **train) -> Path:
    """Write an experiment YAML for the micro model on the generated shards."""
    cfg = {
        "name": "tiny",
        "storage": {"root": str(root)},
        "dataset": {"name": "dfew", "classes": list(CLASSES)},
        "model": {
            "clip_model": "dferclip-micro",
            "pretrained": None,
            "num_frames": 16,
            "temporal_heads": 2,
            "temporal_head_dim": 32,
            "temporal_mlp_dim": 128,
            "n_ctx": 4,
        },
        "train": {
            "fold": 1,
            "epochs": 2,
            "batch_size": 2,
            "eval_batch_size": 8,
            "num_workers": 2,
            "cpus_per_worker": 1,
            "lr_image_encoder": 1e-4,
            "lr_temporal": 1e-2,
            "lr_prompt": 1e-3,
            "milestones": [30, 40],
            "data_loader_threads": 1,
            **train,
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path
