"""The project's checkpoint format: weights plus everything needed to rebuild the model.

A checkpoint is a ``torch.save`` of plain containers and tensors — loadable with
``torch.load(weights_only=True)`` (no pickled code runs) — holding the resolved model config,
the class names, the class texts, the state dict and free-form ``extra`` (epoch, metrics).
Evaluation and prediction need nothing else: no training config, no Ray, no network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_write
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.model.build import build_model
from pipeline.model.dferclip import PAPER_LOGIT_SCALE, DferClip
from pipeline.typed import ConfigError, from_dict

__all__ = [
    "FORMAT",
    "VERSION",
    "checkpoint_payload",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_payload",
    "calibration_temperature",
    "store_calibration",
]

FORMAT = "dferclip.checkpoint"
VERSION = 1


def checkpoint_payload(model: DferClip, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    model = getattr(model, "module", model)  # unwrap DDP
    return {
        "format": FORMAT,
        "version": VERSION,
        "spec": model.spec,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }


def save_checkpoint(model: DferClip, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write ``model`` to ``path``: streamed to a uniquely named temporary file, synced,
    then renamed (:func:`pipeline.atomic.atomic_write`), so a reader never sees half a checkpoint
    and a failed save leaves the previous one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = checkpoint_payload(model, extra)
    return atomic_write(path, lambda f: torch.save(payload, f))


def model_from_payload(payload: dict[str, Any], source: str = "<checkpoint>") -> DferClip:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{source}: not a DFER-CLIP checkpoint (no format marker {FORMAT!r})")
    if payload.get("version", 0) > VERSION:
        raise UserError(f"{source}: checkpoint version {payload['version']} is newer than this code ({VERSION})")
    spec = payload["spec"]
    model_spec = dict(spec["model"])
    # Checkpoints written before model.logit_scale existed were trained at the paper's fixed 100.
    model_spec.setdefault("logit_scale", PAPER_LOGIT_SCALE)
    try:
        cfg = from_dict(ModelConfig, model_spec, source)
    except ConfigError as exc:
        raise UserError(f"{source}: its model config does not fit this code: {exc}") from None
    model = build_model(cfg, spec["class_names"], spec.get("descriptions"), load_weights=False)
    try:
        missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UserError(f"{source}: weights do not match the architecture {cfg.clip_model}: {exc}") from None
    if missing or unexpected:
        raise UserError(
            f"{source}: weights do not match the architecture {cfg.clip_model} "
            f"(missing {len(missing)}: {missing[:3]}, unexpected {len(unexpected)}: {unexpected[:3]})"
        )
    model.eval()
    return model


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[DferClip, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns (model in eval mode, extra)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unreadable file becomes one clear message
        raise UserError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None
    return model_from_payload(payload, str(path)), payload.get("extra", {})


# --- calibration (dferclip calibrate) -------------------------------------------------------
# A fitted temperature lives in ``extra["calibration"]`` (plain floats and strings, so the file
# still loads with ``weights_only=True``): ``predict`` and ``evaluate`` divide the logits by it.
CALIBRATION_KEY = "calibration"


def calibration_temperature(extra: dict[str, Any], source: str = "<checkpoint>") -> float:
    """The temperature ``dferclip calibrate`` stored in a checkpoint's ``extra``; 1.0 when none.

    A stored value that is not a finite positive number is a UserError naming ``source``."""
    record = extra.get(CALIBRATION_KEY) if isinstance(extra, dict) else None
    if record is None:
        return 1.0
    t = record.get("temperature") if isinstance(record, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0.0 < float(t) < float("inf")):
        raise UserError(
            f"{source}: its calibration record has no valid temperature (got {t!r}); re-run dferclip calibrate"
        )
    return float(t)


def store_calibration(path: str | os.PathLike, record: dict[str, Any], out: str | os.PathLike | None = None) -> Path:
    """Write the checkpoint at ``path`` again (to ``out``, default in place, atomically) with
    ``extra["calibration"] = record``; weights and everything else are kept as they are."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unreadable file becomes one clear message
        raise UserError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a DFER-CLIP checkpoint (no format marker {FORMAT!r})")
    payload["extra"] = {**(payload.get("extra") or {}), CALIBRATION_KEY: record}
    target = Path(out) if out is not None else path
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(target, lambda f: torch.save(payload, f))
