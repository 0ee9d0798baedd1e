"""``dferclip pretrain``: render the pairs, train with Ray Train, export open_clip weights + manifest.

Steps (each timed into the manifest):

1. Render ``images`` face crops with random facial actions and their captions as Ray tasks of
   :data:`~pipeline.pretrain.data.CHUNK` samples (seeded per chunk: the same data whatever
   the parallelism), tokenised in the tasks with the architecture's tokenizer.
2. Fit with a ``TorchTrainer`` running :func:`~pipeline.pretrain.loop.pretrain_loop`, a progress
   bar fed by the workers' reports.
3. Export the final weights as an open_clip state dict (``open_clip.create_model(arch,
   pretrained=FILE)`` loads it): the text position table padded back to the architecture's
   context length, float16, and the token embedding rows of tokens no caption contains set to
   zero — they never received a gradient, only weight decay, so they carry no information, and
   zero rows keep the shipped file compressible.
4. Zero-shot check on apex faces of the seven classes (rendered with another seed): UAR with the
   shipped descriptions, with an independently written description set and with bare class names.
5. Write the manifest ``<output stem>.json``: sha256, command, config, data size, times, final
   loss, held-out retrieval accuracy, zero-shot UARs.

The weights shipped in ``pipeline/model/weights/`` came from this command (their manifest says
which); :mod:`pipeline.model.backbone` registers every manifest there as an open_clip tag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import atomic_write_bytes, atomic_write_text
from pipeline.errors import UserError
from pipeline.pretrain.config import PretrainConfig
from pipeline.pretrain.data import CHUNK, render_chunk
from pipeline.pretrain.loop import CHECKPOINT_FILE, pretrain_loop

__all__ = ["run_pretrain", "export_weights", "manifest_path", "INDEPENDENT_DESCRIPTIONS"]

logger = logging.getLogger(__name__)

# Class descriptions written apart from the caption phrase bank (a second zero-shot check).
INDEPENDENT_DESCRIPTIONS = Path(__file__).parent / "independent-7.yaml"
MANIFEST_FORMAT = 1


def manifest_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def _render(cfg: PretrainConfig, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """All samples as (images (N, S, S, 3) uint8, tokens (N, C, context_length) int32)."""
    import open_clip
    import ray

    from pipeline.logs import progress

    size = int(open_clip.get_model_config(cfg.clip_model)["vision_cfg"]["image_size"])
    tokenizer_name = cfg.clip_model

    @ray.remote(num_cpus=1)
    def chunk(index: int, count: int):
        images, captions = render_chunk(
            cfg.seed, index, count, image_size=size, crop_size=cfg.crop_size, captions_per_image=cfg.captions_per_image
        )
        from pipeline.model.backbone import list_architectures

        list_architectures()
        tok = open_clip.get_tokenizer(tokenizer_name)
        flat = [c for caps in captions for c in caps]
        tokens = tok(flat).numpy().astype(np.int32).reshape(count, cfg.captions_per_image, -1)
        return images, tokens[..., :context_length], int((tokens != 0).sum(-1).max())

    counts = [min(CHUNK, cfg.images - i) for i in range(0, cfg.images, CHUNK)]
    refs = [chunk.remote(i, n) for i, n in enumerate(counts)]
    parts: dict = {}
    with progress(cfg.images, "render pairs", unit="image", logger=logger) as bar:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            parts[done[0]] = ray.get(done[0])
            bar.update(len(parts[done[0]][0]))
    ordered = [parts[r] for r in refs]
    longest = max(p[2] for p in ordered)
    if longest > context_length:
        raise RuntimeError(f"a caption has {longest} tokens, more than the training context {context_length}")
    return np.concatenate([p[0] for p in ordered]), np.concatenate([p[1] for p in ordered])


def _fit(cfg: PretrainConfig, images: np.ndarray, tokens: np.ndarray) -> tuple[dict, list[dict], float]:
    """Run the TorchTrainer; returns (final state dict, every report, training seconds)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from pipeline.logs import progress
    from pipeline.raycluster import check_resources
    from pipeline.train.driver import fit_streaming, report_callback

    check_resources(
        "pretraining worker", cpus=cfg.cpus_per_worker, count=cfg.num_workers, key="num_workers / cpus_per_worker"
    )
    run_name = f"pretrain-{cfg.tag}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    storage = Path(cfg.storage).expanduser().resolve()
    queue = Queue(actor_options={"num_cpus": 0})
    config = {
        **dataclasses.asdict(cfg),
        "images": ray.put(images),
        "tokens": ray.put(tokens),
    }
    trainer = TorchTrainer(
        pretrain_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=False, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(name=run_name, storage_path=str(storage), callbacks=[report_callback(queue)]),
    )
    rows: list[dict] = []
    started = time.monotonic()
    try:
        with progress(cfg.steps, "pretrain", unit="step", logger=logger) as bar:

            def show(row: dict) -> None:
                rows.append(row)
                bar.update(
                    int(row["step"]) - bar.done,
                    postfix=f"loss {row['loss']:.3f}, retrieval {row['retrieval_acc']:.3f}",
                )
                logger.debug("pretrain step %d: %s", row["step"], row)

            result = fit_streaming(trainer, queue, show, run_name)
    finally:
        queue.shutdown()
    seconds = time.monotonic() - started
    if result.checkpoint is None:
        raise RuntimeError(f"pretraining run {run_name} ended without a checkpoint ({result.error})")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    logger.info("pretraining run folder %s", result.path)
    return state, rows, seconds


def export_weights(state: dict, clip_model: str, used_tokens: np.ndarray, seed: int) -> dict:
    """The shipped form of a trained state dict (module doc, step 3): loads into ``clip_model``."""
    from pipeline.pretrain.loop import build_model

    full = build_model(clip_model, 77, seed).state_dict()
    out = {}
    for key, value in state.items():
        if key == "positional_embedding" and value.shape != full[key].shape:
            # Rows past the captions' length: the fresh model's (never reached through the mask).
            value = torch.cat([value, full[key][value.shape[0] :]])
        if key == "token_embedding.weight":
            keep = torch.zeros(value.shape[0], dtype=torch.bool)
            keep[torch.from_numpy(used_tokens.astype(np.int64))] = True
            value = value * keep[:, None].to(value.dtype)
        out[key] = value.detach().to(torch.float16) if value.is_floating_point() else value
    missing = set(full) - set(out)
    if missing:
        raise RuntimeError(f"exported weights lack {sorted(missing)}")
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def zero_shot_report(weights: str | Path, clip_model: str, faces_per_class: int, seed: int) -> dict:
    """Zero-shot UAR on apex faces with the shipped descriptions, the independent set and class names."""
    from pipeline.pretrain.evaluate import apex_faces, zero_shot_uar

    if faces_per_class < 1:
        return {}
    images, labels = apex_faces(faces_per_class, seed)
    return {
        "faces_per_class": faces_per_class,
        "seed": seed,
        "uar_shipped_descriptions": zero_shot_uar(clip_model, str(weights), images, labels, "default-7"),
        "uar_independent_descriptions": zero_shot_uar(
            clip_model, str(weights), images, labels, str(INDEPENDENT_DESCRIPTIONS)
        ),
        "uar_class_names": zero_shot_uar(clip_model, str(weights), images, labels, None),
    }


def run_pretrain(cfg: PretrainConfig, command: list[str] | None = None) -> dict:
    """The whole command (module doc); returns the manifest it wrote."""
    import open_clip

    from pipeline.model.backbone import list_architectures
    from pipeline.raycluster import ensure_ray

    if cfg.clip_model not in list_architectures():
        raise UserError(f"clip_model: unknown architecture {cfg.clip_model!r}; `dferclip models` lists them")
    out = Path(cfg.output).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    full_context = int(open_clip.get_model_config(cfg.clip_model)["text_cfg"]["context_length"])
    ensure_ray()
    t0 = time.monotonic()
    images, tokens = _render(cfg, full_context)
    render_s = time.monotonic() - t0
    # Train at the captions' length (loop.build_model), rounded up to a multiple of 8.
    longest = int((tokens != 0).sum(-1).max())
    context = min(full_context, -(-longest // 8) * 8)
    tokens = np.ascontiguousarray(tokens[..., :context])
    logger.info(
        "rendered %d images x %d captions in %.0f s; captions up to %d tokens (training context %d)",
        len(images),
        cfg.captions_per_image,
        render_s,
        longest,
        context,
    )
    state, rows, train_s = _fit(cfg, images, tokens)
    weights = export_weights(state, cfg.clip_model, np.unique(tokens), cfg.seed)
    buf = io.BytesIO()
    torch.save(weights, buf)
    atomic_write_bytes(out, buf.getvalue())
    zero_shot = zero_shot_report(out, cfg.clip_model, cfg.eval_faces_per_class, cfg.seed + 1000)
    final = rows[-1]
    manifest = {
        "format": MANIFEST_FORMAT,
        "architecture": cfg.clip_model,
        "tag": cfg.tag,
        "file": out.name,
        "sha256": _sha256(out),
        "bytes": out.stat().st_size,
        "command": shlex.join(command) if command else None,
        "config": dataclasses.asdict(cfg),
        "seed": cfg.seed,
        "data": {
            "images": len(images),
            "train_images": len(images) - cfg.held_out,
            "held_out_images": cfg.held_out,
            "captions_per_image": cfg.captions_per_image,
            "image_size": int(images.shape[1]),
            "caption_tokens_max": longest,
            "training_context_length": context,
            "distinct_caption_tokens": int(len(np.unique(tokens))),
        },
        "render_seconds": round(render_s, 1),
        "training_seconds": round(train_s, 1),
        "total_seconds": round(time.monotonic() - t0, 1),  # render + training + export + zero-shot check
        "final_loss": round(float(final["loss"]), 4),
        "final_retrieval_acc": round(float(final["retrieval_acc"]), 4),
        "first_loss": round(float(rows[0]["loss"]), 4),
        "curve": [{k: round(float(r[k]), 4) for k in ("step", "loss", "retrieval_acc")} for r in rows],
        "zero_shot_apex": zero_shot,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "machine": platform.machine(),
            "cpus_per_worker": cfg.cpus_per_worker,
            "num_workers": cfg.num_workers,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(manifest_path(out), json.dumps(manifest, indent=2) + "\n")
    logger.info(
        "pretrained %s/%s in %.0f s: loss %.3f, held-out retrieval %.3f; zero-shot apex UAR %s -> %s",
        cfg.clip_model,
        cfg.tag,
        train_s,
        manifest["final_loss"],
        manifest["final_retrieval_acc"],
        {k: round(v, 3) for k, v in zero_shot.items() if k.startswith("uar")},
        out,
    )
    return manifest


def command_line(argv: list[str] | None) -> list[str]:
    """The command for the manifest: ``dferclip pretrain`` and its arguments (``argv``: those the
    stage's parser got; None: this process's own, as ``python -m stages.pretrain`` runs it)."""
    return ["dferclip", "pretrain", *(sys.argv[1:] if argv is None else argv)]
