"""Frozen-encoder cache: per-frame CLIP image embeddings of every stored frame, computed once.

Neither swept parameter (context length, temporal depth) touches the image encoder, so with
the encoder frozen a sweep only needs each frame's embedding — computed here once by a Ray
Data job and reused by every trial (and every later sweep with the same backbone).

What is cached: **all** stored frames of each clip, not the 16 sampled ones. Evaluation
sampling is deterministic but training sampling draws a new random frame per segment every
epoch, so caching all frames lets a trial apply the very same sampling rule per epoch and look
the embeddings up. What is not: augmentation. Frames are encoded with the evaluation transform
(resize to the encoder's input size); random crops, flips and brightness/rotation jitter act on
pixels and cannot be replayed on embeddings, so the fast mode trains without them.

Layout below ``<storage.root>/embeddings/<dataset>/<key>/``, where ``key`` names the backbone
and hashes everything that changes a frame's embedding (architecture, weights, activation,
input normalisation, input size; the init seed for random weights)::

    manifest.json        key fields, the shard files it was computed from, counts, data folder
    data-<id>/*.parquet  one row per clip: clip_id, label, label_name, splits, num_frames,
                         embeddings list<fixed_size_list<float32, E>> (one per stored frame)

The manifest is written last and names its data folder, so a killed job never leaves a cache
that a reader would trust; a cache computed from other shards than the current ones is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.config import ModelConfig
from pipeline.data.shards import check_unique_clips, read_current_manifest, shard_dir, shard_files
from pipeline.errors import UserError
from pipeline.storage import Storage

__all__ = [
    "EmbeddingSet",
    "CacheInfo",
    "backbone_key",
    "cache_dir",
    "ensure_embeddings",
    "load_embeddings",
    "decode_frames",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_FORMAT = 1
_DECODE_CHUNK = 16
_CLIP_COLUMNS = ["clip_id", "label", "label_name", "splits", "num_frames", "frames"]


def _image_size(clip_model: str) -> int:
    import open_clip

    from pipeline.model.backbone import _register_configs

    _register_configs()
    cfg = open_clip.get_model_config(clip_model)
    if cfg is None:
        raise UserError(f"model.clip_model: unknown architecture {clip_model!r}; `dferclip models` lists them")
    size = cfg["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


def backbone_key(model: ModelConfig, seed: int) -> tuple[str, dict]:
    """(folder name, the fields it hashes) for the image encoder ``model`` describes.

    With random weights (no tag, no file) the encoder is whatever ``seed`` initialises, so the
    seed is part of the key; a local weights file is identified by path, size and mtime.
    """
    fields: dict = {
        "clip_model": model.clip_model,
        "quick_gelu": model.quick_gelu,
        "input_normalization": model.input_normalization,
        "image_size": _image_size(model.clip_model),
        "cache_format": CACHE_FORMAT,
    }
    if model.weights:
        import os

        try:
            st = os.stat(model.weights)
        except OSError:
            raise UserError(f"model.weights: file not found: {model.weights}") from None
        fields["weights"] = {"path": os.path.abspath(model.weights), "size": st.st_size, "mtime": int(st.st_mtime)}
        tag = "file"
    elif model.pretrained:
        fields["pretrained"] = model.pretrained
        tag = model.pretrained
    else:
        fields["random_init_seed"] = seed
        tag = f"random{seed}"
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return f"{model.clip_model}-{tag}-{digest}".replace("/", "_"), fields


def cache_dir(dataset_name: str, key: str) -> str:
    """Relative path of a dataset's embedding cache for one backbone key."""
    return posixpath.join("embeddings", dataset_name, key)


def decode_frames(jpegs: list[bytes], size: int, clip_id: str = "?") -> np.ndarray:
    """JPEG bytes -> (n, 3, size, size) uint8 RGB with the training code's *evaluation* transform.

    That transform (centre square, resize; JPEG DCT downscaling for large crops) is applied by
    :class:`pipeline.train.transforms.ClipTransform` to T frames at a time, so long clips go
    through it in chunks of 16 frames.
    """
    from pipeline.train.transforms import ClipTransform

    out = np.empty((len(jpegs), size, size, 3), dtype=np.uint8)  # the transform writes channels-last
    transforms: dict[int, ClipTransform] = {}
    for start in range(0, len(jpegs), _DECODE_CHUNK):
        bufs = [memoryview(b) for b in jpegs[start : start + _DECODE_CHUNK]]
        t = transforms.setdefault(len(bufs), ClipTransform(len(bufs), size, train=False))
        try:
            t._clip(bufs, None, out[start : start + len(bufs)], clip_id)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))  # (n, 3, S, S), the model's layout


class _FrameEncoder:
    """Ray Data actor: holds the image encoder, turns a batch of clips into their frame embeddings."""

    def __init__(self, model: ModelConfig, class_names: list[str], seed: int, chunk: int, device: str):
        import dataclasses

        import torch

        from pipeline.model.build import build_model

        torch.manual_seed(seed)  # random weights: the same encoder the key names
        # Bare class names: the text side is irrelevant here, only encode_frames is used.
        self.model = build_model(dataclasses.replace(model, text_source="class_names"), class_names).eval().to(device)
        self.device, self.chunk, self.size = device, chunk, self.model.image_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        # Ray Data may call this from a thread other than the constructor's: grad mode is per thread.
        with torch.inference_mode():
            return self._encode(batch)

    def _encode(self, batch: pa.Table) -> pa.Table:
        import torch

        flat: list[np.ndarray] = []
        lengths = []
        for clip_id, jpegs in zip(batch.column("clip_id").to_pylist(), batch.column("frames").to_pylist()):
            frames = decode_frames(jpegs, self.size, clip_id)  # (n, 3, S, S)
            for start in range(0, len(frames), self.chunk):
                x = torch.from_numpy(frames[start : start + self.chunk]).to(self.device)[None]  # (1, t, 3, S, S)
                flat.append(self.model.encode_frames(x)[0].float().cpu().numpy())  # (t, E)
            lengths.append(len(frames))
        emb = np.concatenate(flat) if flat else np.zeros((0, 1), np.float32)  # (sum T, E)
        dim = emb.shape[1]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        per_frame = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim)
        column = pa.ListArray.from_arrays(pa.array(offsets), per_frame)
        return batch.drop_columns(["frames"]).append_column("embeddings", column)


@dataclass(frozen=True)
class CacheInfo:
    rel_dir: str  # below the storage root
    key: str
    reused: bool
    seconds: float  # time spent computing now (0 when reused)
    num_clips: int
    num_frames: int
    embed_dim: int

    def data_dir(self, storage: Storage) -> str:
        manifest = json.loads(storage.read_text(self.rel_dir, MANIFEST))
        return posixpath.join(self.rel_dir, manifest["data_dir"])


def _shard_signature(storage: Storage, shards_rel: str) -> dict[str, int]:
    import pyarrow.fs as pafs

    infos = storage.fs.get_file_info([storage.path(shards_rel, n) for n in shard_files(storage, shards_rel)])
    return {i.base_name: i.size for i in infos if i.type == pafs.FileType.File}


def ensure_embeddings(
    storage: Storage,
    dataset_name: str,
    model: ModelConfig,
    class_names: list[str],
    *,
    seed: int = 0,
    batch_size: int = 8,
    workers: int = 1,
    cpus: float = 1.0,
    gpus: float = 0.0,
    frames_per_forward: int = 256,
) -> CacheInfo:
    """Compute (or reuse) the per-frame embeddings of every clip in the dataset's shards.

    Reuses the cache when its manifest names the same shard files (and sizes); otherwise runs a
    Ray Data job over the shards: read Parquet -> an actor pool of frame encoders -> Parquet.
    Needs Ray initialised (:func:`pipeline.raycluster.ensure_ray`).
    """
    import ray

    shards_rel = shard_dir(storage, dataset_name)
    signature = _shard_signature(storage, shards_rel)
    if not signature:
        raise UserError(f"no shards in {storage.path(shards_rel)}: run `dferclip preprocess` first")
    read_current_manifest(storage, shards_rel)  # shards of an older layout: re-run preprocess
    # Trials plan their splits from this cache: a clip in two shards would be in it twice.
    check_unique_clips(storage.fs, [storage.path(shards_rel, n) for n in sorted(signature)])
    key, fields = backbone_key(model, seed)
    rel = cache_dir(dataset_name, key)
    if storage.exists(rel, MANIFEST):
        manifest = json.loads(storage.read_text(rel, MANIFEST))
        if manifest.get("shards") == signature and storage.exists(rel, manifest["data_dir"]):
            logger.info(f"[tune] frame embeddings: reusing {storage.path(rel)} ({manifest['num_clips']} clips)")
            return CacheInfo(rel, key, True, 0.0, manifest["num_clips"], manifest["num_frames"], manifest["embed_dim"])
        logger.info(f"[tune] frame embeddings at {storage.path(rel)} were computed from other shards; recomputing")
        old_data = manifest.get("data_dir")
    else:
        old_data = None

    logger.info(f"[tune] frame embeddings: encoding {len(signature)} shard(s) with {key} (Ray Data)")
    start = time.perf_counter()
    data_name = f"data-{uuid.uuid4().hex[:12]}"
    ds = ray.data.read_parquet(
        [storage.path(shards_rel, n) for n in sorted(signature)], filesystem=storage.fs, columns=_CLIP_COLUMNS
    )
    device = "cuda" if gpus > 0 else "cpu"
    ds = ds.map_batches(
        _FrameEncoder,
        fn_constructor_kwargs={
            "model": model,
            "class_names": list(class_names),
            "seed": seed,
            "chunk": frames_per_forward,
            "device": device,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),  # `concurrency=` is deprecated since Ray 2.51
        num_cpus=cpus,
        num_gpus=gpus,
    )
    ds.write_parquet(storage.path(rel, data_name), filesystem=storage.fs)
    seconds = time.perf_counter() - start

    stats = _read_table(storage, posixpath.join(rel, data_name), ["num_frames", "embeddings"])
    emb = stats.column("embeddings")
    dim = emb.type.value_type.list_size
    flat_frames = sum(len(c.flatten()) for c in emb.chunks)
    manifest = {
        "format": CACHE_FORMAT,
        "key": key,
        "key_fields": fields,
        "dataset": dataset_name,
        "shards": signature,
        "data_dir": data_name,
        "num_clips": stats.num_rows,
        "num_frames": int(flat_frames),
        "embed_dim": int(dim),
        "seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    storage.write_text(json.dumps(manifest, indent=2) + "\n", rel, MANIFEST)
    if old_data and old_data != data_name:
        storage.delete(rel, old_data)
    logger.info(
        f"[tune] frame embeddings: {stats.num_rows} clips, {flat_frames} frames in {seconds:.1f}s -> "
        f"{storage.path(rel)}"
    )
    return CacheInfo(rel, key, False, seconds, stats.num_rows, int(flat_frames), int(dim))


def _read_table(storage: Storage, rel_data: str, columns: list[str]) -> pa.Table:
    import pyarrow.dataset as pads

    paths = [storage.path(rel_data, n) for n in storage.list(rel_data, suffix=".parquet")]
    if not paths:
        raise UserError(f"embedding cache {storage.path(rel_data)} has no Parquet files; delete it and re-run")
    return pads.dataset(paths, format="parquet", filesystem=storage.fs).to_table(columns=columns)


@dataclass
class EmbeddingSet:
    """All cached clips in memory: one flat (frames, E) array plus per-clip offsets.

    Plain numpy arrays so that Ray's object store shares one copy between all trials on a node
    (``tune.with_parameters``) instead of each trial reading its own.
    """

    clip_ids: list[str]
    labels: np.ndarray  # (N,) int64
    splits: list[list[str]]
    offsets: np.ndarray  # (N+1,) int64: clip i's frames are frames[offsets[i]:offsets[i+1]]
    frames: np.ndarray  # (sum of frame counts, E) float32

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def num_frames(self) -> np.ndarray:
        return np.diff(self.offsets)

    def select(self, fold: int, split: str) -> np.ndarray:
        """Row indices of the clips in ``fold``'s ``split``, in clip-id order."""
        tag = f"{fold}:{split}"
        rows = [i for i, s in enumerate(self.splits) if tag in s]
        return np.array(sorted(rows, key=lambda i: self.clip_ids[i]), dtype=np.int64)


def load_embeddings(storage: Storage, info: CacheInfo) -> EmbeddingSet:
    """Read a cache written by :func:`ensure_embeddings` into an :class:`EmbeddingSet`."""
    table = _read_table(storage, info.data_dir(storage), ["clip_id", "label", "splits", "embeddings"])
    emb = table.column("embeddings").combine_chunks()  # list<fixed_size_list<float32, E>>
    dim = emb.type.value_type.list_size
    offsets = emb.offsets.to_numpy().astype(np.int64)
    values = emb.values.flatten().to_numpy(zero_copy_only=False)  # only the list's own slice
    frames = np.ascontiguousarray(values.reshape(-1, dim)[offsets[0] : offsets[-1]], dtype=np.float32)
    return EmbeddingSet(
        clip_ids=table.column("clip_id").to_pylist(),
        labels=table.column("label").to_numpy().astype(np.int64),
        splits=table.column("splits").to_pylist(),
        offsets=offsets - offsets[0],
        frames=frames,
    )
