"""A shortened `dferclip demo` end to end, comparisons included (zero-shot text sources, the
random-init recipe, the worse description set, the frozen-encoder sweep); `dferclip evaluate`
and a re-run of `dferclip demo` on its config; then `predict` with the checkpoint it trained."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import pytest

from pipeline.config import dump_config, load_config
from pipeline.demo import DEFAULT_CONFIG, RANDOM_INIT_RECIPE, TARGET_UAR, Comparisons, run_demo
from pipeline.model import load_checkpoint
from pipeline.predict import crop_options, predict_paths, recorded_preprocess
from pipeline.synth import generate_dataset
from stages import demo, evaluate

# The demo's model, crops and optimiser; fewer frames, clips and epochs, and one Train worker
# instead of two for each of its three Train runs (DDP across workers: tests/train).
SHORT = [
    "model.num_frames=8",
    "preprocess.num_workers=1",
    "train.num_workers=1",
    "train.epochs=2",
    "train.batch_size=8",
    "train.warmup_epochs=1",
]
# The comparisons, as short: one epoch per comparison run, a two-trial sweep of one epoch.
COMPARE = Comparisons(
    random_init=(*RANDOM_INIT_RECIPE, "train.epochs=2", "train.warmup_epochs=1"),
    worse_set_overrides=(),
    sweep_overrides=(
        "model.num_frames=8",
        "train.epochs=1",
        "train.warmup_epochs=0",
        'tune.space={"model.n_ctx": [1, 8], "model.temporal_depth": [1]}',
        "tune.max_concurrent_trials=1",
    ),
)


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _uar_war(predictions: Path) -> tuple[float, float]:
    """UAR (mean per-class recall) and WAR (accuracy) recomputed from an evaluation's predictions.csv."""
    rows = _rows(predictions)
    recalls = []
    for label in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == label]
        recalls.append(sum(r["pred"] == label for r in mine) / len(mine))
    return sum(recalls) / len(recalls), sum(r["pred"] == r["label"] for r in rows) / len(rows)


def _first_epoch_at(metrics_csv: Path, column: str) -> int | None:
    for row in _rows(metrics_csv):
        if float(row[column]) >= TARGET_UAR:
            return int(row["epoch"])
    return None


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
    result = run_demo(cfg, clips_per_class=3, seed=0, comparisons=COMPARE)

    report = Path(result["report"])
    page = report.read_text()
    for png in ("faces.png", "curves.png", "confusion.png"):
        assert (report.parent / png).stat().st_size > 1000 and f'src="{png}"' in page
    for cls in ("happiness", "disgust", "fear"):
        assert cls in page  # per-class recall and descriptions
    assert "Time per stage" in page and "preprocess" in page and "train" in page
    assert json.loads((report.parent / "demo.json").read_text()) == json.loads(json.dumps(result))

    # The comparisons, each checked against what its own stage wrote.
    c = result["comparisons"]
    assert c["seed"] == cfg.train.seed and c["target_uar"] == TARGET_UAR
    zero = c["zero_shot"]
    assert list(zero) == ["descriptions", "class names", "an expression of <class>", "descriptions: shuffled-7"]
    assert [z["text_source"] for z in zero.values()] == ["descriptions", "class_names", "expression_of", "descriptions"]
    assert zero["descriptions"]["description_set"].startswith("default-7@")
    assert zero["descriptions: shuffled-7"]["description_set"].startswith("shuffled-7@")
    assert zero["class names"]["description_set"] is None
    for z in zero.values():
        metrics = json.loads((Path(z["output_dir"]) / "metrics.json").read_text())
        assert metrics["zero_shot"] and metrics["split"] == "test"
        assert (z["uar"], z["war"]) == pytest.approx(_uar_war(Path(z["output_dir"]) / "predictions.csv"))
    # The fine-tuned model: the demo's test numbers are its predictions', recomputed here.
    [evaluated] = [d for d in (root / "evaluate").iterdir() if d.name.startswith(cfg.name + "-fold")]
    assert (result["uar"], result["war"]) == pytest.approx(_uar_war(evaluated / "predictions.csv"))
    ft, ri = c["fine_tuned"], c["random_init"]
    assert ft["model"] == "dferclip-rn-micro + synth" and (ft["test_uar"], ft["test_war"]) == (
        result["uar"],
        result["war"],
    )
    for run, pretrained, epochs in ((ft, "synth", 2), (ri, None, 2)):
        run_cfg = load_config(Path(run["run_dir"]) / "config.yaml")
        assert run_cfg.model.pretrained == pretrained and run_cfg.train.seed == cfg.train.seed
        assert run["epochs"] == len(run["curve"]) == epochs and run["curve_split"] == "test"
        metrics_csv = Path(run["run_dir"]) / "metrics.csv"
        assert run["curve"] == [float(r["test_uar"]) for r in _rows(metrics_csv)]
        assert run["epochs_to_target"] == _first_epoch_at(metrics_csv, "test_uar")
    shipped, worse = c["description_sets"]
    assert shipped["set"] == zero["descriptions"]["description_set"] == ft["description_set"]
    assert worse["set"] == zero["descriptions: shuffled-7"]["description_set"]
    assert worse["zero_shot_uar"] == zero["descriptions: shuffled-7"]["uar"]
    assert shipped["run_dir"] == ft["run_dir"] and shipped["zero_shot_uar"] == zero["descriptions"]["uar"]
    worse_cfg = load_config(Path(worse["run_dir"]) / "config.yaml")
    assert worse_cfg.describe.description_set == "shuffled-7" and worse_cfg.model.pretrained == "synth"
    assert worse_cfg.train.seed == cfg.train.seed and worse_cfg.train.epochs == cfg.train.epochs
    assert worse["fine_tuned_uar"] == json.loads((Path(worse["run_dir"]) / "summary.json").read_text())["test"]["uar"]
    worse_csv = Path(worse["run_dir"]) / "metrics.csv"
    assert (
        worse["first_epoch_uar"] == float(_rows(worse_csv)[0]["test_uar"])
        and shipped["first_epoch_uar"] == ft["curve"][0]
    )
    assert worse["epochs_to_target"] == _first_epoch_at(worse_csv, "test_uar")
    s = c["sweep"]
    results = _rows(Path(s["sweep"]) / "results.csv")
    values = [float(r["best_value"]) for r in results]
    assert s["trials"] == len(results) == 2 and s["axes"] == ["model.n_ctx", "model.temporal_depth"]
    assert s["best"] == pytest.approx(max(values)) and s["spread"] == pytest.approx(max(values) - min(values))
    assert (report.parent / "heatmap.png").stat().st_size > 1000 and 'src="heatmap.png"' in page
    for text in (
        "Zero-shot",
        "an expression of &lt;class&gt;",
        "random init",
        worse["set"],
        f"{100 * result['uar']:.1f}",
    ):
        assert text in page, text
    assert html.escape(shipped["set"]) in page and result["cpu_seconds"] > 0

    # The evaluate stage's entry on the demo's config and checkpoint: the demo's numbers again.
    config = tmp_path / "demo.yaml"
    config.write_text(dump_config(cfg))
    before = set((root / "evaluate").iterdir())
    assert evaluate.cli(["--config", str(config), "--checkpoint", result["checkpoint"], "--split", "test"]) == 0
    (written,) = set((root / "evaluate").iterdir()) - before
    metrics = json.loads((written / "metrics.json").read_text())
    assert metrics["uar"] == result["uar"] and metrics["war"] == result["war"]
    # The demo again: the data, every pipeline stage and every comparison are reused; only
    # evaluate and the report run.
    again = run_demo(cfg, clips_per_class=3, seed=0, comparisons=COMPARE)
    assert again["checkpoint"] == result["checkpoint"] and again["uar"] == result["uar"]
    assert set(again["timings"]) == {"evaluate", "report"}
    assert again["comparisons"] == c
    # The demo stage's entry, without the comparisons: the fine-tuned model alone.
    assert demo.cli(["--config", str(config), "--clips-per-class", "3", "--no-compare"]) == 0
    alone = json.loads((report.parent / "demo.json").read_text())
    assert alone["checkpoint"] == result["checkpoint"] and alone["comparisons"] is None
    assert "Zero-shot" not in report.read_text()

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
