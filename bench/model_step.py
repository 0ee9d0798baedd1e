"""Training-step and evaluation time of DFER-CLIP vs a naive form of the same equations.

Both models share one randomly initialised CLIP (ViT-B/32 architecture by default) and the
same temporal / context parameters. The naive form is what a direct transcription of the
paper does: einsum attention in the temporal model and the full 77-token text encoding on
every step and every evaluation batch. Ours: fused attention, the text sequence cut after
the last EOT (exact under the causal mask) and, in evaluation, text features encoded once.
Runs interleaved (A, B, A, B, ...) so background load hits both alike; prints ratios.

    python bench/model_step.py [--arch ViT-B-32] [--steps 4] [--batch 2] [--frames 16]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig
from pipeline.datasets import CLASSES_7
from pipeline.llm import load_description_set
from pipeline.model import build_model


class NaiveDferClip(nn.Module):
    """The same parameters as a DferClip, computed the straightforward way."""

    def __init__(self, ours):
        super().__init__()
        self.ours = ours  # parameters are shared, not copied

    def temporal(self, x):
        t = self.ours.temporal
        b, n, d = x.shape
        x = torch.cat([t.cls_token.expand(b, 1, d), x], 1) + t.pos_embedding[:, : n + 1]
        for attn, ff in t.layers:
            q, k, v = attn.qkv(attn.norm(x)).chunk(3, -1)
            q, k, v = (z.reshape(b, n + 1, attn.heads, -1).permute(0, 2, 1, 3) for z in (q, k, v))
            w = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
            o = torch.einsum("bhij,bhjd->bhid", w.softmax(-1), v).permute(0, 2, 1, 3).reshape(b, n + 1, -1)
            x = x + attn.out(o)
            h = ff.fc1(ff.norm(x))
            x = x + ff.fc2(0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))))
        return x[:, 0]

    def text(self):
        pl, te = self.ours.prompt_learner, self.ours.text_encoder
        full = torch.zeros(pl.tokens.shape[0], te.positional_embedding.shape[0], dtype=pl.tokens.dtype)
        full[:, : pl.tokens.shape[1]] = pl.tokens  # back to 77 tokens, as a plain transcription has
        emb = te.token_embedding(full)
        ctx = pl.ctx[pl.row_class] if pl.ctx.dim() == 3 else pl.ctx.expand(full.shape[0], -1, -1)
        x = torch.cat([emb[:, :1], ctx, emb[:, 1 + pl.n_ctx :]], 1) + te.positional_embedding
        x = te.ln_final(te.transformer(x, attn_mask=te.attn_mask))
        x = x[torch.arange(x.shape[0]), full.argmax(-1)] @ te.text_projection
        rows = F.normalize(x, dim=-1)
        t = torch.stack([rows[pl.row_class == c].mean(0) for c in range(pl.n_cls)])
        return F.normalize(t, dim=-1)

    def forward(self, video):
        frames = self.ours.encode_frames(video)
        v = F.normalize(self.temporal(frames), dim=-1)
        return v @ self.text().t() * self.ours.logit_scale


def timed(fn, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--eval-batches", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(clip_model=args.arch, pretrained=None, num_frames=args.frames)
    ours = build_model(cfg, list(CLASSES_7), load_description_set(None, list(CLASSES_7)))
    naive = NaiveDferClip(ours)
    size = ours.image_size
    video = torch.rand(args.batch, args.frames, 3, size, size)
    labels = torch.arange(args.batch) % len(CLASSES_7)
    opt = torch.optim.SGD(ours.param_groups(1e-5, 1e-2, 1e-3), lr=1e-3, momentum=0.9)

    def step(model):
        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(video), labels).backward()
            opt.step()

        return run

    def evaluate(model):
        def run():
            with torch.no_grad():
                for _ in range(args.eval_batches):
                    model(video)

        return run

    with torch.no_grad():  # same function, same numbers
        ours.eval()
        torch.testing.assert_close(ours(video), naive(video), rtol=1e-4, atol=1e-3)
    ours.train()
    step(ours)(), step(naive)()  # warm-up
    t_ours, t_naive = [], []
    for _ in range(args.steps):
        t_ours += timed(step(ours), 1)
        t_naive += timed(step(naive), 1)
    ours.eval()
    e_ours, e_naive = [], []
    for _ in range(2):
        e_ours += timed(evaluate(ours), 1)
        e_naive += timed(evaluate(naive), 1)
    mo, mn = statistics.median(t_ours), statistics.median(t_naive)
    eo, en = statistics.median(e_ours), statistics.median(e_naive)
    print(f"arch={args.arch} batch={args.batch}x{args.frames} frames, CPU fp32, threads={torch.get_num_threads()}")
    print(f"train step: ours {mo:.3f} s  naive {mn:.3f} s  ratio ours/naive = {mo / mn:.3f}  (target <= 1.0)")
    print(f"evaluation ({args.eval_batches} batches): ours {eo:.3f} s  naive {en:.3f} s  ratio = {eo / en:.3f}")


if __name__ == "__main__":
    main()
