"""Generate the synthetic dynamic-expression dataset the demo trains on.

Renders short mp4 clips of procedurally drawn faces that go from neutral to one of the seven
basic expressions (happiness, sadness, neutral, anger, surprise, disgust, fear), with random
people, scenes, head motion and lighting, into ``OUT/videos/`` and writes ``OUT/labels.csv``
(path,label,split; an 80/20 stratified train/test split by default). The same seed gives the
same dataset; another seed gives fresh clips of the same classes. No config file is needed.

    dferclip demo-data --out runs/demo/data --clips-per-class 20 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import command_parser, run_cli
from pipeline.demo import generate_demo_data

__all__ = ["main", "cli"]


def main(out: str | Path, **options) -> Path:
    """The stage: :func:`pipeline.demo.generate_demo_data` (same options); returns the dataset's labels.csv."""
    return generate_demo_data(out, **options)


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}")
    return int(width), int(height)


def _parser() -> argparse.ArgumentParser:
    parser = command_parser("dferclip demo-data", __doc__)
    parser.add_argument("--out", required=True, help="output folder (created; gets videos/ and labels.csv)")
    parser.add_argument("--clips-per-class", type=int, default=20, help="clips of each of the 7 classes (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; another seed gives fresh clips (default 0)")
    parser.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    parser.add_argument(
        "--size", type=_size, default=(320, 240), help="frame size WIDTHxHEIGHT, even (default 320x240)"
    )
    parser.add_argument("--fps", type=int, default=12, help="frame rate (default 12)")
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of each class in the test split (default 0.2)"
    )
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: one per CPU, up to 8)")
    return parser


def cli(argv=None) -> int:
    args = _parser().parse_args(argv)

    def body() -> None:
        main(
            args.out,
            clips_per_class=args.clips_per_class,
            seed=args.seed,
            num_frames=args.frames,
            size=args.size,
            fps=args.fps,
            test_fraction=args.test_fraction,
            workers=args.workers,
        )

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
