"""DFER-CLIP: CLIP image encoder per frame -> temporal Transformer -> cosine logits against learnt class prompts.

``logits = s * (v/|v|) . (t_c/|t_c|)`` with a fixed scale ``s``: 100 (temperature 0.01) as in the
paper with OpenAI's weights; by default the backbone's own CLIP logit scale, which is that 100
for OpenAI's CLIP and CLIP's initial 1/0.07 for a random initialisation.
Trainable: the image encoder, the temporal model and the context vectors, each with its own
learning rate (:meth:`DferClip.param_groups`). The text tower and token embeddings are frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.backbone import Backbone
from pipeline.model.prompts import PromptLearner, TextEncoder
from pipeline.model.temporal import TemporalTransformer

__all__ = ["DferClip", "PAPER_LOGIT_SCALE", "backbone_logit_scale", "class_texts", "frames_to_pixels"]

PAPER_LOGIT_SCALE = 1.0 / 0.01


def backbone_logit_scale(clip: nn.Module) -> float:
    """The CLIP model's own (exponentiated) logit scale: 100 for OpenAI's weights, 1/0.07 at init."""
    return float(clip.logit_scale.detach().exp())


def frames_to_pixels(video: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """(B, T, 3, H, W) uint8 or float in [0, 1] -> (B*T, 3, H, W) float image-encoder input.

    ``mean``/``std`` (shape (1, 3, 1, 1)) apply CLIP's normalisation; None feeds [0, 1] as the
    published code does.
    """
    x = video.flatten(0, 1)  # (B*T, 3, H, W)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    return (x - mean) / std if mean is not None else x


def class_texts(source: str, class_names: list[str], descriptions: dict[str, list[str]] | None) -> list[list[str]]:
    """The texts that stand for each class, by ``model.text_source``."""
    if source == "class_names":
        return [[name] for name in class_names]
    if source == "expression_of":
        return [[f"an expression of {name}"] for name in class_names]
    if source == "descriptions":
        if descriptions is None:
            raise ValueError("text_source=descriptions needs a description set")
        missing = [c for c in class_names if not descriptions.get(c)]
        if missing:
            raise ValueError(f"the description set has no descriptions for: {', '.join(missing)}")
        return [list(descriptions[c]) for c in class_names]
    raise ValueError(f"unknown text source {source!r}")


class DferClip(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        texts_per_class: list[list[str]],
        *,
        class_names: list[str],
        num_frames: int = 16,
        temporal_depth: int = 1,
        temporal_heads: int = 8,
        temporal_head_dim: int = 64,
        temporal_mlp_dim: int = 1024,
        n_ctx: int = 8,
        class_specific_contexts: bool = True,
        class_token_position: str = "end",
        input_normalization: str = "clip",
        logit_scale: float | None = None,
    ):
        super().__init__()
        clip = backbone.model
        self.class_names = list(class_names)
        self.image_size = backbone.image_size
        self.num_frames = num_frames
        self.image_encoder = clip.visual
        self.text_encoder = TextEncoder(clip)
        self.prompt_learner = PromptLearner(
            texts_per_class,
            backbone.tokenizer,
            clip.token_embedding.weight.shape[1],
            n_ctx,
            class_specific=class_specific_contexts,
            position=class_token_position,
            context_length=clip.positional_embedding.shape[0],
            class_names=class_names,
        )
        embed_dim = (
            clip.text_projection.shape[1]
            if isinstance(clip.text_projection, torch.Tensor)
            else clip.text_projection.out_features
        )
        self.temporal = TemporalTransformer(
            embed_dim, num_frames, temporal_depth, temporal_heads, temporal_head_dim, temporal_mlp_dim
        )
        self.normalize_input = input_normalization == "clip"
        self.logit_scale = float(logit_scale) if logit_scale is not None else backbone_logit_scale(clip)
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        self.text_encoder.requires_grad_(False)
        self._text_cache: tuple[tuple, torch.Tensor] | None = None

    # ---- parts -------------------------------------------------------------------------

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) uint8 or float in [0, 1] -> (B, T, E) per-frame CLIP embeddings."""
        b, t = video.shape[:2]
        mean, std = (self.pixel_mean, self.pixel_std) if self.normalize_input else (None, None)
        return self.image_encoder(frames_to_pixels(video, mean, std)).view(b, t, -1)

    def text_features(self) -> torch.Tensor:
        """(C, E) class text embeddings, L2-normalised.

        With several texts per class, each text's embedding is normalised and the class
        embedding is their mean, normalised again. Outside training (no grad) the result is
        cached until the context vectors change, so evaluation encodes the text once.
        """
        ctx = self.prompt_learner.ctx
        dev = ctx.device.type
        # Under autocast (train.precision) the features come out in its dtype: a cached copy is
        # only reused under the same autocast state, or fp32 and bf16 operands would meet.
        amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        key = (ctx._version, ctx.data_ptr(), ctx.device, amp)
        cacheable = not torch.is_grad_enabled()
        if cacheable and self._text_cache is not None and self._text_cache[0] == key:
            return self._text_cache[1]
        pl = self.prompt_learner
        rows = F.normalize(self.text_encoder(pl(self.text_encoder.token_embedding), pl.eot_index), dim=-1)  # (R, E)
        if rows.shape[0] != pl.n_cls:
            summed = rows.new_zeros(pl.n_cls, rows.shape[1]).index_add_(0, pl.row_class, rows)
            rows = summed / torch.bincount(pl.row_class, minlength=pl.n_cls).unsqueeze(1)
        feats = F.normalize(rows, dim=-1)  # (C, E)
        if cacheable:
            self._text_cache = (key, feats)
        return feats

    def video_features(self, frame_features: torch.Tensor) -> torch.Tensor:
        """(B, T, E) frame embeddings -> (B, E) normalised video embedding."""
        return F.normalize(self.temporal(frame_features), dim=-1)

    def logits_from_frames(self, frame_features: torch.Tensor) -> torch.Tensor:
        """Logits from precomputed frame embeddings (the frozen-encoder sweep path)."""
        return self.video_features(frame_features) @ self.text_features().t() * self.logit_scale

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, C) logits."""
        return self.logits_from_frames(self.encode_frames(video))

    # ---- training helpers ----------------------------------------------------------------

    def param_groups(
        self, lr_image_encoder: float, lr_temporal: float, lr_prompt: float, train_image_encoder: bool = True
    ) -> list[dict]:
        """Optimizer parameter groups with the paper's three learning rates."""
        self.image_encoder.requires_grad_(train_image_encoder)
        groups = [
            {"name": "temporal", "params": list(self.temporal.parameters()), "lr": lr_temporal},
            {"name": "prompt", "params": [self.prompt_learner.ctx], "lr": lr_prompt},
        ]
        if train_image_encoder:
            groups.insert(
                0, {"name": "image_encoder", "params": list(self.image_encoder.parameters()), "lr": lr_image_encoder}
            )
        return groups
