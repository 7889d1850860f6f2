"""Where a run executes: device choice and data parallelism under ``torchrun``.

* `resolve_device`: ``"auto"`` (CUDA when present, one GPU per process under
  torchrun, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; asking for
  a GPU that is not there is a `ValueError` that says what is.
* Under ``torchrun --nproc_per_node N`` every process trains on its share of
  each global batch inside `torch.nn.parallel.DistributedDataParallel`
  (NCCL on GPUs, gloo on CPUs): gradients are averaged, so N processes follow
  the single-process run with the same global batch.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["resolve_device", "device_name", "init_distributed", "rank_and_world", "all_reduce_sum",
           "wrap_data_parallel", "barrier", "broadcast_object", "shutdown_distributed"]


def resolve_device(name: str = "auto") -> torch.device:
    """The `torch.device` a config's ``device`` names.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    ValueError: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for CUDA, but this PyTorch ({torch.__version__}) sees no "
                             f"CUDA GPU; use --device cpu or auto")
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0))
        if index >= count:
            raise ValueError(f"device {name!r}: there are {count} CUDA devices (cuda:0 to cuda:{count - 1})")
        device = torch.device("cuda", index)
    return device


def device_name(device: torch.device) -> str:
    """A human-readable name of the hardware, for results files.

    >>> device_name(torch.device("cpu")).startswith("CPU")
    True
    """
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group when launched by torchrun; True if this call started it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over the processes, in place (a no-op in a single process)."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(t)
    return t


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every process (itself in a single process)."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every process gets here (a no-op in a single process)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def wrap_data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` inside DistributedDataParallel under torchrun, else ``model`` itself."""
    if rank_and_world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shutdown_distributed(started: bool) -> None:
    """Leave the process group if `init_distributed` started it."""
    if started and dist.is_initialized():
        dist.destroy_process_group()
