"""Which description set an experiment's class prompts use, and where its describe stage writes.

One answer for every stage — describe, train, evaluate, tune, ``dferclip run`` and its
fingerprints all ask here, so they cannot disagree:

    set_name(cfg) -> str                                   # the describe stage's set name
    describe_target(cfg) -> (DESCRIPTIONS_DIR, "<name>.yaml")   # where it writes, below storage.root
    resolve_description_set(cfg, storage=None) -> ChosenSet | None

The set the class prompts use, in this order (docs/describe.md):

1. ``describe.description_set`` when given (a path, a URI, or a shipped set's name);
2. else, with ``describe.enabled``, the set the describe stage writes for this experiment,
   ``<storage.root>/descriptions/<set name>.yaml``;
3. else the shipped default for the dataset's classes.

A set asked for by 1 or 2 that is missing is a :class:`UserError` naming the config key and the
location looked up; nothing falls back to the shipped set. None when the class prompts are not
descriptions (``model.text_source``).

A chosen set's id, ``<name>@<digest>``, names it and pins its content: the digest is
:attr:`DescriptionSet.id` of the descriptions actually used (the dataset's classes in label
order) — the id the describe stage prints and writes when it wrote exactly those classes. Run
folders, sweeps, evaluations and the pipeline's stage records carry it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import UserError
from pipeline.llm.sets import (
    DESCRIPTIONS_DIR,
    DescriptionSet,
    default_description_set_path,
    dump_description_set,
    read_description_set,
    resolve_set_path,
)
from pipeline.storage import Storage, is_uri

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig

__all__ = ["ChosenSet", "set_name", "describe_target", "resolve_description_set", "read_set_copy"]

DESCRIBE_KEY = "describe.description_set"


@dataclass(frozen=True)
class ChosenSet:
    """The description set a stage uses, restricted to the dataset's classes, and why it was chosen."""

    name: str
    location: str  # the file (local path or URI) it was read from
    chosen_by: str  # "describe.description_set", "describe.enabled" or "default" (the shipped set)
    descriptions: dict[str, list[str]]  # the dataset's classes, in label order
    provenance: dict[str, Any] = field(default_factory=dict)  # the file's own (source, model, template ...)
    action_units: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return DescriptionSet(self.name, self.descriptions).id

    @property
    def id(self) -> str:
        return f"{self.name}@{self.digest}"

    def record(self) -> dict[str, str]:
        """What run folders, sweeps and evaluations write about the set (JSON-able)."""
        return {
            "id": self.id,
            "name": self.name,
            "digest": self.digest,
            "location": self.location,
            "chosen_by": self.chosen_by,
            "source": str(self.provenance.get("source", "")),
        }

    def copy_text(self) -> str:
        """The set as used, as a description set YAML (``id:`` is :attr:`digest`), for a run's own
        folder: :func:`read_set_copy` gives back this same choice."""
        provenance = {"copied_from": self.location, "chosen_by": self.chosen_by, "original": self.provenance}
        return dump_description_set(DescriptionSet(self.name, self.descriptions, provenance, self.action_units))


def set_name(cfg: ExperimentConfig) -> str:
    """The describe stage's set name: ``describe.output_name``, else the experiment name made file-safe."""
    return cfg.describe.output_name or re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.name).strip("-.") or "descriptions"


def describe_target(cfg: ExperimentConfig) -> tuple[str, str]:
    """Where the describe stage writes this experiment's set: path parts below ``storage.root``."""
    return DESCRIPTIONS_DIR, f"{set_name(cfg)}.yaml"


def _is_file(location: str) -> bool:
    if not is_uri(location):
        return Path(location).expanduser().is_file()
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(location)
    return fs.get_file_info(inner).type == pafs.FileType.File


def _chosen(location: str, chosen_by: str, class_names: list[str]) -> ChosenSet:
    dset = read_description_set(location)
    notes = {c: dset.action_units[c] for c in class_names if c in dset.action_units}
    return ChosenSet(dset.name, location, chosen_by, dset.subset(class_names, location), dset.provenance, notes)


def resolve_description_set(cfg: ExperimentConfig, storage: Storage | None = None) -> ChosenSet | None:
    """The set the class prompts of ``cfg`` use (module docstring); None for ``model.text_source``
    other than ``descriptions``. ``storage``: the run's :class:`Storage` of ``cfg.storage.root``."""
    if cfg.model.text_source != "descriptions":
        return None
    d, class_names = cfg.describe, cfg.dataset.class_names
    if d.description_set is not None:
        location = resolve_set_path(d.description_set, key=DESCRIBE_KEY)
        if not _is_file(location):
            raise UserError(f"{DESCRIBE_KEY}: description set not found: {location}")
        return _chosen(location, DESCRIBE_KEY, class_names)
    if d.enabled:
        storage = storage or Storage(cfg.storage.root)
        location = storage.uri(*describe_target(cfg))
        if not storage.exists(*describe_target(cfg)):
            raise UserError(
                f"describe.enabled: the class prompts use the set the describe stage writes for this experiment "
                f"(describe.output_name, else the experiment name {cfg.name!r}), and {location} does not exist; "
                "run `dferclip describe` (or `dferclip run`) with this config first, or set describe.description_set"
            )
        return _chosen(location, "describe.enabled", class_names)
    return _chosen(str(default_description_set_path(class_names)), "default", class_names)


def read_set_copy(location: str, class_names: list[str]) -> ChosenSet:
    """A set written by :meth:`ChosenSet.copy_text`, as the same choice (name, location, reason, id)."""
    dset = read_description_set(location)
    p = dset.provenance
    return ChosenSet(
        dset.name,
        str(p.get("copied_from") or location),
        str(p.get("chosen_by") or "describe.description_set"),
        dset.subset(class_names, location),
        p.get("original") if isinstance(p.get("original"), dict) else {},
        {c: dset.action_units[c] for c in class_names if c in dset.action_units},
    )
