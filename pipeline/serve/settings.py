"""What ``dferclip serve`` serves and how: :class:`ServeSettings`, made by :func:`settings_from`
from the command line's pieces. Plain data, no Ray: it travels to every replica, and a bad
setting is refused before Ray or Serve start."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.config import PreprocessConfig, ServeConfig, TimelineConfig
from pipeline.serve.backends import ModelInfo

__all__ = ["CAPS", "ServeSettings", "settings_from"]

# The preprocess caps an upload is held to, and the serve keys that set them.
CAPS = {"max_clip_seconds": "max_video_seconds", "max_clip_frames": "max_video_frames"}


@dataclass
class ServeSettings:
    """Everything the deployments need, as plain data (it travels to the replicas)."""

    info: ModelInfo
    serve: ServeConfig = field(default_factory=ServeConfig)
    prep: PreprocessConfig = field(default_factory=PreprocessConfig)  # crop settings, caps from serve
    timeline: TimelineConfig | None = field(default_factory=TimelineConfig)
    device: str = "cpu"

    def loader_prep(self) -> PreprocessConfig:
        """The crop settings with the serve limits as the per-clip caps (the tighter of the two)."""
        caps = {}
        for cap, key in CAPS.items():
            ours, theirs = getattr(self.serve, key), getattr(self.prep, cap)
            caps[cap] = ours if theirs is None else min(ours, theirs)
        return dataclasses.replace(self.prep, **caps)


def settings_from(
    checkpoint: str | None = None,
    onnx: str | None = None,
    config: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "auto",
) -> ServeSettings:
    """Settings from the command line's pieces: the served model, and ``config``'s serve,
    preprocess and timeline sections (else the defaults; crop settings: the config's preprocess
    section, else the checkpoint's recorded ones, else the defaults, as predict)."""
    from pipeline.config import load_config
    from pipeline.errors import UserError
    from pipeline.predict import recorded_preprocess
    from pipeline.serve.backends import describe_source

    cfg = load_config(config, overrides)
    info = describe_source(checkpoint, onnx)
    prep = cfg.preprocess if config else (recorded_preprocess(info.extra, info.source) or PreprocessConfig())
    if device == "auto":
        device = "cuda" if cfg.serve.gpus_per_model > 0 else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"serve: --device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and info.backend == "onnx":
        raise UserError("serve: the ONNX backend runs on onnxruntime's CPU provider; use --checkpoint for a GPU")
    if device.startswith("cuda") and cfg.serve.gpus_per_model == 0:
        # The replicas would be placed without a GPU and fail to start, again and again.
        raise UserError("serve: --device cuda needs serve.gpus_per_model > 0 (the model replicas' GPUs)")
    return ServeSettings(info, cfg.serve, prep, cfg.timeline, device)
