"""The describe stage's work: write an experiment's description set; show two sets side by side.

    write_descriptions(cfg, *, refresh=False, storage=None) -> str   # the set's location
    print_diff(a, b, out=None) -> None                               # the diff on stdout

With ``describe.enabled`` it asks the LLM endpoint for every class x sample (cached answers are
reused; ``refresh`` asks again) and writes the set with its provenance; otherwise it writes the
offline set (the shipped default for the classes, or ``describe.description_set``), so the
pipeline runs with no endpoint. Either way the set goes to ``<storage.root>/descriptions/<name>.yaml``
(:func:`pipeline.llm.selection.describe_target`, the same place train, evaluate and tune look).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from pipeline.config import ExperimentConfig
from pipeline.llm.cache import AnswerCache
from pipeline.llm.diff import diff_description_sets
from pipeline.llm.prompts import load_class_set, load_template
from pipeline.llm.runner import generate_descriptions, llm_description_set
from pipeline.llm.selection import DESCRIBE_KEY, describe_target, set_name
from pipeline.llm.sets import (
    DescriptionSet,
    default_description_set_path,
    dump_description_set,
    read_description_set,
    resolve_set_path,
)
from pipeline.storage import Storage

__all__ = ["write_descriptions", "offline_set", "set_name", "print_diff"]

logger = logging.getLogger(__name__)


def offline_set(name: str, user_set: str | None, class_names: list[str]) -> DescriptionSet:
    """The shipped default for these classes (or the user's file), restricted to them."""
    source = (
        resolve_set_path(user_set, key=DESCRIBE_KEY) if user_set else str(default_description_set_path(class_names))
    )
    original = read_description_set(source)
    classes = original.subset(class_names, source)
    provenance = {
        "source": "shipped" if user_set is None else "file",
        "copied_from": source,
        "original_name": original.name,
        "original_provenance": original.provenance,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    notes = {c: original.action_units[c] for c in class_names if c in original.action_units}
    return DescriptionSet(name, classes, provenance, notes)


def _class_names(cfg: ExperimentConfig) -> tuple[list[str], str]:
    """The classes to describe and where they come from (a class set, or the dataset)."""
    if cfg.describe.class_set:
        class_set = load_class_set(cfg.describe.class_set)
        return list(class_set.classes), f"class set {class_set.name}"
    return cfg.dataset.class_names, f"dataset {cfg.dataset.name}"


def write_descriptions(cfg: ExperimentConfig, *, refresh: bool = False, storage: Storage | None = None) -> str:
    """Write the experiment's description set; returns its location (``Storage.uri``).

    ``storage``: the run's :class:`Storage` of ``cfg.storage.root`` (built here when not given).
    """
    d = cfg.describe
    storage = storage or Storage(cfg.storage.root)
    class_names, class_source = _class_names(cfg)
    name = set_name(cfg)
    if not d.enabled:
        dset = offline_set(name, d.description_set, class_names)
        logger.info(
            "[describe] describe.enabled is false: using the %s set %s",
            dset.provenance["source"],
            dset.provenance["copied_from"],
        )
    else:
        template = load_template(d.template)
        result = generate_descriptions(d, class_names, template, AnswerCache(storage), refresh=refresh)
        dset = llm_description_set(name, d, template, class_source, result)
        logger.info(
            "[describe] %d cached + %d new answers, %d requests, %.1fs",
            result.cached,
            result.new,
            result.requests,
            result.seconds,
        )
    target = describe_target(cfg)
    storage.write_text(dump_description_set(dset), *target)
    location = storage.uri(*target)
    counts = ", ".join(f"{c} {len(v)}" for c, v in dset.classes.items())
    logger.info("[describe] description set %s (id %s) written to %s", dset.name, dset.id, location)
    logger.info("[describe] descriptions per class: %s", counts)
    return location


def print_diff(a: str, b: str, out: TextIO | None = None) -> None:
    """Print two description sets (paths or shipped names) side by side: the command's result, on stdout."""
    left, right = resolve_set_path(a), resolve_set_path(b)
    print(
        diff_description_sets(read_description_set(left), read_description_set(right), left, right),
        file=out or sys.stdout,
    )
