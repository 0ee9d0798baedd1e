"""Run the pipeline: describe -> preprocess -> train (-> tune), skipping what is up to date.

Each stage's fingerprint hashes its config sections, the content of what it reads (prompt
template, description set, annotation files, the input tree's names/sizes/mtimes) and the
fingerprints of the stages it depends on; it is recorded with the stage's outputs in
``<storage.root>/stages/<stage>.json``. A stage whose fingerprint is unchanged and whose outputs
still exist is skipped, so editing a prompt template re-runs describe and what depends on it
(train, tune) but not preprocess. Ends with a summary of what ran, what was skipped and where
the artifacts are. The stages are declared in ``pipeline/orchestrate.py``.

    dferclip run --config configs/demo.yaml [--tune] [--force STAGE]
"""

from __future__ import annotations

from collections.abc import Collection

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.orchestrate import RunSummary, run_pipeline, stage_names

__all__ = ["main", "cli"]


def main(cfg: ExperimentConfig, *, with_tune: bool = False, force: Collection[str] = ()) -> RunSummary:
    """The stage on a loaded config: :func:`pipeline.orchestrate.run_pipeline`."""
    return run_pipeline(cfg, include=("tune",) if with_tune else (), force=force)


def cli(argv=None) -> int:
    parser = stage_parser("dferclip run", __doc__)
    parser.add_argument("--tune", action="store_true", help="also run the tune stage after train")
    parser.add_argument(
        "--force",
        action="append",
        default=[],
        choices=stage_names(),
        help="run this stage even if it is up to date (repeatable)",
    )
    args = parser.parse_args(argv)

    def body() -> None:
        main(load_config(args.config, args.overrides), with_tune=args.tune, force=tuple(args.force))

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
