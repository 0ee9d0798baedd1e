"""Synthetic dynamic-expression videos: procedurally drawn faces going from neutral to one of the
seven basic expressions. Used by ``dferclip demo-data`` and the embedded demo, and by tests that
need real video files with known labels and known face positions."""

from pipeline.synth.dataset import LABELS_NAME, generate_dataset, write_video
from pipeline.synth.expressions import PROFILES
from pipeline.synth.render import render_clip

__all__ = ["generate_dataset", "render_clip", "write_video", "PROFILES", "LABELS_NAME"]
