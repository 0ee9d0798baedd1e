"""Preprocess stage: videos or frame folders + official labels/splits -> face crops in Parquet shards.

Reads the dataset named in the config (DFEW, FERV39k, MAFW, the published DFER-CLIP lists, or a
CSV), detects and crops the face in every clip (Haar by default), and writes JPEG crops with
Ray Data to ``<storage.root>/shards/<dataset.name>/`` with a manifest and an error table.
Re-running skips clips already done; ``--retry-errors`` tries failed clips again;
``--overwrite`` rebuilds from scratch (needed after changing crop/detector settings).
"""

from __future__ import annotations

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config

__all__ = ["main", "cli"]


def main(cfg: ExperimentConfig, *, overwrite: bool = False, retry_errors: bool = False) -> dict:
    from pipeline.preprocess import run_preprocess

    return run_preprocess(cfg.storage.root, cfg.dataset, cfg.preprocess, overwrite=overwrite, retry_errors=retry_errors)


def cli(argv=None) -> int:
    parser = stage_parser("dferclip preprocess", __doc__)
    parser.add_argument(
        "--overwrite", action="store_true", help="delete this dataset's shards first and preprocess everything again"
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="try the clips listed in errors.parquet again (e.g. after fixing the files)",
    )
    args = parser.parse_args(argv)
    return run_cli(
        lambda: (
            main(load_config(args.config, args.overrides), overwrite=args.overwrite, retry_errors=args.retry_errors),
            0,
        )[1]
    )


if __name__ == "__main__":
    raise SystemExit(cli())
