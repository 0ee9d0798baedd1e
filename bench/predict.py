"""End-to-end ``predict`` time for one clip vs the bare model forward on the same frames.

A (end to end): ``predict_paths(model, [clip.mp4])`` — decode the mp4 with PyAV, detect the
face (Haar, every 5th frame and the last), crop and JPEG-encode as preprocessing does, sample
the T evaluation frames, decode and resize them to the model input, forward, softmax. It also
builds the per-call face detector (loading the Haar cascade).
B (baseline): ``model(video)`` on the very same T frames already as a (1, T, 3, S, S) uint8 tensor.

Model construction/loading is excluded from both (a checkpoint is loaded once per command), and
the class text features are computed before timing (the model caches them after the first
no-grad forward), so both sides time only the per-clip work. Runs are interleaved
(A, B, A, B, ...) so background load hits both alike; prints medians and the ratio A / B
(target <= 1.1: decode and crop must be a small fraction of the forward).

    python bench/predict.py [--arch ViT-B-32] [--frames 16] [--repeats 5] [--text descriptions|class_names]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import ModelConfig, PreprocessConfig
from pipeline.datasets import CLASSES_7
from pipeline.llm import load_description_set
from pipeline.model import build_model
from pipeline.predict import ClipLoader, predict_paths
from pipeline.synth import render_clip, write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--frames", type=int, default=16, help="frames in the test video")
    parser.add_argument("--size", default="320x240", help="video width x height")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--text", default="descriptions", choices=["descriptions", "class_names"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    cfg = ModelConfig(clip_model=args.arch, pretrained=None, text_source=args.text)
    descriptions = load_description_set(None, CLASSES_7) if args.text == "descriptions" else None
    model = build_model(cfg, list(CLASSES_7), descriptions).eval().to(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_video(
            clip,
            render_clip("happiness", np.random.default_rng(0), num_frames=args.frames, size=(width, height)),
            fps=12,
        )
        # The baseline's input: exactly the frames predict feeds the model.
        frames = ClipLoader(model.num_frames, model.image_size, PreprocessConfig()).load(clip)
        video = torch.from_numpy(frames.video).unsqueeze(0).permute(0, 1, 4, 2, 3).to(args.device)  # (1, T, 3, S, S)

        def end_to_end() -> None:
            predict_paths(model, [clip], batch_size=1, workers=1, device=args.device)

        def bare() -> None:
            with torch.no_grad():
                model(video)

        def sync() -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        # Warm-up: text features (cached), lazy imports, allocator, the cascade file in the page cache.
        for fn in (bare, end_to_end):
            fn()
        sync()
        times: dict[str, list[float]] = {"predict": [], "forward": []}
        for _ in range(args.repeats):
            for name, fn in (("predict", end_to_end), ("forward", bare)):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
        # The decode + crop + resize part on its own, for the breakdown (not part of the ratio).
        loader = ClipLoader(model.num_frames, model.image_size, PreprocessConfig())
        load_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            loader.load(clip)
            load_times.append(time.perf_counter() - start)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.arch}, {args.text} texts, {model.num_frames} model frames, {args.frames}-frame {width}x{height} "
        f"mp4, device {args.device}, torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats"
    )
    print("model load / build excluded from both; class text features computed before timing")
    print(
        f"bare forward (1 clip, frames as tensor): median {med['forward'] * 1000:8.1f} ms  "
        f"(all: {', '.join(f'{t * 1000:.0f}' for t in times['forward'])})"
    )
    print(
        f"predict end to end (read+detect+crop+sample+resize+forward): median {med['predict'] * 1000:8.1f} ms  "
        f"(all: {', '.join(f'{t * 1000:.0f}' for t in times['predict'])})"
    )
    print(f"  of which decode+detect+crop+resize alone: median {statistics.median(load_times) * 1000:.1f} ms")
    print(f"ratio predict / bare forward: {med['predict'] / med['forward']:.3f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
