"""The frozen-encoder trial: the training recipe on cached frame embeddings, one process per trial.

No Ray Train: the image encoder is never run (its embeddings come from
:mod:`pipeline.tune.embeddings`), so a step costs the temporal Transformer on (B, T, E) plus
the frozen text tower that turns the learnable context into class embeddings.

The loop is the train stage's own :class:`~pipeline.train.recipe.Recipe` — the same step,
optimiser, schedule, initialisation seed, metric row, best-epoch selection and final test —
fed here with the same split plan (:func:`~pipeline.train.data.plan_splits`) and the same frame
sampling rule and per-clip randomness (:func:`~pipeline.train.sampling.sample_indices` with
:func:`~pipeline.train.transforms.clip_rng`: a clip sees the same frames in epoch k here as in a
full run). What differs: no augmentation (it acts on pixels), the image encoder stays frozen
(docs/tune.md), the best epoch's trainable weights are kept in memory, and every epoch is
checkpointed through Ray Tune (a few MB), so a trial that ASHA pauses or an interrupted sweep
continues where it stopped.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.train.data import plan_splits
from pipeline.train.recipe import Recipe, RunSpec, build_run_model
from pipeline.train.sampling import sample_indices
from pipeline.train.transforms import clip_rng
from pipeline.tune.embeddings import EmbeddingSet
from pipeline.tune.space import TrialSets

__all__ = ["FastSetup", "fast_trial", "build_frozen_model"]

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class FastSetup:
    """What every trial of a frozen-encoder sweep shares (the swept values come per trial)."""

    experiment: ExperimentConfig
    sets: TrialSets  # the description set of each trial (one for all unless the sweep ranges over sets)
    swept: tuple[str, ...]  # dotted config paths (``model.n_ctx`` ...)
    where: str = "<embeddings>"  # names the data in error messages
    tracking: dict | None = None  # MLflow settings (runs nest under the sweep's run)


def build_frozen_model(spec: RunSpec) -> nn.Module:
    """The run's model without its image encoder, initialised as the train loop does."""
    model = build_run_model(spec)
    model.image_encoder = nn.Identity()  # never run here; frees its memory (88M parameters at ViT-B/32)
    return model


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n in keep}


def _pairs(
    data: EmbeddingSet, rows: np.ndarray, spec: RunSpec, device: torch.device, epoch: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(frame embeddings (B, T, E), labels (B,)) of clips ``rows``, sampled by the shared rule;
    ``epoch`` None samples for evaluation (segment middles)."""
    t, T = spec.train, spec.model.num_frames
    batch_size = t.batch_size if epoch is not None else t.eval_batch_size
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        out = np.empty((len(batch), T, data.frames.shape[1]), dtype=np.float32)
        for b, r in enumerate(batch):
            start, n = int(data.offsets[r]), int(data.offsets[r + 1] - data.offsets[r])
            rng = clip_rng(t.seed, epoch, data.clip_ids[r]) if epoch is not None else None
            out[b] = data.frames[start + sample_indices(n, T, epoch is not None, rng)]
        yield torch.from_numpy(out).to(device), torch.from_numpy(data.labels[batch]).to(device)


def _index_table(data: EmbeddingSet) -> pa.Table:
    return pa.table(
        {"clip_id": data.clip_ids, "label": data.labels, "splits": pa.array(data.splits, pa.list_(pa.string()))}
    )


def fast_trial(config: dict, *, data: EmbeddingSet, setup: FastSetup) -> None:
    """Ray Tune function trainable (wrap with ``tune.with_parameters(fast_trial, data=..., setup=...)``)."""
    import ray
    from ray import tune

    from pipeline.tune.space import apply_params, trial_params

    params = trial_params(config, list(setup.swept))
    cfg = apply_params(setup.experiment, params)
    chosen = setup.sets.for_params(params)
    spec = RunSpec.for_experiment(
        cfg,
        tune.get_context().get_trial_name(),
        chosen.descriptions if chosen else None,
        setup.tracking,
        description_set=chosen.record() if chosen else None,
    )
    t = spec.train
    plan = plan_splits(_index_table(data), spec.fold, t.selection, t.val_fraction, t.seed, setup.where)
    row_of = {cid: i for i, cid in enumerate(data.clip_ids)}
    rows = {s: np.array([row_of[c] for c in getattr(plan, s)], dtype=np.int64) for s in ("train", "val", "test")}

    device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
    model = build_frozen_model(spec).to(device)
    recipe = Recipe(spec, model, device=device, forward=model.logits_from_frames, train_image_encoder=False)
    best_state: dict[str, torch.Tensor] | None = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)
        model.load_state_dict(saved["model"], strict=False)
        recipe.load_state_dict(saved["recipe"])
        best_state = saved["best_state"]

    split = spec.selection_split
    with recipe.tracked():  # one MLflow run per trial when tracking is on
        for epoch in recipe.epochs():
            started = time.perf_counter()
            order = rows["train"][np.random.default_rng([t.seed, epoch]).permutation(len(rows["train"]))]
            train_row = recipe.train_epoch(_pairs(data, order, spec, device, epoch))
            evals = {split: recipe.evaluate(_pairs(data, rows[split], spec, device, None))}
            row, improved = recipe.end_epoch(train_row, evals, time.perf_counter() - started)
            if improved:
                best_state = _trainable_state(model)
            saved = {"model": _trainable_state(model), "recipe": recipe.state_dict(), "best_state": best_state}
            if recipe.last_epoch:
                recipe.finish(
                    partial(model.load_state_dict, best_state, strict=False),
                    partial(_pairs, data, rows["test"], spec, device, None),
                )
            with tempfile.TemporaryDirectory(prefix="fastckpt") as d:
                torch.save(saved, os.path.join(d, STATE_FILE))
                tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
