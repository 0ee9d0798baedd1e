"""Predict a whole collection of videos on Ray Data; results as Parquet shards, resumable.

LISTING is a folder tree (every video below it, every folder of frame images as one clip), or a
CSV / Parquet file with a ``path`` column; local or object storage (s3://, gs://). CPU actors
decode, detect and crop exactly as ``dferclip predict`` does; without GPUs the same actors run
the batched forward passes, with GPUs model actors (a GPU each) do; each batch is written as
one Parquet shard to --out as it finishes. A re-run skips inputs already in --out (and those that failed, unless
--retry-errors). Videos longer than ``timeline.auto_after_s`` are scored as timelines per face
track (``timeline:`` section; --timeline / --no-timeline), with one PNG each in --out/timelines/.

Sizing comes from the config's ``batch_predict:`` section (loaders, models, CPUs, GPUs, batch
sizes) and is checked against the cluster before anything starts; crops from its
``preprocess:`` section, else the checkpoint's recorded settings, else the defaults. Runs on a
laptop (a local Ray) or as a job: ``dferclip submit batch-predict --config X -- --checkpoint
... --out s3://... s3://bucket/videos.csv``.

    dferclip batch-predict --checkpoint model.pt --out preds/ videos/
    dferclip batch-predict --checkpoint model.pt --out preds/ list.csv --set batch_predict.loaders=8
    dferclip batch-predict --checkpoint model.pt --out preds/ videos/ --retry-errors
"""

from __future__ import annotations

from pipeline.cli import run_cli, stage_parser
from pipeline.config import load_config

__all__ = ["main", "cli"]


def main(checkpoint: str, listing: str, out: str, *, config: str | None = None, overrides=None, **options) -> int:
    """The stage: :func:`pipeline.batch_predict.batch_predict_command` with the config (or the
    defaults); returns the exit status (0: every input predicted, 1: some failed)."""
    from pipeline.batch_predict import batch_predict_command

    cfg = load_config(config, overrides or [])
    # Crops as configured when a config or a preprocess override is given, else as the checkpoint records.
    from_config = config is not None or any(o.startswith("preprocess.") for o in overrides or [])
    return batch_predict_command(checkpoint, listing, out, cfg, crops_from_config=from_config, **options)


def _parser():
    parser = stage_parser("dferclip batch-predict", __doc__, config_required=False)
    parser.add_argument("listing", metavar="LISTING", help="folder tree, .csv or .parquet with a 'path' column")
    parser.add_argument("--checkpoint", required=True, help="a project checkpoint (e.g. <run>/final/model.pt)")
    parser.add_argument("--out", required=True, help="results folder (local or s3://, gs://)")
    parser.add_argument("--retry-errors", action="store_true", help="try inputs that failed before again")
    parser.add_argument("--overwrite", action="store_true", help="clear --out first (another checkpoint/settings)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--timeline", dest="timeline_mode", action="store_const", const="on", help="every video as a timeline"
    )
    group.add_argument(
        "--no-timeline", dest="timeline_mode", action="store_const", const="off", help="never a timeline"
    )
    return parser


def cli(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run_cli(
        lambda: main(
            args.checkpoint,
            args.listing,
            args.out,
            config=args.config,
            overrides=args.overrides,
            timeline_mode=args.timeline_mode,
            retry_errors=args.retry_errors,
            overwrite=args.overwrite,
        )
    )


if __name__ == "__main__":
    raise SystemExit(cli())
