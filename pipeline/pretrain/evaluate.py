"""Zero-shot check of pretrained weights: apex faces of the seven classes, classified by text alone.

An apex face is the last frame of a class's timeline (:func:`pipeline.synth.expressions.random_timeline`:
the class profile at a random intensity plus idle motion), rendered and cropped exactly like
the pretraining samples. Classification is :class:`pipeline.train.zeroshot.ZeroShotClip`, the
project's zero-shot baseline, on one-frame clips.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.datasets import CLASSES_7
from pipeline.pretrain.data import render_sample

__all__ = ["apex_faces", "zero_shot_uar"]


def apex_faces(per_class: int, seed: int, image_size: int = 32, crop_size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` apex faces of each class in ``CLASSES_7`` order: images (N, S, S, 3) uint8, labels (N,)."""
    from pipeline.synth.expressions import random_timeline

    images, labels = [], []
    for k, label in enumerate(CLASSES_7):
        rng = np.random.default_rng([seed, k])
        for _ in range(per_class):
            timeline = random_timeline(label, rng, 16)
            sample = render_sample(
                rng,
                image_size=image_size,
                crop_size=crop_size,
                captions_per_image=0,
                actions=timeline.actions(len(timeline.values) - 1),
            )
            images.append(sample.image)
            labels.append(k)
    return np.stack(images), np.asarray(labels)


@torch.no_grad()
def zero_shot_uar(
    clip_model: str,
    weights: str | None,
    images: np.ndarray,
    labels: np.ndarray,
    description_set: str | None,
    pretrained: str | None = None,
) -> float:
    """UAR of zero-shot CLIP over ``CLASSES_7`` on ``images``: class texts from ``description_set``
    (a shipped set's name or a path), or the bare class names when it is None."""
    from pipeline.config import ModelConfig
    from pipeline.llm import load_description_set
    from pipeline.metrics import confusion_matrix, uar
    from pipeline.train.zeroshot import ZeroShotClip

    names = list(CLASSES_7)
    cfg = ModelConfig(
        clip_model=clip_model,
        pretrained=pretrained,
        weights=weights,
        num_frames=1,
        text_source="descriptions" if description_set else "class_names",
    )
    descriptions = load_description_set(description_set, names) if description_set else None
    model = ZeroShotClip(cfg, names, descriptions)
    video = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).unsqueeze(1)  # (N, 1, 3, S, S)
    pred = torch.cat([model(video[i : i + 256]).argmax(1) for i in range(0, len(video), 256)]).numpy()
    return float(uar(confusion_matrix(labels, pred, len(names))))
