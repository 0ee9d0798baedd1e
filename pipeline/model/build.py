"""From a ``model`` config section, class names and descriptions to a ready :class:`DferClip`."""

from __future__ import annotations

import dataclasses

from pipeline.config import ModelConfig
from pipeline.model.backbone import load_clip
from pipeline.model.dferclip import DferClip, class_texts

__all__ = ["build_model"]


def build_model(
    cfg: ModelConfig,
    class_names: list[str],
    descriptions: dict[str, list[str]] | None = None,
    *,
    load_weights: bool = True,
) -> DferClip:
    """Build DFER-CLIP. ``load_weights=False`` builds the architecture only (checkpoint loading).

    The returned model remembers its resolved config (``model.spec``), class names and
    texts, so a checkpoint of it needs nothing else to be rebuilt.
    """
    backbone = load_clip(
        cfg.clip_model,
        pretrained=cfg.pretrained if load_weights else None,
        weights=cfg.weights if load_weights else None,
        quick_gelu=cfg.quick_gelu,
    )
    texts = class_texts(cfg.text_source, class_names, descriptions)
    model = DferClip(
        backbone,
        texts,
        class_names=class_names,
        num_frames=cfg.num_frames,
        temporal_depth=cfg.temporal_depth,
        temporal_heads=cfg.temporal_heads,
        temporal_head_dim=cfg.temporal_head_dim,
        temporal_mlp_dim=cfg.temporal_mlp_dim,
        n_ctx=cfg.n_ctx,
        class_specific_contexts=cfg.class_specific_contexts,
        class_token_position=cfg.class_token_position,
        input_normalization=cfg.input_normalization,
        logit_scale=cfg.logit_scale,
    )
    # Resolved values: a checkpoint rebuilds the same model without the weights that chose them.
    resolved = dataclasses.replace(cfg, quick_gelu=backbone.quick_gelu, logit_scale=model.logit_scale)
    model.spec = {
        "model": dataclasses.asdict(resolved),
        "class_names": list(class_names),
        "descriptions": {c: list(t) for c, t in zip(class_names, texts)} if cfg.text_source == "descriptions" else None,
    }
    return model
