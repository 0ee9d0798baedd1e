"""The embedded default (``dferclip demo``): the whole pipeline on generated data, then a report.

    generate_demo_data(out, *, clips_per_class=20, seed=0, ...) -> Path   # labels.csv
    run_demo(cfg, *, clips_per_class=60, seed=0) -> dict                  # uar, war, report, checkpoint, timings

:func:`run_demo`:

1. generates the synthetic dynamic-expression dataset (drawn faces going from neutral to one of
   the 7 expressions) unless it is already there;
2. runs describe -> preprocess -> train with :func:`pipeline.orchestrate.run_pipeline` (the
   shipped description set, Haar face detection, the tiny random-initialised CLIP; no GPU, no
   internet);
3. evaluates the final checkpoint on the generated test split;
4. writes ``<storage.root>/report/report.html`` with the dataset, descriptions, curves,
   confusion matrix, per-class recall, sample face crops and the time of each stage, and the
   result as ``report/demo.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pipeline.config import ExperimentConfig
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.storage import Storage

__all__ = ["run_demo", "generate_demo_data", "DEFAULT_CONFIG", "REPORT_DIR"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
REPORT_DIR = "report"


def generate_demo_data(
    out: str | Path,
    *,
    clips_per_class: int = 20,
    seed: int = 0,
    num_frames: int = 24,
    size: tuple[int, int] = (320, 240),
    fps: int = 12,
    test_fraction: float = 0.2,
    workers: int | None = None,
) -> Path:
    """Write the synthetic dataset below ``out`` (``videos/``, ``labels.csv``); returns labels.csv's path.

    The same seed gives the same dataset; another seed fresh clips of the same classes.
    """
    from pipeline.synth import generate_dataset

    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    total = len(CLASSES_7) * clips_per_class
    start = time.monotonic()
    # No progress callback: generate_dataset shows one bar on a terminal and nothing in a pipe.
    labels = generate_dataset(
        out,
        clips_per_class,
        seed,
        num_frames=num_frames,
        size=size,
        fps=fps,
        test_fraction=test_fraction,
        workers=workers,
    )
    logger.info("demo-data: wrote %d clips and %s in %.0f s", total, labels, time.monotonic() - start)
    return labels


def _check(cfg: ExperimentConfig) -> None:
    if cfg.dataset.name != "demo" or not cfg.dataset.root or not cfg.dataset.annotations:
        raise UserError(
            f"the demo needs dataset.name: demo with dataset.root and dataset.annotations set (see {DEFAULT_CONFIG})"
        )


def _train_outputs(summary) -> tuple[str, str]:
    """The run folder and final checkpoint the train stage recorded (it must have left one)."""
    train_out = summary.records["train"].outputs
    run_dir, checkpoint = train_out.get("run_dir"), train_out.get("checkpoint")
    if not checkpoint or not Path(checkpoint).exists():
        raise UserError(f"training left no final checkpoint (outputs: {train_out})")
    return run_dir, checkpoint


def _write_report(
    cfg: ExperimentConfig, storage: Storage, summary, evaluation: dict, run_dir: str, timings: dict[str, float]
) -> Path:
    from pipeline.data.shards import read_manifest, shard_dir, shard_paths
    from pipeline.report_page import write_report

    rel = shard_dir(storage, cfg.dataset.name)
    return write_report(
        storage.local_path(REPORT_DIR),
        title=f"DFER-CLIP demo — {cfg.name}",
        manifest=read_manifest(storage, rel),
        description_set=summary.records["describe"].outputs["description_set"],
        train_dir=run_dir,
        evaluation=evaluation,
        shard_files=shard_paths(storage, rel),
        timings=timings,
    )


def run_demo(cfg: ExperimentConfig, *, clips_per_class: int = 60, seed: int = 0) -> dict:
    """Data (unless present) -> describe -> preprocess -> train -> evaluate -> report; returns the result.

    ``clips_per_class`` and ``seed`` size and seed the generated dataset.
    """
    from pipeline.evaluate import run_evaluate
    from pipeline.orchestrate import run_pipeline

    _check(cfg)
    storage = Storage(cfg.storage.root)
    start = time.monotonic()
    timings: dict[str, float] = {}
    # 1. data
    labels = Path(cfg.dataset.annotations)
    if labels.exists():
        logger.info("[demo] using the generated dataset in %s (delete it to generate anew)", labels.parent)
    else:
        t = time.monotonic()
        generate_demo_data(cfg.dataset.root, clips_per_class=clips_per_class, seed=seed)
        timings["generate data"] = time.monotonic() - t
    # 2. describe -> preprocess -> train
    summary = run_pipeline(cfg, storage=storage)
    timings.update({stage: rec.seconds for stage, rec in summary.records.items() if stage in summary.ran})
    run_dir, checkpoint = _train_outputs(summary)
    # 3. evaluate
    t = time.monotonic()
    evaluation = run_evaluate(cfg, checkpoint=checkpoint, split="test", storage=storage)
    timings["evaluate"] = time.monotonic() - t
    # 4. report
    t = time.monotonic()
    report = _write_report(cfg, storage, summary, evaluation, run_dir, timings)
    timings["report"] = time.monotonic() - t
    result = {
        "uar": evaluation["uar"],
        "war": evaluation["war"],
        "report": str(report),
        "checkpoint": checkpoint,
        "seconds": time.monotonic() - start,
        "timings": timings,
    }
    storage.write_text(json.dumps(result, indent=2), REPORT_DIR, "demo.json")
    logger.info(
        "[demo] test UAR %.1f  WAR %.1f  in %.0f s", 100 * evaluation["uar"], 100 * evaluation["war"], result["seconds"]
    )
    logger.info("[demo] report: %s", report)
    logger.info("[demo] checkpoint: %s  (try: dferclip predict --checkpoint %s VIDEO)", checkpoint, checkpoint)
    return result
