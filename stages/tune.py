"""Tune stage: a Ray Tune sweep over the config's search space (context tokens x temporal depth by default).

Each trial trains DFER-CLIP with the train stage's recipe; ASHA stops poor trials early. Full
mode runs a Ray Train run per trial; ``tune.frozen_encoder: true`` trains only the temporal model
and the prompts on frame embeddings cached once (docs/tune.md). Writes results.parquet/.csv,
heatmap.png and best_config.yaml to ``<storage.root>/tune/<name>/``; re-running resumes.

    dferclip tune --config configs/sweep_demo.yaml
"""

from __future__ import annotations

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config


def main(cfg: ExperimentConfig, *, callbacks: list | None = None):
    """Run (or resume) the sweep; returns its :class:`~pipeline.tune.experiment.SweepOutcome`."""
    from pipeline.tune.experiment import run_tune

    return run_tune(cfg, callbacks=callbacks)


def cli(argv=None) -> int:
    parser = stage_parser("dferclip tune", __doc__)
    args = parser.parse_args(argv)
    return run_cli(lambda: 130 if main(load_config(args.config, args.overrides)).interrupted else 0)


if __name__ == "__main__":
    raise SystemExit(cli())
