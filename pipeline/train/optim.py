"""Optimiser and learning-rate schedule from a ``train`` config section — one home for both the
train stage's workers and the tune stage's fast trials.

The paper: SGD (momentum 0.9, weight decay 1e-4) with three parameter groups (image encoder,
temporal model, prompt context) and MultiStepLR. For training a small CLIP from scratch (the
demo), AdamW with a short linear warm-up and cosine decay learns far faster; both are config.
The schedule is a per-epoch factor on every group's base learning rate, stepped once an epoch.
"""

from __future__ import annotations

import bisect
import math

import torch

from pipeline.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr_temporal, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr_temporal, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rates during 0-based ``epoch``."""
    warm = min(1.0, (epoch + 1) / (cfg.warmup_epochs + 1)) if cfg.warmup_epochs else 1.0
    if cfg.lr_schedule == "cosine":
        # Cosine from the end of the warm-up to the last epoch, never quite reaching zero.
        span = max(1, cfg.epochs - cfg.warmup_epochs)
        progress = min(1.0, max(0, epoch - cfg.warmup_epochs) / span)
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    return warm * cfg.lr_gamma ** bisect.bisect_right(list(cfg.milestones), epoch)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``scheduler.step()`` once per epoch; ``milestones`` count finished epochs, as MultiStepLR does."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, cfg))
