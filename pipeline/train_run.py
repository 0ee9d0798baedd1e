"""The train stage's work (``dferclip train``): the config's folds as fresh runs, or a resumed run.

    run_train(cfg, *, folds=None, resume=None, overrides=()) -> dict   # {"runs": [summary, ...], ["kfold": ...]}

``folds``: None trains ``train.fold`` of the config; ``"all"`` the dataset's folds; ``"1,3"`` those
(several folds also write the per-fold and mean table). ``resume``: a run folder, or its name
below ``<storage.root>/train`` with ``cfg`` given, continued from its latest checkpoint with its
own config and ``overrides`` applied on top. Ray is joined (``RAY_ADDRESS``) or started locally.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.config import ExperimentConfig
from pipeline.errors import UserError

__all__ = ["run_train"]


def run_train(
    cfg: ExperimentConfig | None, *, folds: str | None = None, resume: str | None = None, overrides: Sequence[str] = ()
) -> dict:
    """Train ``folds`` of ``cfg`` (default ``train.fold``), or continue the run ``resume``."""
    from pipeline.raycluster import ensure_ray
    from pipeline.train.experiment import parse_folds, resume_run, run_folds

    # validate
    if resume is not None:
        if folds is not None:
            raise UserError("--resume continues one run; it cannot be combined with --folds")
        ensure_ray()
        return {"runs": [resume_run(resume, root=cfg.storage.root if cfg else None, overrides=list(overrides))]}
    if cfg is None:
        raise UserError("--config is required (or --resume RUN)")
    fold_list = parse_folds(folds, cfg.dataset.name, cfg.train.fold)
    # run (each fold builds its datasets and trainer in pipeline.train.driver.fit)
    ensure_ray()
    return run_folds(cfg, fold_list)
