"""Registry of the datasets the pipeline knows: classes in label order, folds, augmentation.

Label order is the one in the paper and the published DFER-CLIP code (happiness first); the
importers in :mod:`pipeline.data.importers` map each benchmark's own labels onto it, and the
order is stored with the shards, so a checkpoint never depends on this table silently changing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DatasetSpec", "get_dataset", "list_datasets", "CLASSES_7", "CLASSES_11"]

CLASSES_7 = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
CLASSES_11 = CLASSES_7 + ("contempt", "anxiety", "helplessness", "disappointment")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    folds: tuple[int, ...]
    # Clip-level augmentation beyond crop + flip (docs/design.md §1): DFEW uses brightness
    # jitter 0.5, FERV39k rotation of 4 degrees; MAFW follows DFEW in the published scripts.
    extra_augmentation: Literal["brightness", "rotation", "none"]
    summary: str
    # How many trailing components of a clip's path name it. FERV39k's ids restart in every
    # <Scene>/<Emotion> folder (0009 is both a sad and a happy clip), so its clip id is
    # "<Scene>/<Emotion>/<id>": the same id whether its official CSVs or the published
    # DFER-CLIP lists were read. The others' file names are unique on their own.
    clip_id_parts: int = 1

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "dfew", CLASSES_7, (1, 2, 3, 4, 5), "brightness", "DFEW: 16,372 clips, 7 classes, 5 official folds"
        ),
        DatasetSpec(
            "ferv39k",
            CLASSES_7,
            (1,),
            "rotation",
            "FERV39k: 38,935 clips, 7 classes, one official train/test split",
            clip_id_parts=3,
        ),
        DatasetSpec(
            "mafw",
            CLASSES_11,
            (1, 2, 3, 4, 5),
            "brightness",
            "MAFW: 10,045 clips, 11 single-label classes, 5 official folds",
        ),
        DatasetSpec(
            "demo", CLASSES_7, (1,), "brightness", "Synthetic drawn-face videos made by `dferclip demo-data`, 7 classes"
        ),
        DatasetSpec(
            "csv",
            CLASSES_7,
            (1,),
            "brightness",
            "Your own videos listed in a CSV (path,label[,split]); classes from the config",
        ),
    )
}


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def get_dataset(name: str) -> DatasetSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}") from None
