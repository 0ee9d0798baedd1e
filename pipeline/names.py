"""The one rule for names that become folders or files below the storage root.

An experiment's ``name``, ``tune.name``, ``describe.output_name``, a run name (``--resume
NAME``, the ``run_name`` a checkpoint carries), a dataset name: each is joined into a path
(``<root>/train/<name>-fold1-.../``, ``<root>/tune/<name>/``, ``<root>/shards/<dataset>/``). A
name with ``/``, ``..`` or a leading ``/`` would put that folder somewhere else — outside the
storage root, or over another run's files — so every such name must be one plain path
component: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or a digit (so never
``.``, ``..`` or a hidden file), and short enough that the longest folder built from it (an
evaluation folder adds the run's fold, split and a timestamp) stays within the 255-byte limit
of common filesystems. :class:`~pipeline.storage.Storage` refuses absolute and ``..`` parts as
a second line of defence.
"""

from __future__ import annotations

import re

from pipeline.errors import UserError

__all__ = ["NAME_PATTERN", "MAX_NAME_LENGTH", "name_problem", "check_name", "to_name"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 100


def name_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a name that becomes a path component, or None."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        return f"use letters, digits, '.', '_' or '-', starting with a letter or digit; got {value!r}"
    if len(value) > MAX_NAME_LENGTH:
        return f"at most {MAX_NAME_LENGTH} characters (it names a folder), got {len(value)}: {value!r}"
    return None


def check_name(value: object, what: str) -> str:
    """``value`` when it is a valid name; otherwise a :class:`UserError` ``"<what>: <problem>"``."""
    problem = name_problem(value)
    if problem:
        raise UserError(f"{what}: {problem}")
    return value  # type: ignore[return-value]


def to_name(text: str, fallback: str) -> str:
    """``text`` made into a valid name (``ViT-B/32`` -> ``ViT-B-32``): each run of other characters
    becomes ``-``, leading ``.``/``-``/``_`` are dropped, and it is cut to the length limit;
    ``fallback`` when nothing is left. For labels this project makes up, not for names a user gave
    (those are checked with :func:`check_name`, never silently changed)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip("._-")[:MAX_NAME_LENGTH]
    return name if NAME_PATTERN.fullmatch(name) else fallback
