"""Run the pipeline: describe -> preprocess -> train (-> tune), skipping what is up to date.

Each stage's fingerprint hashes its config sections, the content of what it reads (prompt
template, description set, annotation files, the input tree's names/sizes/mtimes) and the
fingerprints of the stages it depends on; it is recorded with the stage's outputs in
``<storage.root>/stages/<stage>.json``. A stage whose fingerprint is unchanged and whose outputs
still exist is skipped, so editing a prompt template re-runs describe and what depends on it
(train, tune) but not preprocess. Ends with a summary of what ran, what was skipped and where
the artifacts are.

    dferclip run --config configs/demo.yaml [--tune] [--force STAGE]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.fingerprint import StageRecord, file_digest, fingerprint, read_record, tree_digest, write_record
from pipeline.storage import Storage

__all__ = ["main", "cli", "RunSummary", "STAGES"]

STAGES = ("describe", "preprocess", "train", "tune")


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    records: dict[str, StageRecord] = field(default_factory=dict)

    def render(self, root: str) -> str:
        lines = [f"pipeline summary (storage root {root}):"]
        for stage, rec in self.records.items():
            state = "ran" if stage in self.ran else "up to date, skipped"
            where = ", ".join(f"{k}={v}" for k, v in _flat_outputs(rec.outputs).items())
            lines.append(f"  {stage:<10} {state:<20} {rec.seconds:7.1f}s  {where}")
        return "\n".join(lines)


def _flat_outputs(outputs: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in outputs.items() if isinstance(v, (str, int, float))}


# ---- what each stage reads (its fingerprint) and how it runs --------------------------------


def _describe_inputs(cfg: ExperimentConfig) -> list:
    from pipeline.llm import default_description_set_path, load_template, resolve_set_path

    d = cfg.describe
    template = load_template(d.template).sha256 if d.enabled else None
    given = file_digest(resolve_set_path(d.description_set)) if d.description_set else None
    shipped = file_digest(default_description_set_path(cfg.dataset.class_names))
    return [d, cfg.dataset.class_names, template, given, shipped]


def _preprocess_inputs(cfg: ExperimentConfig) -> list:
    ds = cfg.dataset
    return [ds, cfg.preprocess, file_digest(ds.annotations), tree_digest(ds.root)]


def _run_describe(cfg: ExperimentConfig) -> dict:
    from stages import describe

    return {"description_set": describe.main(cfg)}


def _run_preprocess(cfg: ExperimentConfig) -> dict:
    from pipeline.data.shards import shard_dir
    from stages import preprocess

    manifest = preprocess.main(cfg)
    storage = Storage(cfg.storage.root)
    counts = manifest.get("counts", {}) if isinstance(manifest, dict) else {}
    return {"shards": storage.path(shard_dir(storage, cfg.dataset.name)), "clips": counts.get("clips", "")}


def _run_train(cfg: ExperimentConfig) -> dict:
    from stages import train

    runs = train.main(cfg).get("runs", [])
    last = runs[-1]  # the configured fold: one run
    return {"run_dir": last["paths"]["run_dir"], "checkpoint": last["paths"]["final_checkpoint"],
            "test_uar": last["test"]["uar"], "test_war": last["test"]["war"], "best_epoch": last["best_epoch"]}


def _run_tune(cfg: ExperimentConfig) -> dict:
    from stages import tune

    outcome = tune.main(cfg)
    return {"sweep": outcome.path, "best_config": str(Path(outcome.path) / "best_config.yaml")}


def _outputs_exist(outputs: dict[str, Any]) -> bool:
    for key in ("description_set", "shards", "run_dir", "checkpoint", "sweep"):
        value = outputs.get(key)
        if isinstance(value, str) and value and "://" not in value and not Path(value).exists():
            return False
    return True


def main(cfg: ExperimentConfig, *, with_tune: bool = False, force: tuple[str, ...] = (),
         log: Callable[[str], None] = print) -> RunSummary:
    storage = Storage(cfg.storage.root)
    summary = RunSummary()
    describe_fp = fingerprint("describe", *_describe_inputs(cfg))
    preprocess_fp = fingerprint("preprocess", *_preprocess_inputs(cfg))
    train_fp = fingerprint("train", cfg.model, cfg.train, describe_fp, preprocess_fp)
    plan: list[tuple[str, str, Callable[[ExperimentConfig], dict]]] = [
        ("describe", describe_fp, _run_describe),
        ("preprocess", preprocess_fp, _run_preprocess),
        ("train", train_fp, _run_train),
    ]
    if with_tune:
        plan.append(("tune", fingerprint("tune", cfg.tune, cfg.model, cfg.train, describe_fp, preprocess_fp), _run_tune))
    for stage, fp, run in plan:
        previous = read_record(storage, stage)
        if stage not in force and previous and previous.fingerprint == fp and _outputs_exist(previous.outputs):
            log(f"[run] {stage}: up to date (fingerprint {fp}), skipped")
            summary.skipped.append(stage)
            summary.records[stage] = previous
            continue
        log(f"[run] {stage}: running")
        start = time.monotonic()
        outputs = run(cfg)
        record = StageRecord(stage, fp, outputs, seconds=time.monotonic() - start)
        write_record(storage, record)  # only after success: a failed stage runs again next time
        summary.ran.append(stage)
        summary.records[stage] = record
    log(summary.render(storage.uri()))
    return summary


def cli(argv=None) -> int:
    parser = stage_parser("dferclip run", __doc__)
    parser.add_argument("--tune", action="store_true", help="also run the tune stage after train")
    parser.add_argument("--force", action="append", default=[], choices=STAGES,
                        help="run this stage even if it is up to date (repeatable)")
    args = parser.parse_args(argv)
    return run_cli(lambda: (main(load_config(args.config, args.overrides), with_tune=args.tune,
                                 force=tuple(args.force)), 0)[1])


if __name__ == "__main__":
    raise SystemExit(cli())
