"""Import stage: a checkpoint saved by the published DFER-CLIP training script -> a project checkpoint.

The authors' ``main.py`` saves ``{epoch, state_dict, best_acc, optimizer, recorder}`` (their
``*-model_best.pth``). This reads it without running pickled code, recovers the model (image
encoder, temporal model, context vectors, text tower and the class texts' token ids, read back
from the prompt buffers) and writes a checkpoint that ``evaluate`` and ``predict`` load like any
other. The converted model computes the published forward: frames in [0, 1] without CLIP's
mean/std, QuickGELU, logits ``cos / 0.01``. docs/official.md walks from the released checkpoints
to an evaluation.

    dferclip import-official DFEW-set1-model_best.pth --out models/dfew-set1.pt
    dferclip import-official FER39K-model_best.pth --out models/ferv39k.pt --dataset ferv39k --texts class-names
"""

from __future__ import annotations

import logging

from pipeline.cli import command_parser, run_cli
from pipeline.datasets import get_dataset, list_datasets
from pipeline.model.official import PUBLISHED_TEMPORAL_HEADS, import_official

__all__ = ["main", "cli"]

logger = logging.getLogger(__name__)


def main(checkpoint: str, out: str, **options) -> str:
    """The stage: :func:`pipeline.model.official.import_official`; returns the written path."""
    model, path = import_official(checkpoint, out, **options)
    texts = "; ".join(f"{c}: {t[0]!r}" for c, t in model.spec["descriptions"].items())
    spec = model.spec["model"]
    logger.info(
        "[import-official] %s -> %s (%s, %d classes, %d context vectors %s)",
        checkpoint,
        path,
        spec["clip_model"],
        len(model.class_names),
        spec["n_ctx"],
        "per class" if spec["class_specific_contexts"] else "shared",
    )
    logger.info("[import-official] class texts: %s", texts)
    return str(path)


def _parser():
    parser = command_parser("dferclip import-official", __doc__)
    parser.add_argument("checkpoint", help="a .pth saved by the published main.py")
    parser.add_argument("--out", required=True, help="the project checkpoint to write (e.g. models/dfew-set1.pt)")
    parser.add_argument(
        "--dataset",
        choices=[d for d in list_datasets() if d in ("dfew", "ferv39k", "mafw")],
        help="take the class order from this dataset (default: the paper's 7 or 11 classes by their number)",
    )
    parser.add_argument("--classes", help="comma-separated class names in the checkpoint's output order")
    parser.add_argument(
        "--texts",
        metavar="SPEC",
        help="check the recovered class texts against: class-names ('<class>.'), expression-of "
        "('an expression of <class>.'), a description-set YAML (one per class) or a text file (one per line)",
    )
    parser.add_argument("--clip-model", help="open_clip architecture (default: inferred from the weights' shapes)")
    parser.add_argument(
        "--class-token-position",
        choices=["end", "middle", "front"],
        default="end",
        help="where the training run put the class text (not in the weights; default end, the script's default)",
    )
    parser.add_argument(
        "--temporal-heads",
        type=int,
        default=PUBLISHED_TEMPORAL_HEADS,
        help=f"attention heads of the temporal model (not in the weights; default {PUBLISHED_TEMPORAL_HEADS}, as published)",
    )
    return parser


def _classes(args) -> list[str] | None:
    """The class order --classes or --dataset names; None: the paper's order for the class count."""
    if args.classes:
        return [c.strip() for c in args.classes.split(",") if c.strip()]
    return list(get_dataset(args.dataset).classes) if args.dataset else None


def cli(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.dataset and args.classes:
        parser.error("give --dataset or --classes, not both")

    def body() -> None:
        main(
            args.checkpoint,
            args.out,
            classes=_classes(args),
            texts=args.texts,
            clip_model=args.clip_model,
            class_token_position=args.class_token_position,
            temporal_heads=args.temporal_heads,
        )

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
