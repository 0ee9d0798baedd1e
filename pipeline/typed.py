"""Turn plain dicts (parsed YAML) into typed dataclasses, collecting every error.

This is the generic half of the configuration system; the experiment schema
itself lives in :mod:`pipeline.config`. Errors are gathered into one
:class:`ConfigError` so a user fixes a config in one pass, and each names the
full key path (``train.epochs``), the bad value and what would be valid.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

import yaml

__all__ = ["ConfigError", "from_dict", "to_dict", "apply_override", "parse_override"]


class ConfigError(ValueError):
    """One or more problems in a configuration, each with its key path."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:\n{lines}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    # YAML's .nan / .inf are floats: NaN passes every `x < 0` check that validate() makes, so no
    # field takes a non-finite number.
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(f"{path}: expected a finite number, got {value!r}")
        return None
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _convert(arg, value, path, trial)
            if not trial:
                return out
        errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return None
        return _build(tp, value, path, errors)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return None
        (item_tp, *_rest) = typing.get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return None
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(val_tp, v, f"{path}.{k}", errors) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported config type {tp!r} at {path}")
    errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return None


def _build(cls: type, data: dict, path: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    prefix = f"{path}." if path else ""
    # Only this section's own problems stop it from being built: ``errors`` is shared by every
    # section, and testing it as a whole would skip the checks of each section after a bad one.
    known_before = len(errors)
    for key in data:
        if key not in known:
            options = ", ".join(sorted(known))
            errors.append(f"{prefix}{key}: unknown key (valid keys here: {options})")
    for name, f in known.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], prefix + name, errors)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{prefix}{name}: missing required value ({_type_name(hints[name])})")
    if len(errors) > known_before:
        return None
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        errors.append(f"{path or '<root>'}: {exc}")
        return None
    check = getattr(obj, "validate", None)
    if callable(check):
        for problem in check() or []:
            errors.append(f"{prefix}{problem}")
    return obj


def from_dict(cls: type, data: dict, source: str | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``, raising one :class:`ConfigError` listing every problem.

    A dataclass may define ``validate() -> list[str]`` for cross-field checks; each problem it
    returns should start with the field name (the section path is prefixed here).
    """
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping, got {type(data).__name__}"], source)
    errors: list[str] = []
    # Build section by section so one bad section does not hide problems in others.
    obj = _build(cls, data, "", errors)
    if errors:
        raise ConfigError(errors, source)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain, YAML-serialisable form of a config object (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=2"`` → (["train", "epochs"], 2); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([f"--set {text!r}: expected KEY.PATH=VALUE, e.g. train.epochs=2"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError([f"--set {key}: value {raw!r} is not valid YAML ({exc})"]) from None
    return key.split("."), value


def apply_override(data: dict, text: str) -> dict:
    """Set one ``--set`` override into the raw config dict (validated later with the rest)."""
    parts, value = parse_override(text)
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError([f"--set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a mapping"])
        node = child
    node[parts[-1]] = value
    return data
