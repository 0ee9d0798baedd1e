"""``dferclip run``: describe -> preprocess -> train (-> tune), skipping what is up to date.

    run_pipeline(cfg, *, include=(), force=(), storage=None, stages=STAGES) -> RunSummary

Each stage is a :class:`StageSpec` in :data:`STAGES`: what its fingerprint hashes (its config
sections and the content of what it reads, plus the fingerprints of the stages it comes
``after``), how it runs (a function returning its outputs, JSON-able) and which of those
outputs are locations that must still exist. The fingerprint and the outputs are recorded in
``<storage.root>/stages/<stage>.json`` once the stage succeeds; a stage whose fingerprint is
unchanged and whose declared paths still exist is skipped, so editing a prompt template re-runs
describe and what depends on it (train, tune) but not preprocess. A stage's fingerprint is taken
when its turn comes, after the stages before it ran: train's and tune's hash the id of the
description set they will use (:func:`pipeline.llm.selection.resolve_description_set`), which
describe has just written. The run ends with a summary of what ran, what was skipped and where
the artifacts are.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.fingerprint import StageRecord, file_digest, fingerprint, read_record, tree_digest, write_record
from pipeline.storage import Storage, is_uri

__all__ = ["run_pipeline", "RunSummary", "StageSpec", "STAGES", "stage_names"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    """One stage of ``dferclip run``.

    ``inputs(cfg)``: what its fingerprint hashes besides the upstream fingerprints (config
    sections, digests of the files it reads). ``after``: the stages whose fingerprints feed this
    one, so a change upstream runs it again. ``run(cfg, storage)``: does the work and returns the
    outputs to record. ``paths``: the outputs that are locations (local paths or URIs) which must
    still exist for the stage to count as up to date. ``optional``: runs only when asked for.
    """

    name: str
    inputs: Callable[[ExperimentConfig], list]
    run: Callable[[ExperimentConfig, Storage], dict[str, Any]]
    paths: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    optional: bool = False

    def fingerprint(self, cfg: ExperimentConfig, upstream: dict[str, str]) -> str:
        return fingerprint(self.name, *self.inputs(cfg), *(upstream[name] for name in self.after))

    def outputs_exist(self, outputs: dict[str, Any]) -> bool:
        """Every declared path is in ``outputs`` and still exists (a record without one is stale)."""
        for key in self.paths:
            location = outputs.get(key)
            if not isinstance(location, str) or not location or not Storage(location).exists():
                return False
        return True


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    records: dict[str, StageRecord] = field(default_factory=dict)

    def render(self, root: str) -> str:
        lines = [f"pipeline summary (storage root {root}):"]
        for stage, rec in self.records.items():
            state = "ran" if stage in self.ran else "up to date, skipped"
            where = ", ".join(f"{k}={v}" for k, v in rec.outputs.items() if isinstance(v, (str, int, float)))
            lines.append(f"  {stage:<10} {state:<20} {rec.seconds:7.1f}s  {where}")
        return "\n".join(lines)


def _location(storage: Storage, path: str) -> str:
    """A path a stage returned, as a location any process can open: a path below the root of a
    remote storage becomes its URI; URIs and local paths stay as they are."""
    if is_uri(path) or storage.is_local:
        return path
    rel = posixpath.relpath(path, storage.root)
    return path if rel.startswith("..") else storage.uri(rel)


# ---- the stages: what each one reads (its fingerprint), how it runs, which outputs are paths ----


def _describe_inputs(cfg: ExperimentConfig) -> list:
    from pipeline.llm import default_description_set_path, load_template, resolve_set_path
    from pipeline.llm.selection import DESCRIBE_KEY, describe_target

    d = cfg.describe
    template = load_template(d.template).sha256 if d.enabled else None
    given = file_digest(resolve_set_path(d.description_set, key=DESCRIBE_KEY)) if d.description_set else None
    shipped = file_digest(default_description_set_path(cfg.dataset.class_names))
    # Where it writes: a new experiment name is a new set, even with the same descriptions.
    return [d, cfg.dataset.class_names, template, given, shipped, describe_target(cfg)]


def _description_set_id(cfg: ExperimentConfig) -> str | None:
    """The id of the set train and tune will use (name and content), read after describe has run,
    so an edit of that file, or a different set chosen, runs them again."""
    from pipeline.llm.selection import resolve_description_set

    chosen = resolve_description_set(cfg)
    return chosen.id if chosen else None


def _init_checkpoint_digest(cfg: ExperimentConfig) -> str | None:
    """The content of train.init_checkpoint's file: a changed file trains again."""
    from pipeline.train.init_checkpoint import init_digest

    return init_digest(cfg.train.init_checkpoint)


def _run_describe(cfg: ExperimentConfig, storage: Storage) -> dict:
    from pipeline.llm.describe_run import write_descriptions

    return {"description_set": write_descriptions(cfg, storage=storage)}


def _preprocess_inputs(cfg: ExperimentConfig) -> list:
    ds = cfg.dataset
    return [ds, cfg.preprocess, file_digest(ds.annotations), tree_digest(ds.root)]


def _run_preprocess(cfg: ExperimentConfig, storage: Storage) -> dict:
    from pipeline.data.shards import shard_dir
    from pipeline.preprocess import run_preprocess

    manifest = run_preprocess(storage, cfg.dataset, cfg.preprocess)
    counts = manifest.get("counts", {}) if isinstance(manifest, dict) else {}
    return {"shards": storage.uri(shard_dir(storage, cfg.dataset.name)), "clips": counts.get("clips", "")}


def _run_train(cfg: ExperimentConfig, storage: Storage) -> dict:
    from pipeline.train.experiment import run_train

    last = run_train(cfg, storage=storage)["runs"][-1]  # the configured fold: one run
    return {
        "run_dir": _location(storage, last["paths"]["run_dir"]),
        "checkpoint": _location(storage, last["paths"]["final_checkpoint"]),
        "test_uar": last["test"]["uar"],
        "test_war": last["test"]["war"],
        "best_epoch": last["best_epoch"],
        "description_set": (last.get("description_set") or {}).get("id", ""),
    }


def _run_tune(cfg: ExperimentConfig, storage: Storage) -> dict:
    from pipeline.tune.experiment import run_tune

    outcome = run_tune(cfg)
    if outcome.interrupted:
        # Not recorded, so the next run resumes the sweep; the exit status is the tune stage's (130).
        raise KeyboardInterrupt(f"the sweep in {outcome.path} did not finish")
    sweep = _location(storage, outcome.path)
    return {
        "sweep": sweep,
        "best_config": posixpath.join(sweep, "best_config.yaml"),
        "description_set": outcome.description_set or "",
    }


STAGES: tuple[StageSpec, ...] = (
    StageSpec("describe", _describe_inputs, _run_describe, paths=("description_set",)),
    StageSpec("preprocess", _preprocess_inputs, _run_preprocess, paths=("shards",)),
    StageSpec(
        "train",
        lambda cfg: [cfg.model, cfg.train, _description_set_id(cfg), _init_checkpoint_digest(cfg)],
        _run_train,
        paths=("run_dir", "checkpoint"),
        after=("describe", "preprocess"),
    ),
    StageSpec(
        "tune",
        lambda cfg: [cfg.tune, cfg.model, cfg.train, _description_set_id(cfg)],
        _run_tune,
        paths=("sweep",),
        after=("describe", "preprocess"),
        optional=True,
    ),
)


def stage_names(stages: Sequence[StageSpec] = STAGES) -> list[str]:
    return [s.name for s in stages]


def run_pipeline(
    cfg: ExperimentConfig,
    *,
    include: Collection[str] = (),
    force: Collection[str] = (),
    storage: Storage | None = None,
    stages: Sequence[StageSpec] = STAGES,
) -> RunSummary:
    """Run ``stages`` in order, each unless it is up to date or named in ``force``; an optional
    stage runs only when ``include`` names it (``include=("tune",)``).

    ``storage``: the run's :class:`Storage` of ``cfg.storage.root`` (built here when not given).
    """
    names = stage_names(stages)
    for option, given in (("--force", force), ("include", include)):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise UserError(f"{option}: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    storage = storage or Storage(cfg.storage.root)
    summary, fingerprints = RunSummary(), {}
    for stage in stages:
        if stage.optional and stage.name not in include:
            continue
        fp = fingerprints[stage.name] = stage.fingerprint(cfg, fingerprints)
        previous = read_record(storage, stage.name)
        if (
            stage.name not in force
            and previous
            and previous.fingerprint == fp
            and stage.outputs_exist(previous.outputs)
        ):
            logger.info("[run] %s: up to date (fingerprint %s), skipped", stage.name, fp)
            summary.skipped.append(stage.name)
            summary.records[stage.name] = previous
            continue
        logger.info("[run] %s: running", stage.name)
        start = time.monotonic()
        outputs = stage.run(cfg, storage)
        record = StageRecord(stage.name, fp, outputs, seconds=time.monotonic() - start)
        write_record(storage, record)  # only after success: a failed stage runs again next time
        summary.ran.append(stage.name)
        summary.records[stage.name] = record
    logger.info("%s", summary.render(storage.uri()))
    return summary
