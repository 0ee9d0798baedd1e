"""Prompt templates and class sets: YAML data in ``prompts/``, loaded by name or by path.

A template is a ``system`` and a ``user`` message with the placeholders ``{class_name}`` and
``{n}`` (descriptions wanted per answer), plus optional few-shot ``examples`` that are shown
as an earlier question and answer. Only those two placeholders are substituted; any other
brace text (such as a JSON example ``{"descriptions": [...]}``) is left as written, so a
template author never has to escape braces. Adding a template or a class set is adding a file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import UserError

__all__ = [
    "PROMPTS_DIR",
    "PromptTemplate",
    "ClassSet",
    "load_template",
    "load_class_set",
    "list_templates",
    "list_class_sets",
    "render_messages",
]


def _prompts_dir() -> Path:
    """The repository's prompts/ folder: installed from a wheel it is the package data
    ``pipeline/_prompts/`` (pyproject.toml maps it there); in a checkout, an editable install or a
    Ray job's working_dir it sits beside the package."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "_prompts"
    return installed if installed.is_dir() else package.parent / "prompts"


PROMPTS_DIR = _prompts_dir()
PLACEHOLDERS = ("class_name", "n")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str
    user: str
    source: str  # the file it came from
    sha256: str  # of the file's bytes: provenance names exactly which template text was used
    summary: str = ""
    examples: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())


@dataclass(frozen=True)
class ClassSet:
    name: str
    classes: tuple[str, ...]
    source: str


def _resolve(kind: str, name_or_path: str) -> Path:
    """A bare name means prompts/<kind>/<name>.yaml; anything else is a file path."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise UserError(f"{kind[:-1]} file not found: {path}")
        return path
    candidate = PROMPTS_DIR / kind / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(_names(kind)) or "none"
        raise UserError(f"unknown {kind[:-1]} {name_or_path!r}: no {candidate} (known: {known}; or give a .yaml path)")
    return candidate


def _names(kind: str) -> list[str]:
    folder = PROMPTS_DIR / kind
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def list_templates() -> list[str]:
    return _names("templates")


def list_class_sets() -> list[str]:
    return _names("classes")


def _read_yaml(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data, raw


def load_template(name_or_path: str) -> PromptTemplate:
    """Load and check a template; every problem names the file and the key."""
    path = _resolve("templates", name_or_path)
    data, raw = _read_yaml(path)
    problems = []
    unknown = set(data) - {"name", "summary", "system", "user", "examples"}
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)} (valid: name, summary, system, user, examples)")
    for key in ("system", "user"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            problems.append(f"{key}: a non-empty string is required")
    for key in ("system", "user"):
        for found in _PLACEHOLDER.findall(str(data.get(key, ""))):
            if found not in PLACEHOLDERS:
                known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                problems.append(f"{key}: unknown placeholder {{{found}}} (known: {known})")
    if "{class_name}" not in str(data.get("user", "")):
        problems.append("user: must contain the placeholder {class_name}")
    # The answer must be JSON, and OpenAI's json_object mode refuses prompts that never say so.
    if "json" not in (str(data.get("system", "")) + str(data.get("user", ""))).lower():
        problems.append('system/user: must ask for a JSON answer {"descriptions": [...]}')
    examples = []
    for i, ex in enumerate(data.get("examples") or []):
        if (
            not isinstance(ex, dict)
            or not isinstance(ex.get("class_name"), str)
            or not isinstance(ex.get("descriptions"), list)
            or not all(isinstance(d, str) and d.strip() for d in ex["descriptions"])
        ):
            problems.append(f"examples[{i}]: expected {{class_name: str, descriptions: [non-empty str, ...]}}")
            continue
        examples.append((ex["class_name"], tuple(d.strip() for d in ex["descriptions"])))
    if problems:
        raise UserError(f"template {path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return PromptTemplate(
        name=str(data.get("name") or path.stem),
        system=data["system"].strip(),
        user=data["user"].strip(),
        source=str(path),
        sha256=hashlib.sha256(raw).hexdigest(),
        summary=str(data.get("summary", "")),
        examples=tuple(examples),
    )


def load_class_set(name_or_path: str) -> ClassSet:
    path = _resolve("classes", name_or_path)
    data, _ = _read_yaml(path)
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise UserError(f"class set {path}: 'classes' must be a non-empty list of class names")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise UserError(f"class set {path}: duplicate classes {dupes}")
    return ClassSet(str(data.get("name") or path.stem), tuple(c.strip() for c in classes), str(path))


def _fill(text: str, class_name: str, n: int) -> str:
    values = {"class_name": class_name, "n": str(n)}
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def render_messages(template: PromptTemplate, class_name: str, n: int) -> list[dict[str, str]]:
    """Chat messages for one class: system, few-shot turns (other classes only), the question."""
    messages = [{"role": "system", "content": _fill(template.system, class_name, n)}]
    for ex_class, ex_descriptions in template.examples:
        if ex_class.strip().lower() == class_name.strip().lower():
            continue  # never hand the model a ready answer for the class it is asked about
        shown = list(ex_descriptions[:n])
        messages.append({"role": "user", "content": _fill(template.user, ex_class, len(shown))})
        messages.append({"role": "assistant", "content": json.dumps({"descriptions": shown})})
    messages.append({"role": "user", "content": _fill(template.user, class_name, n)})
    return messages
