"""Per-trial cost of a frozen-encoder (fast-mode) sweep trial vs a full fine-tuning trial.

    python bench/sweep.py [--model ViT-B-32] [--batch 48] [--frames 16] [--full-steps 2] [--fast-steps 5]

Defaults are the paper's configuration: ViT-B/32, 48 clips x 16 frames per step, n_ctx 8,
temporal depth 1, class descriptions as text. Weights are random (the architecture, not the
weights, sets the cost); inputs are random. Both trials of one configuration run the same
number of optimiser steps over the same clips, so the per-trial cost ratio is the ratio of one
training step, and both steps are measured for real at that batch:

- full: the paper's step — 48 x 16 frames through the CLIP image encoder (fine-tuned),
  temporal model, prompts through the frozen text tower, backward through all of it, SGD
  step. The 768 frames go through the encoder in micro-batches (``--micro-batch`` clips)
  with gradients accumulated, because their activations at once would need ~20 GB: the same
  gradient and the same arithmetic as one batch of 48 (the text tower still runs once per
  step — its output is a leaf for the micro-batches and is back-propagated once);
- fast: cached (48, 16, E) frame embeddings through the temporal model, prompts through the
  text tower, backward, SGD step — what :mod:`pipeline.tune.fast` runs per step.

Warm-up: one micro-batch (full) or one step (fast) before timing. Not counted per trial,
printed separately: the one-time embedding job (every stored frame through the encoder once,
shared by all trials and later sweeps). Not measured: the full trial's JPEG decoding and
augmentation and its Ray Train start-up, which only make full trials dearer (so the ratio is
conservative).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig, TrainConfig
from pipeline.datasets import CLASSES_7
from pipeline.llm.sets import load_description_set
from pipeline.model.build import build_model
from pipeline.train.recipe import RunSpec
from pipeline.tune.fast import build_frozen_model


def _sgd(groups, tcfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=tcfg.lr_temporal, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)


def full_step(model, opt, video: torch.Tensor, labels: torch.Tensor, micro: int) -> float:
    """One optimiser step over the whole batch, frames encoded ``micro`` clips at a time; the loss."""
    B = video.shape[0]
    opt.zero_grad(set_to_none=True)
    text = model.text_features()  # (C, E), graph back to the context vectors
    text_leaf = text.detach().requires_grad_()
    model.text_features = lambda: text_leaf  # the micro-batches' logits use the step's text once
    total = 0.0
    try:
        for i in range(0, B, micro):
            logits = model.logits_from_frames(model.encode_frames(video[i : i + micro]))  # (b, C)
            loss = F.cross_entropy(logits, labels[i : i + micro], reduction="sum") / B  # parts of the batch mean
            loss.backward()  # accumulates into the encoder/temporal grads and text_leaf.grad
            total += float(loss.detach())
    finally:
        del model.text_features  # the class's method again
    text.backward(text_leaf.grad)  # once: the context vectors' gradient from the whole batch
    opt.step()
    return total


def fast_step(model, opt, feats: torch.Tensor, labels: torch.Tensor) -> float:
    loss = F.cross_entropy(model.logits_from_frames(feats), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=48, help="clips per optimiser step (paper: 48)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--full-steps", type=int, default=2, help="timed full steps")
    ap.add_argument("--fast-steps", type=int, default=5, help="timed fast steps")
    ap.add_argument("--micro-batch", type=int, default=8, help="clips per image-encoder pass in the full step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = list(CLASSES_7)
    descriptions = load_description_set(None, classes)
    mcfg = ModelConfig(clip_model=args.model, pretrained=None, num_frames=args.frames)  # paper: n_ctx 8, depth 1
    tcfg = TrainConfig()
    B, T, M = args.batch, args.frames, min(args.micro_batch, args.batch)
    load = os.getloadavg()
    print(
        f"# {args.model}, random weights, {len(classes)} classes with descriptions, n_ctx {mcfg.n_ctx}, "
        f"depth {mcfg.temporal_depth}; batch {B} clips x {T} frames; {torch.get_num_threads()} CPU threads; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )

    torch.manual_seed(0)
    labels = torch.randint(0, len(classes), (B,))
    full = build_model(mcfg, classes, descriptions)
    S = full.image_size
    video = torch.randint(0, 256, (B, T, 3, S, S), dtype=torch.uint8)  # (B, T, 3, H, W)
    opt = _sgd(
        full.param_groups(tcfg.lr_image_encoder, tcfg.lr_temporal, tcfg.lr_prompt, train_image_encoder=True), tcfg
    )
    full.train()
    full_step(full, opt, video[:M], labels[:M], M)  # warm-up: one micro-batch's worth
    print(f"full step: {B // M + (B % M > 0)} encoder passes of {M} clips x {T} frames each ...", flush=True)
    t_full = _timed(partial(full_step, full, opt, video, labels, M), args.full_steps)
    print(f"  measured: {', '.join(f'{t:.1f}' for t in t_full)} s", flush=True)

    # One-time cost: every stored frame through the encoder once, without gradients.
    full.eval()
    with torch.inference_mode():
        frames = video[: max(1, 64 // T)]  # 64 frames per forward
        full.encode_frames(frames)
        t_embed = statistics.mean(_timed(partial(full.encode_frames, frames), 3)) / (frames.shape[0] * T)
        E = full.encode_frames(video[:1, :1]).shape[-1]
    del full, opt

    spec = RunSpec(model=mcfg, train=tcfg, class_names=tuple(classes), descriptions=descriptions, run_name="bench")
    fast = build_frozen_model(spec)
    fopt = _sgd(
        fast.param_groups(tcfg.lr_image_encoder, tcfg.lr_temporal, tcfg.lr_prompt, train_image_encoder=False), tcfg
    )
    fast.train()
    feats = torch.randn(B, T, E)  # (B, T, E) cached embeddings
    fast_step(fast, fopt, feats, labels)  # warm-up
    t_fast = _timed(lambda: fast_step(fast, fopt, feats, labels), args.fast_steps)

    full_s, fast_s = statistics.mean(t_full), statistics.mean(t_fast)
    print(
        f"full trial step (image encoder fine-tuned): {full_s:9.2f} s  (mean of {len(t_full)}: "
        f"{', '.join(f'{t:.2f}' for t in t_full)})"
    )
    print(
        f"fast trial step (cached embeddings)       : {fast_s:9.3f} s  (mean of {len(t_fast)}: "
        f"{', '.join(f'{t:.3f}' for t in t_fast)})"
    )
    print(
        f"ratio fast/full per trial, batch {B} x {T} frames, both measured: 1/{full_s / fast_s:.0f}  "
        f"({fast_s / full_s:.4f})"
    )
    print(f"target <= 1/50: {'met' if fast_s * 50 <= full_s else 'NOT met'}")
    print(
        f"one-time embedding cost (not per trial): {t_embed * 1e3:.2f} ms per stored frame "
        f"(e.g. 100 stored frames per clip -> {t_embed * 100:.2f} s per clip, = "
        f"{t_embed * 100 * B / full_s:.1f} full steps per {B} clips)"
    )


if __name__ == "__main__":
    main()
