"""The embedded default: the whole pipeline on generated data, on a laptop CPU, then a report.

1. generates a synthetic dynamic-expression dataset (as ``dferclip demo-data`` does: drawn faces
   going from neutral to one of the 7 expressions) unless it is already there;
2. runs describe -> preprocess -> train as ``dferclip run`` does (the shipped description set,
   Haar face detection, DFER-CLIP fine-tuned from the shipped pretrained micro-CLIP; no GPU, no
   internet);
3. evaluates the final checkpoint on the generated test split;
4. compares (skip with --no-compare): zero-shot with the shipped descriptions, bare class names
   and "an expression of <class>"; the random-init recipe; a deliberately worse description set
   (shuffled-7), zero-shot and fine-tuned; a frozen-encoder sweep over context tokens x temporal
   depth (configs/sweep_demo.yaml);
5. writes ``<storage.root>/report/report.html`` with the dataset, descriptions, curves,
   confusion matrix, per-class recall, the comparisons, sample face crops and the time of each
   stage, and ``report/demo.json``.

    dferclip demo                                  # configs/demo.yaml
    dferclip demo --no-compare                     # the fine-tuned model alone
    dferclip demo --set train.epochs=2 --clips-per-class 8 --no-compare    # a quicker, weaker run
"""

from __future__ import annotations

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.demo import DEFAULT_CONFIG, Comparisons, run_demo

__all__ = ["main", "cli", "DEFAULT_CONFIG"]


def main(cfg: ExperimentConfig, *, clips_per_class: int = 60, seed: int = 0, compare: bool = True) -> dict:
    """The stage on a loaded config: :func:`pipeline.demo.run_demo`."""
    return run_demo(cfg, clips_per_class=clips_per_class, seed=seed, comparisons=Comparisons() if compare else None)


def cli(argv=None) -> int:
    parser = stage_parser("dferclip demo", __doc__, config_required=False)
    parser.add_argument("--clips-per-class", type=int, default=60, help="clips generated per class (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated dataset")
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the comparisons (zero-shot, random init, worse description set, sweep)",
    )
    args = parser.parse_args(argv)

    def body() -> None:
        main(
            load_config(args.config or DEFAULT_CONFIG, args.overrides),
            clips_per_class=args.clips_per_class,
            seed=args.seed,
            compare=not args.no_compare,
        )

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
