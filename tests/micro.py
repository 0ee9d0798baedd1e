"""The micro DFER-CLIP config the unit tests build models from (``dferclip-micro``, random
weights): one definition, so a test states only what it changes."""

from __future__ import annotations

from pipeline.config import ModelConfig

__all__ = ["micro_model"]


def micro_model(**overrides) -> ModelConfig:
    """A ``dferclip-micro`` model config (32-px images, 8 frames, a small temporal transformer,
    4 context tokens, no weights to download), with ``overrides`` applied."""
    base = dict(
        clip_model="dferclip-micro",
        pretrained=None,
        num_frames=8,
        temporal_heads=2,
        temporal_head_dim=32,
        temporal_mlp_dim=128,
        n_ctx=4,
    )
    return ModelConfig(**{**base, **overrides})
