"""Evaluate stage: score a saved checkpoint — or zero-shot CLIP — on a split of the shards.

Reads ``<storage.root>/shards/<dataset>/`` (the fold's ``test`` split by default; ``val`` is the
validation hold-out carved from train exactly as training carves it; ``train`` the rest) and
the checkpoint (project format: it carries its model config, class names and descriptions).
``--zero-shot`` evaluates the config's CLIP (``model.*``) with the class descriptions and no
training (an EmoCLIP-style baseline). Writes ``<storage.root>/evaluate/<name>/``: metrics.json
(loss, UAR, WAR, per-class recall, confusion), predictions.csv (per clip) and confusion.png.

    dferclip evaluate --config configs/dfew.yaml --checkpoint runs/train/<run>/final/model.pt
    dferclip evaluate --config configs/dfew.yaml --zero-shot --split test --fold 2
"""

from __future__ import annotations

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.evaluate import SPLITS, run_evaluate

__all__ = ["main", "cli"]


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


def cli(argv=None) -> int:
    parser = stage_parser("dferclip evaluate", __doc__)
    parser.add_argument("--checkpoint", help="a project checkpoint (e.g. <run>/final/model.pt)")
    parser.add_argument("--zero-shot", action="store_true", help="CLIP + descriptions, no training (baseline)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="which split (default test)")
    parser.add_argument("--fold", type=int, help="fold to evaluate (default: train.fold of the config)")
    args = parser.parse_args(argv)

    def body() -> None:
        main(
            load_config(args.config, args.overrides),
            checkpoint=args.checkpoint,
            split=args.split,
            fold=args.fold,
            zero_shot=args.zero_shot,
        )

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
