"""Which arithmetic a step runs in: ``"fp32"``, or ``"bf16"`` autocast for the nets.

With ``precision="bf16"`` the step runs under
``torch.autocast(dtype=torch.bfloat16)``, which runs matrix multiplies and
convolutions (the conditioner nets) in bfloat16 while element-wise
arithmetic, the prior, the log-dets and the loss stay in float32. A coupling
never inverts its net, so the flow stays exactly invertible and its log-det
exact for the function it computes. ``"auto"`` picks bf16 on CUDA devices
that support it and on CPUs with native bf16 instructions, fp32 elsewhere.

That is the choice measured best for the ``cpu`` presets on a CPU with native
bf16 (2-core AMD EPYC with AVX512-BF16; ``benchmarks/results/precision_equal_time.md``):
at equal training time, bf16 (1.59x RealNVP's steps, 1.46x Glow's) reached
lower validation bits/dim than fp32 on every seed (RealNVP 1.824 ± 0.013
against 2.099 ± 0.030, 3 seeds; Glow 1.626 ± 0.003 against 1.667 ± 0.000,
2 seeds), and NICE's bf16 nets were within 0.002 bits/dim of fp32 at equal
steps while twice as fast over the whole fit (687 against 337 samples/s,
validation passes included; ``benchmarks/results/precision_check.md``). Where
the CPU lacks native bf16, autocast emulates it and is slower than fp32, so
``"auto"`` keeps fp32 there.

Float32 arithmetic outside autocast has a precision of its own on NVIDIA GPUs
since Ampere: TensorFloat-32 (TF32), float32's range with a 10-bit mantissa
(float16's; float32 has 23) in the tensor cores' matrix multiplies and
convolutions. PyTorch leaves it off for matmuls but *on* for cuDNN
convolutions by default, so an "fp32" conv net on a GPU is TF32 unless told
otherwise. `matmul_precision` sets both for a run, ``"fp32"`` (true float32,
the default of `~flowlib.training.config.TrainConfig`) or ``"tf32"``, and
restores torch's switches afterwards; `effective_matmul_precision` is what is
in effect (``results.json`` records it): ``"tf32"`` only on a CUDA device of
compute capability 8.0 or more with TF32 switched on. The trainer leaves the
CPU's float32 matmuls alone: they are IEEE float32 unless
``torch.set_float32_matmul_precision`` lowered them.

`to_device` moves a batch to the model's device without a host sync on CUDA
(pinned memory, ``non_blocking=True``); on the CPU it is a no-op.

>>> resolve_precision("fp32", "cpu"), autocast("fp32", "cpu").__class__.__name__
('fp32', 'nullcontext')
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "MATMUL_PRECISIONS", "resolve_precision", "autocast", "model_device", "to_device",
           "has_tf32", "tf32_enabled", "effective_matmul_precision", "matmul_precision"]

PRECISIONS = ("auto", "bf16", "fp32")

#: What a run may ask of its float32 matmuls and convolutions: true float32, or TF32 where the GPU has it.
MATMUL_PRECISIONS = ("fp32", "tf32")


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




def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """``x`` on ``device``; from CPU memory to a CUDA device through pinned memory, without a host sync.

    A plain ``x.to("cuda")`` from pageable memory waits for the copy (the
    host cannot return before the data left its buffer), once per batch.
    Pinned (page-locked) memory lets ``non_blocking=True`` queue the copy on
    the stream and return: the kernels that read the batch come after it on
    the same stream, and PyTorch's pinned-memory cache keeps the buffer until
    the copy is done. Anywhere else (CPU to CPU, already on the device) it is
    ``x.to(device)``, which returns ``x`` itself when nothing moves.

    >>> x = torch.zeros(2)
    >>> to_device(x, "cpu") is x
    True
    """
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def has_tf32(device: torch.device | str) -> bool:
    """Whether ``device`` has TF32 tensor cores: a CUDA GPU of compute capability 8.0 (Ampere) or more."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def _new_switch(*levels: Any) -> str:
    """torch >= 2.9's ``fp32_precision`` of an operation: the first of its levels not ``"none"``, else IEEE."""
    return next((level.fp32_precision for level in levels if level.fp32_precision != "none"), "ieee")


def tf32_enabled() -> bool:
    """Whether float32 CUDA matmuls or cuDNN convolutions may use TF32 now (torch's switches, left as they are)."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision"):  # what torch's kernels read since 2.9
        return "tf32" in (_new_switch(b.cuda.matmul, b), _new_switch(b.cudnn.conv, b.cudnn, b))
    return bool(b.cuda.matmul.allow_tf32 or b.cudnn.allow_tf32)


def effective_matmul_precision(device: torch.device | str) -> str:
    """``"tf32"`` when float32 matmuls or convolutions on ``device`` run in TF32 now, else ``"fp32"``.

    >>> effective_matmul_precision("cpu")
    'fp32'
    """
    return "tf32" if has_tf32(device) and tf32_enabled() else "fp32"


def _saved_tf32() -> tuple[str, tuple[Any, Any]]:
    """torch's TF32 switches as they are, to put back: the legacy pair, or the new one where they disagree."""
    b = torch.backends
    try:
        return "legacy", (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    except RuntimeError:  # torch >= 2.9 refuses to read the legacy switches after its new ones were set apart
        return "new", (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)


def _set_tf32(api: str, matmul: Any, conv: Any) -> None:
    b = torch.backends
    if api == "legacy":  # sets the new switches too, consistently
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = matmul, conv
    else:
        b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision = matmul, conv


@contextmanager
def matmul_precision(setting: str, device: torch.device | str) -> Iterator[str]:
    """Inside the block, CUDA's float32 matmuls and cuDNN convolutions run in ``setting``; yields what is in effect.

    ``"fp32"`` switches TF32 off for both (cuDNN's convolutions included, which
    PyTorch runs in TF32 by default); ``"tf32"`` switches it on where
    `has_tf32`, and off elsewhere. torch's switches are restored when the block
    ends. The value yielded is `effective_matmul_precision`.

    >>> with matmul_precision("tf32", "cpu") as effective:
    ...     effective
    'fp32'
    """
    if setting not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got {setting!r}")
    api, before = _saved_tf32()
    on = setting == "tf32" and has_tf32(device)
    _set_tf32("legacy", on, on)
    try:
        yield effective_matmul_precision(device)
    finally:
        _set_tf32(api, *before)
