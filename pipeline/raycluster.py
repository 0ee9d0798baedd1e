"""Joining or starting Ray, the same way for every stage.

Inside ``ray job submit`` (and wherever ``RAY_ADDRESS`` is set) ``ray.init()`` joins that
cluster; on a laptop it starts a local one on the fly. Resource requests are checked against
what the cluster has so an impossible request fails with a message instead of waiting forever.
"""

from __future__ import annotations

import logging
import math
import os

from pipeline.errors import UserError

__all__ = ["ensure_ray", "quiet_ray", "ray_log_dir", "local_ray_env", "check_resources", "cluster_capacity"]

logger = logging.getLogger(__name__)


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

    Ray is quiet on the console unless the command ran with ``-v`` (:func:`quiet_ray`): the
    workers' output stays in the session's log files (``log_to_driver`` only with -v; an error
    in a worker still reaches the driver, which raises it with the worker's traceback), Ray's
    own loggers show warnings and errors, Ray Data prints no execution plans or progress.
    """
    import ray

    from pipeline import logs

    if ray.is_initialized():
        quiet_ray()
        return
    logs.demote(*_RAY_NOTICES)  # before ray.init: it has notices of its own
    verbose = logs.verbosity() >= logs.VERBOSE
    # configure_logging=False: Ray leaves the "ray" logger without handlers, route_logger in
    # quiet_ray gives it this project's console; until then (ray.init's own notices) Python's
    # last-resort handler, which setup_logging made the same console.
    kwargs: dict = {"log_to_driver": verbose, "configure_logging": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
        quiet_ray()
        _say_where_logs_are()
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
        logger.warning(
            f"Ray's dashboard did not start ({str(exc).strip().splitlines()[0][:120]}); continuing without it"
        )
        if ray.is_initialized():
            ray.shutdown()
        kwargs.update(include_dashboard=False)
        kwargs.pop("dashboard_host", None)
        ray.init(**kwargs)
    quiet_ray()
    _say_where_logs_are()


def _say_where_logs_are() -> None:
    where = ray_log_dir()
    if where:
        logger.debug(f"Ray's logs (workers' output, Ray Data's ray-data/ folder): {where}")


# Ray notices this project causes or cannot act on: on the console only with -v.
_RAY_NOTICES = (
    "Token authentication is enabled for this Ray cluster",  # ray.init, a local cluster's default
    "Progress bars disabled. To enable",  # Ray Data, quiet_ray's own setting
    "Progress bars for operators disabled",  # idem
)


def ray_log_dir() -> str | None:
    """The session's log folder (workers' output, Ray Data's ray-data/ logs), when known."""
    try:  # ray._private.worker._global_node: private, used only to tell the user where to look
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        return node.get_logs_dir_path() if node is not None else None
    except Exception:  # noqa: BLE001
        return None


def quiet_ray() -> None:
    """Ray's console output for this process, per :func:`pipeline.logs.verbosity`.

    The ``ray`` and ``ray.data`` loggers go through this project's console (warnings and
    errors; info with -v) and file logs; Ray Data prints no execution plan at the start of each
    dataset (``DataContext.print_on_execution_start``), no stats (``enable_auto_log_stats``) and
    no progress bars unless -v on a terminal (the operators' bars with -vv). Ray Data's own log
    file in the session folder keeps everything.
    """
    import sys

    import ray.data

    from pipeline import logs

    level = logs.verbosity()
    terminal = logs.console_is_terminal() and sys.stdout.isatty()
    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = level >= logs.VERBOSE
    ctx.enable_auto_log_stats = level >= logs.DEBUG
    ctx.verbose_stats_logs = False
    ctx.enable_progress_bars = level >= logs.VERBOSE and terminal
    ctx.enable_operator_progress_bars = level >= logs.DEBUG and terminal
    logs.demote(*_RAY_NOTICES)
    logs.route_logger("ray")
    logs.route_logger("ray.data")  # keeps its session file handler, loses its console one
    logging.getLogger("ray").setLevel(logging.DEBUG if level >= logs.DEBUG else logging.INFO)


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


def check_resources(
    what: str,
    *,
    cpus: float = 0.0,
    gpus: float = 0.0,
    count: int = 1,
    key: str = "",
    spare_cpus: float = 0.0,
    spare_for: str = "",
) -> None:
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
            problems.append(
                f"{count} x {each:g} {name}s for {count} {what}s at once (the cluster has {total.get(name, 0.0):g})"
            )
    if not problems and spare_cpus and cpus * count + spare_cpus > total.get("CPU", 0.0):
        problems.append(
            f"{count} x {cpus:g} CPUs for {count} {what}s, leaving less than {spare_cpus:g} of the "
            f"cluster's {total.get('CPU', 0.0):g} CPUs for {spare_for}"
        )
    if problems:
        where = f"; lower {key}" if key else ""
        raise UserError(f"{what} asks for {' and '.join(problems)}: it would wait forever{where}")
