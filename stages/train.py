"""Train stage: fit DFER-CLIP with Ray Train (DDP workers) on the Parquet shards.

Reads ``<storage.root>/shards/<dataset>/`` (from ``dferclip preprocess``) and the description set
(``describe.description_set``, else with ``describe.enabled`` the describe stage's output, else the
shipped default: :func:`pipeline.llm.selection.resolve_description_set`); trains one run per
requested fold with a ``TorchTrainer``; writes each run to
``<storage.root>/train/<experiment>-fold<k>-<timestamp>/`` (checkpoints every epoch, metrics.csv /
.parquet, TensorBoard events, curves.png, confusion_*.png, final/model.pt, summary.json) and
points ``<storage.root>/train/latest.json`` at the latest completed run. With several folds it
also writes the per-fold and mean UAR/WAR table (``<experiment>-kfold-<timestamp>/folds.md``).

    dferclip train --config configs/dfew.yaml                      # train.fold of the config
    dferclip train --config configs/dfew.yaml --folds all          # the 5-fold protocol
    dferclip train --resume runs/train/dfew-fold1-20261126-...     # continue an interrupted run
    dferclip train --resume <run name> --config configs/dfew.yaml --set train.epochs=60
    dferclip train --config configs/dfew.yaml --init-from models/dfew-set1.pt   # a new run from a checkpoint

``--init-from CKPT`` is ``train.init_checkpoint`` (docs/train.md): a new run whose model is that
project checkpoint (a run's ``final/model.pt`` or an ``import-official`` output), all its weights,
trained further with the config's recipe; a model section that does not describe it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config

__all__ = ["main", "cli"]


def main(
    cfg: ExperimentConfig | None,
    *,
    folds: str | None = None,
    resume: str | None = None,
    overrides: Sequence[str] = (),
    init_from: str | None = None,
) -> dict:
    """The stage on a loaded config (None with ``resume``): :func:`pipeline.train.experiment.run_train`."""
    from pipeline.train.experiment import run_train

    return run_train(cfg, folds=folds, resume=resume, overrides=overrides, init_from=init_from)


def cli(argv=None) -> int:
    parser = stage_parser("dferclip train", __doc__, config_required=False)
    parser.add_argument("--folds", help="'all' or comma-separated folds (default: train.fold of the config)")
    parser.add_argument("--resume", metavar="RUN", help="run folder (or its name with --config) to continue")
    parser.add_argument(
        "--init-from",
        metavar="CKPT",
        help="start a new run from this project checkpoint's model and weights (train.init_checkpoint)",
    )
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = load_config(args.config, [] if args.resume else args.overrides) if args.config else None
        main(cfg, folds=args.folds, resume=args.resume, overrides=args.overrides, init_from=args.init_from)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
