"""Per-trial cost of a frozen-encoder (fast-mode) sweep trial vs a full fine-tuning trial.

    python bench/sweep.py [--model ViT-B-32] [--batch 8] [--frames 16] [--steps 3]

Both trials of the same configuration run the same number of optimiser steps over the same
clips, so the per-trial cost ratio is the ratio of one training step:

- full: the paper's step — frames through the CLIP image encoder (fine-tuned, lr 1e-5),
  temporal model, prompts through the frozen text tower, backward through all of it;
- fast: cached (B, T, E) frame embeddings through the temporal model, prompts through the text
  tower, backward — what :mod:`pipeline.tune.fast` runs per step.

Random weights (the architecture, not the weights, sets the cost); random inputs; one warm-up
step, then the mean of ``--steps``. Not counted per trial, printed separately: the one-time
embedding job (every stored frame through the encoder once, shared by all trials and later
sweeps), and the full trial's JPEG decoding and augmentation (which only makes full trials
dearer, so leaving it out makes the ratio conservative). Full step at the paper's batch (48)
is estimated from the measured batch as fast(48) + 48 x (full(B) - fast(B)) / B, because only
the image-encoder part grows with the batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig, TrainConfig
from pipeline.datasets import CLASSES_7
from pipeline.llm.sets import load_description_set
from pipeline.model.build import build_model
from pipeline.tune.fast import build_frozen_model


def _time_steps(step, steps: int) -> float:
    step()  # warm-up: allocator, kernels, lazy init
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def _train_step(forward, params_groups, labels):
    opt = torch.optim.SGD(params_groups, lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def step():
        loss = F.cross_entropy(forward(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=8, help="clips per step")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--paper-batch", type=int, default=48)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = list(CLASSES_7)
    descriptions = load_description_set(None, classes)
    mcfg = ModelConfig(clip_model=args.model, pretrained=None, num_frames=args.frames)  # paper: n_ctx 8, depth 1
    tcfg = TrainConfig()
    B, T = args.batch, args.frames
    labels = torch.randint(0, len(classes), (B,))
    print(f"# {args.model}, random weights, {len(classes)} classes with descriptions, n_ctx {mcfg.n_ctx}, "
          f"depth {mcfg.temporal_depth}; batch {B} clips x {T} frames; {torch.get_num_threads()} CPU threads")

    torch.manual_seed(0)
    full = build_model(mcfg, classes, descriptions)
    S = full.image_size
    groups = full.param_groups(tcfg.lr_image_encoder, tcfg.lr_temporal, tcfg.lr_prompt, train_image_encoder=True)
    video = torch.randint(0, 256, (B, T, 3, S, S), dtype=torch.uint8)
    full.train()
    t_full = _time_steps(_train_step(lambda: full(video), groups, labels), args.steps)

    # One-time cost: every stored frame through the encoder once, without gradients.
    full.eval()
    with torch.inference_mode():
        frames = video[:1].expand(max(1, 64 // T), -1, -1, -1, -1)  # 64 frames per forward
        t_embed = _time_steps(lambda: full.encode_frames(frames), args.steps) / (frames.shape[0] * T)
    E = full.encode_frames(video[:1, :1]).shape[-1]
    del full, groups

    fast, fgroups = build_frozen_model(dataclasses.replace(mcfg), tcfg, classes, descriptions)
    fast.train()
    fast_at = {}
    for b in sorted({B, args.paper_batch}):
        feats = torch.randn(b, T, E)  # (B, T, E) cached embeddings
        lab = torch.randint(0, len(classes), (b,))
        fast_at[b] = _time_steps(_train_step(lambda f=feats: fast.logits_from_frames(f), fgroups, lab), args.steps)
    t_fast = fast_at[B]

    P = args.paper_batch
    full_paper = fast_at[P] + P * (t_full - t_fast) / B
    print(f"full trial step   (image encoder fine-tuned): {t_full * 1e3:10.1f} ms")
    print(f"fast trial step   (cached embeddings)       : {t_fast * 1e3:10.1f} ms")
    print(f"ratio fast/full per trial, batch {B:>2}        : 1/{t_full / t_fast:.0f}  ({t_fast / t_full:.4f})")
    print(f"ratio fast/full per trial, batch {P:>2} (paper): 1/{full_paper / fast_at[P]:.0f}  "
          f"(fast measured {fast_at[P] * 1e3:.1f} ms, full estimated {full_paper * 1e3:.0f} ms)")
    print(f"target <= 1/50: batch {B}: {'met' if t_fast * 50 <= t_full else 'NOT met'}; batch {P} (paper): "
          f"{'met' if fast_at[P] * 50 <= full_paper else 'NOT met'} (estimated full step)")
    print(f"fast step at batch {B} vs {P}: {t_fast * 1e3:.0f} vs {fast_at[P] * 1e3:.0f} ms — the floor is the frozen text "
          f"tower, run with gradients every step in both modes (the context vectors learn through it)")
    print(f"one-time embedding cost (not per trial): {t_embed * 1e3:.2f} ms per stored frame "
          f"= {t_embed * T * B / t_full:.2f} full steps per {B} clips x {T} frames encoded "
          f"(the cache holds every stored frame, e.g. 100 per clip -> {t_embed * 100 * 1e3:.0f} ms per clip)")


if __name__ == "__main__":
    main()
