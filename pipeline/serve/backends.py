"""The model step of ``dferclip serve``: PyTorch on a checkpoint, or onnxruntime on an export.

Both take what :class:`pipeline.predict.ClipLoader` gives, (N, T, S, S, 3) uint8 (a clip's one
row, or a timeline's windows), and return softmax probabilities (N, C) with the logits divided
by the calibration temperature, as predict computes them (:func:`pipeline.predict.forward_probabilities`
for PyTorch). :func:`describe_source` reads what the HTTP side and the decoders need to know
(classes, T, input size, recorded crop settings) without building a backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import UserError

__all__ = ["ModelInfo", "describe_source", "load_backend"]


@dataclass(frozen=True)
class ModelInfo:
    backend: str  # "torch" or "onnx"
    source: str  # the checkpoint or ONNX file
    class_names: tuple[str, ...]
    num_frames: int
    image_size: int
    temperature: float
    extra: dict[str, Any]  # {"preprocess": recorded crop settings} when known


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    import torch

    # The same float32 operations as predict's forward_probabilities.
    return (torch.from_numpy(logits).float() / temperature).softmax(dim=1).numpy()


def describe_source(checkpoint: str | None, onnx: str | None) -> ModelInfo:
    """What ``serve`` serves: the ONNX export when given, else the checkpoint."""
    if onnx is not None:
        from pipeline.export import OnnxModel

        m = OnnxModel(onnx, threads=1)
        prep = m.meta.get("preprocess")
        return ModelInfo(
            "onnx",
            str(onnx),
            tuple(m.class_names),
            m.num_frames,
            m.image_size,
            m.temperature,
            {"preprocess": prep} if isinstance(prep, dict) else {},
        )
    if checkpoint is None:
        raise UserError("serve: give --checkpoint, or --onnx with an exported model")
    from pipeline.export import stored_temperature
    from pipeline.model.checkpoint import load_checkpoint

    model, extra = load_checkpoint(checkpoint)
    return ModelInfo(
        "torch",
        str(checkpoint),
        tuple(model.class_names),
        int(model.num_frames),
        int(model.image_size),
        stored_temperature(extra, str(checkpoint)),
        {"preprocess": extra["preprocess"]} if isinstance(extra.get("preprocess"), dict) else {},
    )


class _Torch:
    def __init__(self, info: ModelInfo, device: str, threads: int | None, chunk: int):
        import torch

        from pipeline.model.checkpoint import load_checkpoint
        from pipeline.predict import resolve_device

        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.model, _ = load_checkpoint(info.source, map_location="cpu")
        self.model.eval().to(self.device)
        self.temperature, self.chunk = info.temperature, chunk

    def probabilities(self, videos: np.ndarray) -> np.ndarray:
        from pipeline.predict import forward_probabilities

        return forward_probabilities(self.model, videos, self.device, self.chunk, self.temperature)


class _Onnx:
    def __init__(self, info: ModelInfo, threads: int | None, chunk: int):
        from pipeline.export import OnnxModel

        self.model = OnnxModel(info.source, threads=threads)
        self.temperature, self.chunk = info.temperature, chunk

    def probabilities(self, videos: np.ndarray) -> np.ndarray:
        logits = [self.model.logits(videos[i : i + self.chunk]) for i in range(0, len(videos), self.chunk)]
        return _softmax(np.concatenate(logits), self.temperature)


def load_backend(info: ModelInfo, device: str = "cpu", threads: int | None = None, chunk: int = 8):
    """An object with ``probabilities(videos) -> (N, C)`` for ``info``'s backend, running at most
    ``chunk`` clips per forward pass (a batch of requests with long timelines stays bounded)."""
    if chunk < 1:
        raise UserError(f"serve: clips per forward pass must be >= 1, got {chunk}")
    return _Onnx(info, threads, chunk) if info.backend == "onnx" else _Torch(info, device, threads, chunk)
