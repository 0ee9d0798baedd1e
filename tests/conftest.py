"""Shared fixtures. One local Ray cluster serves the whole session (ray.init costs 5-6 s)."""

from __future__ import annotations

import os
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

    local_ray_env()
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
