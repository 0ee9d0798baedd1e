"""The tune stage's library: search space, frozen-encoder embedding cache and trial, full trial, sweep, outputs."""

from pipeline.tune.embeddings import EmbeddingSet, backbone_key, ensure_embeddings, load_embeddings
from pipeline.tune.fast import FastSetup, fast_trial
from pipeline.tune.full import FullSetup, full_trainable, full_trial
from pipeline.tune.results import best_config_yaml, heatmap_png, results_table
from pipeline.tune.space import apply_params, param_space
from pipeline.tune.sweep import run_sweep

__all__ = [
    "EmbeddingSet", "backbone_key", "ensure_embeddings", "load_embeddings",
    "FastSetup", "fast_trial", "FullSetup", "full_trial", "full_trainable",
    "results_table", "heatmap_png", "best_config_yaml",
    "apply_params", "param_space", "run_sweep",
]
