"""Joining or starting Ray, the same way for every stage.

Inside ``ray job submit`` (and wherever ``RAY_ADDRESS`` is set) ``ray.init()`` joins that
cluster; on a laptop it starts a local one on the fly. Resource requests are checked against
what the cluster has so an impossible request fails with a message instead of waiting forever.
"""

from __future__ import annotations

import math
import os

from pipeline.errors import UserError

__all__ = ["ensure_ray", "local_ray_env", "check_resources", "cluster_capacity"]


# Ray Data starts this many actors to read Parquet footers on every read (its default, 32, is
# sized for object stores over a network). On one machine the footers are on local disk and
# every actor is a Python process to start: the 2-epoch train test took 60 s with 2 instead of
# 76 s with 32 on 2 cores. Only a Ray started here gets it; a cluster keeps its own setting.
LOCAL_PARQUET_FOOTER_ACTORS = "2"


def local_ray_env() -> None:
    """Environment for a Ray instance started on this machine (its workers inherit it)."""
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", LOCAL_PARQUET_FOOTER_ACTORS)


def ensure_ray(num_cpus: int | None = None, *, dashboard: bool = True) -> None:
    """Join the cluster at RAY_ADDRESS if set, else start a local Ray (idempotent).

    A local Ray starts with its dashboard bound to loopback: the State API behind it is what Ray
    Train's placement-group cleaner queries, and what frees the resources of a trial that Tune
    stops early. The dashboard can fail to come up in time on a heavily loaded machine; the stage
    then goes on without it rather than failing.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"log_to_driver": True, "configure_logging": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
        return
    local_ray_env()
    kwargs.update(num_cpus=num_cpus, include_dashboard=dashboard)
    if dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"  # loopback only
    try:
        ray.init(**kwargs)
    except Exception as exc:  # the dashboard's start-up timeout raises a bare Exception
        if not dashboard:
            raise
        print(f"warning: Ray's dashboard did not start ({str(exc).strip().splitlines()[0][:120]}); "
              "continuing without it", flush=True)
        if ray.is_initialized():
            ray.shutdown()
        kwargs.update(include_dashboard=False)
        kwargs.pop("dashboard_host", None)
        ray.init(**kwargs)

def cluster_capacity(live_nodes: list[dict], cluster_config=None) -> tuple[dict, dict]:
    """(total, largest single node) resources the cluster has or can scale up to.

    ``live_nodes``: ``Resources`` dicts of the alive nodes. ``cluster_config``: the autoscaler's
    ``ClusterConfig`` (node types and their max counts) when the cluster autoscales — a GPU
    worker group with ``min_workers: 0`` has no live GPU yet, but a request for one is fine.
    Each figure is the larger of the live and configured ones, so this never refuses what
    the cluster could run.
    """
    total: dict[str, float] = {}
    largest: dict[str, float] = {}
    for res in live_nodes:
        for k, v in res.items():
            total[k] = total.get(k, 0.0) + v
            largest[k] = max(largest.get(k, 0.0), v)
    configured: dict[str, float] = {}
    for group in getattr(cluster_config, "node_group_configs", ()):
        for k, v in group.resources.items():
            count = math.inf if group.max_count == -1 else group.max_count
            configured[k] = configured.get(k, 0.0) + (v * count if count else 0.0)
            if count:
                largest[k] = max(largest.get(k, 0.0), v)
    for k, v in configured.items():
        total[k] = max(total.get(k, 0.0), v)
    return total, largest


def check_resources(what: str, *, cpus: float = 0.0, gpus: float = 0.0, count: int = 1, key: str = "",
                    spare_cpus: float = 0.0, spare_for: str = "") -> None:
    """Fail at once when ``count`` requests of ``cpus``/``gpus`` each can never be placed.

    One request (a worker, a trial) must fit on a single node, and ``count`` of them (the
    training workers, which start together) in the whole cluster; Ray would otherwise queue
    them forever. ``spare_cpus`` must stay free beside them for ``spare_for`` (Ray Data's tasks
    feeding the training workers: with every CPU held by the workers they never start and
    training waits forever, docs/design.md §5). ``key`` names the config entries to change.
    """
    import ray

    config = None
    try:  # the same (private) source Ray Train uses for its own check
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - older/newer Ray without it: live nodes only
        config = None
    total, largest = cluster_capacity([n["Resources"] for n in ray.nodes() if n.get("Alive")], config)
    problems = []
    for name, each in (("CPU", cpus), ("GPU", gpus)):
        if each > largest.get(name, 0.0):
            problems.append(f"{each:g} {name}s per {what} (the largest node has {largest.get(name, 0.0):g})")
        elif each * count > total.get(name, 0.0):
            problems.append(f"{count} x {each:g} {name}s for {count} {what}s at once "
                            f"(the cluster has {total.get(name, 0.0):g})")
    if not problems and spare_cpus and cpus * count + spare_cpus > total.get("CPU", 0.0):
        problems.append(f"{count} x {cpus:g} CPUs for {count} {what}s, leaving less than {spare_cpus:g} of the "
                        f"cluster's {total.get('CPU', 0.0):g} CPUs for {spare_for}")
    if problems:
        where = f"; lower {key}" if key else ""
        raise UserError(f"{what} asks for {' and '.join(problems)}: it would wait forever{where}")
