"""MLflow experiment tracking: one MLflow run per training fold and per sweep trial.

Tracking is on when ``tracking.mlflow_uri`` (config) or the ``MLFLOW_TRACKING_URI`` environment
variable is set, and off otherwise: :func:`tracking_settings` then returns ``None`` and so does
:func:`open_tracker`, so callers write ``if tracker:`` and there is no stand-in object that
pretends to log. Two halves, because workers receive plain data, not live clients:

* the driver (the train or tune stage, once, before any worker starts) calls
  :func:`tracking_settings`: it resolves the URI (config first, then the environment variable, so
  the driver's environment decides and workers on other nodes need not have it), makes local
  paths absolute (a worker's current folder is a Ray session folder), checks that mlflow is
  installed and the store is reachable, and gets or creates the MLflow experiment once (no two
  workers racing to create it). The :class:`TrackingSettings` it returns is a small frozen
  dataclass: picklable, and ``to_dict()`` / ``from_dict()`` for loop configs;
* the process that owns a run — rank 0 of a Ray Train run (one per fold, and one per trial of a
  full-mode sweep), or the trial process of a frozen-encoder sweep — calls :func:`open_tracker`
  and drives one :class:`RunTracker`: ``start`` (or resume) a run, ``log_epoch`` per epoch,
  ``log_files`` / ``log_checkpoint`` / ``log_artifact(s)`` at the end, ``finish``. Other ranks
  open nothing.

Why the MLflow client and not Ray's integration (``ray.air.integrations.mlflow``, checked with
Ray 2.60 and mlflow 3.17 in Ray Train V2 workers and Tune function trainables):

* ``setup_mlflow`` does find rank 0 in a Train V2 worker (other ranks get a no-op module), but it
  always starts a *new* run: it has no run id to continue, so a worker that Ray Train restarts
  after a failure would split a fold over two MLflow runs; this tracker resumes the run whose id
  the recipe checkpointed (:attr:`RunState.tracking_run_id`).
* It uses MLflow's process-global "active run" (``mlflow.start_run`` returns the run already
  active in the process), so a reused actor would log a new trial into the previous one's run;
  the client API used here has no global state.
* It creates the experiment inside the worker with MLflow's default artifact root, the worker's
  current folder: a Ray session folder, deleted with the session. Here the driver creates it with
  a lasting artifact location (beside a sqlite database, or the server's store).
* In a Tune trial it names every run after the experiment (all trials alike) or, without an
  experiment name, makes one MLflow experiment per trial; params get ``/``-joined keys and are not
  truncated to the store's limits.
* ``MLflowLoggerCallback`` runs on the Tune driver: it sees reported metrics but none of the
  trial's files (checkpoint, plots), keeps no state across ``Tuner.restore`` (no ``get_state``),
  and would duplicate the runs that the trials' own trackers create. Sweeps therefore use this
  tracker inside each trial too; the sweep driver only resolves the settings once, can open a
  parent run that trial runs nest under (:meth:`TrackingSettings.nested_in`), and closes runs of
  trials that Tune stopped early (:func:`close_open_runs`).

Requires ``pip install 'dferclip[tracking]'`` (mlflow-skinny plus sqlalchemy and alembic for
``sqlite:`` stores). Logging errors are not swallowed: a tracking store that fails mid-run fails
the worker like any other error, and Ray Train's restart resumes the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
import numbers
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pipeline.config import TrackingConfig
from pipeline.errors import UserError
from pipeline.storage import Storage, is_uri
from pipeline.typed import from_dict

__all__ = [
    "TrackingSettings",
    "RunTracker",
    "tracking_settings",
    "open_tracker",
    "close_open_runs",
    "flatten_params",
    "metric_name",
    "INSTALL_HINT",
]

logger = logging.getLogger(__name__)

ENV_VAR = "MLFLOW_TRACKING_URI"
INSTALL_HINT = "pip install 'dferclip[tracking]'"
STATUSES = ("FINISHED", "FAILED", "KILLED")
# Tags this module sets (user tags may not start with "dferclip." or "mlflow.").
TAG_RESTARTS = "dferclip.restarts"
TAG_PARENT = "mlflow.parentRunId"
# Config sections that say where logs go, not what was run: not logged as params.
NOT_PARAMS = ("tracking.",)


def _mlflow():
    """The mlflow module, or a UserError that says how to install it."""
    try:
        import mlflow
        import mlflow.tracking  # noqa: F401  (MlflowClient)
    except ImportError as exc:
        raise UserError(
            f"MLflow tracking is configured (tracking.mlflow_uri or {ENV_VAR}) but mlflow is not "
            f"installed ({exc}): {INSTALL_HINT}"
        ) from None
    return mlflow


def _limits() -> tuple[int, int, int]:
    """(param value, tag value, key) length limits of the installed mlflow."""
    from mlflow.utils import validation as v

    return (
        getattr(v, "MAX_PARAM_VAL_LENGTH", 6000),
        getattr(v, "MAX_TAG_VAL_LENGTH", 5000),
        getattr(v, "MAX_ENTITY_KEY_LENGTH", 250),
    )


def _redact(uri: str) -> str:
    """The URI without a password, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_name(key: object, max_length: int = 250) -> str:
    """``key`` as a name MLflow accepts (metrics and params): alphanumerics, ``_ - . : /`` and
    spaces, no empty, ``.`` or ``..`` path segment, at most ``max_length`` characters."""
    parts = _NOT_ALLOWED.sub("_", str(key)).split("/")
    name = "/".join("_" if p in (".", "..") else p for p in parts if p)
    return name[:max_length].rstrip("/") or "_"


def _param_value(value: Any) -> str:
    """Strings as they are; everything else as JSON (``8``, ``0.001``, ``true``, ``null``,
    ``[2, 4]``) — the spelling ``--set`` accepts."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def flatten_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config dict -> ``{"model.n_ctx": "8", ...}``: dotted keys, string values (not
    truncated; :meth:`RunTracker.start` truncates to the store's limits). Sections in
    :data:`NOT_PARAMS` (where the logs go) are left out."""
    out: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if any(f"{dotted}.".startswith(p) for p in NOT_PARAMS):
            continue
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, f"{dotted}."))
        else:
            out[dotted] = _param_value(value)
    return out


def _number(value: Any) -> float | None:
    """A finite-or-infinite float for numeric values (numpy and 0-d torch/numpy included), else
    None: bools, strings, None, NaN and containers are not metrics."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, numbers.Real):
        if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # 0-d tensor / array
            return _number(value.item())
        return None
    out = float(value)
    return None if math.isnan(out) else out


def _absolute_uri(uri: str) -> str:
    """Relative local stores made absolute against this (the driver's) folder: a worker's current
    folder is a Ray session folder."""
    m = re.match(r"(sqlite:///)(.+)$", uri, re.I)
    if m and not m[2].startswith("/"):
        return f"sqlite:///{Path(m[2]).resolve()}"  # sqlite:////abs/path
    m = re.match(r"file:(?!//)(.+)$", uri, re.I)  # file:relative/path
    if m:
        return Path(m[1]).resolve().as_uri()
    return uri


def _sqlite_path(uri: str) -> Path | None:
    m = re.match(r"sqlite:///(.+)$", uri, re.I)
    return Path(m[1].split("?")[0]) if m else None


def _check_sqlite_folder(uri: str) -> None:
    """Fail at once on a database folder that cannot be made (MLflow retries for minutes)."""
    path = _sqlite_path(uri)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"MLflow tracking store {uri}: cannot create the database folder {path.parent} ({exc})"
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"MLflow tracking store {uri}: the folder {path.parent} is not writable")


@dataclasses.dataclass(frozen=True)
class TrackingSettings:
    """Where and how runs are tracked: resolved once by :func:`tracking_settings` on the driver,
    shipped to workers as plain data (``to_dict`` / ``from_dict``)."""

    uri: str  # absolute for local stores
    experiment_id: str
    experiment_name: str
    log_checkpoint: bool = True
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # on every run
    parent_run_id: str | None = None  # runs started with these settings nest under it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackingSettings:
        return cls(**data)

    def nested_in(self, parent_run_id: str) -> TrackingSettings:
        """The same settings, with every run started from them a child of ``parent_run_id``
        (e.g. a sweep's run: its trials' runs show nested under it in the MLflow UI)."""
        return dataclasses.replace(self, parent_run_id=parent_run_id)


def tracking_settings(
    cfg: TrackingConfig | dict | None, experiment_name: str, *, environ: dict[str, str] | None = None
) -> TrackingSettings | None:
    """Resolve the tracking settings on the driver; ``None`` when tracking is off.

    The URI is ``cfg.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``; the MLflow experiment is
    ``cfg.mlflow_experiment``, else ``experiment_name`` (the config's ``name``), created when
    missing. Raises :class:`UserError` for a bad URI, a missing mlflow, an unreachable store or a
    deleted experiment.
    """
    if cfg is None:
        cfg = TrackingConfig()
    elif isinstance(cfg, dict):
        cfg = from_dict(TrackingConfig, cfg, "tracking")
    environ = os.environ if environ is None else environ
    uri = cfg.mlflow_uri
    if uri is None:
        uri = environ.get(ENV_VAR) or None
        if uri is None:
            return None
        if why := TrackingConfig.uri_problem(uri):
            raise UserError(f"{ENV_VAR}: {why}")
    uri = _absolute_uri(uri.strip())
    _mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    _check_sqlite_folder(uri)
    name = (cfg.mlflow_experiment or experiment_name).strip()
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = cfg.artifact_location
            if location is None and (db := _sqlite_path(uri)) is not None:
                location = str(db.parent / "mlartifacts")
            elif location is not None and not is_uri(location):
                location = str(Path(location).expanduser().resolve())
            try:
                client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:  # created meanwhile by another driver
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            experiment = client.get_experiment_by_name(name)
    except MlflowException as exc:
        raise UserError(f"MLflow tracking store {_redact(uri)}: {str(exc).splitlines()[0]}") from None
    except ImportError as exc:  # e.g. mlflow-skinny without sqlalchemy for a sqlite: store
        raise UserError(
            f"MLflow tracking store {_redact(uri)} needs the module {exc.name!r}, which is not "
            f"installed: {INSTALL_HINT}"
        ) from None
    if experiment.lifecycle_stage != "active":
        raise UserError(
            f"MLflow experiment {name!r} at {_redact(uri)} is deleted: restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
            "or set tracking.mlflow_experiment to another name"
        )
    return TrackingSettings(
        uri=uri,
        experiment_id=experiment.experiment_id,
        experiment_name=name,
        log_checkpoint=cfg.log_checkpoint,
        tags={str(k): str(v) for k, v in cfg.tags.items()},
    )


def open_tracker(settings: TrackingSettings | dict | None) -> RunTracker | None:
    """A tracker for one run (on rank 0 / the trial process), or ``None`` when tracking is off."""
    if settings is None:
        return None
    if isinstance(settings, dict):
        settings = TrackingSettings.from_dict(settings)
    _mlflow()
    return RunTracker(settings)


class RunTracker:
    """One MLflow run: ``start`` (or resume), ``log_epoch``, artifacts, ``finish``.

    Holds the settings, the run id and a client made on first use; pickling drops the client,
    so a tracker can cross a process boundary and carry on logging to the same run.
    """

    def __init__(self, settings: TrackingSettings):
        self.settings = settings
        self.run_id: str | None = None
        self.finished = False
        self._client = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def __repr__(self) -> str:
        return f"RunTracker({_redact(self.settings.uri)!r}, experiment={self.settings.experiment_name!r}, run={self.run_id})"

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.settings.uri)
        return self._client

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("RunTracker: call start() first")
        if self.finished:
            raise RuntimeError(f"RunTracker: run {self.run_id} is already finished")
        return self.run_id

    # ------------------------------------------------------------------ run lifecycle

    def start(
        self, run_name: str, params: dict | None = None, tags: dict | None = None, resume_run_id: str | None = None
    ) -> str:
        """Start a run (or continue ``resume_run_id``); returns the run id to checkpoint.

        ``params``: a config dict, nested or flat; logged as dotted keys (``model.n_ctx``), values
        truncated to the store's limit. ``tags``: added to the settings' tags (values as strings).
        Resuming sets the run back to RUNNING, counts ``dferclip.restarts`` and logs only params
        the run does not have yet: MLflow params cannot change, so a changed value is reported on
        as a warning and the run keeps the first. A ``resume_run_id`` the store does not know (deleted
        run, another store) starts a new run, with a message.
        """
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        if self.run_id is not None:
            raise RuntimeError(f"RunTracker: already tracking run {self.run_id}; one tracker per run")
        param_limit, tag_limit, key_limit = _limits()
        flat = flatten_params(params or {})
        wanted = {metric_name(k, key_limit): _truncate(v, param_limit) for k, v in flat.items()}
        all_tags = {**self.settings.tags, **{str(k): str(v) for k, v in (tags or {}).items()}}
        if self.settings.parent_run_id:
            all_tags[TAG_PARENT] = self.settings.parent_run_id
        all_tags = {k[:key_limit]: _truncate(v, tag_limit) for k, v in all_tags.items()}

        run = None
        if resume_run_id:
            try:
                run = self.client.get_run(resume_run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                logger.warning(
                    "tracking: MLflow run %s not found in %s; starting a new run",
                    resume_run_id,
                    _redact(self.settings.uri),
                )
            if run is not None and run.info.lifecycle_stage != "active":
                logger.warning("tracking: MLflow run %s is deleted; starting a new run", resume_run_id)
                run = None
        if run is not None:
            self.run_id = run.info.run_id
            have = run.data.params
            changed = {k: (have[k], v) for k, v in wanted.items() if k in have and have[k] != v}
            for k, (old, new) in changed.items():
                logger.warning(
                    "tracking: param %s is %r now but %r in MLflow run %s; MLflow keeps the first value",
                    k,
                    new,
                    old,
                    self.run_id,
                )
            wanted = {k: v for k, v in wanted.items() if k not in have}
            restarts = int(run.data.tags.get(TAG_RESTARTS, "0")) + 1
            all_tags = {k: v for k, v in all_tags.items() if run.data.tags.get(k) != v}
            all_tags[TAG_RESTARTS] = str(restarts)
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(
                self.settings.experiment_id, run_name=run_name, tags=all_tags
            ).info.run_id
            all_tags = {}
        params_list = [Param(k, v) for k, v in wanted.items()]
        tag_list = [RunTag(k, v) for k, v in all_tags.items()]
        for i in range(0, max(len(params_list), len(tag_list)), 100):  # MLflow: 100 params+tags per batch
            self.client.log_batch(self.run_id, params=params_list[i : i + 100], tags=tag_list[i : i + 100])
        self.finished = False
        return self.run_id

    def finish(self, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        """End the run with ``status`` (a restart may resume it later)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.client.set_terminated(self._require_run(), status=status)
        self.finished = True

    # ------------------------------------------------------------------ metrics

    def log_epoch(self, row: dict, step: int) -> dict[str, float]:
        """Log one epoch's metric row at ``step``; returns what was logged (name -> value).

        Numeric values only (ints, floats, numpy scalars, 0-d tensors); bools, strings, None and
        NaN are skipped; names are made MLflow-safe with :func:`metric_name`.
        """
        from mlflow.entities import Metric

        run_id = self._require_run()
        key_limit = _limits()[2]
        logged: dict[str, float] = {}
        for key, value in row.items():
            number = _number(value)
            if number is not None:
                logged[metric_name(key, key_limit)] = number
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(step)) for k, v in logged.items()]
        for i in range(0, len(metrics), 1000):  # MLflow: 1000 metrics per batch
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        return logged

    # ------------------------------------------------------------------ artifacts

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload one local file (under ``artifact_path`` in the run's artifacts)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"log_artifact: {path} is not a file")
        self.client.log_artifact(self._require_run(), str(path), artifact_path)

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a local folder's contents, recursively."""
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"log_artifacts: {directory} is not a folder")
        self.client.log_artifacts(self._require_run(), str(directory), artifact_path)

    def log_files(
        self,
        location: str | os.PathLike,
        patterns: tuple[str, ...] | list[str] = ("*",),
        artifact_path: str | None = None,
    ) -> list[str]:
        """Upload the files directly inside ``location`` whose names match one of ``patterns``
        (``fnmatch``); returns their names. ``location`` is a local folder or a storage URI
        (``s3://...``, as :class:`~pipeline.storage.Storage` takes): remote files are read into
        a temporary folder first."""
        run_id = self._require_run()
        storage = Storage(location)
        names = [n for n in storage.list() if any(fnmatch.fnmatch(n, p) for p in patterns)]
        if not names:
            return []
        if storage.is_local:
            for name in names:
                self.client.log_artifact(run_id, storage.path(name), artifact_path)
            return names
        with tempfile.TemporaryDirectory(prefix="mlflow-upload") as tmp:
            for name in names:
                Path(tmp, name).write_bytes(storage.read_bytes(name))
            self.client.log_artifacts(run_id, tmp, artifact_path)
        return names

    def log_checkpoint(self, location: str | os.PathLike, artifact_path: str = "checkpoint") -> list[str]:
        """Upload a checkpoint folder's files (e.g. the run's ``final/``) under ``checkpoint/``,
        when ``tracking.log_checkpoint`` is true; returns the names uploaded ([] when it is false)."""
        if not self.settings.log_checkpoint:
            return []
        return self.log_files(location, ("*",), artifact_path)


def close_open_runs(
    settings: TrackingSettings | dict,
    status: Literal["FINISHED", "FAILED", "KILLED"] = "KILLED",
    *,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> list[str]:
    """End every still-RUNNING run of the experiment that is a child of ``parent_run_id``
    (default: the settings' parent) and has ``tags``; returns their ids.

    For a sweep driver after ``Tuner.fit()``. A function trial that Tune stops (ASHA, a stopper)
    gets ``SystemExit`` from ``tune.report`` and can ``finish("KILLED")`` itself; a trial whose
    process is torn down without running its code (the Ray Train workers of a full-mode trial, a
    killed actor, a lost node) leaves its run RUNNING, and this ends it.
    """
    if isinstance(settings, dict):
        settings = TrackingSettings.from_dict(settings)
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    _mlflow()
    from mlflow.tracking import MlflowClient

    parent = parent_run_id or settings.parent_run_id
    filters = ["attributes.status = 'RUNNING'"]
    if parent:
        filters.append(f"tags.`{TAG_PARENT}` = '{parent}'")
    for key, value in (tags or {}).items():
        if "'" in str(value) or "`" in str(key):
            raise ValueError(f"close_open_runs: tag {key!r}={value!r}: quotes cannot be searched for")
        filters.append(f"tags.`{key}` = '{value}'")
    if len(filters) == 1:
        raise ValueError("close_open_runs: give a parent run or tags, not the whole experiment")
    client = MlflowClient(tracking_uri=settings.uri)
    closed: list[str] = []
    while True:  # each search sees only runs still RUNNING: no paging over a changing result
        page = client.search_runs([settings.experiment_id], " and ".join(filters), max_results=1000)
        if not page:
            return closed
        for run in page:
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
