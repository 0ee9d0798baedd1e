"""Relative paths and Ray jobs.

A Ray job's driver runs in Ray's temporary copy of the uploaded working directory
(``<ray temp dir>/session_*/runtime_resources/working_dir_files/_ray_pkg_*/``). A relative
``storage.root`` resolves inside that copy: the shards and runs written before are not found
there, and what the job writes is deleted with the session. So:

- inside a Ray job, a relative root is a config error saying how to fix it
  (:func:`relative_root_problems`, part of :meth:`pipeline.config.ExperimentConfig.validate`, so
  every stage and every way of loading a config checks it);
- ``dferclip submit`` makes relative roots absolute (against the directory it runs in, as a
  local run would resolve them) when every node of the cluster is this machine, and refuses them
  otherwise (:func:`absolute_overrides`, :func:`nodes_are_this_machine`).

A process is a job's driver when Ray's job supervisor started it: the supervisor hands the
entrypoint its job config (runtime env and metadata, with the submission id) in the
``RAY_JOB_CONFIG_JSON_ENV_VAR`` environment variable (``ray.dashboard.modules.job.job_supervisor``,
Ray 2.60). A driver started by hand, and every worker process, has none.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig

__all__ = [
    "JOB_CONFIG_ENV",
    "PATH_KEYS",
    "ray_job_id",
    "relative_paths",
    "relative_root_problems",
    "absolute_overrides",
    "is_this_machine",
    "nodes_are_this_machine",
]

# ray._private.runtime_env.constants.RAY_JOB_CONFIG_JSON_ENV_VAR (name and value are the same string)
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

# The config's locations of data a job reads or writes: relative, each would point into the copy.
PATH_KEYS = ("storage.root", "dataset.root", "dataset.annotations")


def ray_job_id() -> str | None:
    """The submission id when this process is the driver of a submitted Ray job, else None
    ("" when Ray's job config names none)."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if raw is None:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        metadata = {}
    return str(metadata.get("job_submission_id") or "")


def _value(cfg: ExperimentConfig, key: str) -> str | None:
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)


def relative_paths(cfg: ExperimentConfig) -> dict[str, str]:
    """The :data:`PATH_KEYS` of ``cfg`` that are relative local paths (``~`` counts as absolute)."""
    from pipeline.storage import is_uri  # here: config validation imports this module, pyarrow stays unloaded

    found = {}
    for key in PATH_KEYS:
        value = _value(cfg, key)
        if value and not is_uri(value) and not os.path.isabs(os.path.expanduser(value)):
            found[key] = value
    return found


def relative_root_problems(cfg: ExperimentConfig) -> list[str]:
    """Inside a Ray job, one problem per relative path of :data:`PATH_KEYS`; elsewhere none."""
    job = ray_job_id()
    if job is None:
        return []
    where = f"Ray job {job}" if job else "a Ray job"
    return [
        f"{key}: {value!r} is a relative path, and this is {where}: it resolves inside Ray's temporary copy "
        f"of the working directory ({os.getcwd()}), where earlier outputs are not found and new ones are "
        f"deleted with the job. Give an absolute path every node can read or a URI (s3://...), e.g. "
        f"--set {key}=/shared/dferclip, or submit with `dferclip submit`, which makes it absolute for a "
        "cluster on this machine"
        for key, value in relative_paths(cfg).items()
    ]


def absolute_overrides(relative: dict[str, str], base: str | Path) -> list[str]:
    """``--set KEY=/abs/path`` overrides making each relative path absolute against ``base``."""
    return [f"{key}={(Path(base) / os.path.expanduser(value)).resolve()}" for key, value in relative.items()]


def is_this_machine(ip: str) -> bool:
    """Whether ``ip`` is an address of this machine: loopback, or one a socket can bind to here."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.is_loopback:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))  # only an address assigned to one of this machine's interfaces binds
    except OSError:
        return False
    return True


def nodes_are_this_machine(node_ips: Iterable[str]) -> bool:
    """True when there is at least one node and every one of them is this machine."""
    ips = list(node_ips)
    return bool(ips) and all(is_this_machine(ip) for ip in ips)
