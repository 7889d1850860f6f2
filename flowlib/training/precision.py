"""Which arithmetic a step runs in: ``"fp32"``, or ``"bf16"`` autocast for the nets.

With ``precision="bf16"`` the step runs under
``torch.autocast(dtype=torch.bfloat16)``, which runs matrix multiplies and
convolutions (the conditioner nets) in bfloat16 while element-wise
arithmetic, the prior, the log-dets and the loss stay in float32. A coupling
never inverts its net, so the flow stays exactly invertible and its log-det
exact for the function it computes. ``"auto"`` picks bf16 on CUDA devices
that support it and on CPUs with native bf16 instructions, fp32 elsewhere.

>>> resolve_precision("fp32", "cpu"), autocast("fp32", "cpu").__class__.__name__
('fp32', 'nullcontext')
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

__all__ = ["PRECISIONS", "resolve_precision", "autocast", "model_device"]

PRECISIONS = ("auto", "bf16", "fp32")


@functools.cache
def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"bf16"`` or ``"fp32"``: what ``precision`` (``auto``, ``bf16``, ``fp32``) means on ``device``.

    >>> resolve_precision("fp32", "cpu"), resolve_precision("bf16", "cpu")
    ('fp32', 'bf16')
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and _cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives: its ``device`` attribute, else its first parameter or buffer, else the CPU."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


