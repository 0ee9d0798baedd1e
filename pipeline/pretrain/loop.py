"""The Ray Train worker of pretraining: open_clip's CLIP and ``ClipLoss`` on the rendered pairs.

``pretrain_loop(config)`` runs on every ``TorchTrainer`` worker. ``config`` is plain data from
:func:`pipeline.pretrain.run.run_pretrain`: the settings, and object refs of the images
(N, S, S, 3) uint8 and their tokenised captions (N, C, L) int32, the last ``held_out`` of which
are kept out of training. Every step takes one random caption of each image in the batch. The
model, the loss (with the negatives gathered from every worker) and the optimiser's parameter
groups are open_clip's; only the loop is here.

Every ``log_every`` steps all ranks report the mean loss since the last report and the held-out
retrieval accuracy (image -> text and text -> image top-1 among the held-out pairs); the last
report carries rank 0's weights as the run's checkpoint (``model.pt``, a plain state dict).
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["pretrain_loop", "build_model", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "model.pt"


def build_model(clip_model: str, context_length: int, seed: int):
    """A randomly initialised open_clip CLIP whose text tower takes ``context_length`` tokens.

    Captions are far shorter than CLIP's 77 tokens, and the text tower's cost grows with the
    sequence: training at the captions' length is what fits pretraining into minutes. With the
    causal mask and end-of-text pooling, positions past the end token never reach the output,
    so the export pads the position table back to the architecture's length losslessly.
    """
    import open_clip

    from pipeline.model.backbone import _quiet_random_init_warning, list_architectures

    list_architectures()  # registers this project's model configs
    torch.manual_seed(seed)
    with _quiet_random_init_warning(True):  # a random init is the point here
        return open_clip.create_model(clip_model, force_context_length=context_length)


def _param_groups(model, weight_decay: float) -> list[dict]:
    # As open_clip's training script: no decay on gains, biases, norms and the temperature.
    def exclude(n: str, p) -> bool:
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]


def _lr(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1.0 + math.cos(math.pi * progress))


def _pixels(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std


@torch.no_grad()
def retrieval_accuracy(model, images: torch.Tensor, tokens: torch.Tensor, batch: int = 256) -> float:
    """Mean of image->text and text->image top-1 accuracy among the given pairs."""
    model.eval()
    img = torch.cat(
        [F.normalize(model.encode_image(images[i : i + batch]), dim=-1) for i in range(0, len(images), batch)]
    )
    txt = torch.cat(
        [F.normalize(model.encode_text(tokens[i : i + batch]), dim=-1) for i in range(0, len(tokens), batch)]
    )
    sim = img @ txt.t()
    target = torch.arange(len(sim))
    model.train()
    return float(((sim.argmax(1) == target).float().mean() + (sim.argmax(0) == target).float().mean()) / 2)


def pretrain_loop(config: dict) -> None:
    import open_clip
    import ray
    import ray.train
    from ray.train import Checkpoint

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    images: np.ndarray = ray.get(config["images"])
    tokens: np.ndarray = ray.get(config["tokens"])
    held = int(config["held_out"])
    n_train = len(images) - held
    steps, per_rank = int(config["steps"]), int(config["batch_size"]) // world
    seed = int(config["seed"])

    model = build_model(config["clip_model"], tokens.shape[-1], seed)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    loss_fn = open_clip.ClipLoss(gather_with_grad=True, rank=rank, world_size=world)
    net = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    opt = torch.optim.AdamW(_param_groups(model, config["weight_decay"]), lr=config["lr"], betas=(0.9, 0.98), eps=1e-6)
    val_x = _pixels(images[n_train:], mean, std)
    val_t = torch.from_numpy(tokens[n_train:, 0].astype(np.int64))

    # Each rank walks its own share of a seeded permutation per pass over the data.
    rng = np.random.default_rng([seed, rank])
    order, pos = np.empty(0, dtype=np.int64), 0
    losses: list[float] = []
    started = time.monotonic()
    net.train()
    for step in range(steps):
        if pos + per_rank > len(order):
            perm = np.random.default_rng([seed, step]).permutation(n_train)
            order, pos = np.array_split(perm, world)[rank], 0
        idx = np.sort(order[pos : pos + per_rank])
        pos += per_rank
        caption = rng.integers(0, tokens.shape[1], size=len(idx))
        x = _pixels(images[idx], mean, std)
        t = torch.from_numpy(tokens[idx, caption].astype(np.int64))
        for group in opt.param_groups:
            group["lr"] = _lr(step, config["lr"], config["warmup_steps"], steps)
        image_features, text_features, logit_scale = net(x, t)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # open_clip clamps the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss))
        last = step + 1 == steps
        if (step + 1) % config["log_every"] == 0 or last:
            metrics = {
                "step": step + 1,
                "loss": float(np.mean(losses)),
                "retrieval_acc": retrieval_accuracy(model, val_x, val_t),
                "logit_scale": float(model.logit_scale.exp()),
                "lr": opt.param_groups[0]["lr"],
                "elapsed_s": time.monotonic() - started,
            }
            losses = []
            if last and rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    torch.save(model.state_dict(), os.path.join(tmp, CHECKPOINT_FILE))
                    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
