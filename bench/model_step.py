"""Training-step time of DFER-CLIP against a baseline measured in the same process.

Baselines (``--vs``):

- ``naive`` (default): a naive form of the same equations on the same parameters — einsum
  attention in the temporal model and the full 77-token text encoding on every step and every
  evaluation batch. Ours: fused attention, the text sequence cut after the last EOT (exact under
  the causal mask) and, in evaluation, text features encoded once. Also times evaluation.
- ``fp32``: ours at ``--precision`` (``train.precision``'s autocast) vs ours in fp32, one model.
- ``eager``: ours with the image encoder compiled (``train.compile``) vs a second, identical
  model left eager; both at ``--precision``. The compilation happens in the warm-up, untimed.
- ``memory`` (with ``--data shards``): the step fed by the train stage's data path — Parquet
  shards -> Ray Data -> ``ClipTransform`` (sample, decode, augment) on ``--data-cpus`` CPUs,
  the same ``train_dataset`` the train stage builds, with the augmentation on the step's device
  when ``--augment-on-device`` says so (by default with ``--device cuda``, as training's
  ``train.augment.on_device``) — vs the same step on one in-memory batch:
  is the device starved? Prints the ratio per CPU count, the data path's clips/s on its own
  and the CPU-seconds it is given per clip.

A and B alternate (A, B, A, B ...; the shard steps in blocks, so the data path streams as it
would in training) so background load hits both alike; prints medians and ratios.

    python bench/model_step.py [--arch ViT-B-32] [--steps 4] [--batch 2] [--frames 16]
        [--device cpu|cuda] [--precision fp32|bf16] [--vs naive|fp32|eager|memory]
        [--data shards --data-cpus 2,4,8 --stored-frames 48]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for bench.data_path

from pipeline.config import ModelConfig
from pipeline.datasets import CLASSES_7
from pipeline.llm import load_description_set
from pipeline.model import build_model
from pipeline.train.precision import PRECISIONS, autocast_for, prepare_model


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


def timed(fn, n, sync=lambda: None):
    out = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def build_ours(args, device):
    torch.manual_seed(0)  # the same weights every time it is called
    cfg = ModelConfig(clip_model=args.arch, pretrained=None, num_frames=args.frames)
    model = build_model(cfg, list(CLASSES_7), load_description_set(None, list(CLASSES_7)))
    return prepare_model(model, device, compile=False)


def make_step(model, opt, precision, device):
    """One training step as the recipe takes it (autocast forward, fp32 loss, backward, step)."""

    def step(video, labels):
        opt.zero_grad(set_to_none=True)
        with autocast_for(device, precision):
            logits = model(video)
        F.cross_entropy(logits.float(), labels).backward()
        opt.step()

    return step


def optimizer(model):
    return torch.optim.SGD(model.param_groups(1e-5, 1e-2, 1e-3), lr=1e-3, momentum=0.9)


def synced(device):
    return (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)


def header(args, device, what):
    threads = torch.get_num_threads()
    load = " load average {:.1f} {:.1f} {:.1f},".format(*os.getloadavg())
    print(f"arch={args.arch} batch={args.batch}x{args.frames} frames, device {device}, {what},{load} threads={threads}")


def vs_naive(args, device):
    ours = build_ours(args, device)
    naive = NaiveDferClip(ours)
    size = ours.image_size
    video = torch.rand(args.batch, args.frames, 3, size, size, device=device)
    labels = torch.arange(args.batch, device=device) % len(CLASSES_7)
    opt = optimizer(ours)
    sync = synced(device)

    def step(model):
        return lambda: make_step(model, opt, "fp32", device)(video, labels)

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
        t_ours += timed(step(ours), 1, sync)
        t_naive += timed(step(naive), 1, sync)
    ours.eval()
    e_ours, e_naive = [], []
    for _ in range(2):
        e_ours += timed(evaluate(ours), 1, sync)
        e_naive += timed(evaluate(naive), 1, sync)
    mo, mn = statistics.median(t_ours), statistics.median(t_naive)
    eo, en = statistics.median(e_ours), statistics.median(e_naive)
    header(args, device, "fp32, ours vs naive")
    print(f"train step: ours {mo:.3f} s  naive {mn:.3f} s  ratio ours/naive = {mo / mn:.3f}  (target <= 1.0)")
    print(f"evaluation ({args.eval_batches} batches): ours {eo:.3f} s  naive {en:.3f} s  ratio = {eo / en:.3f}")


def vs_variant(args, device):
    """--vs fp32 (precision) or --vs eager (compile): A and B on the same input batch."""
    a = build_ours(args, device)
    if args.vs == "eager":
        b = build_ours(args, device)  # identical weights, left eager
        prepare_model(a, device, compile=True)
        prec_a = prec_b = args.precision
        names = (f"compiled ({args.precision})", f"eager ({args.precision})")
    else:
        b = a  # one model, two precisions
        prec_a, prec_b = args.precision, "fp32"
        names = (args.precision, "fp32")
    size = a.image_size
    video = torch.randint(0, 256, (args.batch, args.frames, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.arange(args.batch, device=device) % len(CLASSES_7)
    with torch.no_grad():  # the variant computes the same function (within its precision)
        a.eval(), b.eval()
        with autocast_for(device, prec_a):
            la = a(video).float()
        with autocast_for(device, prec_b):
            lb = b(video).float()
        diff = (la - lb).abs().max().item() / max(lb.abs().max().item(), 1e-6)
    a.train(), b.train()
    opt_a, opt_b = optimizer(a), (optimizer(b) if b is not a else None)
    step_a = make_step(a, opt_a, prec_a, device)
    step_b = make_step(b, opt_b or opt_a, prec_b, device)
    sync = synced(device)
    t0 = time.perf_counter()
    step_a(video, labels)  # warm-up (and, for --vs eager, the compilation)
    sync()
    first = time.perf_counter() - t0
    step_b(video, labels)
    ta, tb = [], []
    for _ in range(args.steps):
        ta += timed(lambda: step_a(video, labels), 1, sync)
        tb += timed(lambda: step_b(video, labels), 1, sync)
    ma, mb = statistics.median(ta), statistics.median(tb)
    header(args, device, f"{names[0]} vs {names[1]}, {args.steps} interleaved steps")
    print(f"logits max relative difference {names[0]} vs {names[1]} (eval mode): {diff:.2e}")
    print(f"first step of {names[0]} (warm-up incl. any compilation): {first:.2f} s")
    print(
        f"train step: {names[0]} {ma:.3f} s  {names[1]} {mb:.3f} s  ratio = {ma / mb:.3f}  "
        f"({'faster' if ma < mb else 'not faster'}; all A: {', '.join(f'{t:.2f}' for t in ta)}; "
        f"all B: {', '.join(f'{t:.2f}' for t in tb)})"
    )


def shard_rows(args, size: int, tmp: Path) -> tuple[Path, list[str]]:
    """Parquet shards of generated face-like clips (bench/data_path.py's content and row layout):
    ``--distinct`` clips, repeated under new clip ids until ``clips`` rows are written."""
    import cv2
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.data_path import face_like_frames
    from pipeline.data.schema import SHARD_SCHEMA

    rng = np.random.default_rng(0)
    distinct = []
    for _ in range(min(args.distinct, args.clips)):
        frames = face_like_frames(args.stored_frames, size, rng)
        distinct.append([cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames])
    rows = [
        {
            "clip_id": f"clip{k:05d}",
            "dataset": "bench",
            "label": k % 7,
            "label_name": str(k % 7),
            "splits": ["1:train"],
            "num_frames": args.stored_frames,
            "frames": distinct[k % len(distinct)],
            "boxes": [[0.0, 0.0, float(size), float(size)]] * args.stored_frames,
            "face_fallback": False,
            "source_path": "",
            "fps": 25.0,
        }
        for k in range(args.clips)
    ]
    folder = tmp / "shards"
    folder.mkdir()
    per_file = 64
    for i in range(0, len(rows), per_file):
        part = pa.Table.from_pylist(rows[i : i + per_file], schema=SHARD_SCHEMA)
        pq.write_table(part, folder / f"part-{i // per_file:05d}.parquet", row_group_size=8, compression="none")
    return folder, [r["clip_id"] for r in rows]


def vs_memory(args, device):
    """--data shards: the step fed by the train stage's data path vs an in-memory batch."""
    import dataclasses
    import tempfile

    import pyarrow.fs as pafs
    import ray

    from pipeline.config import AugmentConfig
    from pipeline.raycluster import ensure_ray
    from pipeline.train.data import ShardSet, train_dataset
    from pipeline.train.driver import augment_spec
    from pipeline.train.evaluation import frame_pairs
    from pipeline.train.transforms import model_layout

    model = build_ours(args, device)
    size = model.image_size
    opt = optimizer(model)
    step = make_step(model, opt, args.precision, device)
    sync = synced(device)
    labels = torch.arange(args.batch, device=device) % len(CLASSES_7)
    memory = torch.randint(0, 256, (args.batch, args.frames, size, size, 3), dtype=torch.uint8)
    needed = (args.steps + 2) * args.batch
    if args.clips < needed:
        raise SystemExit(f"--clips {args.clips} < (steps + 2) x batch = {needed}: the stream would end early")
    spec = dataclasses.replace(augment_spec(AugmentConfig(), "dfew"))  # a DFEW run's augmentation
    # train.augment.on_device's default: on the device when training on a GPU
    on_device = {"auto": device.type == "cuda", "true": True, "false": False}[args.augment_on_device]
    where = "augmentation on the device" if on_device else "augmentation in the data tasks"
    header(args, device, f"{args.precision}, data path (shards, {where}) vs in-memory batch")
    with tempfile.TemporaryDirectory(prefix="bench_step") as d:
        folder, ids = shard_rows(args, args.stored_size, Path(d))
        shards = ShardSet(str(folder), pafs.LocalFileSystem(), sorted(str(p) for p in folder.glob("*.parquet")), {})
        print(
            f"{args.clips} clips ({args.distinct} distinct) x {args.stored_frames} stored frames at "
            f"{args.stored_size} px in {len(shards.paths)} shards -> {args.frames} frames at {size} px"
        )
        pin = device.type == "cuda"
        for cpus in (int(c) for c in args.data_cpus.split(",")):
            ensure_ray(num_cpus=cpus, dashboard=False)  # the project's local Ray (start-up waits, quiet logs)
            it = None
            try:
                ds = train_dataset(
                    shards,
                    ids,
                    num_frames=args.frames,
                    image_size=size,
                    augment=spec,
                    seed=0,
                    cache=False,
                    on_device=on_device,
                    stored_size=args.stored_size,
                )
                ds.context.enable_progress_bars = False
                # The data path alone: clips/s with nothing else in the way.
                t0, n = time.perf_counter(), 0
                for batch in ds.iter_batches(batch_size=args.batch, batch_format="numpy", prefetch_batches=2):
                    n += len(batch["label"])
                alone = n / (time.perf_counter() - t0)
                it = iter(ds.iter_torch_batches(batch_size=args.batch, prefetch_batches=2, pin_memory=pin))

                def from_shards(it=it):
                    # as the train loop does: to the device, augment there when on_device
                    ((video, y),) = frame_pairs([next(it)], device)
                    step(video, y)

                def in_memory():
                    step(model_layout(memory).to(device, non_blocking=True), labels)

                from_shards(), in_memory()  # warm-up: the stream has started, the allocator is warm
                t_sh, t_mem = [], []
                block = max(1, args.steps // 2)
                done = 0
                while done < args.steps:  # blocks of steps, so the stream runs as it would in training
                    k = min(block, args.steps - done)
                    t_sh += timed(from_shards, k, sync)
                    t_mem += timed(in_memory, k, sync)
                    done += k
            finally:
                if it is not None:
                    it.close()  # end the stream while Ray is still up
                ray.shutdown()
            ms, mm = statistics.median(t_sh), statistics.median(t_mem)
            print(
                f"  {cpus} Ray Data CPUs: step from shards {ms:.3f} s, in-memory {mm:.3f} s, ratio shards/memory = "
                f"{ms / mm:.3f} (target <= 1.05 at 4 CPUs); {args.batch / ms:.1f} clips/s trained; data path "
                f"alone {alone:.1f} clips/s = {cpus / alone * 1000:.1f} CPU-ms per clip given to it"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="train.precision of ours")
    ap.add_argument("--vs", default="naive", choices=["naive", "fp32", "eager", "memory"], help="the baseline")
    ap.add_argument("--data-cpus", default="2,4,8", help="--vs memory: Ray Data CPU counts to run")
    ap.add_argument("--clips", type=int, default=0, help="--vs memory: clips in the shards (0: (steps + 2) x batch)")
    ap.add_argument("--distinct", type=int, default=48, help="--vs memory: distinct generated clips")
    ap.add_argument("--stored-frames", type=int, default=48, help="--vs memory: frames stored per clip")
    ap.add_argument("--stored-size", type=int, default=224, help="--vs memory: stored crop size")
    ap.add_argument(
        "--augment-on-device",
        default="auto",
        choices=["auto", "true", "false"],
        help="--vs memory: train.augment.on_device (auto: on with a CUDA device, as training's default)",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is visible to torch")
    args.clips = args.clips or (args.steps + 2) * args.batch
    {"naive": vs_naive, "fp32": vs_variant, "eager": vs_variant, "memory": vs_memory}[args.vs](args, device)


if __name__ == "__main__":
    main()
