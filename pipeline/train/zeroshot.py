"""Zero-shot baseline (EmoCLIP-style): CLIP with the class descriptions and no training at all.

Each frame goes through the CLIP image encoder; the clip embedding is the mean of the
normalised frame embeddings; each class is the mean of its normalised text embeddings (the
plain descriptions, no learnable context); logits are cosine similarities x 100 (CLIP's
temperature). Pretrained weights are what make this meaningful (``model.pretrained`` /
``model.weights``); with a random-initialised architecture it is chance level by design.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig
from pipeline.model.backbone import load_clip
from pipeline.model.dferclip import class_texts, frames_to_pixels

__all__ = ["ZeroShotClip"]


class ZeroShotClip(nn.Module):
    def __init__(self, cfg: ModelConfig, class_names: list[str], descriptions: dict[str, list[str]] | None):
        super().__init__()
        backbone = load_clip(cfg.clip_model, pretrained=cfg.pretrained, weights=cfg.weights, quick_gelu=cfg.quick_gelu)
        clip = backbone.model
        self.class_names = list(class_names)
        self.image_size = backbone.image_size
        self.num_frames = cfg.num_frames
        self.visual = clip.visual
        self.normalize_input = cfg.input_normalization == "clip"
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        texts = class_texts(cfg.text_source, class_names, descriptions)
        with torch.no_grad():
            rows = [F.normalize(clip.encode_text(backbone.tokenizer(t)), dim=-1).mean(0) for t in texts]
        self.register_buffer("text", F.normalize(torch.stack(rows), dim=-1), persistent=False)  # (C, E)
        self.requires_grad_(False)
        self.eval()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) uint8 or float in [0, 1] -> (B, C) logits."""
        b, t = video.shape[:2]
        mean, std = (self.pixel_mean, self.pixel_std) if self.normalize_input else (None, None)
        frames = F.normalize(self.visual(frames_to_pixels(video, mean, std)), dim=-1).view(b, t, -1)  # (B, T, E)
        clip_emb = F.normalize(frames.mean(dim=1), dim=-1)  # (B, E)
        return 100.0 * clip_emb @ self.text.t()
