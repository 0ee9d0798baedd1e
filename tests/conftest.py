"""Shared fixtures. One local Ray cluster serves the whole session (ray.init costs 5-6 s)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray cluster on 127.0.0.1 for the session.

    Four logical CPUs on a 2-core machine: Ray Data needs CPUs left over while Train workers
    hold theirs, or the read never starts (docs/design.md §5). The dashboard is on because the
    State API (behind it) is what frees a trial's resources when Tune stops it early.
    """
    import ray

    from pipeline.raycluster import local_ray_env

    # Each fit starts a preemption-watcher actor (it watches for nodes being drained, which a
    # one-node test cluster never does) and each Parquet read 2 footer-reader actors (the
    # product's local setting; the shards here are a few small local files). Every actor is a
    # Python process to start (1-2 CPU-s each on 2 cores, measured) and the suite runs dozens of
    # fits. Set before local_ray_env, which only fills in what is unset.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    local_ray_env()
    # Ray Train's controller looks at its workers every 2 s by default, so each fit ends (and a
    # killed worker is noticed) up to 2 s after the fact; the suite runs dozens of fits. The
    # controller inherits this from the driver's environment when ray.init starts the cluster.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    os.environ["RAY_TMPDIR"] = tmp
    ray.init(
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        _temp_dir=tmp,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_empty_db(tmp_path_factory):
    """An MLflow SQLite database with its tables made, once per session: MLflow's schema
    migrations take seconds every time a new database file is opened."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(mlflow_empty_db, tmp_path) -> str:
    """A fresh SQLite tracking store of this test's own (a copy of the empty database)."""
    shutil.copy(mlflow_empty_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"
