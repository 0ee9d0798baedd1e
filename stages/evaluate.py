"""Evaluate stage: score a saved checkpoint — or zero-shot CLIP — on a split of the shards.

Reads ``<storage.root>/shards/<dataset>/`` (the fold's ``test`` split by default; ``val`` is the
validation hold-out carved from train exactly as training carves it; ``train`` the rest) and
the checkpoint (project format: it carries its model config, class names and descriptions).
``--zero-shot`` evaluates the config's CLIP (``model.*``) with the class descriptions and no
training (an EmoCLIP-style baseline). Writes ``<storage.root>/evaluate/<name>/``: metrics.json
(loss, UAR, WAR, ECE, per-class recall, confusion), predictions.csv (per clip), confusion.png
and reliability.png. A temperature stored by ``dferclip calibrate`` is applied.

``--folds all`` (or ``1,3``) evaluates one checkpoint per fold on its test split and writes the
reproduction card (:mod:`pipeline.card`): per-fold and mean ± std UAR/WAR beside the paper's,
the protocol, and the data check against the published annotation lists. ``--checkpoint`` then
holds ``{fold}`` where the fold number goes; after the substitution it may be a glob that
matches exactly one file.

    dferclip evaluate --config configs/dfew.yaml --checkpoint runs/train/<run>/final/model.pt
    dferclip evaluate --config configs/dfew.yaml --zero-shot --split test --fold 2
    dferclip evaluate --config configs/dfew.yaml --folds all --checkpoint 'models/DFEW-set{fold}.pt'
    dferclip evaluate --config configs/dfew.yaml --folds all \
        --checkpoint 'runs/dfew/train/dfew-fold{fold}-*/final/model.pt'
"""

from __future__ import annotations

from functools import partial

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.errors import UserError
from pipeline.evaluate import SPLITS, run_evaluate

__all__ = ["main", "card", "cli"]


def main(
    cfg: ExperimentConfig,
    *,
    checkpoint: str | None = None,
    split: str = "test",
    fold: int | None = None,
    zero_shot: bool = False,
) -> dict:
    """The stage on a loaded config: :func:`pipeline.evaluate.run_evaluate`."""
    return run_evaluate(cfg, checkpoint=checkpoint, split=split, fold=fold, zero_shot=zero_shot)


def card(
    cfg: ExperimentConfig,
    *,
    checkpoint: str | None,
    folds: str,
    split: str = "test",
    fold: int | None = None,
    zero_shot: bool = False,
) -> dict:
    """``--folds``: the reproduction card (:func:`pipeline.card.run_card`) over ``folds``
    (``all`` or ``1,3``)."""
    from pipeline.card import run_card
    from pipeline.train.experiment import parse_folds

    if zero_shot or checkpoint is None:
        raise UserError("--folds: give --checkpoint with {fold} where the fold number goes (not --zero-shot)")
    if split != "test" or fold is not None:
        raise UserError("--folds evaluates each fold's test split: leave out --split and --fold")
    return run_card(cfg, checkpoint, parse_folds(folds, cfg.dataset.name, cfg.train.fold))


def cli(argv=None) -> int:
    parser = stage_parser("dferclip evaluate", __doc__)
    parser.add_argument("--checkpoint", help="a project checkpoint (e.g. <run>/final/model.pt)")
    parser.add_argument("--zero-shot", action="store_true", help="CLIP + descriptions, no training (baseline)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="which split (default test)")
    parser.add_argument("--fold", type=int, help="fold to evaluate (default: train.fold of the config)")
    parser.add_argument(
        "--folds", metavar="all|K,K", help="reproduction card over these folds' test splits ({fold} in --checkpoint)"
    )
    args = parser.parse_args(argv)

    def body() -> None:
        run = main if args.folds is None else partial(card, folds=args.folds)
        run(
            load_config(args.config, args.overrides),
            checkpoint=args.checkpoint,
            split=args.split,
            fold=args.fold,
            zero_shot=args.zero_shot,
        )

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
