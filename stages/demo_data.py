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
import sys
import time
from pathlib import Path

from pipeline.cli import run_cli
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.synth import generate_dataset

__all__ = ["main", "cli"]


def main(out: str | Path, *, clips_per_class: int = 20, seed: int = 0, num_frames: int = 24,
         size: tuple[int, int] = (320, 240), fps: int = 12, test_fraction: float = 0.2,
         workers: int | None = None) -> Path:
    """Write the dataset below ``out``; returns the path of its labels.csv."""
    total = len(CLASSES_7) * clips_per_class
    start = time.monotonic()
    step = max(1, total // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            print(f"demo-data: {done}/{total} clips ({time.monotonic() - start:.1f} s)", file=sys.stderr, flush=True)

    labels = generate_dataset(out, clips_per_class, seed, num_frames=num_frames, size=size, fps=fps,
                              test_fraction=test_fraction, workers=workers, progress=progress)
    print(f"demo-data: wrote {total} clips and {labels}", flush=True)
    return labels


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}")
    return int(width), int(height)


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dferclip demo-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (created; gets videos/ and labels.csv)")
    parser.add_argument("--clips-per-class", type=int, default=20, help="clips of each of the 7 classes (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; another seed gives fresh clips (default 0)")
    parser.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    parser.add_argument("--size", type=_size, default=(320, 240), help="frame size WIDTHxHEIGHT, even (default 320x240)")
    parser.add_argument("--fps", type=int, default=12, help="frame rate (default 12)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of each class in the test split (default 0.2)")
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: one per CPU, up to 8)")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.workers is not None and args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
        main(args.out, clips_per_class=args.clips_per_class, seed=args.seed, num_frames=args.frames,
             size=args.size, fps=args.fps, test_fraction=args.test_fraction, workers=args.workers)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
