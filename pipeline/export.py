"""``dferclip export --format onnx``: a checkpoint as one ONNX graph, checked against PyTorch.

The graph is the image encoder + temporal model with the class text features folded in as a
constant (the text tower and the learnt prompts run once, here), so it maps

    video  (B, T, 3, H, W) float32 RGB in [0, 1]  ->  logits (B, C) float32

with a dynamic batch ``B`` and the model's fixed ``T``, ``H = W``. CLIP's mean/std
normalisation, when the model uses it, is inside the graph: a consumer feeds decoded frames
divided by 255. Everything else a consumer needs to get the frames right (class names, T, the
input size, the face crop settings the checkpoint records, the calibration temperature, how
frames are sampled) is written twice: as the ONNX model's metadata (key ``dferclip``, so the
file stands alone) and as a JSON sidecar beside it (``model.onnx`` -> ``model.onnx.json``).

Exporter: PyTorch's TorchScript-based exporter (``torch.onnx.export(dynamo=False)``). PyTorch
2.14's default, the torch.export-based one, gives the same logits (checked: ~2e-7 relative on
the micro model) but needs the ``onnxscript`` package and takes ~6x longer to export; the
graph here has no data-dependent control flow, which is what the newer exporter is for.

Every export is checked before it is kept: onnxruntime (CPU) runs the written graph on a
seeded random batch, and the largest difference to the PyTorch model's logits, relative to the
largest PyTorch logit, must be within ``tolerance`` (1e-4); a second batch size proves the
batch axis is dynamic. The file is written atomically, so a failed check leaves nothing.

    from pipeline.export import export_onnx, OnnxModel
    report = export_onnx("runs/train/<run>/final/model.pt", "model.onnx")
    print(report.max_rel_diff)
    model = OnnxModel("model.onnx")           # onnxruntime, CPU
    logits = model.logits(frames_uint8)       # (B, T, S, S, 3) uint8 -> (B, C)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError

__all__ = [
    "FORMATS",
    "METADATA_KEY",
    "ExportReport",
    "OnnxModel",
    "export_onnx",
    "exportable",
    "read_metadata",
    "relative_diff",
    "sidecar_path",
    "stored_temperature",
]

logger = logging.getLogger(__name__)

FORMATS = ("onnx",)
METADATA_KEY = "dferclip"
META_FORMAT = "dferclip.onnx"
META_VERSION = 1
# 17: LayerNormalization is one op (not decomposed), and every onnxruntime of the last years runs it.
OPSET = 17
INPUT, OUTPUT = "video", "logits"


def _need_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise UserError(
            f"export: needs the onnx and onnxruntime packages ({exc.name} is missing): pip install 'dferclip[export]'"
        ) from None
    return onnx, onnxruntime


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """The JSON sidecar of an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def relative_diff(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| / max |reference|: relative to the logits' own scale, so logits
    near zero (where an element-wise ratio explodes) do not decide it."""
    scale = float(np.abs(reference).max()) or 1.0
    return float(np.abs(ours.astype(np.float64) - reference.astype(np.float64)).max() / scale)


def exportable(model):
    """The graph to export: ``model``'s image encoder + temporal model, and its class text
    features (times the logit scale) as a constant buffer. Same logits as ``model(video)``."""
    import torch
    from torch import nn

    class _Exportable(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model
            with torch.no_grad():
                text = model.text_features().t() * model.logit_scale  # (E, C)
            self.register_buffer("text", text.detach().clone().contiguous())

        def forward(self, video: torch.Tensor) -> torch.Tensor:
            return self.model.video_features(self.model.encode_frames(video)) @ self.text

    return _Exportable(getattr(model, "module", model)).eval()


@dataclass
class ExportReport:
    path: Path
    sidecar: Path
    max_rel_diff: float  # over the check batches (see relative_diff)
    check_batches: tuple[int, ...]
    metadata: dict[str, Any]


def _metadata(model, extra: dict, checkpoint: str | None, temperature: float) -> dict[str, Any]:
    import torch

    norm = (
        {"in_graph": True, "mean": model.pixel_mean.flatten().tolist(), "std": model.pixel_std.flatten().tolist()}
        if model.normalize_input
        else {"in_graph": False, "mean": None, "std": None}
    )
    prep = extra.get("preprocess") if isinstance(extra, dict) else None
    return {
        "format": META_FORMAT,
        "version": META_VERSION,
        "class_names": list(model.class_names),
        "num_frames": int(model.num_frames),
        "image_size": int(model.image_size),
        "input": {
            "name": INPUT,
            "shape": ["batch", int(model.num_frames), 3, int(model.image_size), int(model.image_size)],
            "dtype": "float32",
            "value_range": [0.0, 1.0],
            "channels": "RGB",
            "normalization": norm,
        },
        "output": {"name": OUTPUT, "shape": ["batch", len(model.class_names)], "dtype": "float32"},
        # How predict and evaluate pick the T frames of a clip and read probabilities.
        "frame_sampling": "T segment middles over the clip's frames (pipeline.train.sampling.sample_indices, train=False)",
        "probabilities": "softmax(logits / temperature, axis=1)",
        "temperature": float(temperature),
        # The face crop settings the training data was preprocessed with (None: not recorded).
        "preprocess": prep if isinstance(prep, dict) else None,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "exporter": "torch.onnx.export(dynamo=False)",
        "opset": OPSET,
        "torch": torch.__version__,
    }


def stored_temperature(extra: dict, source: str) -> float:
    """The temperature ``dferclip calibrate`` stored in a checkpoint's ``extra`` (1.0: none)."""
    from pipeline.model.checkpoint import calibration_temperature

    return calibration_temperature(extra, source)


def export_onnx(
    checkpoint_or_model,
    out: str | os.PathLike,
    *,
    tolerance: float = 1e-4,
    check_batches: tuple[int, ...] = (2, 1),
    seed: int = 0,
    extra: dict | None = None,
) -> ExportReport:
    """Export a checkpoint (path) or a loaded ``DferClip`` to ONNX at ``out`` (a local path) and
    its sidecar; returns the report. Raises UserError when onnxruntime's logits differ from
    PyTorch's by more than ``tolerance`` (relative), writing nothing then."""
    import torch

    from pipeline.atomic import atomic_write, atomic_write_text

    onnx, ort = _need_onnx()
    if not check_batches or min(check_batches) < 1:
        raise UserError(f"export: check batch sizes must be >= 1, got {check_batches}")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"export: --out {out} is a folder; give a file name (e.g. {out / 'model.onnx'})")
    if not out.parent.is_dir():
        raise UserError(f"export: the folder of --out does not exist: {out.parent}")
    checkpoint = None
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from pipeline.model.checkpoint import load_checkpoint

        checkpoint = str(checkpoint_or_model)
        model, extra = load_checkpoint(checkpoint, map_location="cpu")
    else:
        model = getattr(checkpoint_or_model, "module", checkpoint_or_model)
    extra = extra or {}
    model = model.eval().cpu()
    meta = _metadata(model, extra, checkpoint, stored_temperature(extra, checkpoint or "<model>"))
    graph = exportable(model)
    t, s = model.num_frames, model.image_size
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.rand(b, t, 3, s, s, generator=gen) for b in check_batches]

    import io
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice, and a tracer note on the temporal model's
        # frame-count check (T is fixed in this graph, so the check is constant).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (batches[0],),
            buf,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(proto)
    blob = proto.SerializeToString()

    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    diffs = []
    with torch.no_grad():
        for x in batches:
            ref = model(x).float().numpy()
            got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
            if got.shape != ref.shape:
                raise UserError(f"export: onnxruntime gave logits of shape {got.shape}, PyTorch {ref.shape}")
            diffs.append(relative_diff(got, ref))
    worst = max(diffs)
    meta["check"] = {"max_rel_diff": worst, "batches": list(check_batches), "tolerance": tolerance}
    if not worst <= tolerance:
        raise UserError(
            f"export: onnxruntime's logits differ from PyTorch's by {worst:.3g} (relative), over the tolerance "
            f"{tolerance:g}; nothing written"
        )
    atomic_write(out, lambda f: f.write(blob))
    side = atomic_write_text(sidecar_path(out), json.dumps(meta, indent=2) + "\n")
    logger.info("export: %s (%.1f MB), onnxruntime vs PyTorch max rel. diff %.2g", out, len(blob) / 1e6, worst)
    return ExportReport(out, side, worst, tuple(check_batches), meta)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``dferclip`` metadata of an exported model (from the ONNX file itself), checked."""
    return OnnxModel(path, threads=1).meta


class OnnxModel:
    """An exported model on onnxruntime: the metadata plus ``logits(frames)``.

    ``logits`` takes what :class:`pipeline.predict.ClipLoader` gives, (B, T, S, S, 3) uint8,
    and does the layout change and the division by 255 the graph expects. ``threads``: intra-op
    threads of onnxruntime (None: its default, one per core)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        _, ort = _need_onnx()
        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX model not found: {path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 — any unreadable file becomes one clear message
            raise UserError(f"{path}: cannot be loaded by onnxruntime ({type(exc).__name__}: {exc})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            meta = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
            raise UserError(
                f"{path}: not a dferclip export (no {METADATA_KEY!r} metadata); make it with dferclip export"
            )
        if meta.get("version", 0) > META_VERSION:
            raise UserError(f"{path}: export version {meta['version']} is newer than this code ({META_VERSION})")
        self.path, self.meta = path, meta
        self.class_names: list[str] = list(meta["class_names"])
        self.num_frames: int = int(meta["num_frames"])
        self.image_size: int = int(meta["image_size"])
        self.temperature: float = float(meta.get("temperature", 1.0))

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """(B, T, S, S, 3) uint8 RGB -> (B, C) float32 logits."""
        x = np.ascontiguousarray(frames.transpose(0, 1, 4, 2, 3), dtype=np.float32)
        x /= 255.0
        return self.session.run([OUTPUT], {INPUT: x})[0]
