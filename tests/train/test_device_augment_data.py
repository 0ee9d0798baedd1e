"""``train_dataset(on_device=True)`` through Ray Data and the train loop's ``frame_pairs``: the
same clips as the CPU path (``on_device: false``) up to rounding (the bound is derived in
tests/train/test_device_augment.py). Its own file: it needs the shards fixture and Ray, which the
mutation runs of the augmentation modules leave out."""

from __future__ import annotations

import torch

from pipeline.train.evaluation import frame_pairs
from pipeline.train.transforms import AugmentSpec


def test_the_train_dataset_on_device_matches_the_cpu_data_path(train_store):
    from pipeline.train.data import open_shards, plan_splits, train_dataset
    from tests.train.conftest import FRAME_SIZE

    shards = open_shards(str(train_store), "dfew")
    plan = plan_splits(shards.index(), 1, "test", 0.1, 0, "test")
    spec = AugmentSpec(scale=(0.5, 1.0), brightness=0.3)
    stored = shards.manifest["preprocess"]["crop_size"]
    assert stored == FRAME_SIZE

    def clips(on_device: bool, scale: float) -> list[tuple[int, torch.Tensor]]:
        ds = train_dataset(
            shards,
            plan.train,
            num_frames=8,
            image_size=32,
            augment=spec,
            seed=3,
            on_device=on_device,
            stored_size=stored,
        )
        pairs = frame_pairs(ds.iter_torch_batches(batch_size=4), torch.device("cpu"))
        return [(int(y), v.double() * scale) for video, labels in pairs for v, y in zip(video, labels)]

    cpu, dev = clips(False, 1.0), clips(True, 255.0)
    assert len(dev) == len(cpu) == len(plan.train)
    for label, video in dev:  # each clip, order-free: the CPU path's clip of that label it matches
        assert min((v - video).abs().max().item() for y, v in cpu if y == label) <= 1.3
