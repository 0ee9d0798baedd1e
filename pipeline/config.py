"""The experiment configuration schema: one YAML file per experiment, one section per stage.

Every field has the paper's value as its default where the paper has one (docs/design.md §1), so
``configs/dfew.yaml`` only states what differs. Load with :func:`load_config`; overrides
(``--set train.epochs=2``) go through exactly the same validation as the file.
Library code never receives this whole object: stages pick out the section they need.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import difflib
import hashlib
import json
import logging
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from pipeline.datasets import get_dataset, list_datasets
from pipeline.names import name_problem
from pipeline.typed import ConfigError, apply_override, from_dict, to_dict
from pipeline.url_credentials import credentials_problem

__all__ = [
    "ExperimentConfig",
    "ModelConfig",
    "DatasetConfig",
    "DescribeConfig",
    "PreprocessConfig",
    "TrainConfig",
    "TuneConfig",
    "TimelineConfig",
    "BatchPredictConfig",
    "ServeConfig",
    "load_config",
    "dump_config",
    "config_hash",
    "ConfigError",
]


# Where the credentials of a filesystem URL belong (the config refuses them: url_credentials).
FILESYSTEM_CREDENTIALS = (
    "give them to the filesystem client: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials, "
    "an instance role) for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://"
)
TRACKING_CREDENTIALS = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for an http(s) "
    "server, the database's own (PGPASSWORD or ~/.pgpass for postgresql) for a database, or put the whole URI "
    "in the MLFLOW_TRACKING_URI environment variable and leave tracking.mlflow_uri null"
)


@dataclass
class StorageConfig:
    # Local path or a URI pyarrow.fs understands (s3://bucket/prefix, gs://...). Every stage
    # reads and writes below it, so a cluster with shared storage sees the same artifacts.
    # A relative path is relative to the current directory; inside a Ray job it is refused
    # (it would point into Ray's temporary copy of the project): docs/cluster.md#storage.
    # No credentials in it (s3://KEY:SECRET@...): the filesystem client finds its own.
    root: str = "runs"

    def validate(self) -> list[str]:
        if why := credentials_problem(self.root, FILESYSTEM_CREDENTIALS):
            return [f"root: {why}"]
        return []


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
        problems = []
        if self.name not in list_datasets():
            problems.append(f"name: unknown dataset {self.name!r} (known: {', '.join(list_datasets())})")
        for key in ("root", "annotations"):
            if why := credentials_problem(getattr(self, key), FILESYSTEM_CREDENTIALS):
                problems.append(f"{key}: {why}")
        # A class is a label index: a repeated name would make two labels that mean the same class.
        for i, name in enumerate(self.classes or []):
            if not name.strip():
                problems.append(f"classes[{i}]: a class name must not be empty")
            elif name in self.classes[:i]:
                problems.append(f"classes[{i}]: {name!r} is listed more than once")
        return problems

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
    # QuickGELU activation: null infers it from the pretrained tag (OpenAI weights: true).
    # Set true when `weights` is a local copy of OpenAI's CLIP weights.
    quick_gelu: bool | None = None
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
    # Fixed multiplier of the cosine logits. null: the backbone's own CLIP logit scale, i.e. 100
    # with OpenAI's weights (the paper's fixed temperature 0.01) and CLIP's initial 1/0.07 for a
    # random initialisation, where 100 makes the first losses ~15 and training unstable.
    logit_scale: float | None = None

    def validate(self) -> list[str]:
        problems = []
        for name in ("num_frames", "temporal_heads", "temporal_head_dim", "temporal_mlp_dim", "n_ctx"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        # Frames per clip, each through the image encoder: the paper uses 16; far more is a typo.
        if self.num_frames > 256:
            problems.append(f"num_frames: must be <= 256, got {self.num_frames}")
        # With no layer the output class token is the learnt token plus its position embedding:
        # a constant that ignores the frames (a sweep cell at depth 0 sat exactly at chance).
        if self.temporal_depth < 1:
            problems.append(f"temporal_depth: must be >= 1, got {self.temporal_depth}")
        if self.logit_scale is not None and self.logit_scale <= 0:
            problems.append(f"logit_scale: must be > 0 or null, got {self.logit_scale}")
        return problems


@dataclass
class DescribeConfig:
    # Description set the class prompts use: a YAML path (or a shipped set's name, e.g.
    # default-11). null: with enabled, the set the describe stage writes for this experiment
    # (<storage.root>/descriptions/<output_name>.yaml, missing is an error), else the shipped
    # default of the dataset's classes (pipeline/llm/selection.py, docs/describe.md).
    description_set: str | None = None
    enabled: bool = False  # run the LLM at all; false keeps the shipped/offline set
    # Any OpenAI-compatible endpoint: OpenAI https://api.openai.com/v1, vLLM
    # http://127.0.0.1:8000/v1, Ollama http://127.0.0.1:11434/v1 (docs/describe.md).
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "gpt-4o-mini"
    # Name of the environment variable holding the key; the key itself never goes in a file
    # (nor in base_url: user:password@ and key-like query parameters are refused).
    api_key_env: str = "OPENAI_API_KEY"
    # The key is sent over plain http:// only to this machine (127.0.0.0/8, ::1, localhost); true
    # also allows it to another host, where anyone on the network path can read it.
    allow_insecure_http: bool = False
    # A template name in prompts/templates/ or a path to a template YAML.
    template: str = "visual_features"
    # A class set name in prompts/classes/ or a path; null: the dataset's classes.
    class_set: str | None = None
    # Written to <storage.root>/descriptions/<output_name>.yaml; null: the experiment's name.
    output_name: str | None = None
    samples: int = 1
    descriptions_per_answer: int = 1
    temperature: float = 0.7
    seed: int | None = 0
    max_tokens: int = 300
    # "json_object" works on OpenAI, vLLM and Ollama; "json_schema" also bounds the item
    # count where the server supports it; "none" for servers that reject response_format.
    response_format: Literal["json_object", "json_schema", "none"] = "json_object"
    # Word bounds per description: CLIP reads 77 tokens, up to 16 go to learnable context.
    min_words: int = 3
    max_words: int = 40
    concurrency: int = 16
    max_attempts: int = 4  # per request, for 429 / 5xx / timeouts / connection errors
    max_invalid_answers: int = 3  # per request, for answers that fail validation
    backoff_s: float = 1.0  # first retry delay, doubled each retry (with jitter)
    max_backoff_s: float = 30.0
    timeout_s: float = 60.0

    def validate(self) -> list[str]:
        problems = []
        for name in (
            "samples",
            "descriptions_per_answer",
            "max_tokens",
            "concurrency",
            "max_attempts",
            "max_invalid_answers",
            "min_words",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_words < self.min_words:
            problems.append(f"max_words: must be >= min_words ({self.min_words}), got {self.max_words}")
        for name in ("timeout_s", "max_backoff_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.backoff_s < 0:
            problems.append(f"backoff_s: must be >= 0, got {self.backoff_s}")
        if not 0.0 <= self.temperature <= 2.0:
            problems.append(f"temperature: must be in [0, 2], got {self.temperature}")
        if self.output_name is not None and (why := name_problem(self.output_name)):
            problems.append(f"output_name: {why}")
        try:
            parts = urlsplit(self.base_url.strip())
        except ValueError:  # e.g. an unclosed [ of an IPv6 address
            parts = urlsplit("")
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            problems.append(
                f"base_url: expected an http:// or https:// URL like http://127.0.0.1:8000/v1, got {self.base_url!r}"
            )
        elif why := credentials_problem(
            self.base_url, f"export the key in the environment variable that api_key_env names ({self.api_key_env})"
        ):
            problems.append(f"base_url: {why}")
        return problems


@dataclass
class PreprocessConfig:
    # Class attribute, not a field: the settings that change the crops written (workers, CPUs and
    # shard size do not). The shards' manifest records them and predict crops new videos with them.
    OUTPUT_FIELDS = (
        "detector",
        "yunet_model",
        "detect_every",
        "detect_max_side",
        "margin",
        "crop_size",
        "jpeg_quality",
        "max_frames",
    )

    # "haar": OpenCV's bundled frontal-face cascade; "yunet": cv2.FaceDetectorYN with the ONNX
    # file in yunet_model; "none": frames are already face crops (whole frame is resized).
    detector: Literal["haar", "yunet", "none"] = "haar"
    yunet_model: str | None = None
    # Detect on every k-th frame; boxes in between are interpolated (docs/preprocess.md).
    detect_every: int = 5
    # Detection runs on a copy whose longer side is at most this many pixels (speed).
    detect_max_side: int = 320
    # Square crop side = max(face w, h) * (1 + 2 * margin).
    margin: float = 0.25
    crop_size: int = 224
    jpeg_quality: int = 90
    max_frames: int | None = None  # keep all frames, or N uniformly spaced ones
    shard_target_mb: float = 256.0
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    # Per-clip caps (resource limits, not crop settings: not in OUTPUT_FIELDS, so raising one
    # rebuilds nothing; predict applies them too). A clip over one is an error row naming it.
    # null: no cap. Pixels per frame (3840x2160 by default), frames decoded, seconds of video.
    max_pixels: int | None = 3840 * 2160
    max_clip_frames: int | None = 9000
    max_clip_seconds: float | None = 300.0
    # After its worker process dies (killed for memory, crashed), a batch of clips is tried this
    # many more times, then each of its clips alone as often; a clip that still kills its worker
    # becomes an error row. Finite, unlike Ray Data's default (retry forever).
    worker_retries: int = 1

    def validate(self) -> list[str]:
        problems = []
        for name in ("max_pixels", "max_clip_frames"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1 or null (no cap), got {getattr(self, name)}")
        if self.max_clip_seconds is not None and self.max_clip_seconds <= 0:
            problems.append(f"max_clip_seconds: must be > 0 or null (no cap), got {self.max_clip_seconds}")
        if not 0 <= self.worker_retries <= 10:
            problems.append(f"worker_retries: must be in 0..10, got {self.worker_retries}")
        for name in ("detect_every", "num_workers"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.detect_max_side < 64:
            problems.append(f"detect_max_side: must be >= 64, got {self.detect_max_side}")
        # Every frame is stored at this side; CLIP reads 224 px, and past 1024 px a clip's crops
        # alone are hundreds of MB (a typo rather than a setting).
        if not 8 <= self.crop_size <= 1024:
            problems.append(f"crop_size: must be in 8..1024, got {self.crop_size}")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality: must be in 1..100, got {self.jpeg_quality}")
        if not 0.0 <= self.margin <= 2.0:
            problems.append(f"margin: must be in [0, 2], got {self.margin}")
        if self.max_frames is not None and self.max_frames < 1:
            problems.append(f"max_frames: must be >= 1 or null (keep all), got {self.max_frames}")
        if self.shard_target_mb <= 0:
            problems.append(f"shard_target_mb: must be > 0, got {self.shard_target_mb}")
        if self.cpus_per_worker <= 0:
            problems.append(f"cpus_per_worker: must be > 0, got {self.cpus_per_worker}")
        if self.detector == "yunet" and not self.yunet_model:
            problems.append("yunet_model: detector 'yunet' needs the path of the YuNet ONNX file")
        return problems


@dataclass
class TimelineConfig:
    """Long videos as timelines (docs/predict.md#timelines): windows of the model's T frames over
    ``window_s`` seconds every ``stride_s`` seconds, per face track."""

    # auto: a timeline for videos longer than auto_after_s (DFER clips, 1-8 s, keep one label as
    # before); on: every video; off: never (the whole video is one clip, the largest face).
    mode: Literal["auto", "on", "off"] = "auto"
    window_s: float = 2.0
    stride_s: float = 1.0
    auto_after_s: float = 10.0
    # Faces followed at once (the most seen first); each costs one forward pass per window.
    max_tracks: int = 3
    # A track is scored on a window when it spans at least this share of the window's frames.
    min_coverage: float = 0.5
    # The video's label from its windows: mean probability, majority of window labels, or the
    # single most confident window.
    aggregate: Literal["mean", "majority", "max"] = "mean"
    # Frame folders carry no frame rate: their windows and times use this one.
    folder_fps: float = 25.0

    def validate(self) -> list[str]:
        problems = []
        for name in ("window_s", "stride_s", "auto_after_s", "folder_fps"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.max_tracks < 1:
            problems.append(f"max_tracks: must be >= 1, got {self.max_tracks}")
        if not 0.0 < self.min_coverage <= 1.0:
            problems.append(f"min_coverage: must be in (0, 1], got {self.min_coverage}")
        return problems


@dataclass
class BatchPredictConfig:
    """Sizing of ``dferclip batch-predict`` (docs/predict.md#batch-prediction-on-ray-data)."""

    # CPU actors that decode, detect and crop, and the (logical) CPUs each holds. The defaults
    # fit a 2-CPU machine with the model actor beside them; on a cluster, one loader per core.
    loaders: int = 2
    cpus_per_loader: float = 0.75
    # Model actors running the batched forward passes: one GPU each when the cluster has GPUs
    # (device auto), else CPUs.
    models: int = 1
    cpus_per_model: float = 0.5
    gpus_per_model: float = 1.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Clips per forward pass (= per result shard), and per loader task.
    batch_size: int = 16
    loader_batch: int = 4
    # After its actor process dies, a batch is tried this many more times; then its inputs are
    # error rows (a re-run with --retry-errors tries them again).
    worker_retries: int = 1
    # One actor stage instead of two: each loader actor also runs the model (no clip crosses the
    # object store, no second set of actors starts). auto: fused when the model gets no GPU.
    fuse: Literal["auto", "on", "off"] = "auto"
    # Threads decoding a batch's inputs side by side in a fused loader actor.
    threads_per_loader: int = 1

    def validate(self) -> list[str]:
        problems = []
        for name in ("loaders", "models", "batch_size", "loader_batch", "threads_per_loader"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("cpus_per_loader", "cpus_per_model"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}: must be > 0, got {getattr(self, name)}")
        if not self.gpus_per_model > 0:
            problems.append(f"gpus_per_model: must be > 0, got {self.gpus_per_model}")
        if not 0 <= self.worker_retries <= 10:
            problems.append(f"worker_retries: must be in 0..10, got {self.worker_retries}")
        return problems


@dataclass
class AugmentConfig:
    random_resized_crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    hflip: bool = True
    # null: the dataset registry's choice (DFEW/MAFW brightness 0.5, FERV39k rotation 4 degrees).
    brightness: float | None = None
    rotation_deg: float | None = None
    # Training decode with libjpeg-turbo's fast integer DCT and fast chroma upsampling: the decode
    # is ~10 % faster, the whole transform ~3-6 % (bench/data_path.py), for a mean error of ~1.4
    # grey levels. Off by default: exact pixels unless throughput is what limits a run.
    # Evaluation and predict always decode exactly.
    fast_decode: bool = False
    # Where the crop, flip, brightness and rotation run: true = batched in torch on the training
    # device (the data tasks only sample and decode), false = per clip with OpenCV in the data
    # tasks. null: on the device when train.use_gpu, else in the data tasks — on a CPU the torch
    # version costs ~9x the OpenCV one per clip (bench/data_path.py, docs/train.md).
    on_device: bool | None = None


@dataclass
class TrainConfig:
    fold: int = 1
    epochs: int = 50
    batch_size: int = 48
    eval_batch_size: int = 48
    lr_image_encoder: float = 1e-5
    lr_temporal: float = 1e-2
    lr_prompt: float = 1e-3
    # "sgd" (the paper, with momentum) or "adamw" (for training a small CLIP from scratch).
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # "multistep": x lr_gamma at each of `milestones` (the paper); "cosine": decay to the last epoch.
    lr_schedule: Literal["multistep", "cosine"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [30, 40])
    lr_gamma: float = 0.1
    # Linear warm-up of every learning rate over the first epochs (0: none, as in the paper).
    warmup_epochs: int = 0
    # "test": pick the best epoch on the test split (the paper's protocol, reproducible);
    # "validation": carve a validation split from train, select on it, report test once.
    selection: Literal["test", "validation"] = "test"
    val_fraction: float = 0.1
    best_metric: Literal["uar", "war", "loss"] = "uar"
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    # Autocast on the training device: bf16 on CPU or GPU, fp16 (with a GradScaler) on GPU only.
    # fp32 by default, chosen from bench/model_step.py --vs fp32 (docs/benchmarks.md).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # torch.compile the image encoder (in place; checkpoints unchanged). The first step compiles.
    compile: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    keep_checkpoints: int = 2  # >= 1: checkpoints each run keeps (Ray's num_to_keep)
    max_failures: int = 2  # >= 0: worker-group restarts after a failure
    # Batches each worker prefetches from Ray Data while the current one trains.
    data_loader_threads: int = 2
    # Hold the training clips' shard rows in Ray's object store after the first read when they
    # take at most this many MB (their share of the shard files); larger sets stream from the
    # shards every epoch. 0: always stream.
    cache_train_mb: float = 512.0
    # Clips in each worker's local shuffle buffer (on top of the random block order);
    # null: twice the per-worker batch; 0: no local shuffle.
    shuffle_buffer: int | None = None
    # Fault injection for tests: a worker (rank 1, or rank 0 when alone) exits once during this
    # epoch; a marker file in the run folder keeps the restarted attempt from failing again.
    fail_once_at_epoch: int | None = None
    # Start a new run from a project checkpoint's weights (a run's final/model.pt, or a released
    # file converted by `dferclip import-official`): the model is rebuilt from what the checkpoint
    # records and trained further with this recipe (fresh optimizer and schedule). The model
    # section must describe that model; pretrained/weights are ignored. Local path or URI.
    init_checkpoint: str | None = None

    def validate(self) -> list[str]:
        problems = []
        if self.init_checkpoint is not None and not str(self.init_checkpoint).strip():
            problems.append("init_checkpoint: must be a checkpoint path or null, got an empty string")
        for name in ("epochs", "batch_size", "eval_batch_size", "num_workers", "keep_checkpoints"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_failures < 0:  # Ray Train reads -1 as "retry forever"
            problems.append(f"max_failures: must be >= 0, got {self.max_failures}")
        if self.cache_train_mb < 0:
            problems.append(f"cache_train_mb: must be >= 0, got {self.cache_train_mb}")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction: must be in (0, 1), got {self.val_fraction}")
        for name in ("lr_image_encoder", "lr_temporal", "lr_prompt", "cpus_per_worker"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_epochs < self.epochs:
            problems.append(f"warmup_epochs: must be in 0..epochs-1 ({self.epochs - 1}), got {self.warmup_epochs}")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            problems.append(f"milestones: must be increasing epochs >= 1, got {self.milestones}")
        if self.use_gpu and self.gpus_per_worker <= 0:
            problems.append(f"gpus_per_worker: must be > 0 with use_gpu, got {self.gpus_per_worker}")
        if self.shuffle_buffer is not None and self.shuffle_buffer < 0:
            problems.append(f"shuffle_buffer: must be >= 0 or null, got {self.shuffle_buffer}")
        if self.fail_once_at_epoch is not None and not 1 <= self.fail_once_at_epoch <= self.epochs:
            problems.append(f"fail_once_at_epoch: must be an epoch in 1..{self.epochs}, got {self.fail_once_at_epoch}")
        return problems


@dataclass
class TuneConfig:
    # The search space: dotted config path -> list of candidate values, e.g.
    #   space: {model.n_ctx: [2, 4, 8, 16], model.temporal_depth: [1, 2, 3, 4], train.lr_prompt: [0.001, 0.002]}
    # Any model or train field can be a dimension; each value is set and validated as
    # `--set PATH=VALUE` would be. Grid search crosses the lists; random search draws
    # `num_samples` trials. A space given here replaces the default (null: the default, context
    # tokens x temporal depth); `--set tune.space.train.lr_prompt=[0.001, 0.01]` writes one entry.
    space: dict[str, Any] | None = None
    search: Literal["grid", "random"] = "grid"
    # Grid: repeats of the whole grid, each with its own seed (train.seed + i); random: trials.
    num_samples: int = 1
    # Any per-epoch metric the training loop reports: val_uar, val_war, val_loss, test_uar, ...
    metric: str = "val_uar"
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["asha", "none"] = "asha"
    # ASHA: no trial stops before `grace_period` epochs; each rung keeps 1/reduction_factor.
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_concurrent_trials: int = 2
    # Frozen-encoder mode: each trial is one process with these resources. Full mode: each
    # trial is a driver with `driver_cpus` plus train.num_workers workers sized by the train section.
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    driver_cpus: float = 0.5
    # Cache frame embeddings once and train only the temporal model and prompts (docs/tune.md
    # says when this is faithful: the paper fine-tunes the image encoder at lr 1e-5).
    frozen_encoder: bool = False
    # The embedding job (Ray Data): clips per batch, encoder actors, resources per actor.
    embed_batch_size: int = 8
    embed_workers: int = 1
    embed_cpus: float = 1.0
    embed_gpus: float = 0.0
    # Sweep folder <storage.root>/tune/<name>/; null: the experiment's name. An interrupted
    # sweep with the same name resumes.
    name: str | None = None
    # Deprecated spellings of space entries (model.n_ctx, model.temporal_depth,
    # model.class_specific_contexts, train.lr_temporal, train.lr_prompt): still read, and moved
    # into `space` (added to the default one) with a warning; given together with `space`, an error.
    n_ctx: list[int] | None = None
    temporal_depth: list[int] | None = None
    class_specific_contexts: list[bool] | None = None
    lr_temporal: list[float] | None = None
    lr_prompt: list[float] | None = None

    # Class attributes, not fields (no annotation).
    DEFAULT_SPACE = {"model.n_ctx": (2, 4, 8, 16), "model.temporal_depth": (1, 2, 3, 4)}
    LEGACY_KEYS = {
        "n_ctx": "model.n_ctx",
        "temporal_depth": "model.temporal_depth",
        "class_specific_contexts": "model.class_specific_contexts",
        "lr_temporal": "train.lr_temporal",
        "lr_prompt": "train.lr_prompt",
    }
    # (field, or section.*: why a trial may not set it), first match wins.
    NOT_SWEPT = (
        ("name", "names the experiment and its outputs, not a trial setting"),
        ("storage.*", "is where every stage reads and writes; all trials of a sweep share one storage root"),
        ("dataset.*", "is the data the trials are compared on; run one sweep per dataset"),
        ("tune.*", "holds the sweep's own settings, not a trial's"),
        (
            "preprocess.*",
            "is applied once, before the sweep, by `dferclip preprocess`: every trial reads the same "
            "shards, so a per-trial value would change nothing",
        ),
        (
            "describe.*",
            "never reaches training (the LLM settings), so a per-trial value would change nothing; "
            "describe.description_set is the one describe field a sweep can range over",
        ),
        ("train.fold", "is the data split: trials are only comparable on the same test clips; run one sweep per fold"),
        ("train.selection", "decides which clips tune.metric is measured on; trials must be scored on the same ones"),
        (
            "train.val_fraction",
            "decides which clips tune.metric is measured on; trials must be scored on the same ones",
        ),
        ("train.best_metric", "decides which epoch a trial reports as its best; trials must be scored the same way"),
        (
            "train.epochs",
            "bounds every trial: ASHA's max_t and the results' completed/stopped_early status use "
            "the sweep's one train.epochs",
        ),
    )
    # Paths inside a NOT_SWEPT section that a sweep may range over: each trial's class prompts use
    # the description set its value names (pipeline.tune.space.TrialSets), in fast and full mode.
    SWEPT_ANYWAY = ("describe.description_set",)
    # Frozen-encoder mode computes the frame embeddings once (pipeline/tune/embeddings.py keys the
    # cache by clip_model, pretrained/weights, quick_gelu, input_normalization, and the seed with
    # random weights) and never sees pixels.
    FULL_MODE_ONLY = (
        ("model.clip_model", "changes the frame embeddings, which this mode computes once and caches"),
        ("model.pretrained", "changes the frame embeddings, which this mode computes once and caches"),
        ("model.weights", "changes the frame embeddings, which this mode computes once and caches"),
        ("model.quick_gelu", "changes the frame embeddings, which this mode computes once and caches"),
        ("model.input_normalization", "changes the frame embeddings, which this mode computes once and caches"),
        ("train.augment.*", "acts on pixels, and this mode trains on cached embeddings without augmentation"),
        ("train.lr_image_encoder", "has no effect: this mode keeps the image encoder frozen"),
    )
    # Off while a candidate or a trial's config is validated: one value is not the whole space.
    _check_space = contextvars.ContextVar("tune_check_space", default=True)

    def __post_init__(self) -> None:
        given = {k: getattr(self, k) for k in self.LEGACY_KEYS if getattr(self, k) is not None}
        if self.space is None:
            space: dict[str, Any] = {k: list(v) for k, v in self.DEFAULT_SPACE.items()}
            for key, values in given.items():
                path = self.LEGACY_KEYS[key]
                space[path] = list(values) if isinstance(values, (list, tuple)) else values
                setattr(self, key, None)
                logging.getLogger(__name__).warning(
                    "tune.%s is deprecated: write it as tune.space: {%s: %s}",
                    key,
                    path,
                    yaml.safe_dump(values, default_flow_style=True).strip().removesuffix("...").strip(),
                )
            self.space = space
        elif isinstance(self.space, dict):
            self.space = self._flat(self.space)  # given together with a legacy key: validate() says so

    @staticmethod
    def _flat(space: dict, prefix: str = "") -> dict[str, Any]:
        """``{model: {n_ctx: [..]}}`` (what ``--set tune.space.model.n_ctx=[..]`` writes) -> ``{model.n_ctx: [..]}``;
        a nested entry replaces the dotted one of the same path."""
        flat: dict[str, Any] = {}
        nested: dict[str, Any] = {}
        for key, value in space.items():
            if isinstance(value, dict):
                nested.update(TuneConfig._flat(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        flat.update(nested)
        return flat

    @classmethod
    def path_problem(cls, path: str, frozen_encoder: bool = False) -> str | None:
        """Why ``path`` (dotted) cannot be a sweep dimension; None when it can."""
        parts, section, is_section = path.split("."), ExperimentConfig, False
        for i, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(section) if f.init]
            here = ".".join(parts[:i])
            if part not in names:
                full = [f"{here}.{n}" if here else n for n in names]
                close = difflib.get_close_matches(".".join(parts[: i + 1]), full, n=1)
                hint = f"did you mean {close[0]}?" if close else f"{here or 'the top level'} has: {', '.join(names)}"
                return f"not a config field ({hint})"
            tp = typing.get_type_hints(section)[part]
            if i < len(parts) - 1 and not dataclasses.is_dataclass(tp):
                return f"not a config field ({'.'.join(parts[: i + 1])} is a value, not a section)"
            section, is_section = tp, dataclasses.is_dataclass(tp)

        def match(pattern: str) -> bool:
            base = pattern.removesuffix(".*")
            return path == base or path.startswith(base + ".")

        for pattern, why in cls.NOT_SWEPT:
            if match(pattern) and path not in cls.SWEPT_ANYWAY:
                return f"may not be swept: {pattern} {why}"
        if is_section:
            fields = ", ".join(f"{path}.{f.name}" for f in dataclasses.fields(section) if f.init)
            return f"is a section, not a value; sweep one of its fields ({fields})"
        if frozen_encoder:
            for pattern, why in cls.FULL_MODE_ONLY:
                if match(pattern):
                    return (
                        f"cannot be swept in frozen-encoder mode (tune.frozen_encoder: true): {path} {why}; "
                        f"sweep it in full mode (tune.frozen_encoder: false)"
                    )
        return None

    @staticmethod
    def with_params(data: dict, params: dict[str, Any]) -> dict:
        """A copy of the plain experiment dict ``data`` with each dotted path of ``params`` set to its
        value, as ``--set PATH=VALUE`` sets it (``data`` itself is not changed; nothing is validated)."""
        out = copy.deepcopy(data)
        for path, value in params.items():
            if hasattr(value, "item") and not isinstance(value, (str, bytes, list, dict)):
                value = value.item()  # a numpy scalar (e.g. from a pandas table) -> plain Python
            node = out
            for part in path.split(".")[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            node[path.rsplit(".", 1)[-1]] = copy.deepcopy(value)
        return out

    @staticmethod
    def trial_config(data: dict, params: dict[str, Any], source: str | None = None) -> ExperimentConfig:
        """The experiment ``data`` (``to_dict(cfg)``) with ``params`` set, built and validated with the
        schema (``from_dict``: types, every section's ``validate()``); a :class:`ConfigError` names each
        bad key path. The search space itself is not checked against it again."""
        token = TuneConfig._check_space.set(False)
        try:
            return from_dict(ExperimentConfig, TuneConfig.with_params(data, params), source)
        finally:
            TuneConfig._check_space.reset(token)

    def space_problems(self, experiment: ExperimentConfig) -> list[str]:
        """Every candidate value set into ``experiment`` and validated like the rest of the config.

        For :meth:`ExperimentConfig.validate` (problems carry their whole key path); the paths and
        lists themselves are checked by :meth:`validate`.
        """
        if not self._check_space.get() or not isinstance(self.space, dict):
            return []
        problems = []
        m = experiment.model
        if self.frozen_encoder and "train.seed" in self.space and not m.weights and not m.pretrained:
            problems.append(
                "tune.space.train.seed: with random initial weights (no model.pretrained or model.weights) "
                "the seed also initialises the image encoder, whose frame embeddings frozen-encoder mode "
                "computes once; sweep it in full mode (tune.frozen_encoder: false)"
            )
        base = to_dict(experiment)

        def check(params: dict) -> list[str]:
            try:
                self.trial_config(base, params)
            except ConfigError as exc:
                return exc.problems
            return []

        own = set(check({}))  # the config's own problems, reported by whoever finds them
        for path, values in self.space.items():
            if self.path_problem(path, self.frozen_encoder) or not isinstance(values, (list, tuple)):
                continue
            leaf = path.rsplit(".", 1)[-1]
            for i, value in enumerate(values):
                for problem in check({path: value}):
                    if problem in own:
                        continue
                    key, sep, message = problem.partition(": ")
                    if sep and (key == path or key.startswith((path + "[", path + "."))):
                        problems.append(f"tune.space.{path}[{i}]: {leaf}{key[len(path) :]} {message}")
                    else:
                        problems.append(f"tune.space.{path}[{i}]: with {path}={value!r}, {problem}")
        return problems

    def validate(self) -> list[str]:
        problems = []
        for key in self.LEGACY_KEYS:
            if getattr(self, key) is not None:
                problems.append(
                    f"{key}: deprecated spelling of the tune.space entry {self.LEGACY_KEYS[key]}, "
                    f"given together with tune.space; move its values into tune.space"
                )
        if not isinstance(self.space, dict) or not self.space:
            problems.append("space: give at least one parameter to sweep, e.g. {model.n_ctx: [2, 4, 8, 16]}")
        else:
            for path, values in self.space.items():
                why = self.path_problem(path, self.frozen_encoder)
                if why:
                    problems.append(f"space.{path}: {why}")
                elif not isinstance(values, (list, tuple)):
                    problems.append(f"space.{path}: expected a list of candidate values, got {values!r}")
                elif not values:
                    problems.append(f"space.{path}: give at least one value")
                else:
                    twice = [v for i, v in enumerate(values) if v in values[:i]]
                    if twice:
                        problems.append(f"space.{path}: {twice[0]!r} is listed more than once")
            if self.search == "grid" and self.num_samples > 1 and "train.seed" in self.space:
                problems.append(
                    "space.train.seed: grid search with num_samples > 1 already sweeps train.seed "
                    "(train.seed + 0, 1, ...); remove it from the space or set num_samples: 1"
                )
        for key in ("num_samples", "grace_period", "max_concurrent_trials", "embed_batch_size", "embed_workers"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.reduction_factor <= 1:
            problems.append(f"reduction_factor: must be > 1, got {self.reduction_factor}")
        for key in ("cpus_per_trial", "gpus_per_trial", "driver_cpus", "embed_cpus", "embed_gpus"):
            if getattr(self, key) < 0:
                problems.append(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.name is not None and (why := name_problem(self.name)):
            problems.append(f"name: {why}")
        return problems


@dataclass
class TrackingConfig:
    # MLflow experiment tracking beside TensorBoard (docs/tracking.md): one MLflow run per
    # training fold and per sweep trial. Needs `pip install 'dferclip[tracking]'`.
    # The tracking server or database, e.g. http://mlflow.example.com:5000 or
    # sqlite:////abs/path/mlflow.db. null: the MLFLOW_TRACKING_URI environment variable is used;
    # with neither set nothing is tracked.
    mlflow_uri: str | None = None
    # The MLflow experiment the runs go to (created when missing); null: the experiment's name.
    mlflow_experiment: str | None = None
    # Where a newly created MLflow experiment keeps its artifacts. null: the server's artifact
    # store (http/https), or the folder mlartifacts/ beside a sqlite database.
    artifact_location: str | None = None
    # Upload the final checkpoint (final/model.pt, ~600 MB with ViT-B/32) as an artifact; plots,
    # metrics.csv and summary.json are uploaded either way.
    log_checkpoint: bool = True
    # Extra tags on every run (team, ticket, ...).
    tags: dict[str, str] = field(default_factory=dict)

    # Class attributes, not fields (no annotation).
    URI_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")

    @staticmethod
    def uri_problem(uri: str) -> str | None:
        """What is wrong with a tracking URI (from the config or MLFLOW_TRACKING_URI), or None."""
        from urllib.parse import urlsplit

        uri = uri.strip()
        if not uri:
            return "is empty; give a tracking URI, or null to turn tracking off"
        if uri == "databricks" or uri.startswith("databricks://"):
            return None
        m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
        if not m or len(m[1]) == 1:  # no scheme, or a Windows drive letter
            return (
                f"{uri!r} has no scheme; for a local store write sqlite:///<absolute path>/mlflow.db "
                "(MLflow 3 refuses bare-path file stores)"
            )
        scheme = m[1].lower().split("+")[0]  # postgresql+psycopg2 -> postgresql
        if scheme not in TrackingConfig.URI_SCHEMES:
            return f"{uri!r}: unsupported scheme {m[1]!r} (use one of {', '.join(TrackingConfig.URI_SCHEMES)})"
        if scheme == "sqlite" and not re.match(r"sqlite:///.", uri, re.I):
            return f"{uri!r}: write sqlite:///<relative path> or sqlite:////<absolute path> (a file, not in memory)"
        if scheme in ("http", "https") and not urlsplit(uri).hostname:
            return f"{uri!r}: no host name"
        return None

    def validate(self) -> list[str]:
        problems = []
        if self.mlflow_uri is not None and (why := self.uri_problem(self.mlflow_uri)):
            problems.append(f"mlflow_uri: {why}")
        # MLFLOW_TRACKING_URI itself may carry them: the environment is not copied into run folders.
        elif why := credentials_problem(self.mlflow_uri, TRACKING_CREDENTIALS):
            problems.append(f"mlflow_uri: {why}")
        if why := credentials_problem(self.artifact_location, FILESYSTEM_CREDENTIALS):
            problems.append(f"artifact_location: {why}")
        if self.mlflow_experiment is not None and not 0 < len(self.mlflow_experiment.strip()) <= 500:
            problems.append(
                f"mlflow_experiment: 1 to 500 characters, or null for the experiment's name, "
                f"got {self.mlflow_experiment!r}"
            )
        if self.artifact_location is not None and not self.artifact_location.strip():
            problems.append("artifact_location: is empty; give a location, or null for the default")
        for key in self.tags:
            if not 0 < len(key) <= 250 or key.startswith(("mlflow.", "dferclip.")):
                problems.append(
                    f"tags: {key!r}: a key of 1 to 250 characters, not starting with 'mlflow.' or "
                    "'dferclip.' (set by MLflow and this project)"
                )
        return problems


@dataclass
class ServeConfig:
    """``dferclip serve`` (docs/serve.md): where it listens, the limits per request, the sizing."""

    host: str = "127.0.0.1"  # 0.0.0.0 to listen on every interface (a cluster's head)
    port: int = 8000
    # Per request: the body (a video, or a JSON list of frames), the video's length and frames
    # (the preprocess caps max_clip_seconds / max_clip_frames for an upload), the time to answer.
    max_upload_mb: float = 64.0
    max_video_seconds: float = 60.0
    max_video_frames: int = 1800
    request_timeout_s: float = 60.0
    # Back-pressure at the HTTP ingress (per replica): requests being answered at once, and
    # requests waiting for one of those places; beyond both a request gets 503 at once.
    max_ongoing_requests: int = 16
    max_queued_requests: int = 32
    # Decode + face crop replicas (CPU), each running `decoder_threads` uploads at once.
    decoders: int = 1
    decoder_threads: int = 2
    cpus_per_decoder: float = 1.0
    # Model replicas; each batches the waiting clips (@serve.batch): up to max_batch_size per
    # forward pass, waiting at most batch_wait_s for a batch to fill.
    models: int = 1
    cpus_per_model: float = 1.0
    gpus_per_model: float = 0.0  # > 0: the model replicas run on CUDA (device cuda)
    max_batch_size: int = 8
    batch_wait_s: float = 0.01

    def validate(self) -> list[str]:
        problems = []
        if not self.host.strip():
            problems.append("host: must not be empty (127.0.0.1, 0.0.0.0, a host name)")
        if not 1 <= self.port <= 65535:
            problems.append(f"port: must be in 1..65535, got {self.port}")
        for name in ("max_upload_mb", "max_video_seconds", "request_timeout_s", "cpus_per_decoder", "cpus_per_model"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("max_video_frames", "max_ongoing_requests", "decoders", "decoder_threads", "models"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        # Unbounded queues are what the limit is there to prevent (-1 is Ray Serve's "no limit").
        if self.max_queued_requests < 1:
            problems.append(f"max_queued_requests: must be >= 1 (a bounded queue), got {self.max_queued_requests}")
        if self.gpus_per_model < 0:
            problems.append(f"gpus_per_model: must be >= 0, got {self.gpus_per_model}")
        if not 1 <= self.max_batch_size <= 256:
            problems.append(f"max_batch_size: must be in 1..256, got {self.max_batch_size}")
        if not 0 <= self.batch_wait_s <= 10:
            problems.append(f"batch_wait_s: must be in [0, 10] seconds, got {self.batch_wait_s}")
        return problems


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
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    timeline: TimelineConfig = field(default_factory=TimelineConfig)
    batch_predict: BatchPredictConfig = field(default_factory=BatchPredictConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def validate(self) -> list[str]:
        problems = []
        # The name becomes folder names below the storage root (run folders, the default sweep).
        if why := name_problem(self.name):
            problems.append(f"name: {why}")
        if self.dataset.name in list_datasets():
            folds = get_dataset(self.dataset.name).folds
            if self.train.fold not in folds:
                problems.append(f"train.fold: {self.dataset.name} has folds {list(folds)}, got {self.train.fold}")
        # Each tune.space candidate set into this config and validated like a --set override.
        problems += self.tune.space_problems(self)
        # Inside a Ray job a relative root points into Ray's temporary copy of the working dir.
        from pipeline.jobpaths import relative_root_problems

        problems += relative_root_problems(self)
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
            raw = p.read_bytes()
        except OSError as exc:
            raise ConfigError([f"cannot read the config file: {exc.strerror or exc}"], source) from None
        try:
            decoded = raw.decode("utf-8-sig")  # not the locale's encoding: a file loads the same everywhere
        except UnicodeDecodeError as exc:
            raise ConfigError(
                [f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}; save the file as UTF-8"], source
            ) from None
        try:
            data = yaml.safe_load(decoded) or {}
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
