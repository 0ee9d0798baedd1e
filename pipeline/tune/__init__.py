"""The tune stage's library: search space, frozen-encoder embedding cache and trial, full trial, sweep, outputs.

- :mod:`~pipeline.tune.experiment` — ``run_tune``: a sweep from config to outputs.
- :mod:`~pipeline.tune.space` — the search space as dotted config paths.
- :mod:`~pipeline.tune.sweep` — ``run_sweep``: Ray Tune, ASHA, resume.
- :mod:`~pipeline.tune.full` / :mod:`~pipeline.tune.fast` — the two trial kinds (both drive
  :class:`pipeline.train.recipe.Recipe`); :mod:`~pipeline.tune.embeddings` — the frame-embedding cache.
- :mod:`~pipeline.tune.results` — table, heat-map, best config; :mod:`~pipeline.tune.stopping`.

Submodules are imported on use (Ray and PyTorch are heavy); nothing runs at import time.
"""

__all__ = ["experiment", "space", "sweep", "full", "fast", "embeddings", "results", "stopping"]
