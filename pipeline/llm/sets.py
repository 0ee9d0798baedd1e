"""Description sets: per-class facial-behaviour descriptions plus provenance, as YAML.

Written form (``format: 1``)::

    format: 1
    name: my-set
    id: 3f2a9c1b7d04          # content digest of the descriptions: same id, same text
    provenance: {source: llm | shipped | file, model: ..., template: {...}, ...}
    classes:
      - name: happiness
        descriptions: [raised cheeks ..., ...]

For hand-written sets two simpler forms are read too: ``classes:`` as a mapping
``name: [descriptions]`` (or one string), or that mapping at the top level. Training asks for
its classes in its own label order through :func:`load_description_set`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.llm.prompts import PROMPTS_DIR
from pipeline.names import check_name
from pipeline.storage import Storage, is_uri

__all__ = [
    "DescriptionSet",
    "DESCRIPTIONS_DIR",
    "read_description_set",
    "parse_description_set",
    "dump_description_set",
    "write_description_set",
    "load_description_set",
    "default_description_set_path",
    "resolve_set_path",
    "shipped_set_paths",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DESCRIPTIONS_DIR = "descriptions"  # below the storage root, where the describe stage writes
SHIPPED_DIR = PROMPTS_DIR / "descriptions"


@dataclass
class DescriptionSet:
    name: str
    classes: dict[str, list[str]]  # in label order
    provenance: dict[str, Any] = field(default_factory=dict)
    action_units: dict[str, str] = field(default_factory=dict)  # optional per-class notes

    @property
    def id(self) -> str:
        blob = json.dumps(list(self.classes.items()), ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]

    def subset(self, class_names: list[str] | tuple[str, ...], source: str) -> dict[str, list[str]]:
        missing = [c for c in class_names if c not in self.classes]
        if missing:
            raise UserError(
                f"description set {source} has no descriptions for {missing} (it has: {', '.join(self.classes)})"
            )
        return {c: list(self.classes[c]) for c in class_names}


def _descriptions(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise UserError(f"{where}: expected a description or a non-empty list of descriptions, got {value!r}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise UserError(f"{where}[{i}]: expected a non-empty string, got {item!r}")
        out.append(" ".join(item.split()))
    return out


def parse_description_set(data: Any, source: str) -> DescriptionSet:
    """Build a set from parsed YAML; every error names ``source`` and the entry."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    fmt = data.get("format", FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise UserError(f"{source}: format {fmt!r} is not supported (this version reads format {FORMAT_VERSION})")
    entries = (
        data["classes"]
        if "classes" in data
        else {k: v for k, v in data.items() if k not in ("format", "name", "id", "provenance")}
    )
    classes: dict[str, list[str]] = {}
    notes: dict[str, str] = {}
    if isinstance(entries, dict):
        for name, value in entries.items():
            classes[str(name)] = _descriptions(value, f"{source}: classes.{name}")
    elif isinstance(entries, list):
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise UserError(f"{source}: classes[{i}]: expected {{name: ..., descriptions: [...]}}, got {entry!r}")
            name = entry["name"]
            if name in classes:
                raise UserError(f"{source}: classes[{i}]: class {name!r} appears twice")
            classes[name] = _descriptions(entry.get("descriptions"), f"{source}: classes[{i}] ({name}).descriptions")
            if entry.get("action_units"):
                notes[name] = str(entry["action_units"])
    else:
        raise UserError(f"{source}: 'classes' must be a list or a mapping, got {type(entries).__name__}")
    if not classes:
        raise UserError(f"{source}: no classes")
    provenance = data.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise UserError(f"{source}: provenance must be a mapping")
    return DescriptionSet(str(data.get("name") or Path(source).stem), classes, provenance, notes)


def read_description_set(path: str | Path) -> DescriptionSet:
    """Read a set from a local path or a pyarrow.fs URI (s3://..., gs://...)."""
    text = str(path)
    try:
        if is_uri(text):
            import pyarrow.fs as pafs

            fs, inner = pafs.FileSystem.from_uri(text)
            with fs.open_input_stream(inner) as f:
                raw = f.read()
        else:
            raw = Path(text).expanduser().read_bytes()
    except (FileNotFoundError, IsADirectoryError, OSError) as exc:
        raise UserError(f"description set not readable: {text} ({exc.__class__.__name__}: {exc})") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise UserError(f"{text}: not valid YAML ({exc})") from None
    dset = parse_description_set(data, text)
    logger.debug(f"read description set {dset.name} (id {dset.id}, {len(dset.classes)} classes) from {text}")
    return dset


def dump_description_set(dset: DescriptionSet) -> str:
    classes = []
    for name, descriptions in dset.classes.items():
        entry: dict[str, Any] = {"name": name}
        if name in dset.action_units:
            entry["action_units"] = dset.action_units[name]
        entry["descriptions"] = list(descriptions)
        classes.append(entry)
    doc = {
        "format": FORMAT_VERSION,
        "name": dset.name,
        "id": dset.id,
        "provenance": dset.provenance,
        "classes": classes,
    }
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)


def write_description_set(storage: Storage, dset: DescriptionSet) -> str:
    """Atomically write ``<root>/descriptions/<name>.yaml``; returns the full path."""
    name = check_name(dset.name, "description set name (describe.output_name)")
    return storage.write_text(dump_description_set(dset), DESCRIPTIONS_DIR, f"{name}.yaml")


def shipped_set_paths() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}


def default_description_set_path(class_names: list[str] | tuple[str, ...]) -> Path:
    """The smallest shipped set that covers ``class_names`` (7 or 11 classes, any subset)."""
    wanted = list(class_names)
    best: tuple[int, Path] | None = None
    fewest_missing: list[str] = wanted
    for path in shipped_set_paths().values():
        have = read_description_set(path).classes
        missing = [c for c in wanted if c not in have]
        if not missing and (best is None or len(have) < best[0]):
            best = (len(have), path)
        if len(missing) < len(fewest_missing):
            fewest_missing = missing
    if best is None:
        raise UserError(
            f"no shipped description set covers the classes {fewest_missing}; write one "
            f"(see docs/describe.md) and set describe.description_set to its path"
        )
    return best[1]


def resolve_set_path(name_or_path: str, key: str = "") -> str:
    """A file path or URI as given; a bare name of a shipped set (``default-7``) becomes its path.

    ``key``: the config key the value came from, named in the error when there is no such set."""
    if is_uri(name_or_path) or Path(name_or_path).expanduser().exists():
        return name_or_path
    shipped = shipped_set_paths()
    if name_or_path in shipped:
        return str(shipped[name_or_path])
    where = f"{key}: " if key else ""
    raise UserError(
        f"{where}description set not found: {name_or_path} (not a file; shipped sets: {', '.join(shipped)})"
    )


def load_description_set(path: str | Path | None, class_names: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """Per-class descriptions for ``class_names``, in that order.

    ``path`` is a description set YAML (local path or URI); None loads the shipped default for
    these classes. A class the set lacks is a :class:`UserError` naming it; extra classes in
    the set are ignored, so an 11-class set also serves a 7-class dataset.
    """
    if not class_names:
        raise UserError("load_description_set: no class names given")
    source = str(default_description_set_path(class_names)) if path is None else resolve_set_path(str(path))
    return read_description_set(source).subset(list(class_names), source)
