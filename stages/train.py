"""Train stage: fit DFER-CLIP with Ray Train (DDP workers) on the Parquet shards.

Reads ``<storage.root>/shards/<dataset>/`` (from ``dferclip preprocess``) and the description set
(``describe.description_set``, the describe stage's output, or the shipped default); trains one
run per requested fold with a ``TorchTrainer``; writes each run to
``<storage.root>/train/<experiment>-fold<k>-<timestamp>/`` (checkpoints every epoch, metrics.csv /
.parquet, TensorBoard events, curves.png, confusion_*.png, final/model.pt, summary.json) and
points ``<storage.root>/train/latest.json`` at the latest completed run. With several folds it
also writes the per-fold and mean UAR/WAR table (``<experiment>-kfold-<timestamp>/folds.md``).

    dferclip train --config configs/dfew.yaml                      # train.fold of the config
    dferclip train --config configs/dfew.yaml --folds all          # the 5-fold protocol
    dferclip train --resume runs/train/dfew-fold1-20261126-...     # continue an interrupted run
    dferclip train --resume <run name> --config configs/dfew.yaml --set train.epochs=60
"""

from __future__ import annotations

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.errors import UserError


def main(cfg: ExperimentConfig | None, *, folds: str | None = None, resume: str | None = None,
         overrides: list[str] | tuple[str, ...] = (), log=print) -> dict:
    from pipeline.raycluster import ensure_ray
    from pipeline.train.experiment import parse_folds, resume_run, run_folds

    # validate
    if resume is not None:
        if folds is not None:
            raise UserError("--resume continues one run; it cannot be combined with --folds")
        ensure_ray()
        return {"runs": [resume_run(resume, root=cfg.storage.root if cfg else None, overrides=overrides, log=log)]}
    if cfg is None:
        raise UserError("--config is required (or --resume RUN)")
    fold_list = parse_folds(folds, cfg.dataset.name, cfg.train.fold)
    # run (each fold builds its datasets and trainer in pipeline.train.driver.fit)
    ensure_ray()
    return run_folds(cfg, fold_list, log=log)


def cli(argv=None) -> int:
    parser = stage_parser("dferclip train", __doc__, config_required=False)
    parser.add_argument("--folds", help="'all' or comma-separated folds (default: train.fold of the config)")
    parser.add_argument("--resume", metavar="RUN", help="run folder (or its name with --config) to continue")
    args = parser.parse_args(argv)

    def body():
        cfg = load_config(args.config, [] if args.resume else args.overrides) if args.config else None
        main(cfg, folds=args.folds, resume=args.resume, overrides=args.overrides)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
