"""The per-worker training function of Ray Train — written once; the tune stage imports it.

``train_loop_per_worker(loop_config)`` runs on every worker of a ``TorchTrainer``. The loop
config is plain data built by :func:`pipeline.train.driver.loop_config`:

    model: dict (ModelConfig)   train: dict (TrainConfig)   class_names: [...]
    descriptions: {class: [...]} | None    run_uri: "<storage_path>/<run name>"
    run_name, experiment (config dict saved in checkpoints), dataset, fold
    clock: EpochClock actor handle | None (seeds the data tasks' per-epoch randomness)

Per epoch: train on this worker's share of ``train`` (DDP averages the gradients), evaluate
the selection split (``test`` in the paper's protocol, ``val`` in the honest one) with the
confusion matrix and loss summed over workers, track the best epoch, and
``ray.train.report`` the metrics from every rank with rank 0's checkpoint (model, optimiser,
scheduler, scaler, RNG state, epoch, best, history — everything needed to continue). After
the last epoch the best epoch's weights are exported in the project's checkpoint format, and
in validation mode the test split is evaluated once with them.

Reported metric keys: ``epoch``, ``train_loss``, ``train_acc``, ``lr`` (temporal group),
``{split}_loss|uar|war|recall_<class>``, ``best_<metric>``, ``best_epoch``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig, TrainConfig
from pipeline.metrics import EvalMetrics, is_better
from pipeline.model.build import build_model
from pipeline.model.checkpoint import checkpoint_payload
from pipeline.storage import Storage
from pipeline.train.evaluation import autocast_for, evaluate_batches
from pipeline.train.optim import build_optimizer, build_scheduler
from pipeline.train.outputs import RunFiles
from pipeline.train.transforms import model_layout
from pipeline.typed import from_dict

__all__ = ["train_loop_per_worker", "FAULT_MARKER"]

FAULT_MARKER = "fault_injected_epoch{epoch}"
CHECKPOINT_FILE = "model.pt"


def _log(rank: int, text: str) -> None:
    if rank == 0:
        print(text, flush=True)


class _Dist:
    """Sums across workers (a no-op with one worker)."""

    def __init__(self, world: int):
        self.world = world

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def _read_payload(storage: Storage, folder: str) -> dict:
    """A checkpoint payload written by this loop (tensors and plain data only: ``weights_only``)."""
    return torch.load(io.BytesIO(storage.read_bytes(folder, CHECKPOINT_FILE)), map_location="cpu", weights_only=True)


def _persisted_checkpoint(storage: Storage) -> dict | None:
    """The newest loadable ``checkpoint_epoch*`` payload in the run folder, or None.

    Ray Train hands a restarted worker group the last checkpoint its controller has registered.
    A worker that dies within moments of an epoch's report can beat the controller's poll: the
    epoch's checkpoint is already persisted in the run folder but the restart gets none (seen in
    the kill-worker test once cached data made epochs start at once), and would start over.
    """
    import pyarrow.fs as pafs

    infos = storage.fs.get_file_info(pafs.FileSelector(storage.path(), allow_not_found=True))
    names = sorted((i.base_name for i in infos
                    if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_epoch")), reverse=True)
    for name in names:
        try:
            payload = _read_payload(storage, name)
            print(f"Ray Train handed this attempt no checkpoint; resuming from {storage.path(name)}", flush=True)
            return payload
        except Exception:  # noqa: BLE001 — a copy cut short by the crash: try the one before
            continue
    return None


def _restore(model, checkpoint, storage: Storage) -> dict | None:
    """Load weights from a Ray checkpoint (else the run folder's newest) into ``model``; return its training state."""
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            payload = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    else:
        payload = _persisted_checkpoint(storage)
        if payload is None:
            return None
    model.load_state_dict(payload["state_dict"])
    return payload["extra"]


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    tcfg: TrainConfig = from_dict(TrainConfig, loop_config["train"], "loop_config.train")
    mcfg: ModelConfig = from_dict(ModelConfig, loop_config["model"], "loop_config.model")
    class_names: list[str] = list(loop_config["class_names"])
    run_uri, run_name = loop_config["run_uri"], loop_config["run_name"]
    clock = loop_config.get("clock")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    dist = _Dist(world)
    C = len(class_names)
    selection_split = "test" if tcfg.selection == "test" else "val"
    metric = tcfg.best_metric

    torch.manual_seed(tcfg.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
    model = build_model(mcfg, class_names, loop_config.get("descriptions"))
    groups = model.param_groups(tcfg.lr_image_encoder, tcfg.lr_temporal, tcfg.lr_prompt)
    storage = Storage(run_uri)
    state = _restore(model, ray.train.get_checkpoint(), storage)
    # The frozen text tower has no trainable parameters, so DDP registers none of them and every
    # registered parameter receives a gradient each step: no unused-parameter search needed.
    # Buffers (pixel statistics, token embeddings) are constants: no need to broadcast them.
    ddp = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": False, "forward_sync_buffers": False})
    optimizer = build_optimizer(groups, tcfg)
    scheduler = build_scheduler(optimizer, tcfg)
    use_scaler = device.type == "cuda" and tcfg.precision == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    history: list[dict] = []
    confusions: dict[str, dict] = {}  # str(epoch) -> {split: (C, C) counts}
    best = {"epoch": None, "value": None}
    resumed_from: list[int] = []  # epochs whose checkpoint a restart or resume continued from
    start_epoch = 1
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if use_scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        history, confusions = list(state["history"]), dict(state["confusions"])
        best, resumed_from = dict(state["best"]), list(state["resumed_from"]) + [int(state["epoch"])]
        start_epoch = int(state["epoch"]) + 1
        _log(rank, f"[{run_name}] resumed from the checkpoint of epoch {state['epoch']}")
    if device.type != "cuda" and tcfg.precision != "fp32":
        _log(rank, f"[{run_name}] train.precision={tcfg.precision} applies on GPU only; training in fp32 on CPU")

    files = RunFiles(run_uri) if rank == 0 else None
    train_it = ray.train.get_dataset_shard("train")
    eval_its = {s: ray.train.get_dataset_shard(s) for s in ("val", "test") if s in loop_config["eval_splits"]}
    batch = max(1, math.ceil(tcfg.batch_size / world))  # train.batch_size is the global batch
    shuffle = tcfg.shuffle_buffer if tcfg.shuffle_buffer is not None else 2 * batch
    fail_rank = 1 if world > 1 else 0

    def evaluate(split: str) -> EvalMetrics:
        batches = eval_its[split].iter_torch_batches(batch_size=tcfg.eval_batch_size,
                                                    prefetch_batches=tcfg.data_loader_threads)
        cm, loss_sum = evaluate_batches(model, batches, C, device, tcfg.precision)
        dist.sum(cm), dist.sum(loss_sum)
        return EvalMetrics.from_confusion(cm.cpu().numpy().round().astype(np.int64), float(loss_sum.cpu()))

    for epoch in range(start_epoch, tcfg.epochs + 1):
        started = time.perf_counter()
        if rank == 0 and clock is not None:
            import ray

            ray.get(clock.set.remote(epoch))
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
        ddp.train()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        batches = train_it.iter_torch_batches(batch_size=batch, local_shuffle_buffer_size=shuffle or None,
                                              prefetch_batches=tcfg.data_loader_threads)
        for step, b in enumerate(batches):
            video = model_layout(b["video"]).to(device, non_blocking=True)  # (B, T, 3, S, S) uint8
            labels = b["label"].to(device, dtype=torch.long)
            with autocast_for(device, tcfg.precision):
                logits = ddp(video)  # (B, C)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            n = labels.numel()
            sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == labels).sum().double(),
                                 torch.tensor(n, dtype=torch.float64, device=device)])
            if epoch == tcfg.fail_once_at_epoch and rank == fail_rank and step == 0:
                marker = FAULT_MARKER.format(epoch=epoch)
                if not storage.exists(marker):  # once per run, across restarts
                    storage.write_text(f"worker rank {rank} exited on purpose during epoch {epoch}\n", marker)
                    print(f"[{run_name}] fault injection: rank {rank} exits during epoch {epoch}", flush=True)
                    os._exit(1)
        scheduler.step()
        dist.sum(sums)
        row: dict = {"epoch": epoch, "train_loss": float(sums[0] / sums[2]) if sums[2] else float("nan"),
                     "train_acc": float(sums[1] / sums[2]) if sums[2] else float("nan"),
                     "lr": lrs.get("temporal", next(iter(lrs.values())))}
        row.update({f"lr_{k}": v for k, v in lrs.items() if k != "temporal"})
        epoch_evals = {selection_split: evaluate(selection_split)}
        for split, m in epoch_evals.items():
            row.update(m.flat(split, class_names))
        confusions[str(epoch)] = {s: m.confusion for s, m in epoch_evals.items()}
        value = getattr(epoch_evals[selection_split], metric)
        improved = best["epoch"] is None or is_better(value, best["value"], metric)
        if improved:
            best = {"epoch": epoch, "value": value, "metrics": dict(row)}
        row[f"best_{metric}"] = best["value"]
        row["best_epoch"] = best["epoch"]
        row["seconds"] = round(time.perf_counter() - started, 3)
        history.append(row)
        last = epoch == tcfg.epochs

        with contextlib.ExitStack() as stack:
            checkpoint = None
            if rank == 0:
                if improved:
                    _write_model(storage, ("best", CHECKPOINT_FILE), model,
                                 {"epoch": epoch, "metrics": dict(row), "run_name": run_name,
                                  "preprocess": loop_config.get("preprocess")})
                extra = {
                    "epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if use_scaler else None,
                    "rng": {"torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None},
                    "best": best, "history": history, "confusions": confusions, "resumed_from": resumed_from,
                    "config": loop_config.get("experiment") or {}, "run_name": run_name,
                }
                # The directory lives until report() below has copied it to storage.
                d = stack.enter_context(tempfile.TemporaryDirectory(prefix="ckpt"))
                torch.save(checkpoint_payload(model, extra), os.path.join(d, CHECKPOINT_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            final_test = None
            if last:
                dist.barrier()  # rank 0 has written best/model.pt
                final_test = _finalize(model, storage, evaluate, selection_split)
                if final_test is not None:
                    row.update(final_test.flat("test", class_names))
            if rank == 0:
                files.write_metrics(history)
                files.tensorboard(row, purge_step=start_epoch if state is not None else None)
                files.write_curves(history, run_name)
                if last:
                    _write_final(files, storage, model, loop_config, tcfg, best, history, confusions, final_test,
                                 selection_split, resumed_from)
            _log(rank, _progress(run_name, row, tcfg.epochs, selection_split, metric))
            ray.train.report(row, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_epoch{epoch:04d}")
    if files is not None:
        files.close()


def _write_model(storage: Storage, parts: tuple[str, ...], model, extra: dict) -> str:
    buf = io.BytesIO()
    torch.save(checkpoint_payload(model, extra), buf)
    return storage.write_bytes(buf.getvalue(), *parts)


def _finalize(model, storage: Storage, evaluate, selection_split: str) -> EvalMetrics | None:
    """Load the best epoch's weights on every rank; in validation mode evaluate test once."""
    payload = _read_payload(storage, "best")
    model.load_state_dict(payload["state_dict"])
    if selection_split == "val":
        return evaluate("test")
    return None


def _write_final(files: RunFiles, storage: Storage, model, loop_config: dict, tcfg: TrainConfig, best: dict,
                 history: list[dict], confusions: dict, final_test: EvalMetrics | None, selection_split: str,
                 resumed_from: list[int]) -> None:
    class_names = list(loop_config["class_names"])
    best_epoch = best["epoch"]
    best_row = best.get("metrics") or next(r for r in history if r["epoch"] == best_epoch)
    best_cms = confusions.get(str(best_epoch), {})
    if final_test is not None:
        test = {"loss": final_test.loss, "uar": final_test.uar, "war": final_test.war,
                "recall": dict(zip(class_names, final_test.recall)), "confusion": final_test.confusion}
    else:
        test = {"loss": best_row["test_loss"], "uar": best_row["test_uar"], "war": best_row["test_war"],
                "recall": {c: best_row.get(f"test_recall_{c}") for c in class_names},
                "confusion": best_cms.get("test")}
    extra = {"epoch": best_epoch, "selection": tcfg.selection, "best_metric": tcfg.best_metric,
             "metrics": best_row, "test": test, "run_name": loop_config["run_name"],
             "dataset": loop_config.get("dataset"), "fold": loop_config.get("fold"),
             "preprocess": loop_config.get("preprocess")}
    final_path = _write_model(storage, ("final", CHECKPOINT_FILE), model, extra)
    paths = {"run_dir": storage.root, "final_checkpoint": final_path,
             "metrics_csv": files.path("metrics.csv"), "metrics_parquet": files.path("metrics.parquet"),
             "curves": files.path("curves.png"), "tensorboard": files.path("tensorboard")}
    title = f"{loop_config['run_name']} — test (epoch {best_epoch})"
    if test["confusion"] is not None:
        paths["confusion_test"] = files.write_confusion(test["confusion"], class_names, "test", title)
    if selection_split == "val" and best_cms.get("val") is not None:
        paths["confusion_val"] = files.write_confusion(best_cms["val"], class_names, "val",
                                                       f"{loop_config['run_name']} — validation (epoch {best_epoch})")
    summary = {
        "run_name": loop_config["run_name"], "dataset": loop_config.get("dataset"), "fold": loop_config.get("fold"),
        "selection": tcfg.selection, "best_metric": tcfg.best_metric, "epochs": tcfg.epochs,
        "best_epoch": best_epoch, "best_value": best["value"], "best": best_row, "test": test,
        "class_names": class_names, "resumed_from": resumed_from, "paths": paths,
        "completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    files.write_json(summary, "summary.json")


def _pct(v) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def _progress(run_name: str, row: dict, epochs: int, split: str, metric: str) -> str:
    text = (f"[{run_name}] epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {_pct(row['train_acc'])}%"
            f"  | {split} loss {row[f'{split}_loss']:.4f} UAR {_pct(row[f'{split}_uar'])} WAR {_pct(row[f'{split}_war'])}")
    if split == "val" and "test_uar" in row:
        text += f"  | test (best epoch) UAR {_pct(row['test_uar'])} WAR {_pct(row['test_war'])}"
    best = row[f"best_{metric}"]
    best_text = f"{best:.4f}" if metric == "loss" and best is not None else _pct(best)
    return text + f"  | best {metric} {best_text} @ {row['best_epoch']}  ({row['seconds']:.1f}s)"
