"""How a model computes on its training device: ``train.precision`` and ``train.compile``.

- ``precision``: ``fp32`` (no autocast), ``bf16`` (autocast to bfloat16 on the device, CPU or
  GPU: matrix products and convolutions run in bf16, reductions and the loss stay fp32; no
  gradient scaler is needed since bf16 has fp32's exponent range), ``fp16`` (autocast to float16
  with a GradScaler, on GPU only: CPU has no fast fp16 kernels, so a CPU run stays fp32 and says so).
- ``compile``: ``torch.compile`` of the image encoder (the per-frame ViT/ResNet that is ~all of
  a step's time), in place, so the state dict's keys and every checkpoint stay as without it.
- On a GPU the image encoder's convolution weights are made channels-last: the data path's
  frames reach the model as a permuted (B, T, S, S, 3) view, i.e. already channels-last in
  memory, so cuDNN convolves them without a layout copy. A CPU run keeps the default layout.

The defaults (fp32, no compile) come from ``bench/model_step.py`` on the CPU
(docs/benchmarks.md#precision-and-compile); ``bench/gpu_check.sh`` measures both on a GPU.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast_for", "effective_precision", "prepare_model"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def effective_precision(device: torch.device, precision: str) -> str:
    """The precision a run gets on ``device``: fp16 falls back to fp32 off the GPU."""
    if precision == "fp16" and device.type != "cuda":
        return "fp32"
    return precision


def autocast_for(device: torch.device, precision: str):
    """The autocast context of ``train.precision`` on ``device`` (a no-op for fp32)."""
    precision = effective_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def prepare_model(model: torch.nn.Module, device: torch.device, *, compile: bool = False) -> torch.nn.Module:
    """Move ``model`` to ``device`` and apply the device-side options, in place (returns it).

    ``compile`` compiles ``model.image_encoder`` with ``nn.Module.compile`` (in place: parameter
    names and ``state_dict`` keys unchanged, so checkpoints load with or without it). The first
    step pays the compilation (tens of seconds for ViT-B/32).
    """
    model.to(device)
    if device.type == "cuda":
        model.image_encoder.to(memory_format=torch.channels_last)
    if compile:
        model.image_encoder.compile()
    return model
