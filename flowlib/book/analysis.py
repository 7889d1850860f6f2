"""What the chapters measure about a flow: which outputs depend on which inputs, its size, its cost.

* Dependency (Jacobian sparsity). Output :math:`i` of a map depends on input
  :math:`j` when :math:`\\partial z_i / \\partial x_j \\ne 0`. `dependency`
  takes the union of the nonzero pattern of :math:`J` over the examples of a
  batch (so a zero that happens by chance at one point does not count), and
  `dependency_after` does it for the first ``k`` layers of a stack,
  :math:`J^{(k)} = J_{f_k} \\cdots J_{f_1}`. `mixing_depth` is the first
  ``k`` at which every output depends on every input.
* Size: `count_parameters` (free trainable parameters) and
  `width_for_params` (the width that gives a parameter budget).
* Cost: `count_macs`, the multiply-accumulates of every ``Linear`` and
  ``Conv2d`` per example: :math:`i\\,o` for ``Linear(i, o)``,
  :math:`(C_{in}/g)\\,k_h k_w` per output entry of a convolution.
* Time: `equal_time_steps`, the steps each model gets in the time a
  reference model takes for its budget (chapters 10 and 11 compare at equal
  time); `pass_seconds`, the time of each flow's ``forward`` (the density)
  and ``inverse`` (sampling), interleaved (chapter 12's cost asymmetry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..conv1x1 import InvertibleConv1x1
from ..flow import Flow, Sequential, initialize_from_data
from ..jacobian import jacobian
from ..training.fit import make_optimizer, train_step

__all__ = [
    "EqualTime", "count_macs", "count_parameters", "dependency", "dependency_after", "equal_time_steps",
    "mixing_depth", "pass_seconds", "width_for_params",
]


# ----------------------------------------------------------------------------- dependency


def dependency(fn: Callable[[Tensor], Tensor], x: Tensor, tol: float = 0.0) -> Tensor:
    """Boolean ``(D_out, D_in)``: True where :math:`|\\partial f_i / \\partial x_j| > tol` at some example of ``x``.

    >>> dependency(lambda x: torch.stack([x[:, 0], x[:, 0] * x[:, 1]], 1), torch.randn(3, 2))
    tensor([[ True, False],
            [ True,  True]])
    """
    return (jacobian(fn, x).abs() > tol).any(0)


def dependency_after(layers: Sequence[Flow], x: Tensor, max_layers: int | None = None) -> list[Tensor]:
    """Dependency patterns of the first ``k`` layers, ``k = 1 .. max_layers`` (default: all).

    Each is computed from the Jacobian of the composed prefix
    :math:`f_k \\circ \\dots \\circ f_1` (not from a product of patterns), so
    what it shows is what autograd finds.

    >>> from flowlib.permutations import ReversePermutation
    >>> [p.int().tolist() for p in dependency_after([ReversePermutation(2)], torch.randn(2, 2))]
    [[[0, 1], [1, 0]]]
    """
    n = len(layers) if max_layers is None else min(max_layers, len(layers))
    out = []
    for k in range(1, n + 1):
        prefix = Sequential(*layers[:k])
        out.append(dependency(lambda v: prefix(v)[0], x))
    return out


def mixing_depth(patterns: Sequence[Tensor]) -> int | None:
    """First ``k`` (1-based) whose pattern is all True, or None if none is.

    >>> mixing_depth([torch.eye(2, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)])
    2
    """
    for k, p in enumerate(patterns, start=1):
        if bool(p.all()):
            return k
    return None


# ----------------------------------------------------------------------------- size and cost


def count_parameters(module: nn.Module) -> int:
    """Number of free trainable parameters (those with ``requires_grad``).

    An `~flowlib.conv1x1.InvertibleConv1x1` on ``C`` channels stores two full
    ``C x C`` matrices of which only the strict lower / upper triangles are
    used, so it counts as its :math:`C^2` free entries (:math:`C(C-1)` for
    :math:`L, U` plus :math:`C` for :math:`\\log|s|`).

    >>> count_parameters(nn.Linear(3, 2)), count_parameters(InvertibleConv1x1(4))
    (8, 16)
    """
    total = 0
    for mod in module.modules():
        own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
        if isinstance(mod, InvertibleConv1x1):
            total += mod.num_channels ** 2 if own else 0
        else:
            total += sum(p.numel() for p in own)
    return total


def count_macs(module: nn.Module, run: Callable[[], object], batch_size: int) -> float:
    """Multiply-accumulates per example of every ``Linear`` and ``Conv2d`` inside ``module`` during ``run()``.

    A ``Linear(i, o)`` costs :math:`i\\,o` per example; a ``Conv2d`` costs
    :math:`(C_{in}/g)\\,k_h k_w` per output entry. Other operations
    (activations, normalisation, the coupling arithmetic) are ignored: they
    are a few per entry, while the nets dominate. ``run`` runs without grad.

    >>> lin = nn.Linear(3, 2)
    >>> count_macs(lin, lambda: lin(torch.randn(5, 3)), batch_size=5)
    6.0
    """
    total = [0]

    def hook(mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if isinstance(mod, nn.Linear):
            total[0] += output.numel() * mod.in_features
        else:
            kh, kw = mod.kernel_size
            total[0] += output.numel() * (mod.in_channels // mod.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total[0] / batch_size


def width_for_params(build: Callable[[int], nn.Module], target: int, low: int = 1, high: int = 4096) -> int:
    """The width ``w`` in ``[low, high]`` whose ``build(w)`` has the `count_parameters` closest to ``target``.

    Assumes the count grows with ``w`` (bisection).

    >>> width_for_params(lambda w: nn.Linear(10, w), 110)
    10
    """
    while high - low > 1:
        mid = (low + high) // 2
        if count_parameters(build(mid)) < target:
            low = mid
        else:
            high = mid
    return min((low, high), key=lambda w: abs(count_parameters(build(w)) - target))


# ----------------------------------------------------------------------------- time


@dataclass(frozen=True)
class EqualTime:
    """Seconds per training step of each model, and the steps each gets in the reference's time."""

    step_seconds: dict[str, float]
    steps: dict[str, int]


def equal_time_steps(models: dict[str, nn.Module], probe: Tensor, reference: str, steps: int,
                     rounds: int = 20, lr: float = 1e-3) -> EqualTime:
    """Steps of each model that take the time ``reference`` takes for ``steps`` steps.

    Each model starts from the data (``probe``) and takes Adam steps on
    ``probe``, the models interleaved, one warm-up round, then ``rounds``
    timed rounds; a model's step time is its fastest round (other work on the
    machine can only add time to a step), and model :math:`m` gets
    :math:`\\mathrm{round}(S\\, t_{\\text{ref}} / t_m)` steps for the
    reference's :math:`S`. The models are trained by the timing: pass fresh
    copies, not the ones to compare.

    >>> from flowlib.flow_model import FlowModel
    >>> from flowlib.scaling import DiagonalScaling
    >>> models = {k: FlowModel(DiagonalScaling(2), "normal", (2,)) for k in ("a", "b")}
    >>> equal_time_steps(models, torch.randn(8, 2), "a", steps=100, rounds=3).steps["a"]
    100
    """
    if reference not in models:
        raise ValueError(f"reference must be one of {sorted(models)}, got {reference!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or rounds < 1:
        raise ValueError(f"steps and rounds must be positive integers, got {steps!r} and {rounds!r}")
    optimizers = {}
    for name, model in models.items():
        initialize_from_data(model, probe)
        optimizers[name] = make_optimizer(model, lr=lr)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(rounds + 1):
        for name, model in models.items():
            start = time.perf_counter()
            train_step(model, optimizers[name], probe).item()  # .item(): wait for the step to finish
            if i:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    fastest = {name: min(ts) for name, ts in times.items()}
    budget = {name: round(steps * fastest[reference] / fastest[name]) for name in models}
    return EqualTime(step_seconds=fastest, steps=budget)


def pass_seconds(flows: dict[str, Flow], x: Tensor, rounds: int = 7) -> dict[str, dict[str, float]]:
    """Median seconds of ``forward(x)`` and of ``inverse(x)`` for each flow: ``{name: {"forward": s, "inverse": s}}``.

    Without gradients. One warm-up round, then ``rounds`` rounds; each round
    times every flow's two passes in turn, the flows interleaved (so a slow
    spell of a shared machine falls on all of them alike), and the median over
    the rounds is reported. ``x`` is fed to both directions: a flow's inverse
    takes a latent point, and for timing any point of the right shape does.

    >>> from flowlib.scaling import DiagonalScaling
    >>> times = pass_seconds({"a": DiagonalScaling(3)}, torch.randn(8, 3), rounds=3)
    >>> sorted(times["a"]), times["a"]["forward"] > 0
    (['forward', 'inverse'], True)
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "inverse": []} for name in flows}
    with torch.no_grad():
        for i in range(rounds + 1):
            for name, flow in flows.items():
                for direction in ("forward", "inverse"):
                    start = time.perf_counter()
                    out, log_det = getattr(flow, direction)(x)
                    log_det.sum().item()  # wait for the pass to finish (an asynchronous device)
                    if i:  # round 0 warms up
                        times[name][direction].append(time.perf_counter() - start)
    return {name: {d: float(torch.tensor(ts).median()) for d, ts in t.items()} for name, t in times.items()}
