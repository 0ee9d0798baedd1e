"""The Ray Train adapter of the training recipe: the function every ``TorchTrainer`` worker runs.

``train_loop_per_worker(loop_config)`` takes plain data built by
:func:`pipeline.train.driver.loop_config`: ``spec`` (a :class:`~pipeline.train.recipe.RunSpec`
as a dict), ``run_uri`` (the run folder) and ``clock`` (the actor that seeds the data tasks'
per-epoch randomness). It builds the run's model on every rank, wraps it in DDP and drives
:class:`~pipeline.train.recipe.Recipe` with this worker's share of the Ray Datasets. What is
Ray's stays here: the all-reduce of sums, checkpoints through ``ray.train.report`` (rank 0's
weights plus the recipe's state every epoch, so a restarted worker group continues), the best
epoch's weights in ``best/model.pt``, the run folder's files (rank 0, :mod:`.outputs`) and the
exported ``final/model.pt``. The reported metric keys are :data:`~pipeline.train.recipe.METRIC_KEYS`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import torch

from pipeline.model.checkpoint import checkpoint_payload
from pipeline.storage import Storage
from pipeline.train.evaluation import frame_pairs
from pipeline.train.outputs import RunFiles
from pipeline.train.precision import effective_precision, prepare_model
from pipeline.train.recipe import Recipe, RunSpec, build_run_model, progress_line

__all__ = ["train_loop_per_worker", "FAULT_MARKER", "CHECKPOINT_FILE"]

logger = logging.getLogger(__name__)

FAULT_MARKER = "fault_injected_epoch{epoch}"
CHECKPOINT_FILE = "model.pt"


def _all_reduce(world: int):
    """Sums a tensor over the workers, in place (nothing to do with one worker)."""
    if world == 1:
        return None

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    return reduce


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _read_payload(storage: Storage, folder: str) -> dict:
    """A checkpoint payload written by this loop (tensors and plain data only: ``weights_only``)."""
    return torch.load(io.BytesIO(storage.read_bytes(folder, CHECKPOINT_FILE)), map_location="cpu", weights_only=True)


def _write_model(storage: Storage, folder: str, model, extra: dict) -> str:
    buf = io.BytesIO()
    torch.save(checkpoint_payload(model, extra), buf)
    return storage.write_bytes(buf.getvalue(), folder, CHECKPOINT_FILE)


def _persisted_checkpoint(storage: Storage) -> dict | None:
    """The newest loadable ``checkpoint_epoch*`` payload in the run folder, or None.

    Ray Train hands a restarted worker group the last checkpoint its controller has registered.
    A worker that dies within moments of an epoch's report can beat the controller's poll: the
    epoch's checkpoint is already persisted in the run folder but the restart gets none (seen in
    the kill-worker test once cached data made epochs start at once), and would start over.
    """
    import pyarrow.fs as pafs

    infos = storage.fs.get_file_info(pafs.FileSelector(storage.path(), allow_not_found=True))
    names = sorted(
        (
            i.base_name
            for i in infos
            if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_epoch")
        ),
        reverse=True,
    )
    for name in names:
        try:
            payload = _read_payload(storage, name)
            logger.warning("Ray Train handed this attempt no checkpoint; resuming from %s", storage.path(name))
            return payload
        except Exception:  # noqa: BLE001 — a copy cut short by the crash: try the one before
            continue
    return None


def _saved_payload(checkpoint, storage: Storage) -> dict | None:
    """The payload of Ray's checkpoint for this attempt, else the run folder's newest, else None."""
    if checkpoint is None:
        return _persisted_checkpoint(storage)
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def _fail_once(batches: Iterator, storage: Storage, epoch: int, rank: int) -> Iterator:
    """``train.fail_once_at_epoch``: this worker exits after the epoch's first step, once per run
    (across restarts: a marker file remembers it) — how the tests exercise fault tolerance."""
    for step, batch in enumerate(batches):
        yield batch
        marker = FAULT_MARKER.format(epoch=epoch)
        if step == 0 and not storage.exists(marker):
            storage.write_text(f"worker rank {rank} exited on purpose during epoch {epoch}\n", marker)
            logger.warning("fault injection: rank %d exits during epoch %d", rank, epoch)
            os._exit(1)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    spec = RunSpec.from_dict(loop_config["spec"])
    t, run_uri, clock = spec.train, loop_config["run_uri"], loop_config.get("clock")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    storage = Storage(run_uri)

    saved = _saved_payload(ray.train.get_checkpoint(), storage)
    if saved is not None and spec.init_checkpoint:
        # A run started from a checkpoint continues as the model its own checkpoint records
        # (the init file is not needed again, and no CLIP weights are fetched for nothing).
        from pipeline.model.checkpoint import model_from_payload

        model = model_from_payload(saved, f"{spec.run_name}: its checkpoint").train()
    else:
        model = build_run_model(spec)  # identical on every rank (DDP also broadcasts rank 0's weights)
        if saved is not None:
            model.load_state_dict(saved["state_dict"])
    prepare_model(model, device, compile=t.compile)  # train.compile; channels-last on a GPU
    # The frozen text tower has no trainable parameters, so DDP registers none of them and every
    # registered parameter receives a gradient each step: no unused-parameter search needed.
    # Buffers (pixel statistics, token embeddings) are constants: no need to broadcast them.
    ddp = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": False, "forward_sync_buffers": False}
    )
    recipe = Recipe(spec, model, device=device, reduce=_all_reduce(world))
    recipe.train_forward = ddp
    if saved is not None:
        recipe.load_state_dict(saved["extra"])
        logger.info("[%s] resumed from the checkpoint of epoch %d", spec.run_name, recipe.state.epoch)
    if effective_precision(device, t.precision) != t.precision and rank == 0:
        logger.info("[%s] train.precision=%s applies on GPU only; training in fp32 on CPU", spec.run_name, t.precision)

    files = RunFiles(storage) if rank == 0 else None
    purge_step = recipe.state.epoch + 1 if saved is not None else None
    train_it = ray.train.get_dataset_shard("train")
    eval_its = {s: ray.train.get_dataset_shard(s) for s in spec.eval_splits}
    batch = max(1, math.ceil(t.batch_size / world))  # train.batch_size is the global batch
    shuffle = t.shuffle_buffer if t.shuffle_buffer is not None else 2 * batch

    def eval_pairs(split: str):
        return frame_pairs(
            eval_its[split].iter_torch_batches(batch_size=t.eval_batch_size, prefetch_batches=t.data_loader_threads),
            device,
        )

    with recipe.tracked(enabled=rank == 0) as tracker:
        for epoch in recipe.epochs():
            started = time.perf_counter()
            if rank == 0 and clock is not None:
                ray.get(clock.set.remote(epoch))
            batches = train_it.iter_torch_batches(
                batch_size=batch, local_shuffle_buffer_size=shuffle or None, prefetch_batches=t.data_loader_threads
            )
            if epoch == t.fail_once_at_epoch and rank == (1 if world > 1 else 0):
                batches = _fail_once(batches, storage, epoch, rank)
            train_row = recipe.train_epoch(frame_pairs(batches, device))
            evals = {spec.selection_split: recipe.evaluate(eval_pairs(spec.selection_split))}
            row, improved = recipe.end_epoch(train_row, evals, time.perf_counter() - started)
            with contextlib.ExitStack() as stack:
                checkpoint = None
                if rank == 0:
                    if improved:
                        _write_model(
                            storage,
                            "best",
                            model,
                            {
                                "epoch": row["epoch"],
                                "metrics": dict(row),
                                "run_name": spec.run_name,
                                "preprocess": spec.preprocess,
                            },
                        )
                    # The directory lives until report() below has copied it to storage.
                    d = stack.enter_context(tempfile.TemporaryDirectory(prefix="ckpt"))
                    extra = {**recipe.state_dict(), "config": spec.experiment, "run_name": spec.run_name}
                    torch.save(checkpoint_payload(model, extra), os.path.join(d, CHECKPOINT_FILE))
                    checkpoint = ray.train.Checkpoint.from_directory(d)
                if recipe.last_epoch:

                    def load_best() -> None:
                        _barrier(world)  # rank 0 has written best/model.pt
                        model.load_state_dict(_read_payload(storage, "best")["state_dict"])

                    test = recipe.finish(load_best, lambda: eval_pairs("test"))
                if files is not None:
                    files.write_epoch(recipe.state.history, row, spec.run_name, purge_step)
                    if recipe.last_epoch:
                        _write_final(files, storage, model, spec, recipe, test)
                    logger.info(progress_line(spec.run_name, row, t.epochs, spec.selection_split, t.best_metric))
                ray.train.report(row, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_epoch{row['epoch']:04d}")
        if tracker is not None and recipe.last_epoch:
            tracker.log_files(storage.uri(), ["*.png", "metrics.csv", "summary.json"])
            tracker.log_checkpoint(storage.uri("final"))
    if files is not None:
        files.close()


def _write_final(files: RunFiles, storage: Storage, model, spec: RunSpec, recipe: Recipe, test: dict) -> None:
    """The exported model (the selected epoch's weights) and ``summary.json`` of the run folder."""
    s, t, names = recipe.state, spec.train, list(spec.class_names)
    best_row = s.best_row or next(r for r in s.history if r["epoch"] == s.best_epoch)
    extra = {
        "epoch": s.best_epoch,
        "selection": t.selection,
        "best_metric": t.best_metric,
        "metrics": best_row,
        "test": test,
        "run_name": spec.run_name,
        "dataset": spec.dataset,
        "fold": spec.fold,
        "preprocess": spec.preprocess,
        "description_set": spec.description_set,
        "init_checkpoint": spec.init_checkpoint,
    }
    paths = {
        "run_dir": storage.root,
        "final_checkpoint": _write_model(storage, "final", model, extra),
        "metrics_csv": files.path("metrics.csv"),
        "metrics_parquet": files.path("metrics.parquet"),
        "curves": files.path("curves.png"),
        "tensorboard": files.path("tensorboard"),
    }
    if test["confusion"] is not None:
        paths["confusion_test"] = files.write_confusion(
            test["confusion"], names, "test", f"{spec.run_name} — test (epoch {s.best_epoch})"
        )
    val_cm = s.confusions.get(str(s.best_epoch), {}).get("val")
    if spec.selection_split == "val" and val_cm is not None:
        paths["confusion_val"] = files.write_confusion(
            val_cm, names, "val", f"{spec.run_name} — validation (epoch {s.best_epoch})"
        )
    files.write_json(
        {
            "run_name": spec.run_name,
            "dataset": spec.dataset,
            "fold": spec.fold,
            "selection": t.selection,
            "best_metric": t.best_metric,
            "epochs": t.epochs,
            "best_epoch": s.best_epoch,
            "best_value": s.best_value,
            "best": best_row,
            "test": test,
            "class_names": names,
            "description_set": spec.description_set,
            "init_checkpoint": spec.init_checkpoint,
            "resumed_from": s.resumed_from,
            "paths": paths,
            "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "summary.json",
    )
