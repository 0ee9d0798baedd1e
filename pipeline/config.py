"""The experiment configuration schema: one YAML file per experiment, one section per stage.

Every field has the paper's value as its default where the paper has one (DESIGN.md §1), so
``configs/dfew.yaml`` only states what differs. Load with :func:`load_config`; overrides
(``--set train.epochs=2``) go through exactly the same validation as the file.
Library code never receives this whole object: stages pick out the section they need.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from pipeline.datasets import get_dataset, list_datasets
from pipeline.typed import ConfigError, apply_override, from_dict, to_dict

__all__ = [
    "ExperimentConfig",
    "ModelConfig",
    "DatasetConfig",
    "DescribeConfig",
    "PreprocessConfig",
    "TrainConfig",
    "TuneConfig",
    "load_config",
    "dump_config",
    "config_hash",
    "ConfigError",
]


@dataclass
class StorageConfig:
    # Local path or a URI pyarrow.fs understands (s3://bucket/prefix, gs://...). Every stage
    # reads and writes below it, so a cluster with shared storage sees the same artifacts.
    root: str = "runs"


@dataclass
class DatasetConfig:
    name: str = "dfew"
    # Root of the raw dataset (videos or face-frame folders and the official split files).
    root: str | None = None
    # For name=csv: the CSV listing path,label[,split]; for the published code's lists, their folder.
    annotations: str | None = None
    # Override the registry's class list (name=csv, or a subset); None keeps the registry's.
    classes: list[str] | None = None

    def validate(self) -> list[str]:
        if self.name not in list_datasets():
            return [f"name: unknown dataset {self.name!r} (known: {', '.join(list_datasets())})"]
        return []

    @property
    def class_names(self) -> list[str]:
        return list(self.classes) if self.classes else list(get_dataset(self.name).classes)


@dataclass
class ModelConfig:
    # open_clip architecture name (`open_clip.list_models()` plus this project's tiny configs).
    clip_model: str = "ViT-B-32"
    # open_clip pretrained tag (the paper: "openai"); null for random init (tests, demo).
    pretrained: str | None = "openai"
    # A local weights file; takes precedence over `pretrained` and never touches the network.
    weights: str | None = None
    num_frames: int = 16
    temporal_depth: int = 1
    temporal_heads: int = 8
    temporal_head_dim: int = 64
    temporal_mlp_dim: int = 1024
    n_ctx: int = 8
    class_specific_contexts: bool = True
    class_token_position: Literal["end", "middle", "front"] = "end"
    text_source: Literal["descriptions", "class_names", "expression_of"] = "descriptions"
    # "clip": CLIP's mean/std (our default); "none": raw [0, 1] input, as the published code.
    input_normalization: Literal["clip", "none"] = "clip"

    def validate(self) -> list[str]:
        problems = []
        for name in ("num_frames", "temporal_heads", "temporal_head_dim", "temporal_mlp_dim", "n_ctx"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.temporal_depth < 0:
            problems.append(f"temporal_depth: must be >= 0, got {self.temporal_depth}")
        return problems


@dataclass
class DescribeConfig:
    # Description set used by training: a YAML path, or null for the shipped default of the
    # dataset's class set. The describe stage writes a new set and points training at it.
    description_set: str | None = None
    enabled: bool = False  # run the LLM at all; false keeps the shipped/offline set
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    template: str = "visual_features"
    samples: int = 1
    descriptions_per_answer: int = 1
    temperature: float = 0.7
    seed: int | None = 0
    max_tokens: int = 300
    concurrency: int = 16
    max_attempts: int = 4
    timeout_s: float = 60.0


@dataclass
class PreprocessConfig:
    detector: Literal["haar", "yunet", "none"] = "haar"
    yunet_model: str | None = None
    detect_every: int = 5
    margin: float = 0.25
    crop_size: int = 224
    jpeg_quality: int = 90
    max_frames: int | None = None  # keep all frames, or N uniformly spaced ones
    shard_target_mb: float = 256.0
    num_workers: int = 2
    cpus_per_worker: float = 1.0


@dataclass
class AugmentConfig:
    random_resized_crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    hflip: bool = True
    # null: the dataset registry's choice (DFEW/MAFW brightness 0.5, FERV39k rotation 4 degrees).
    brightness: float | None = None
    rotation_deg: float | None = None


@dataclass
class TrainConfig:
    fold: int = 1
    epochs: int = 50
    batch_size: int = 48
    eval_batch_size: int = 48
    lr_image_encoder: float = 1e-5
    lr_temporal: float = 1e-2
    lr_prompt: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [30, 40])
    lr_gamma: float = 0.1
    # "test": pick the best epoch on the test split (the paper's protocol, reproducible);
    # "validation": carve a validation split from train, select on it, report test once.
    selection: Literal["test", "validation"] = "test"
    val_fraction: float = 0.1
    best_metric: Literal["uar", "war", "loss"] = "uar"
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    keep_checkpoints: int = 2
    max_failures: int = 2
    data_loader_threads: int = 2
    # Fault injection for tests: the worker of this rank exits once during this epoch.
    fail_once_at_epoch: int | None = None

    def validate(self) -> list[str]:
        problems = []
        for name in ("epochs", "batch_size", "eval_batch_size", "num_workers"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction: must be in (0, 1), got {self.val_fraction}")
        return problems


@dataclass
class TuneConfig:
    n_ctx: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    temporal_depth: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    class_specific_contexts: list[bool] | None = None
    lr_temporal: list[float] | None = None
    lr_prompt: list[float] | None = None
    search: Literal["grid", "random"] = "grid"
    num_samples: int = 1
    metric: str = "val_uar"
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = 1
    max_concurrent_trials: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    # Cache frame embeddings once and train only the temporal model and prompts.
    frozen_encoder: bool = False


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    storage: StorageConfig = field(default_factory=StorageConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    describe: DescribeConfig = field(default_factory=DescribeConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def validate(self) -> list[str]:
        problems = []
        if self.dataset.name in list_datasets():
            folds = get_dataset(self.dataset.name).folds
            if self.train.fold not in folds:
                problems.append(f"train.fold: {self.dataset.name} has folds {list(folds)}, got {self.train.fold}")
        return problems


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML experiment config (``None``: all defaults), apply ``--set`` overrides, validate."""
    data: dict = {}
    source = str(path) if path is not None else "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file not found: {p}"], source)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from None
    for text in overrides:
        apply_override(data, text)
    return from_dict(ExperimentConfig, data, source)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(section: object) -> str:
    """Stable content hash of a config section (manifests use it to tell what is up to date)."""
    blob = json.dumps(to_dict(section), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
