"""The train stage's library: data path, per-worker loop, driver, runs, evaluation.

- :mod:`~pipeline.train.sampling` — ``sample_indices``: the paper's frame-sampling rule.
- :mod:`~pipeline.train.transforms` — ``ClipTransform``: decode + clip-level augmentation (OpenCV),
  or decode only plus the clips' draws (``train.augment.on_device``).
- :mod:`~pipeline.train.device_augment` — ``augment_batch``: those draws applied batched in torch
  on the training device.
- :mod:`~pipeline.train.data` — shards -> Ray Datasets for a fold's train/val/test.
- :mod:`~pipeline.train.recipe` — ``Recipe``: the one epoch loop (Ray-free), ``RunSpec``, ``RunState``.
- :mod:`~pipeline.train.worker` — ``train_loop_per_worker``: the recipe on a Ray Train worker.
- :mod:`~pipeline.train.driver` — ``TrainJob`` and ``fit`` (datasets + TorchTrainer).
- :mod:`~pipeline.train.experiment` — one fold, k folds, resume; latest.json.
- :mod:`~pipeline.train.evaluation`, :mod:`~pipeline.train.zeroshot`, :mod:`~pipeline.train.outputs`.

Submodules are imported on use (Ray and PyTorch are heavy); nothing runs at import time.
"""

__all__ = [
    "sampling",
    "transforms",
    "device_augment",
    "data",
    "recipe",
    "worker",
    "driver",
    "experiment",
    "evaluation",
    "outputs",
    "zeroshot",
]
