"""ONNX export: onnxruntime CPU latency next to PyTorch's, for the same model in one process.

Builds a DFER-CLIP with random weights (ViT-B/32 and the paper's 16 frames by default: the
shape of a real checkpoint), exports it with :func:`pipeline.export.export_onnx` (which checks
the logits, max relative difference printed), then times one forward pass of a batch in
PyTorch and in onnxruntime, interleaved (A, B, A, B, ...) so background load hits both alike.
Both use every core of the machine (PyTorch's and onnxruntime's default thread counts).

    python bench/export.py [--arch ViT-B-32] [--frames 16] [--batch 1] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import ModelConfig
from pipeline.datasets import CLASSES_7
from pipeline.export import OnnxModel, export_onnx, relative_diff
from pipeline.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = ModelConfig(clip_model=args.arch, pretrained=None, num_frames=args.frames, text_source="class_names")
    model = build_model(cfg, list(CLASSES_7)).eval()
    s = model.image_size
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = export_onnx(model, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - t0
        size_mb = report.path.stat().st_size / 1e6
        onnx_model = OnnxModel(report.path)
        frames = np.random.default_rng(0).integers(0, 256, (args.batch, args.frames, s, s, 3), dtype=np.uint8)
        video = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)

        def run_torch():
            with torch.no_grad():
                return model(video).numpy()

        def run_ort():
            return onnx_model.logits(frames)

        diff = relative_diff(run_ort(), run_torch())  # also the warm-up of both
        times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
        for _ in range(args.reps):
            for name, fn in (("pytorch", run_torch), ("onnxruntime", run_ort)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)

    pt, ort_ = statistics.median(times["pytorch"]), statistics.median(times["onnxruntime"])
    print(
        f"export: {args.arch}, T={args.frames}, {s}px, {len(CLASSES_7)} classes; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  export + check {export_s:.1f} s, {size_mb:.0f} MB; max rel. diff at export {report.max_rel_diff:.2g}")
    print(f"  batch {args.batch}, median of {args.reps} interleaved runs (after one warm-up):")
    print(f"    pytorch      {pt * 1000:8.1f} ms")
    print(f"    onnxruntime  {ort_ * 1000:8.1f} ms   ({pt / ort_:.2f}x PyTorch's speed)")
    print(f"  max rel. diff, uint8 frames through OnnxModel vs PyTorch: {diff:.2g}")


if __name__ == "__main__":
    main()
