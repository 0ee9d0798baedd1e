"""The Ray Train driver: datasets + ``TorchTrainer`` for one run (one fold).

``fit(job)`` is what the train stage calls per fold and what a full Tune trial calls with its
own callbacks (``callbacks=[TuneReportCallback()]``, ``progress=False``)::

    spec = RunSpec(model=cfg.model, train=cfg.train, class_names=..., descriptions=...,
                   run_name=new_run_name(cfg.name, 1), dataset=cfg.dataset.name, fold=1)
    storage = Storage(cfg.storage.root)
    result = fit(TrainJob(spec, storage, runs=storage.child("train")))   # ray.train.Result

Run names must be fresh for new runs: Ray Train silently *resumes* a run whose name and
storage path already hold checkpoints (that is exactly how ``--resume`` works).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pipeline.config import AugmentConfig, ModelConfig, TrainConfig
from pipeline.datasets import get_dataset
from pipeline.errors import UserError
from pipeline.names import check_name
from pipeline.storage import Storage
from pipeline.train.data import ShardedDataConfig, eval_dataset, open_shards, plan_splits, train_dataset
from pipeline.train.recipe import RunSpec
from pipeline.train.transforms import AugmentSpec, EpochClock
from pipeline.train.worker import train_loop_per_worker

__all__ = [
    "TrainJob",
    "fit",
    "fit_streaming",
    "report_callback",
    "loop_config",
    "new_run_name",
    "augment_spec",
    "augment_on_device",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob:
    """One training run: what to train, where its data are and where its run folder goes."""

    spec: RunSpec
    storage: Storage  # the experiment's storage root: shards are read from <root>/shards/<dataset>/
    runs: Storage  # Ray's storage_path; the run folder is <runs>/<spec.run_name>


def new_run_name(experiment: str, fold: int) -> str:
    """``<experiment>-fold<k>-<YYYYmmdd-HHMMSS-ffffff>``: fresh, sortable, safe as a folder name."""
    return f"{experiment}-fold{fold}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"


def augment_spec(cfg: AugmentConfig, dataset: str) -> AugmentSpec:
    """Config + the dataset registry's extra augmentation (brightness 0.5 or rotation 4 degrees)."""
    extra = get_dataset(dataset).extra_augmentation
    brightness = cfg.brightness if cfg.brightness is not None else (0.5 if extra == "brightness" else 0.0)
    rotation = cfg.rotation_deg if cfg.rotation_deg is not None else (4.0 if extra == "rotation" else 0.0)
    lo, hi = cfg.random_resized_crop_scale
    return AugmentSpec(
        scale=(float(lo), float(hi)),
        hflip=cfg.hflip,
        brightness=float(brightness),
        rotation_deg=float(rotation),
        fast_decode=cfg.fast_decode,
    )


def augment_on_device(t: TrainConfig) -> bool:
    """``train.augment.on_device``, its null resolved: on the device when training on GPUs (it
    costs the GPU next to nothing), in the data tasks on a CPU, where OpenCV's per-clip version
    costs a ninth of torch's batched one (bench/data_path.py)."""
    return bool(t.use_gpu if t.augment.on_device is None else t.augment.on_device)


def loop_config(spec: RunSpec, run_uri: str, clock=None) -> dict:
    """The plain data handed to :func:`~pipeline.train.worker.train_loop_per_worker` on every worker."""
    return {"spec": spec.to_dict(), "run_uri": run_uri, "clock": clock}


def _image_size(model: ModelConfig) -> int:
    """The input size of the architecture's image encoder, from its config (nothing is built)."""
    import open_clip

    from pipeline.model.backbone import list_architectures

    if model.clip_model not in list_architectures():  # also registers this project's configs
        raise UserError(f"model.clip_model: unknown architecture {model.clip_model!r}; `dferclip models` lists them")
    size = open_clip.get_model_config(model.clip_model)["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


def report_callback(queue):
    """A Ray Train callback (it runs in Train's controller) that hands each epoch's row to ``queue``."""
    from ray.train import UserCallback

    class EpochRows(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            queue.put(dict(metrics[0]))  # rank 0's row: every rank reports the same all-reduced metrics

    return EpochRows()


def fit_streaming(trainer, queue, on_row: Callable[[dict], None], name: str):
    """Run ``trainer.fit()`` in a thread and hand each row the :func:`report_callback` puts on
    ``queue`` to ``on_row`` in this thread (a progress bar), until the run ends and the queue is
    drained; returns the ``ray.train.Result`` or re-raises the run's error here."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 — re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"fit-{name}", daemon=True)
    thread.start()
    while thread.is_alive() or not queue.empty():
        try:
            row = queue.get(timeout=0.5)
        except Exception:  # noqa: BLE001 — ray.util.queue.Empty: nothing reported yet
            continue
        on_row(row)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _fit_with_progress(trainer, queue, spec: RunSpec):
    """Run ``trainer.fit()`` with one progress bar fed by the epochs' rows."""
    from pipeline.logs import progress
    from pipeline.train.recipe import progress_line

    t = spec.train
    split, metric = spec.selection_split, t.best_metric
    with progress(t.epochs, f"train fold {spec.fold}", unit="epoch", logger=logger) as bar:

        def show(row: dict) -> None:
            # A restarted worker group reports epochs again from its checkpoint: count each once.
            bar.update(
                max(0, int(row["epoch"]) - bar.done),
                postfix=f"{split} UAR {row.get(f'{split}_uar', float('nan')):.3f}, "
                f"best {metric} {row.get(f'best_{metric}') or float('nan'):.3f} @ {row.get('best_epoch')}",
            )
            logger.debug(progress_line(spec.run_name, row, t.epochs, split, metric))

        return fit_streaming(trainer, queue, show, spec.run_name)


def fit(job: TrainJob, *, callbacks: list | None = None, progress: bool = True):
    """Build the datasets and the TorchTrainer for ``job`` and run it; returns ``ray.train.Result``.

    ``progress``: show a progress bar fed by the epochs' reports (off inside Tune trials).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from pipeline.raycluster import check_resources, ensure_ray

    check_name(job.spec.run_name, "run name")  # Ray Train's run folder <runs>/<run_name>
    ensure_ray()
    spec, t = job.spec, job.spec.train
    if t.num_workers > 1 and t.batch_size < t.num_workers:
        raise UserError(
            f"train.batch_size ({t.batch_size}) is the global batch; it must be >= train.num_workers ({t.num_workers})"
        )
    check_resources(
        "training worker",
        cpus=t.cpus_per_worker,
        gpus=t.gpus_per_worker if t.use_gpu else 0.0,
        count=t.num_workers,
        key="train.num_workers / train.cpus_per_worker / train.gpus_per_worker",
        spare_cpus=1.0,
        spare_for="Ray Data's read and decode tasks (try train.cpus_per_worker: 0.5)",
    )
    shards = open_shards(job.storage, spec.dataset)
    if shards.class_names is not None and list(shards.class_names) != list(spec.class_names):
        raise UserError(
            f"{shards.uri}: the shards were made with classes {shards.class_names}, the config has "
            f"{list(spec.class_names)}; set dataset.classes to match or preprocess again"
        )
    spec = dataclasses.replace(spec, preprocess=shards.manifest.get("preprocess"))
    index = shards.index()
    plan = plan_splits(index, spec.fold, t.selection, t.val_fraction, t.seed, shards.uri)
    train_mb = shards.share_mb(len(plan.train), index.num_rows)
    cache = 0 < train_mb <= t.cache_train_mb
    size = _image_size(spec.model)
    T = spec.model.num_frames
    clock = ray.remote(num_cpus=0)(EpochClock).remote()
    datasets = {
        "train": train_dataset(
            shards,
            plan.train,
            num_frames=T,
            image_size=size,
            augment=augment_spec(t.augment, spec.dataset),
            seed=t.seed,
            clock=clock,
            cache=cache,
            on_device=augment_on_device(t),
            stored_size=(shards.manifest.get("preprocess") or {}).get("crop_size"),
        )
    }
    for split in spec.eval_splits:
        datasets[split] = eval_dataset(shards, getattr(plan, split), num_frames=T, image_size=size)
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    run_uri = job.runs.uri(spec.run_name)
    logger.info(
        "[%s] fold %d: %s clips; %d worker(s) x %s; training clips ~%.0f MB of shards, %s",
        spec.run_name,
        spec.fold,
        plan.counts(),
        t.num_workers,
        resources,
        train_mb,
        "held in the object store" if cache else f"streamed every epoch (train.cache_train_mb={t.cache_train_mb:g})",
    )
    logger.info("[%s] run folder %s", spec.run_name, run_uri)
    queue = Queue(actor_options={"num_cpus": 0}) if progress else None
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(spec, run_uri, clock),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=spec.run_name,
            storage_path=job.runs.uri(),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            callbacks=[*(callbacks or []), *([report_callback(queue)] if queue is not None else [])] or None,
        ),
        datasets=datasets,
        dataset_config=ShardedDataConfig(),
    )
    try:
        return _fit_with_progress(trainer, queue, spec) if queue is not None else trainer.fit()
    finally:
        ray.kill(clock)
        if queue is not None:
            queue.shutdown()
