"""A shortened `dferclip demo` end to end, then `predict` with the checkpoint it trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.predict import predict_paths
from pipeline.synth import generate_dataset
from stages import demo

SHORT = [
    "model.clip_model=dferclip-micro", "model.num_frames=8", "model.temporal_heads=2", "model.temporal_head_dim=32",
    "model.temporal_mlp_dim=128", "preprocess.crop_size=48", "preprocess.num_workers=1",
    "train.epochs=2", "train.batch_size=8", "train.milestones=[1]",
]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_short_demo_writes_report_and_its_checkpoint_predicts_fresh_videos(ray_local, tmp_path):
    root = tmp_path / "demo"
    cfg = load_config(demo.DEFAULT_CONFIG, [f"storage.root={root}", f"dataset.root={root / 'data'}",
                                            f"dataset.annotations={root / 'data' / 'labels.csv'}", *SHORT])
    result = demo.main(cfg, clips_per_class=3, seed=0)

    report = Path(result["report"])
    page = report.read_text()
    for png in ("faces.png", "curves.png", "confusion.png"):
        assert (report.parent / png).stat().st_size > 1000 and f'src="{png}"' in page
    for cls in ("happiness", "disgust", "fear"):
        assert cls in page  # per-class recall and descriptions
    assert "Time per stage" in page and "preprocess" in page and "train" in page
    assert 0.0 <= result["uar"] <= 1.0 and 0.0 <= result["war"] <= 1.0
    assert json.loads((report.parent / "demo.json").read_text())["checkpoint"] == result["checkpoint"]

    # Fresh clips of known classes (another seed) through predict, with the demo's crop settings.
    labels = generate_dataset(tmp_path / "fresh", 1, seed=123, num_frames=12)
    rows = [line.split(",") for line in labels.read_text().splitlines()[1:]]
    videos = [str(labels.parent / r[0]) for r in rows]
    preds = predict_paths(result["checkpoint"], videos, detector="haar", crop_size=48)
    assert [p.path for p in preds] == videos and all(p.ok for p in preds)
    for p in preds:
        assert set(p.probabilities) == set(cfg.dataset.class_names)
        assert abs(sum(p.probabilities.values()) - 1.0) < 1e-4
        assert p.label == max(p.probabilities, key=p.probabilities.get)
