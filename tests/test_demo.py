"""A shortened `dferclip demo` end to end; `dferclip evaluate` and a re-run of `dferclip demo` on its config;
then `predict` with the checkpoint it trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import dump_config, load_config
from pipeline.demo import DEFAULT_CONFIG, run_demo
from pipeline.model import load_checkpoint
from pipeline.predict import crop_options, predict_paths, recorded_preprocess
from pipeline.synth import generate_dataset
from stages import demo, evaluate

# The demo's model, crops and optimiser; fewer frames, clips and epochs.
SHORT = [
    "model.num_frames=8",
    "preprocess.num_workers=1",
    "train.epochs=2",
    "train.batch_size=8",
    "train.warmup_epochs=1",
]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_short_demo_writes_report_and_its_checkpoint_predicts_fresh_videos(ray_local, tmp_path):
    root = tmp_path / "demo"
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            f"storage.root={root}",
            f"dataset.root={root / 'data'}",
            f"dataset.annotations={root / 'data' / 'labels.csv'}",
            *SHORT,
        ],
    )
    result = run_demo(cfg, clips_per_class=3, seed=0)

    report = Path(result["report"])
    page = report.read_text()
    for png in ("faces.png", "curves.png", "confusion.png"):
        assert (report.parent / png).stat().st_size > 1000 and f'src="{png}"' in page
    for cls in ("happiness", "disgust", "fear"):
        assert cls in page  # per-class recall and descriptions
    assert "Time per stage" in page and "preprocess" in page and "train" in page
    assert 0.0 <= result["uar"] <= 1.0 and 0.0 <= result["war"] <= 1.0
    assert json.loads((report.parent / "demo.json").read_text())["checkpoint"] == result["checkpoint"]

    # The evaluate stage's entry on the demo's config and checkpoint: the demo's numbers again.
    config = tmp_path / "demo.yaml"
    config.write_text(dump_config(cfg))
    before = set((root / "evaluate").iterdir())
    assert evaluate.cli(["--config", str(config), "--checkpoint", result["checkpoint"], "--split", "test"]) == 0
    (written,) = set((root / "evaluate").iterdir()) - before
    metrics = json.loads((written / "metrics.json").read_text())
    assert metrics["uar"] == result["uar"] and metrics["war"] == result["war"]
    # The demo stage's entry again: the data and every pipeline stage are reused, only evaluate and the report run.
    assert demo.cli(["--config", str(config), "--clips-per-class", "3"]) == 0
    again = json.loads((report.parent / "demo.json").read_text())
    assert again["checkpoint"] == result["checkpoint"] and again["uar"] == result["uar"]
    assert set(again["timings"]) == {"evaluate", "report"}

    # Fresh clips of known classes (another seed) through predict, with the demo's crop settings.
    labels = generate_dataset(tmp_path / "fresh", 1, seed=123, num_frames=12)
    rows = [line.split(",") for line in labels.read_text().splitlines()[1:]]
    videos = [str(labels.parent / r[0]) for r in rows]
    # The checkpoint records how the shards were cropped, so predict crops new videos alike.
    _, extra = load_checkpoint(result["checkpoint"])
    assert crop_options(recorded_preprocess(extra)) == crop_options(cfg.preprocess)
    preds = predict_paths(result["checkpoint"], videos, **crop_options(cfg.preprocess))
    assert [p.path for p in preds] == videos and all(p.ok for p in preds)
    for p in preds:
        assert set(p.probabilities) == set(cfg.dataset.class_names)
        assert abs(sum(p.probabilities.values()) - 1.0) < 1e-4
        assert p.label == max(p.probabilities, key=p.probabilities.get)
