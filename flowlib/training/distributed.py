"""Where a run executes: device choice and data parallelism under ``torchrun``.

* `resolve_device`: ``"auto"`` (CUDA when present, one GPU per process under
  torchrun, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; asking for
  a GPU that is not there is a `ValueError` that says what is.
* Under ``torchrun --nproc_per_node N`` every process trains on its share of
  each global batch inside `torch.nn.parallel.DistributedDataParallel`
  (NCCL on GPUs, gloo on CPUs), and N processes compute what one process
  computes on the whole global batch, up to the order of float additions:

  - the noise: the dequantizer (the flow's first layer) runs on the whole
    global batch on every process (`LocalShare`), so each draws exactly the
    single process's noise from the same random state and keeps its own rows;
    every process's random state then moves as the single process's does, so
    a checkpoint resumes the same under any number of processes;
  - the batch statistics: every batch norm after the dequantizer normalises
    by the global batch's mean and variance (`global_mean_var`, summed over
    the processes by a differentiable all-reduce), so the outputs, the
    running averages and the gradients are the single process's;
  - the gradients: DDP averages them, and the average of the processes'
    mean losses over equal shares is the mean loss of the global batch.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..dequantization import Dequantize, VariationalDequantize
from ..flow import Sequential
from ..flow_model import FlowModel
from ..normalization import BatchNormFlow

__all__ = ["resolve_device", "device_name", "init_distributed", "rank_and_world", "all_reduce_sum",
           "global_mean_var", "LocalShare", "wrap_data_parallel", "barrier", "broadcast_object", "shutdown_distributed"]


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


class _SumOverProcesses(torch.autograd.Function):
    """:math:`y = \\sum_r x_r` on every process; backward likewise sums the gradients.

    For the total loss :math:`L = \\sum_{r'} L_{r'}` of the processes,
    :math:`\\partial L / \\partial x_r = \\sum_{r'} \\partial L_{r'} / \\partial y`.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def global_mean_var(x: Tensor, dims: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-feature mean, biased variance and count of the global batch, from every process's share ``x``.

    Two passes over the values, as one process computes them on the whole
    batch: :math:`\\mu = \\sum_r S_r / n` with :math:`S_r = \\sum x` over the
    values of process :math:`r` and :math:`n` their total count, then
    :math:`\\sigma^2 = \\sum_r \\sum (x - \\mu)^2 / n` (no cancellation, unlike
    :math:`E[x^2] - \\mu^2`). Both sums go through a differentiable all-reduce,
    whose backward all-reduces the gradient: each process's loss reaches the
    other processes' inputs through the statistics, and the gradient DDP
    averages is the single process's. Statistics are taken in at least float32.
    """
    xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
    shape = [1, -1] + [1] * (x.dim() - 2)
    local = torch.cat([xs.sum(dims), xs.new_full((1,), x.numel() / x.shape[1])])
    total = _SumOverProcesses.apply(local)
    count = total[-1].detach()
    mean = total[:-1] / count
    var = _SumOverProcesses.apply((xs - mean.view(shape)).square().sum(dims)) / count
    return mean, var, count


class _GlobalBatchNorm:
    """Mixin for `nn.BatchNorm1d`/`2d`: in training, the global batch's statistics (`global_mean_var`).

    :math:`y = (x - \\mu) / \\sqrt{\\sigma^2 + \\epsilon} \\cdot w + b`, and the running
    averages move by ``momentum`` towards :math:`\\mu` and the unbiased
    :math:`\\sigma^2 n / (n - 1)`, as `torch.nn.functional.batch_norm` does. In
    eval mode the running averages are used, as before. (`torch.nn.SyncBatchNorm`
    does this on GPUs only.)
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        mean, var, count = global_mean_var(x, [0, *range(2, x.dim())])
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * count / (count - 1)).to(self.running_var.dtype), m)
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        y = (x - mean.view(shape)) * scale.view(shape)
        return (y if self.bias is None else y + self.bias.view(shape)).to(x.dtype)


class _GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    pass


class _GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    pass


class _GlobalBatchNormFlow(BatchNormFlow):
    """`BatchNormFlow` with the global batch's statistics in training (its log-det follows them)."""

    def _batch_statistics(self, x: Tensor, dims: list[int]) -> tuple[Tensor, Tensor]:
        mean, var, _ = global_mean_var(x, dims)
        return mean, var


#: The batch norms `LocalShare` synchronises, and what they become.
_GLOBAL_STATISTICS = {nn.BatchNorm1d: _GlobalBatchNorm1d, nn.BatchNorm2d: _GlobalBatchNorm2d,
                      BatchNormFlow: _GlobalBatchNormFlow}
_NOISE = (Dequantize, VariationalDequantize)


def _use_global_statistics(module: nn.Module) -> None:
    """Every batch norm in ``module`` normalises by the global batch's statistics from now on.

    Each keeps its identity: its class becomes a subclass that only changes how
    training statistics are computed, so its parameters (which the optimizer
    holds), buffers and state-dict keys stay as they are. A batch-statistics
    layer it does not know is a `ValueError`, never a silently local statistic.
    """
    synced = tuple(_GLOBAL_STATISTICS.values())
    for m in module.modules():
        if type(m) in _GLOBAL_STATISTICS:
            m.__class__ = _GLOBAL_STATISTICS[type(m)]
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchNormFlow)) and not isinstance(m, synced):
            known = ", ".join(c.__name__ for c in _GLOBAL_STATISTICS)
            raise ValueError(f"data parallelism synchronises the batch statistics of {known}; got a "
                             f"{type(m).__name__}: train this model in a single process")


class LocalShare(nn.Module):
    """This process's share of a global batch through ``model``'s flow, with the whole batch's noise.

    ``forward(x)`` takes the global batch of :math:`B` examples and returns
    ``(z, log_det)`` of rows :math:`[rB/N, (r+1)B/N)` (process :math:`r` of
    :math:`N`). The dequantizer, when it is the flow's first layer, runs on all
    :math:`B` rows on every process, so every process draws exactly the noise
    the single process draws for those rows and its random state moves as the
    single process's; the rest of the flow runs on the share only, its batch
    norms on the global batch's statistics (`_use_global_statistics`). A
    dequantizer anywhere else would draw local noise: a `ValueError`.
    """

    def __init__(self, model: FlowModel, rank: int, world: int) -> None:
        super().__init__()
        self.model, self.rank, self.world = model, rank, world
        layers = list(model.flow) if isinstance(model.flow, Sequential) else [model.flow]
        noisy = isinstance(layers[0], _NOISE)
        head, rest = (layers[0], layers[1:]) if noisy else (None, layers)
        if any(isinstance(m, _NOISE) for layer in rest for m in layer.modules()):
            raise ValueError("data parallelism needs the dequantizer as the flow's first layer, "
                             f"got one deeper in {type(model.flow).__name__}")
        for layer in rest:
            _use_global_statistics(layer)
        self._layers = (head, tuple(rest))  # a tuple: not registered twice (they are ``model``'s)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[0] % self.world:
            raise ValueError(f"LocalShare expects a global batch divisible by the {self.world} processes, "
                             f"got {x.shape[0]} examples")
        share = x.shape[0] // self.world
        rows = slice(self.rank * share, (self.rank + 1) * share)
        head, rest = self._layers
        if head is not None:
            x, head_log_det = head(x)  # all B rows: the single process's noise
        x = x[rows]
        total = head_log_det[rows] if head is not None else x.new_zeros(x.shape[0])
        for layer in rest:
            x, ld = layer(x)
            total = total + ld
        return x, total


def wrap_data_parallel(model: FlowModel, device: torch.device) -> nn.Module:
    """What a training step runs the *global* batch through.

    ``model`` itself in a single process; under torchrun, `LocalShare` of
    ``model`` inside DistributedDataParallel (see the module docstring).
    """
    rank, world = rank_and_world()
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(LocalShare(model, rank, world),
                                   device_ids=[device.index] if device.type == "cuda" else None)


def shutdown_distributed(started: bool) -> None:
    """Leave the process group if `init_distributed` started it."""
    if started and dist.is_initialized():
        dist.destroy_process_group()
