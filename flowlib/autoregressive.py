"""Autoregressive flows: MADE's masks, MAF and IAF.

An affine autoregressive transform ties data :math:`x` and latent :math:`z`
dimension by dimension, in a chosen order :math:`d = 1, \\dots, D`:

.. math:: x_d = z_d \\exp(\\alpha_d) + \\mu_d, \\qquad
          z_d = (x_d - \\mu_d) \\exp(-\\alpha_d),

where the shift :math:`\\mu_d` and log-scale :math:`\\alpha_d` depend only on
earlier dimensions. The two flows differ in *which side* they read:

* MAF (Papamakarios et al. 2017, section 3.1): :math:`\\mu_d, \\alpha_d` are
  functions of :math:`x_{<d}`. ``forward`` (data to latent, the density) is
  one pass of the network over :math:`x`; ``inverse`` (sampling) must build
  :math:`x` one dimension at a time, :math:`D` passes.
* IAF (Kingma et al. 2016, section 4; MAF paper section 3.2): they are
  functions of :math:`z_{<d}`. Sampling, ``inverse``, is one pass over
  :math:`z`; ``forward`` (the density of a given :math:`x`) takes :math:`D`.

Either way :math:`\\partial z_d / \\partial x_j = 0` for every :math:`j` after
:math:`d` in the order, so the Jacobian is triangular in that order with
diagonal :math:`\\exp(-\\alpha_d)`:

.. math:: \\log |\\det \\partial z / \\partial x| = -\\sum_d \\alpha_d ,

and ``inverse`` returns :math:`+\\sum_d \\alpha_d` (MAF eq. 5). The sequential
pass solves for the unknown side by fixed-point sweeps: start from zeros and
apply the one-pass formula with the network reading the current guess. After
sweep :math:`k` the first :math:`k` dimensions in the order are exact (each
needs only earlier ones), so :math:`D` sweeps give the exact answer, and the
last sweep's :math:`\\alpha` is the one at the answer.

One network gives all :math:`\\mu_d, \\alpha_d` at once by masking its
weights (MADE, Germain et al. 2015, section 4): the inputs get degrees
:math:`m(x_d) = 1..D` (the order), hidden units degrees in :math:`[1, D-1]`,
and a weight from a unit of degree :math:`k` to one of degree :math:`k'`
is kept iff :math:`k' \\ge k` (hidden layers, MADE eq. 13) or :math:`k' > k`
(output layer, eq. 14), so output :math:`d` can only reach inputs of smaller
degree. Hidden degrees cycle through :math:`1, \\dots, D-1` instead of being
drawn at random (MADE samples them): the layer is the same every time it is
built, so a checkpoint needs no mask, and with ``hidden >= D - 1`` every
output sees all the inputs it may see.

The raw log-scale is squashed, :math:`\\alpha = a \\tanh(\\tilde\\alpha)` with
a learned per-dimension :math:`a` (initialised to 1), as in
`~flowlib.coupling.AffineCoupling`: :math:`\\exp(\\pm\\alpha)` cannot overflow
early in training, and the sequential pass, which feeds each sweep's output
back into the network, amplifies an error in one dimension by at most
:math:`e^{|a|}` per step. :math:`\\alpha_d` is still a function of earlier
dimensions only, so the Jacobian and log-determinant keep their form. The
output layer starts at zero, so :math:`\\mu = \\alpha = 0` and the layer
starts as the identity (as the coupling nets do, `flowlib.nets`).

Reference: M. Germain, K. Gregor, I. Murray, H. Larochelle, "MADE: Masked
Autoencoder for Distribution Estimation", ICML 2015, arXiv:1502.03509
(https://arxiv.org/abs/1502.03509).

Reference: G. Papamakarios, T. Pavlakou, I. Murray, "Masked Autoregressive
Flow for Density Estimation", NeurIPS 2017, arXiv:1705.07057
(https://arxiv.org/abs/1705.07057).

Reference: D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever,
M. Welling, "Improved Variational Inference with Inverse Autoregressive
Flow", NeurIPS 2016, arXiv:1606.04934 (https://arxiv.org/abs/1606.04934).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flow import Flow, check_int, check_shape

__all__ = ["made_degrees", "MaskedLinear", "MADE", "MaskedAutoregressive", "autoregressive_solve"]

DIRECTIONS = ("maf", "iaf")


def _check_order(order: Sequence[int] | Tensor | None, dim: int) -> list[int]:
    """``order`` as a list, or a `ValueError` unless it is a permutation of ``0..dim-1``."""
    if order is None:
        return list(range(dim))
    values = order.tolist() if isinstance(order, Tensor) else list(order)
    if (len(values) != dim or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in values)
            or sorted(values) != list(range(dim))):
        raise ValueError(f"order must be a permutation of 0..{dim - 1} (each dimension once), got {order!r}")
    return [int(v) for v in values]


def made_degrees(dim: int, hidden: int, num_hidden_layers: int,
                 order: Sequence[int] | Tensor | None = None, outputs_per_dim: int = 2) -> list[Tensor]:
    """MADE's degrees: the inputs', each hidden layer's, and the outputs' (section 4).

    ``order`` lists the dimensions in autoregressive order (``order[0]`` comes
    first and depends on nothing; default ``0, 1, ..., D-1``), so input
    ``order[k]`` has degree ``k + 1``. Hidden unit ``j`` has degree
    ``j mod (D - 1) + 1`` (for ``D = 1``, degree 1: it reaches no output).
    The outputs are ``outputs_per_dim`` blocks of ``D``, block ``j`` holding
    the ``j``-th number of every dimension, each with its input's degree:
    for `MaskedAutoregressive` two blocks, ``(raw log-scale, shift)``, for
    `~flowlib.splines.SplineAutoregressive` the spline's :math:`3K - 1`.

    >>> [d.tolist() for d in made_degrees(3, 4, 1, order=[2, 0, 1])]
    [[2, 3, 1], [1, 2, 1, 2], [2, 3, 1, 2, 3, 1]]
    """
    for name, value in (("dim", dim), ("hidden", hidden), ("num_hidden_layers", num_hidden_layers),
                        ("outputs_per_dim", outputs_per_dim)):
        check_int(name, value)
    inputs = torch.empty(dim, dtype=torch.long)
    inputs[_check_order(order, dim)] = torch.arange(1, dim + 1)
    cycle = torch.arange(hidden) % max(dim - 1, 1) + 1
    return [inputs] + [cycle.clone() for _ in range(num_hidden_layers)] + [inputs.repeat(outputs_per_dim)]


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask ``(out, in)``.

    Multiplying by 0 and 1 is exact, so a masked weight is an exact zero and
    the output does not change at all when a masked input does. MADE's
    :math:`h = g(b + (W \\odot M) x)` (Germain et al. 2015, section 4;
    https://arxiv.org/abs/1502.03509).

    >>> layer = MaskedLinear(2, 2, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    >>> x = torch.tensor([[1.0, 2.0]])
    >>> bool((layer(x) == layer(x + torch.tensor([[0.0, 5.0]])))[0, 0])
    True
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        if tuple(mask.shape) != (out_features, in_features):
            raise ValueError(f"mask must have shape {(out_features, in_features)}, got {tuple(mask.shape)}")
        # Not saved: rebuilt from the constructor's arguments, like the couplings' masks.
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder ``(B, D) -> (B, nD)``: ``n = outputs_per_dim`` blocks of ``D``; output ``d`` of each block
    sees only inputs before ``d``.

    ``D -> hidden (x num_hidden_layers, ReLU) -> nD`` with MADE's masks
    (`made_degrees`; hidden layers ``deg_out >= deg_in``, output
    ``deg_out > deg_in``). The output layer starts at zero. With the default
    ``n = 2`` the blocks are raw log-scales, then shifts (`MaskedAutoregressive`).
    Germain et al. 2015, "MADE: Masked Autoencoder for Distribution Estimation",
    section 4 (https://arxiv.org/abs/1502.03509).

    >>> net = MADE(3, hidden=8, num_hidden_layers=2)
    >>> [m.mask.shape for m in net.layers]
    [torch.Size([8, 3]), torch.Size([8, 8]), torch.Size([6, 8])]
    >>> net(torch.randn(5, 3)).abs().max()   # zero output layer
    tensor(0., grad_fn=<MaxBackward1>)
    """

    def __init__(self, dim: int, hidden: int, num_hidden_layers: int,
                 order: Sequence[int] | Tensor | None = None, outputs_per_dim: int = 2) -> None:
        super().__init__()
        degrees = made_degrees(dim, hidden, num_hidden_layers, order, outputs_per_dim)
        self.dim = dim
        self.register_buffer("input_degrees", degrees[0], persistent=False)
        layers = []
        for k, (d_in, d_out) in enumerate(zip(degrees[:-1], degrees[1:])):
            last = k == len(degrees) - 2
            allowed = d_out[:, None] > d_in[None, :] if last else d_out[:, None] >= d_in[None, :]
            layers.append(MaskedLinear(len(d_in), len(d_out), allowed.to(torch.get_default_dtype())))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def autoregressive_solve(given: Tensor, step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                         dim: int) -> tuple[Tensor, Tensor]:
    """Solve ``out = step(given, out)[0]`` for an autoregressive ``step`` by ``dim`` sweeps from zeros.

    ``step(given, reads)`` computes every output dimension from ``given`` with
    the network reading ``reads``; output ``d`` may depend only on ``reads``
    before ``d`` in the order. Sweep ``k`` then fixes the ``k``-th dimension
    in the order for good (it reads only the ``k - 1`` already exact), so
    ``dim`` sweeps give the exact answer, and the second value of the last
    sweep (a log-scale or log-derivative) is the one at the answer. This is
    the ``D``-pass direction of MAF (sampling) and of IAF (the density).

    >>> step = lambda given, reads: (given + 2 * reads.roll(1, dims=1) * (torch.arange(3) > 0), reads)
    >>> autoregressive_solve(torch.ones(1, 3), step, 3)[0]   # out_0 = 1, out_d = 1 + 2 out_{d-1}
    tensor([[1., 3., 7.]])
    """
    out = torch.zeros_like(given)
    extra = out
    for _ in range(dim):
        out, extra = step(given, out)
    return out, extra


class MaskedAutoregressive(Flow):
    """Affine autoregressive flow, MAF (``direction="maf"``) or IAF (``"iaf"``), on vectors ``(B, D)``.

    ``z_d = (x_d - mu_d) exp(-alpha_d)``, with ``mu_d, alpha_d`` computed by a
    `MADE` from ``x_<d`` (MAF: ``forward`` one pass, ``inverse`` D passes) or
    from ``z_<d`` (IAF: ``inverse`` one pass, ``forward`` D passes); "<d" is
    before ``d`` in ``order`` (default ``0, ..., D-1``). Stacked layers should
    vary the order (MAF section 3.1), e.g. reversed, or interleave
    `~flowlib.permutations.ReversePermutation`. ``forward``'s log-det is
    ``-sum_d alpha_d``, ``inverse``'s ``+sum_d alpha_d``.

    >>> torch.manual_seed(0) and None
    >>> layer = MaskedAutoregressive(3, hidden=8, num_hidden_layers=1)
    >>> x = torch.randn(4, 3)
    >>> z, log_det = layer(x)
    >>> torch.equal(z, x), torch.equal(log_det, torch.zeros(4))   # starts as the identity
    (True, True)
    >>> with torch.no_grad():
    ...     for p in layer.net.layers[-1].parameters():
    ...         _ = p.normal_()
    >>> z, log_det = layer(x)
    >>> x_back, inv_log_det = layer.inverse(z)    # three passes of the net
    >>> torch.allclose(x_back, x, atol=1e-6), torch.allclose(inv_log_det, -log_det)
    (True, True)
    """

    def __init__(self, dim: int, hidden: int, num_hidden_layers: int,
                 order: Sequence[int] | Tensor | None = None, direction: str = "maf") -> None:
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.net = MADE(dim, hidden, num_hidden_layers, order)  # checks dim, hidden, num_hidden_layers, order
        self.dim, self.direction = dim, direction
        self.order = _check_order(order, dim)
        self.scale = nn.Parameter(torch.ones(dim))

    def shift_and_log_scale(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, alpha)`` from the net's reading ``h``: ``alpha = a tanh(raw)``, ``|alpha_d| <= |a_d|``."""
        raw_alpha, mu = self.net(h).chunk(2, dim=1)
        return mu, self.scale * torch.tanh(raw_alpha)

    def _to_latent(self, x: Tensor, reads: Tensor) -> tuple[Tensor, Tensor]:
        mu, alpha = self.shift_and_log_scale(reads)
        return (x - mu) * torch.exp(-alpha), alpha

    def _to_data(self, z: Tensor, reads: Tensor) -> tuple[Tensor, Tensor]:
        mu, alpha = self.shift_and_log_scale(reads)
        return z * torch.exp(alpha) + mu, alpha

    def _sweeps(self, given: Tensor, step) -> tuple[Tensor, Tensor]:
        """Solve ``out = step(given, reads=out)`` by D sweeps from zeros (`autoregressive_solve`)."""
        return autoregressive_solve(given, step, self.dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(x, (self.dim,), type(self).__name__)
        if self.direction == "maf":
            z, alpha = self._to_latent(x, x)
        else:
            z, alpha = self._sweeps(x, self._to_latent)
        return z, -alpha.sum(1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(z, (self.dim,), type(self).__name__)
        if self.direction == "iaf":
            x, alpha = self._to_data(z, z)
        else:
            x, alpha = self._sweeps(z, self._to_data)
        return x, alpha.sum(1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, direction={self.direction!r}, order={self.order}"
