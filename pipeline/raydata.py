"""Ray Data actor passes that always end, whatever kills their actors.

    map_batches_retried(ds, actor_cls, *, retries, alone, pool_size, **map_args) -> Dataset
    with_lone_retries(items, key, one_pass, *, settle=None, announce=None) -> list  # still lost
    lone_retry_notice(stage, process, count, noun) -> str  # the warning before the lone pass

A batch whose actor process dies (killed for memory, a crashing decoder) is tried ``retries``
more times; after that Ray Data skips it instead of failing the job. Its inputs then run once
more one per batch (``one_pass(lost, alone=True)``), so only an input that kills its actor by
itself is left over — the caller makes it an error row — and its batch-mates still complete.
Preprocess (:mod:`pipeline.preprocess`) and batch prediction (:mod:`pipeline.batch_predict`)
both run this way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Iterable

__all__ = ["map_batches_retried", "with_lone_retries", "lone_retry_notice"]


def map_batches_retried(ds, actor_cls, *, retries: int, alone: bool, pool_size: int, **map_args):
    """``ds.map_batches(actor_cls, ...)`` on an actor pool of ``pool_size`` with finite task
    retries after an actor dies and a skipped batch (not a failed job) after the last one.
    ``alone``: one batch in flight per actor, so a dying actor takes only its own input's try
    with it, not those queued behind it. ``map_args`` go to ``map_batches``."""
    import ray

    pool = ray.data.ActorPoolStrategy(size=pool_size, max_tasks_in_flight_per_actor=1 if alone else None)
    # Ray Data's defaults retry a batch forever when its actor dies, so an input that gets its
    # actor killed for memory would be tried again and again. Task retries are finite here;
    # restarts stay unlimited (each follows a failed try, so they are finite too): in Ray Data
    # 2.60 an actor past a finite max_restarts stays dead in the pool and the job stalls. Ray
    # 2.60 takes both only as ray_remote_args, which it marks deprecated (removed in 2.64; the
    # project pins one Ray minor, and the preprocess and batch-predict tests kill an actor).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(actor_cls, compute=pool, max_restarts=-1, max_task_retries=retries, **map_args)
    # A batch that still fails is skipped instead of failing the run; its inputs do not come
    # back. (Only actor deaths fail a batch: the actors return every other error as a row.)
    ds.context.max_errored_blocks = -1
    return ds


def with_lone_retries(
    items: list,
    key: Callable[[object], Hashable],
    one_pass: Callable[..., Iterable[Hashable]],
    *,
    settle: Callable[[list], list] | None = None,
    announce: Callable[[list], None] | None = None,
) -> list:
    """Run ``one_pass(items, alone=False)``; the items whose key did not come back run again
    with ``one_pass(lost, alone=True)`` (one per batch). Returns the items that never came back.
    ``settle(lost)`` may drop items that finished before their actor died (their output is
    there); ``announce(lost)`` is told before the lone pass."""
    answered = set(one_pass(items, alone=False))
    lost = [it for it in items if key(it) not in answered]
    if lost and settle is not None:
        lost = settle(lost)
    if not lost:
        return []
    if announce is not None:
        announce(lost)
    answered = set(one_pass(lost, alone=True))
    return [it for it in lost if key(it) not in answered]


def lone_retry_notice(stage: str, process: str, count: int, noun: str) -> str:
    """The warning a stage shows before its lone pass, e.g. ``lone_retry_notice("preprocess",
    "a worker process", 3, "clip(s)")``."""
    return (
        f"{stage}: {process} died on every try of {count} {noun}' batches "
        "(killed, e.g. for memory, or crashed); trying each of them alone"
    )
