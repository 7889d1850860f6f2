"""Small tools the chapters use to measure flows: mixing, size, cost, and a training loop.

* Dependency (Jacobian sparsity). Output :math:`i` of a flow depends on input
  :math:`j` when :math:`\\partial z_i / \\partial x_j \\ne 0`. `dependency` takes
  the union of the nonzero pattern of :math:`J` over a few random points (so a
  zero that happens by chance at one point does not count), and
  `dependency_after` does it for the first ``k`` layers of a stack,
  :math:`J^{(k)} = J_{f_k} \\cdots J_{f_1}`. `mixing_depth` is the first ``k``
  at which every output depends on every input.
* `coupling_stack`: vector coupling stacks that differ only in how they shuffle
  between couplings (the schemes of chapter 4).
* Size and cost: `count_parameters`, `count_macs` (multiply-accumulates of
  every ``Linear`` and ``Conv2d``, per example), `width_for_params`.
* `realnvp_image_single_scale`: `~flowlib.models.realnvp_image` with the same
  couplings but no factor-out (chapter 6's baseline).
* `fit` / `evaluate_bpd`: a small Adam loop on 8-bit data that reports bits/dim.
* `downscale`: average-pool 8-bit images and round back to 8 bits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv1x1 import InvertibleConv1x1
from .coupling import AffineCoupling
from .data import batches, downscale
from .flow import Flow, Sequential, value_checks
from .jacobian import jacobian
from .masks import alternating_mask, channel_mask, checkerboard_mask, half_mask
from .models import FlowModel
from .nets import MLP, ResidualConvNet
from .permutations import RandomPermutation, ReversePermutation
from .preprocess import Dequantize, Logit
from .reshape import Squeeze
from .train import evaluate

__all__ = [
    "SCHEMES", "dependency", "dependency_after", "mixing_depth", "coupling_stack",
    "count_parameters", "count_macs", "width_for_params", "realnvp_image_single_scale",
    "downscale", "FitResult", "fit", "evaluate_bpd",
]

#: The shuffling schemes of chapter 4 (see `coupling_stack`).
SCHEMES: tuple[str, ...] = ("alternating", "half", "half+reverse", "half+random", "half+1x1conv")


# ----------------------------------------------------------------------------
# Which outputs depend on which inputs
# ----------------------------------------------------------------------------


def dependency(fn: Callable[[Tensor], Tensor], x: Tensor, tol: float = 0.0) -> Tensor:
    """Boolean ``(D_out, D_in)``: True where :math:`|\\partial f_i / \\partial x_j| > tol` at some example of ``x``.

    >>> dependency(lambda x: torch.stack([x[:, 0], x[:, 0] * x[:, 1]], 1), torch.randn(3, 2))
    tensor([[ True, False],
            [ True,  True]])
    """
    return (jacobian(fn, x).abs() > tol).any(0)


def dependency_after(layers: Sequence[Flow], x: Tensor, max_layers: int | None = None) -> list[Tensor]:
    """Dependency patterns of the first ``k`` layers, ``k = 1 .. max_layers``.

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


def coupling_stack(
    dim: int, scheme: str, num_couplings: int, hidden: int = 64, num_hidden_layers: int = 2,
    zero_init: bool = True, seed: int = 0, conv_init: str = "rotation",
) -> list[Flow]:
    """Affine couplings on vectors, shuffled between couplings according to ``scheme``.

    * ``alternating``: odd/even coordinates, parity flipped at every coupling (NICE);
    * ``half``: always the first half conditions, no shuffling (the broken case);
    * ``half+reverse``: first half conditions, then the order is reversed;
    * ``half+random``: first half conditions, then a fixed random permutation
      (a new one, seeded ``seed + k``, after every coupling);
    * ``half+1x1conv``: first half conditions, then a learned invertible linear
      map (Glow's 1x1 convolution on a vector), initialised to a random
      rotation (``conv_init="rotation"``, Glow's choice) or to the identity
      (``conv_init="identity"``: no mixing until it is learned).

    Every coupling's net is an `~flowlib.nets.MLP`; ``zero_init=False`` gives
    random weights (for dependency pictures), the default starts at the identity.
    The list has one entry per coupling (a coupling and its shuffle are one
    `~flowlib.flow.Sequential` block), so ``k`` entries are ``k`` couplings.

    >>> [[type(f).__name__ for f in block] for block in coupling_stack(4, "half+reverse", 2)]
    [['AffineCoupling', 'ReversePermutation'], ['AffineCoupling', 'ReversePermutation']]
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if conv_init not in ("rotation", "identity"):
        raise ValueError(f"conv_init must be 'rotation' or 'identity', got {conv_init!r}")
    layers: list[Flow] = []
    for k in range(num_couplings):
        mask = alternating_mask(dim, k % 2) if scheme == "alternating" else half_mask(dim)
        n_cond = int(mask.sum())
        net = MLP(n_cond, 2 * (dim - n_cond), hidden=hidden, num_hidden_layers=num_hidden_layers,
                  zero_init=zero_init)
        block: list[Flow] = [AffineCoupling(mask, net)]
        if scheme == "half+reverse":
            block.append(ReversePermutation(dim))
        elif scheme == "half+random":
            block.append(RandomPermutation(dim, seed=seed + k))
        elif scheme == "half+1x1conv":
            conv = InvertibleConv1x1(dim, seed=seed + k)
            if conv_init == "identity":
                _identity_(conv)
            block.append(conv)
        layers.append(Sequential(*block))
    return layers


@torch.no_grad()
def _identity_(conv: InvertibleConv1x1) -> None:
    """Set :math:`P = I, L = I, U = 0, s = 1`, so that :math:`W = I`."""
    conv.p.copy_(torch.eye(conv.num_channels))
    conv.sign_s.fill_(1.0)
    conv.lower.zero_()
    conv.upper.zero_()
    conv.log_s.zero_()


# ----------------------------------------------------------------------------
# Size and cost
# ----------------------------------------------------------------------------


def count_parameters(module: nn.Module) -> int:
    """Number of free trainable parameters.

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
    are a few per entry, while the nets dominate.

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
    """The width ``w`` in ``[low, high]`` whose ``build(w)`` has the parameter count closest to ``target``.

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


def realnvp_image_single_scale(
    shape: tuple[int, int, int] = (1, 28, 28), num_scales: int = 3, hidden_channels: int = 64,
    num_blocks: int = 4, alpha: float = 0.05, prior: str = "normal",
) -> FlowModel:
    """The couplings of `~flowlib.models.realnvp_image`, without factoring out.

    Same number of couplings and squeezes, in the same order, but every layer
    keeps all :math:`C H W` variables, so each later scale works on twice the
    channels of the multi-scale model. The latent has shape
    :math:`(C\\,4^{L-1}, H / 2^{L-1}, W / 2^{L-1})`.

    >>> m = realnvp_image_single_scale((1, 8, 8), num_scales=2, hidden_channels=8, num_blocks=1)
    >>> m.latent_shape, m.log_prob(torch.randint(0, 256, (2, 1, 8, 8))).shape
    ((4, 4, 4), torch.Size([2]))
    """
    c, h, w = shape

    def checker(par: int) -> AffineCoupling:
        net = ResidualConvNet(c, 2 * c, hidden_channels=hidden_channels, num_blocks=num_blocks)
        return AffineCoupling(checkerboard_mask(c, h, w, par), net)

    def channel(par: int) -> AffineCoupling:
        mask = channel_mask(c, h, w, par)
        n = int(mask[:, 0, 0].sum())
        net = ResidualConvNet(n, 2 * (c - n), hidden_channels=hidden_channels, num_blocks=num_blocks)
        return AffineCoupling(mask, net)

    layers: list[Flow] = [Dequantize(), Logit(alpha)]
    for _ in range(num_scales - 1):
        layers += [checker(k % 2) for k in range(3)]
        layers.append(Squeeze())
        c, h, w = 4 * c, h // 2, w // 2
        layers += [channel(k % 2) for k in range(3)]
    layers += [checker(k % 2) for k in range(4)]
    return FlowModel(Sequential(*layers), prior, shape, latent_shape=(c, h, w))


# ----------------------------------------------------------------------------
# Data and training
# ----------------------------------------------------------------------------


def evaluate_bpd(model: FlowModel, x: Tensor, batch_size: int = 500) -> float:
    """Mean bits/dim of ``model`` on ``x`` (`flowlib.train.evaluate`, without value checks)."""
    with value_checks(False):
        return evaluate(model, x, batch_size)[0]


@dataclass
class FitResult:
    """What `fit` returns: per-step training bits/dim, validation curve, test bits/dim, time."""

    train_bpd: list[float] = field(default_factory=list)
    valid_steps: list[int] = field(default_factory=list)
    valid_bpd: list[float] = field(default_factory=list)
    test_bpd: float = math.nan
    seconds: float = 0.0
    steps: int = 0


def fit(
    model: FlowModel, train: Tensor, valid: Tensor | None = None, steps: int = 1000, lr: float = 1e-3,
    batch_size: int = 64, test: Tensor | None = None, eval_every: int | None = None,
    max_grad_norm: float = 100.0, weight_decay: float = 0.0, seed: int = 0,
) -> FitResult:
    """Train ``model`` by maximum likelihood with Adam for ``steps`` mini-batches.

    Minimises the mean bits/dim :math:`-\\log p(x) / (D \\ln 2)` of each batch,
    drawn by `~flowlib.data.batches` (reshuffled every epoch, seeded). Value
    checks run on the first batch only. ``valid`` is evaluated every
    ``eval_every`` steps (default: 5 times in all) and ``test`` once at the end.
    Batches move to the model's device, so the data may stay on the CPU.

    >>> from flowlib.models import realnvp
    >>> r = fit(realnvp(2, num_couplings=2, hidden=8), torch.randn(64, 2), steps=3, batch_size=32)
    >>> len(r.train_bpd)
    3
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    every = eval_every or max(1, steps // 5)
    result = FitResult()
    start = time.perf_counter()
    model.train()
    dev = next(model.parameters()).device
    step = 0
    while step < steps:
        for xb in batches(train, batch_size, generator=gen, drop_last=True):
            xb = xb.to(dev)
            with value_checks(step == 0):
                loss = model.bits_per_dim(xb).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            opt.step()
            result.train_bpd.append(loss.item())
            step += 1
            if valid is not None and (step % every == 0 or step == steps):
                result.valid_steps.append(step)
                result.valid_bpd.append(evaluate_bpd(model, valid))
            if step == steps:
                break
    if test is not None:
        result.test_bpd = evaluate_bpd(model, test)
    result.seconds = time.perf_counter() - start
    result.steps = steps
    return result
