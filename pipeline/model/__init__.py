"""The DFER-CLIP model on open_clip: backbone loader, temporal model, prompt learner, checkpoints."""

from pipeline.model.backbone import list_architectures, load_clip
from pipeline.model.build import build_model
from pipeline.model.checkpoint import load_checkpoint, save_checkpoint
from pipeline.model.dferclip import PAPER_LOGIT_SCALE, DferClip

__all__ = [
    "DferClip",
    "PAPER_LOGIT_SCALE",
    "build_model",
    "load_clip",
    "list_architectures",
    "load_checkpoint",
    "save_checkpoint",
]
