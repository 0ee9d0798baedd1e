"""The Ray Train driver: datasets + ``TorchTrainer`` for one run (one fold).

``fit(job)`` is what the train stage calls per fold and what a Tune trial calls with its own
``name`` and ``callbacks`` (``RunConfig(name=<trial name>, callbacks=[TuneReportCallback()])``)::

    job = TrainJob(model=cfg.model, train=cfg.train, class_names=..., descriptions=...,
                   storage_root=cfg.storage.root, dataset=cfg.dataset.name, fold=1,
                   storage_path=f"{cfg.storage.root}/train", name=new_run_name(cfg.name, 1))
    result = fit(job)             # ray.train.Result; raises TrainingFailedError on failure

Run names must be fresh for new runs: Ray Train silently *resumes* a run whose name and
storage path already hold checkpoints (that is exactly how ``--resume`` works).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.config import AugmentConfig, ModelConfig, TrainConfig
from pipeline.datasets import get_dataset
from pipeline.errors import UserError
from pipeline.train.data import ShardedDataConfig, eval_dataset, open_shards, plan_splits, train_dataset
from pipeline.train.transforms import AugmentSpec, EpochClock
from pipeline.train.worker import train_loop_per_worker
from pipeline.typed import to_dict

__all__ = ["TrainJob", "fit", "loop_config", "new_run_name", "augment_spec"]


@dataclass
class TrainJob:
    model: ModelConfig
    train: TrainConfig
    class_names: list[str]
    descriptions: dict[str, list[str]] | None
    storage_root: str  # shards are read from <storage_root>/shards/<dataset>/
    dataset: str
    fold: int
    storage_path: str  # Ray's storage_path; the run folder is <storage_path>/<name>
    name: str
    experiment: dict = field(default_factory=dict)  # the whole config, saved with checkpoints


def new_run_name(experiment: str, fold: int) -> str:
    """``<experiment>-fold<k>-<YYYYmmdd-HHMMSS-ffffff>``: fresh, sortable, safe as a folder name."""
    return f"{experiment}-fold{fold}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"


def augment_spec(cfg: AugmentConfig, dataset: str) -> AugmentSpec:
    """Config + the dataset registry's extra augmentation (brightness 0.5 or rotation 4 degrees)."""
    extra = get_dataset(dataset).extra_augmentation
    brightness = cfg.brightness if cfg.brightness is not None else (0.5 if extra == "brightness" else 0.0)
    rotation = cfg.rotation_deg if cfg.rotation_deg is not None else (4.0 if extra == "rotation" else 0.0)
    lo, hi = cfg.random_resized_crop_scale
    return AugmentSpec(scale=(float(lo), float(hi)), hflip=cfg.hflip, brightness=float(brightness),
                       rotation_deg=float(rotation), fast_decode=cfg.fast_decode)


def loop_config(job: TrainJob, name: str, run_uri: str, eval_splits: list[str], clock=None,
                preprocess: dict | None = None) -> dict:
    """The plain-data config handed to :func:`train_loop_per_worker` on every worker."""
    return {
        "model": to_dict(job.model), "train": to_dict(job.train), "class_names": list(job.class_names),
        "descriptions": job.descriptions, "run_uri": run_uri, "run_name": name, "experiment": job.experiment,
        "dataset": job.dataset, "fold": job.fold, "eval_splits": eval_splits, "clock": clock,
        # How the shards' face crops were made: checkpoints record it so predict crops alike.
        "preprocess": preprocess,
    }


def _image_size(model: ModelConfig) -> int:
    """The input size of the architecture's image encoder, from its config (nothing is built)."""
    import open_clip

    from pipeline.model.backbone import list_architectures

    if model.clip_model not in list_architectures():  # also registers this project's configs
        raise UserError(f"model.clip_model: unknown architecture {model.clip_model!r}; `dferclip models` lists them")
    size = open_clip.get_model_config(model.clip_model)["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


def fit(job: TrainJob, *, name: str | None = None, callbacks: list | None = None):
    """Build the datasets and the TorchTrainer for ``job`` and run it; returns ``ray.train.Result``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.raycluster import check_resources, ensure_ray

    ensure_ray()
    name = name or job.name
    t = job.train
    if t.num_workers > 1 and t.batch_size < t.num_workers:
        raise UserError(f"train.batch_size ({t.batch_size}) is the global batch; it must be >= train.num_workers ({t.num_workers})")
    check_resources("training worker", cpus=t.cpus_per_worker, gpus=t.gpus_per_worker if t.use_gpu else 0.0,
                    count=t.num_workers, key="train.num_workers / train.cpus_per_worker / train.gpus_per_worker",
                    spare_cpus=1.0, spare_for="Ray Data's read and decode tasks (try train.cpus_per_worker: 0.5)")
    shards = open_shards(job.storage_root, job.dataset)
    if shards.class_names is not None and list(shards.class_names) != list(job.class_names):
        raise UserError(f"{shards.uri}: the shards were made with classes {shards.class_names}, the config has "
                        f"{job.class_names}; set dataset.classes to match or preprocess again")
    index = shards.index()
    plan = plan_splits(index, job.fold, t.selection, t.val_fraction, t.seed, shards.uri)
    train_mb = shards.share_mb(len(plan.train), index.num_rows)
    cache = 0 < train_mb <= t.cache_train_mb
    size = _image_size(job.model)
    T = job.model.num_frames
    clock = ray.remote(num_cpus=0)(EpochClock).remote()
    datasets = {"train": train_dataset(shards, plan.train, num_frames=T, image_size=size,
                                       augment=augment_spec(t.augment, job.dataset), seed=t.seed, clock=clock,
                                       cache=cache)}
    eval_splits = ["test"] + (["val"] if t.selection == "validation" else [])
    for split in eval_splits:
        datasets[split] = eval_dataset(shards, getattr(plan, split), num_frames=T, image_size=size)
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    run_uri = posixpath.join(job.storage_path, name) if "://" in job.storage_path else f"{job.storage_path.rstrip('/')}/{name}"
    print(f"[{name}] fold {job.fold}: {plan.counts()} clips; {t.num_workers} worker(s) x {resources}; "
          f"run folder {run_uri}", flush=True)
    print(f"[{name}] training clips: ~{train_mb:.0f} MB of shards, "
          + ("held in the object store" if cache else f"streamed every epoch (train.cache_train_mb={t.cache_train_mb:g})"),
          flush=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(job, name, run_uri, eval_splits, clock, shards.manifest.get("preprocess")),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=job.storage_path,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            callbacks=callbacks or None,
        ),
        datasets=datasets,
        dataset_config=ShardedDataConfig(),
    )
    try:
        return trainer.fit()
    finally:
        ray.kill(clock)

