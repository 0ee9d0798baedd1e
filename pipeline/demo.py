"""The embedded default (``dferclip demo``): the whole pipeline on generated data, then a report.

    generate_demo_data(out, *, clips_per_class=20, seed=0, ...) -> Path   # labels.csv
    run_demo(cfg, *, clips_per_class=60, seed=0, comparisons=Comparisons()) -> dict   # demo.json's content

:func:`run_demo`:

1. generates the synthetic dynamic-expression dataset (drawn faces going from neutral to one of
   the 7 expressions) unless it is already there;
2. runs describe -> preprocess -> train with :func:`pipeline.orchestrate.run_pipeline` (the
   shipped description set, Haar face detection, DFER-CLIP fine-tuned from the shipped
   pretrained micro-CLIP ``dferclip-rn-micro`` + ``synth``; no GPU, no internet);
3. evaluates the final checkpoint on the generated test split;
4. runs the comparisons of :class:`Comparisons` as further stages of the same run (each skipped
   when up to date, like the pipeline's own): zero-shot with three text sources and a
   deliberately worse description set, the random-init recipe, the worse set fine-tuned, and a
   frozen-encoder sweep over context tokens x temporal depth;
5. writes ``<storage.root>/report/report.html`` with the dataset, descriptions, curves,
   confusion matrix, per-class recall, the comparisons, sample face crops and the time of each
   stage, and the result as ``report/demo.json``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pipeline.config import ExperimentConfig, load_config
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.storage import Storage
from pipeline.typed import apply_override

__all__ = [
    "run_demo",
    "generate_demo_data",
    "Comparisons",
    "epochs_to_reach",
    "DEFAULT_CONFIG",
    "SWEEP_CONFIG",
    "REPORT_DIR",
    "TARGET_UAR",
]

logger = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIGS / "demo.yaml"
SWEEP_CONFIG = CONFIGS / "sweep_demo.yaml"
REPORT_DIR = "report"
# "Epochs to reach": the first epoch whose UAR on the recipe's selection split is at least this.
TARGET_UAR = 0.8
# The recipe that trained the demo from a random initialisation before pretrained weights were
# shipped (measured in docs/benchmarks.md#demo-recipe); the demo runs it for comparison.
RANDOM_INIT_RECIPE = (
    "model.pretrained=null",
    "train.epochs=30",
    "train.warmup_epochs=2",
    "train.lr_image_encoder=0.001",
)
# The deliberately worse description set (default-7's descriptions moved one class along).
WORSE_SET = "shuffled-7"


@dataclass(frozen=True)
class Comparisons:
    """What the demo compares its fine-tuned model with, each on the same shards and seed.

    ``random_init``: ``--set`` overrides of the demo's config that give the random-init recipe;
    ``worse_set``: a description set (name or path) scored zero-shot and fine-tuned with the
    demo's own recipe (``worse_set_overrides`` on top, e.g. fewer epochs in a test);
    ``sweep_config``/``sweep_overrides``: the frozen-encoder sweep, run on the demo's data and
    storage. Tests shorten them; ``dferclip demo --no-compare`` skips them all.
    """

    random_init: tuple[str, ...] = RANDOM_INIT_RECIPE
    worse_set: str = WORSE_SET
    worse_set_overrides: tuple[str, ...] = ()
    sweep_config: str | Path = SWEEP_CONFIG
    sweep_overrides: tuple[str, ...] = field(default_factory=tuple)


# The zero-shot rows: label -> overrides of the demo's config (the paper's text-source ablation).
def _zero_shot_variants(worse_set: str) -> dict[str, tuple[str, ...]]:
    return {
        "descriptions": (),
        "class names": ("model.text_source=class_names",),
        "an expression of <class>": ("model.text_source=expression_of",),
        f"descriptions: {worse_set}": (f"describe.description_set={worse_set}",),
    }


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


def _variant(cfg: ExperimentConfig, overrides: tuple[str, ...] | list[str], where: str) -> ExperimentConfig:
    """``cfg`` with ``--set`` style ``overrides`` applied and validated (``where`` names it in errors)."""
    from pipeline.typed import from_dict, to_dict

    data = to_dict(cfg)
    for text in overrides:
        apply_override(data, text)
    return from_dict(ExperimentConfig, data, where)


def epochs_to_reach(history: list[dict], column: str, target: float = TARGET_UAR) -> int | None:
    """The first epoch whose ``column`` (e.g. ``test_uar``) is at least ``target``; None if none is."""
    for row in history:
        value = row.get(column)
        if value is not None and value == value and float(value) >= target:
            return int(row["epoch"])
    return None


def _run_record(storage: Storage, summary: dict) -> dict:
    """What the report keeps of a training run: test UAR/WAR, the per-epoch curve of the selection
    split's UAR, the epoch it first reached :data:`TARGET_UAR`."""
    import polars as pl

    run_dir = summary["paths"]["run_dir"]
    history = pl.read_csv(Storage(run_dir).local_path("metrics.csv")).to_dicts()
    split = "val" if summary.get("selection") == "validation" else "test"
    column = f"{split}_uar"
    return {
        "run_dir": run_dir,
        "test_uar": summary["test"]["uar"],
        "test_war": summary["test"]["war"],
        "epochs": len(history),
        "curve_split": split,
        "curve": [row.get(column) for row in history],
        "epochs_to_target": epochs_to_reach(history, column),
        "description_set": (summary.get("description_set") or {}).get("id"),
    }


# ---- the comparison stages: run by run_pipeline after the demo's own, skipped when up to date ----


def _zero_shot(cfg: ExperimentConfig, storage: Storage, *, worse_set: str) -> dict:
    from pipeline.evaluate import run_evaluate

    rows = {}
    for label, overrides in _zero_shot_variants(worse_set).items():
        variant = _variant(cfg, overrides, f"zero-shot {label}")
        m = run_evaluate(variant, zero_shot=True, split="test", storage=storage)
        rows[label] = {
            "uar": m["uar"],
            "war": m["war"],
            "text_source": variant.model.text_source,
            "description_set": (m.get("description_set") or {}).get("id"),
            "output_dir": m["output_dir"],
        }
    return {"rows": rows}


def _train_variant(cfg: ExperimentConfig, storage: Storage, *, suffix: str, overrides: tuple[str, ...]) -> dict:
    from pipeline.train.experiment import run_fold

    variant = _variant(cfg, (f"name={cfg.name}-{suffix}", *overrides), suffix)
    return _run_record(storage, run_fold(variant, variant.train.fold, storage))


def _sweep_config(cfg: ExperimentConfig, plan: Comparisons) -> ExperimentConfig:
    """The sweep's config on the demo's data, shards and storage (and the demo's seed)."""
    on_demo = (
        f"storage.root={cfg.storage.root}",
        f"dataset.root={cfg.dataset.root}",
        f"dataset.annotations={cfg.dataset.annotations}",
        f"train.seed={cfg.train.seed}",
    )
    return load_config(plan.sweep_config, [*on_demo, *plan.sweep_overrides])


def _sweep(cfg: ExperimentConfig, storage: Storage, *, plan: Comparisons) -> dict:
    from pipeline.fingerprint import fingerprint
    from pipeline.tune.experiment import run_tune
    from pipeline.typed import to_dict

    sweep_cfg = _sweep_config(cfg, plan)
    # A folder per sweep config: an edited sweep config starts a new sweep instead of being
    # refused as a different sweep in the old folder.
    name = f"{sweep_cfg.tune.name or sweep_cfg.name}-{fingerprint(to_dict(sweep_cfg))[:8]}"
    sweep_cfg = _variant(sweep_cfg, (f"tune.name={name}",), "the demo's sweep")
    outcome = run_tune(sweep_cfg)
    if outcome.interrupted:
        raise KeyboardInterrupt(f"the sweep in {outcome.path} did not finish")
    keys = list(sweep_cfg.tune.space)
    rows, cells = outcome.table, {}
    # The heat-map's cells: the first two swept paths, each cell its best trial (as heatmap.png).
    for _, row in rows.iterrows():
        if row["status"] == "error" or row["best_value"] != row["best_value"]:
            continue
        cell = tuple(row[k] for k in keys[:2])
        cells[cell] = max(cells.get(cell, float("-inf")), float(row["best_value"]))
    values = list(cells.values())
    return {
        "sweep": outcome.path,
        "heatmap": str(Path(outcome.path) / "heatmap.png"),
        "metric": sweep_cfg.tune.metric,
        "axes": keys[:2],
        "cells": [{"values": list(k), "value": v} for k, v in cells.items()],
        "best": max(values) if values else None,
        "worst": min(values) if values else None,
        "spread": (max(values) - min(values)) if values else None,
        "trials": len(rows),
        "description_sets": outcome.description_sets,
    }


def _comparison_stages(cfg: ExperimentConfig, plan: Comparisons):
    """The comparisons as :class:`pipeline.orchestrate.StageSpec` s: their fingerprints hash the
    config each one runs, so a second ``dferclip demo`` skips them like the pipeline's stages."""
    from pipeline.orchestrate import StageSpec, _description_set_id

    random_init = tuple(plan.random_init)
    worse = (f"describe.description_set={plan.worse_set}", *plan.worse_set_overrides)

    def trained(overrides):
        variant = _variant(cfg, overrides, "comparison")
        return lambda c: [variant.model, variant.train, _description_set_id(variant)]

    after = ("describe", "preprocess")
    return (
        StageSpec(
            "zero-shot",
            lambda c: [c.model, _description_set_id(c), _zero_shot_variants(plan.worse_set)],
            partial(_zero_shot, worse_set=plan.worse_set),
            after=after,
        ),
        StageSpec(
            "random-init",
            trained(random_init),
            partial(_train_variant, suffix="random-init", overrides=random_init),
            paths=("run_dir",),
            after=after,
        ),
        StageSpec(
            "worse-set",
            trained(worse),
            partial(_train_variant, suffix="worse-set", overrides=worse),
            paths=("run_dir",),
            after=after,
        ),
        StageSpec(
            "sweep",
            lambda c: [_sweep_config(c, plan).tune, _sweep_config(c, plan).model, _sweep_config(c, plan).train],
            partial(_sweep, plan=plan),
            paths=("sweep",),
            after=after,
        ),
    )


def _cpu_seconds() -> float | None:
    """CPU time (user + system) of this process and every process below it — Ray's raylet and its
    workers, which do the demo's work — from /proc; None where there is no /proc."""
    me = os.getpid()
    own = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)  # children that ended and were waited for
    total = own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime
    if not Path("/proc/self/stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    parent, ticks = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        # utime, stime, and the children's that this process waited for (cutime, cstime)
        ticks[pid] = sum(int(x) for x in fields[11:15])
    for pid in ticks:
        p, depth = parent.get(pid), 0
        while p and p != me and depth < 64:
            p, depth = parent.get(p), depth + 1
        if p == me:
            total += ticks[pid] / tick
    return total


def _train_outputs(summary) -> tuple[str, str]:
    """The run folder and final checkpoint the train stage recorded (it must have left one)."""
    train_out = summary.records["train"].outputs
    run_dir, checkpoint = train_out.get("run_dir"), train_out.get("checkpoint")
    if not checkpoint or not Path(checkpoint).exists():
        raise UserError(f"training left no final checkpoint (outputs: {train_out})")
    return run_dir, checkpoint


def _write_report(
    cfg: ExperimentConfig,
    storage: Storage,
    summary,
    evaluation: dict,
    run_dir: str,
    timings: dict[str, float],
    comparisons: dict | None,
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
        comparisons=comparisons,
    )


def _comparisons(cfg: ExperimentConfig, storage: Storage, summary, run_dir: str, evaluation: dict) -> dict:
    """demo.json's and the report's comparison section, from the stages' recorded outputs."""
    out = summary.records
    fine_tuned = _run_record(storage, json.loads(Path(run_dir, "summary.json").read_text()))
    fine_tuned.update(test_uar=evaluation["uar"], test_war=evaluation["war"])
    fine_tuned["model"] = f"{cfg.model.clip_model} + {cfg.model.pretrained or 'random init'}"
    zero = out["zero-shot"].outputs["rows"]
    worse = out["worse-set"].outputs
    worse_label = next(label for label in zero if label.startswith("descriptions: "))
    return {
        "seed": cfg.train.seed,
        "target_uar": TARGET_UAR,
        "zero_shot": zero,
        "fine_tuned": fine_tuned,
        "random_init": out["random-init"].outputs,
        "description_sets": [
            {
                "set": fine_tuned["description_set"],
                "zero_shot_uar": zero["descriptions"]["uar"],
                "zero_shot_war": zero["descriptions"]["war"],
                "fine_tuned_uar": fine_tuned["test_uar"],
                "fine_tuned_war": fine_tuned["test_war"],
                "epochs_to_target": fine_tuned["epochs_to_target"],
                "first_epoch_uar": fine_tuned["curve"][0] if fine_tuned["curve"] else None,
                "run_dir": fine_tuned["run_dir"],
            },
            {
                "set": worse["description_set"],
                "zero_shot_uar": zero[worse_label]["uar"],
                "zero_shot_war": zero[worse_label]["war"],
                "fine_tuned_uar": worse["test_uar"],
                "fine_tuned_war": worse["test_war"],
                "epochs_to_target": worse["epochs_to_target"],
                "first_epoch_uar": worse["curve"][0] if worse["curve"] else None,
                "run_dir": worse["run_dir"],
            },
        ],
        "sweep": out["sweep"].outputs,
    }


def _pct(x) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}"


def _epoch(record: dict) -> str:
    e = record["epochs_to_target"]
    where = f"on {record['curve_split']}"
    return f"epoch {e} of {record['epochs']} {where}" if e else f"not within {record['epochs']} epochs {where}"


def _summary_lines(c: dict) -> list[str]:
    """The demo's closing console lines: every comparison in one line each."""
    z, ft, ri, s = c["zero_shot"], c["fine_tuned"], c["random_init"], c["sweep"]
    zero = "; ".join(f"{label} {_pct(r['uar'])} / {_pct(r['war'])}" for label, r in z.items())
    sets = "; ".join(
        f"{d['set']}: zero-shot {_pct(d['zero_shot_uar'])}, fine-tuned {_pct(d['fine_tuned_uar'])} "
        f"(after epoch 1: {_pct(d['first_epoch_uar'])})"
        for d in c["description_sets"]
    )
    cells = ", ".join(f"{'x'.join(map(str, cell['values']))}: {cell['value']:.3f}" for cell in s["cells"])
    return [
        f"[demo] zero-shot, test split (seed {c['seed']}), UAR / WAR %: {zero}",
        f"[demo] fine-tuned {ft['model']}: test UAR {_pct(ft['test_uar'])} WAR {_pct(ft['test_war'])}; "
        f"UAR >= {c['target_uar']} at {_epoch(ft)}; random init: {_epoch(ri)}, test UAR {_pct(ri['test_uar'])}",
        f"[demo] description sets, test UAR % (seed {c['seed']}): {sets}",
        f"[demo] frozen-encoder sweep {' x '.join(s['axes'])}, best {s['metric']} per cell: {cells}; "
        f"best {s['best']:.3f}, best - worst {s['spread']:.3f}",
    ]


def run_demo(
    cfg: ExperimentConfig,
    *,
    clips_per_class: int = 60,
    seed: int = 0,
    comparisons: Comparisons | None = Comparisons(),  # noqa: B008 — frozen, never mutated
) -> dict:
    """Data (unless present) -> describe -> preprocess -> train -> evaluate -> comparisons ->
    report; returns what ``report/demo.json`` holds.

    ``clips_per_class`` and ``seed`` size and seed the generated dataset; ``comparisons`` None
    skips the comparisons (the report then shows the fine-tuned model alone).
    """
    from pipeline.evaluate import run_evaluate
    from pipeline.orchestrate import STAGES, run_pipeline

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
    # 2. describe -> preprocess -> train, then the comparisons (each skipped when up to date)
    extra = _comparison_stages(cfg, comparisons) if comparisons is not None else ()
    summary = run_pipeline(cfg, storage=storage, stages=(*STAGES, *extra))
    timings.update({stage: rec.seconds for stage, rec in summary.records.items() if stage in summary.ran})
    run_dir, checkpoint = _train_outputs(summary)
    # 3. evaluate
    t = time.monotonic()
    evaluation = run_evaluate(cfg, checkpoint=checkpoint, split="test", storage=storage)
    timings["evaluate"] = time.monotonic() - t
    compared = _comparisons(cfg, storage, summary, run_dir, evaluation) if comparisons is not None else None
    # 4. report
    t = time.monotonic()
    report = _write_report(cfg, storage, summary, evaluation, run_dir, timings, compared)
    timings["report"] = time.monotonic() - t
    result = {
        "uar": evaluation["uar"],
        "war": evaluation["war"],
        "report": str(report),
        "checkpoint": checkpoint,
        "seconds": time.monotonic() - start,
        "cpu_seconds": _cpu_seconds(),
        "timings": timings,
        "comparisons": compared,
    }
    storage.write_text(json.dumps(result, indent=2), REPORT_DIR, "demo.json")
    for line in _summary_lines(compared) if compared else ():
        logger.info("%s", line)
    cpu = f" (CPU {result['cpu_seconds']:.0f} s)" if result["cpu_seconds"] is not None else ""
    logger.info(
        "[demo] test UAR %.1f  WAR %.1f  in %.0f s%s",
        100 * evaluation["uar"],
        100 * evaluation["war"],
        result["seconds"],
        cpu,
    )
    logger.info("[demo] report: %s", report)
    logger.info("[demo] checkpoint: %s  (try: dferclip predict --checkpoint %s VIDEO)", checkpoint, checkpoint)
    return result
