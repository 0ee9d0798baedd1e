"""The sweep's search space: from the ``tune`` config section to Ray Tune's ``param_space`` and back.

A trial's parameters are a flat dict with the names of the config fields they replace
(``n_ctx``, ``temporal_depth``, ``class_specific_contexts``, ``lr_temporal``, ``lr_prompt``,
``seed``); :func:`apply_params` turns them into the trial's model and train sections, so the
frozen-encoder trial, the full trial and the best-config YAML all read them the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.config import ModelConfig, TrainConfig, TuneConfig

__all__ = ["SWEPT_MODEL_KEYS", "SWEPT_TRAIN_KEYS", "param_space", "swept_keys", "expected_trials", "apply_params", "apply_params_to_dict"]

SWEPT_MODEL_KEYS = ("n_ctx", "temporal_depth", "class_specific_contexts")
SWEPT_TRAIN_KEYS = ("lr_temporal", "lr_prompt", "seed")


def _candidates(cfg: TuneConfig) -> dict[str, list]:
    values = {
        "n_ctx": cfg.n_ctx,
        "temporal_depth": cfg.temporal_depth,
        "class_specific_contexts": cfg.class_specific_contexts,
        "lr_temporal": cfg.lr_temporal,
        "lr_prompt": cfg.lr_prompt,
    }
    return {k: list(v) for k, v in values.items() if v is not None}


def swept_keys(cfg: TuneConfig) -> list[str]:
    """The parameter names a trial's config carries, in a stable order."""
    keys = list(_candidates(cfg))
    if cfg.search == "grid" and cfg.num_samples > 1:
        keys.append("seed")
    return keys


def expected_trials(cfg: TuneConfig) -> int:
    """How many trials the whole sweep has (an interrupted one has fewer, or unfinished ones)."""
    if cfg.search == "random":
        return cfg.num_samples
    n = cfg.num_samples
    for values in _candidates(cfg).values():
        n *= len(values)
    return n


def param_space(cfg: TuneConfig, base_seed: int) -> tuple[dict[str, Any], int]:
    """(Ray Tune ``param_space``, ``num_samples`` for ``tune.TuneConfig``).

    Grid search crosses every list; ``num_samples`` repeats the grid with seeds
    ``base_seed + i`` (a grid dimension of its own, so each repeat is a distinct trial rather
    than an identical re-run). Random search draws each parameter uniformly from its list.
    """
    from ray import tune

    space: dict[str, Any] = {}
    for key, values in _candidates(cfg).items():
        space[key] = tune.grid_search(values) if cfg.search == "grid" else tune.choice(values)
    if cfg.search == "grid":
        if cfg.num_samples > 1:
            space["seed"] = tune.grid_search([base_seed + i for i in range(cfg.num_samples)])
        return space, 1
    return space, cfg.num_samples


def apply_params(model: ModelConfig, train: TrainConfig, params: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Copies of the model and train sections with a trial's parameters filled in."""
    unknown = set(params) - set(SWEPT_MODEL_KEYS) - set(SWEPT_TRAIN_KEYS)
    if unknown:
        raise ValueError(f"not a swept parameter: {sorted(unknown)}")
    model = dataclasses.replace(model, **{k: params[k] for k in SWEPT_MODEL_KEYS if k in params})
    train = dataclasses.replace(train, **{k: params[k] for k in SWEPT_TRAIN_KEYS if k in params})
    return model, train


def apply_params_to_dict(config: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A plain experiment-config dict (``to_dict(cfg)``) with a trial's parameters filled in."""
    out = {**config, "model": dict(config.get("model") or {}), "train": dict(config.get("train") or {})}
    for key, value in params.items():
        section = "model" if key in SWEPT_MODEL_KEYS else "train" if key in SWEPT_TRAIN_KEYS else None
        if section is None:
            raise ValueError(f"not a swept parameter: {key}")
        out[section][key] = value
    return out
