"""The pretraining configuration: its own small YAML (``configs/pretrain/synth.yaml``), not an experiment.

Pretraining makes a CLIP backbone (weights for ``model.pretrained``); it shares no data, classes
or storage with an experiment, so it has its own schema, loaded and overridden (``--set``)
exactly like the experiment config (:mod:`pipeline.typed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.typed import ConfigError, apply_override, from_dict

__all__ = ["PretrainConfig", "load_pretrain_config"]


@dataclass
class PretrainConfig:
    # open_clip architecture (this project's model_configs/ included) and the tag its weights get.
    clip_model: str = "dferclip-rn-micro"
    tag: str = "synth"
    # The exported open_clip weights file; its manifest is written beside it (<stem>.json).
    output: str = "runs/pretrain/dferclip-rn-micro-synth.pt"
    # Ray Train's storage: the run folder (checkpoint, result) is <storage>/<run name>.
    storage: str = "runs/pretrain/ray"
    seed: int = 0
    # Data: rendered face crops with random facial actions (pipeline.pretrain.data).
    images: int = 24000
    captions_per_image: int = 3
    held_out: int = 512  # samples kept out of training for the retrieval accuracy
    crop_size: int = 40  # the demo's preprocess.crop_size; crops are then resized to the model input
    # Optimisation: open_clip's ClipLoss, AdamW, linear warm-up then cosine decay.
    steps: int = 1000
    batch_size: int = 512  # global batch (split over the workers; ClipLoss gathers the negatives)
    lr: float = 0.002
    weight_decay: float = 0.1
    warmup_steps: int = 50
    log_every: int = 50
    num_workers: int = 1
    cpus_per_worker: float = 2.0
    # Zero-shot check after training: apex faces of the seven classes per class.
    eval_faces_per_class: int = 40

    def validate(self) -> list[str]:
        problems = []
        for name in ("images", "captions_per_image", "crop_size", "steps", "batch_size", "log_every", "num_workers"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.held_out < 2:
            problems.append(f"held_out: must be >= 2 (retrieval needs candidates), got {self.held_out}")
        if self.images <= self.held_out:
            problems.append(f"images: must exceed held_out ({self.held_out}), got {self.images}")
        elif self.batch_size > self.images - self.held_out:
            problems.append(f"batch_size: {self.batch_size} exceeds the {self.images - self.held_out} training images")
        if self.batch_size < self.num_workers:
            problems.append(f"batch_size: the global batch must be >= num_workers ({self.num_workers})")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            problems.append("lr must be > 0, weight_decay and warmup_steps >= 0")
        if self.cpus_per_worker <= 0:
            problems.append(f"cpus_per_worker: must be > 0, got {self.cpus_per_worker}")
        if not self.tag or not self.tag.replace("_", "").isalnum() or self.tag != self.tag.lower():
            # open_clip lower-cases tags and maps '-' to '_' before looking them up.
            problems.append(f"tag: lower-case letters, digits and '_' only, got {self.tag!r}")
        if not self.output.endswith(".pt"):
            problems.append(f"output: a .pt file path, got {self.output!r}")
        if self.eval_faces_per_class < 0:
            problems.append(f"eval_faces_per_class: must be >= 0, got {self.eval_faces_per_class}")
        return problems


def load_pretrain_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Read a pretraining YAML (None: the defaults), apply ``--set`` overrides, validate."""
    source = str(path) if path is not None else "<defaults>"
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file not found: {p}"], source)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8-sig")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError([f"cannot read the config: {exc}"], source) from None
    for text in overrides:
        apply_override(data, text)
    return from_dict(PretrainConfig, data, source)
