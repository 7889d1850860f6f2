"""Rational-quadratic spline flows: the Neural Spline Flow of Durkan et al. (2019), coupling and autoregressive.

A monotone rational-quadratic (RQ) spline (Gregory & Delbourgo 1982) maps
:math:`[-B, B]` onto itself through :math:`K + 1` knots
:math:`(x^{(k)}, y^{(k)})`, :math:`x^{(0)} = y^{(0)} = -B`, :math:`x^{(K)} = y^{(K)} = B`,
with derivatives :math:`\\delta^{(k)} > 0` at the knots; outside it is the
identity. In bin :math:`k`, with :math:`w = x^{(k+1)} - x^{(k)}`,
:math:`h = y^{(k+1)} - y^{(k)}`, :math:`s = h / w` and
:math:`\\xi = (x - x^{(k)}) / w \\in [0, 1)` (NSF section 3.1, eq. 4):

.. math:: y = y^{(k)} + \\frac{h\\,[s \\xi^2 + \\delta^{(k)} \\xi (1 - \\xi)]}
          {s + [\\delta^{(k+1)} + \\delta^{(k)} - 2 s]\\, \\xi (1 - \\xi)},

and its derivative, the whole Jacobian of this elementwise map (eq. 5):

.. math:: \\frac{dy}{dx} = \\frac{s^2 [\\delta^{(k+1)} \\xi^2 + 2 s \\xi (1 - \\xi) + \\delta^{(k)} (1 - \\xi)^2]}
          {(s + [\\delta^{(k+1)} + \\delta^{(k)} - 2 s]\\, \\xi (1 - \\xi))^2}.

Every term of the numerator is positive, so the derivative is positive and
computed without cancellation. At :math:`\\xi = 0` the value is
:math:`y^{(k)}` and the derivative :math:`\\delta^{(k)}`, as the segment to the
left ends with: the spline is continuous with a continuous derivative.

**Inverse** (NSF appendix A). Given :math:`y` in bin :math:`k`, :math:`\\xi`
solves :math:`a \\xi^2 + b \\xi + c = 0` with
:math:`D = \\delta^{(k+1)} + \\delta^{(k)} - 2 s`,

.. math:: a = h (s - \\delta^{(k)}) + (y - y^{(k)}) D, \\quad
          b = h \\delta^{(k)} - (y - y^{(k)}) D, \\quad
          c = -s (y - y^{(k)}),

and the root in :math:`[0, 1]` is taken in the form
:math:`\\xi = 2c / (-b - \\sqrt{b^2 - 4ac})`: :math:`c \\le 0 < b + \\sqrt{\\cdot}`
there, so nothing cancels, and it stays finite where :math:`a = 0` (e.g. a
straight segment, :math:`s = \\delta^{(k)} = \\delta^{(k+1)}`), where
:math:`(-b + \\sqrt{\\cdot}) / 2a` is 0/0. Its log-derivative is minus the
forward's at that :math:`\\xi`.

**Parameters** (NSF section 3.1; the minima are an implementation choice).
Each transformed coordinate gets :math:`3K - 1` unconstrained numbers: :math:`K` for the widths,
:math:`K` for the heights, :math:`K - 1` for the interior derivatives.

* widths (heights) :math:`= 2B\\,[m + (1 - K m)\\,\\mathrm{softmax}(\\theta)]`: the
  softmax makes them positive and sum to :math:`2B`, so the knots increase
  from :math:`-B` to :math:`B` and the spline maps the interval onto itself
  and meets the tails; the minimum :math:`m` (``1e-3``) keeps every bin from
  collapsing, which bounds :math:`s` and :math:`1/s` by about :math:`1/m` and
  keeps :math:`\\xi = (x - x^{(k)})/w` and the log-det finite;
* interior derivatives :math:`\\delta = m_\\delta + \\mathrm{softplus}(\\theta + c)`:
  positive (with :math:`s > 0` that makes each segment strictly increasing,
  hence invertible), at least :math:`m_\\delta` (``1e-3``) so
  :math:`\\log \\delta` and the inverse's slope stay bounded, growing linearly
  rather than exponentially (no overflow), and shifted by
  :math:`c = \\log(e^{1 - m_\\delta} - 1)` so that :math:`\\theta = 0` gives
  :math:`\\delta = 1`;
* boundary derivatives :math:`\\delta^{(0)} = \\delta^{(K)} = 1`, the slope of the
  identity tails, so the whole map is continuously differentiable on the real
  line (the paper's linear tails).

**Initialisation.** A zero net output gives equal widths and heights
(:math:`s = 1` exactly, the x and y knots equal bit for bit) and unit
derivatives; each segment then reduces to :math:`y = y^{(k)} + h \\xi = x`,
so `SplineCoupling` and `SplineAutoregressive` start as the identity with no extra blend parameter.
That identity is exact in exact arithmetic; computed, it holds to a few
ulps (the derivatives come out of ``softplus`` within rounding of 1).

**Two layers** (NSF section 3.2). `SplineCoupling` (RQ-NSF (C)) transforms
one part of the input with splines whose parameters come from the other part;
`SplineAutoregressive` (RQ-NSF (AR)) transforms dimension :math:`d` with a
spline whose parameters come from the dimensions before it, computed for all
:math:`d` in one pass of a `~flowlib.autoregressive.MADE`. Either way the
Jacobian is triangular and its log-determinant is the sum of the splines'
log-derivatives.

Reference: C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, "Neural Spline
Flows", NeurIPS 2019, arXiv:1906.04032 (https://arxiv.org/abs/1906.04032).

Reference: J. A. Gregory, R. Delbourgo, "Piecewise rational quadratic
interpolation to monotonic data", IMA Journal of Numerical Analysis 2(2),
1982, 123-130.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from collections.abc import Sequence

from .autoregressive import DIRECTIONS, MADE, _check_order, autoregressive_solve
from .coupling import Coupling
from .flow import Flow, check_int, check_positive, check_shape

__all__ = ["rational_quadratic_spline", "spline_knots", "SplineCoupling", "SplineAutoregressive"]

MIN_BIN_SIZE = 1e-3
MIN_DERIVATIVE = 1e-3


def spline_knots(unnormalized: Tensor, bound: float, min_size: float = MIN_BIN_SIZE) -> Tensor:
    """The :math:`K + 1` knots :math:`-B = t_0 < \\dots < t_K = B` from :math:`K` unnormalized bin sizes.

    Bin ``k`` has size :math:`2B\\,[m + (1 - K m)\\,\\mathrm{softmax}(\\theta)_k]`. The softmax
    and the cumulative sum are written with ``exp``, ``sum`` and a product with a
    triangular matrix of ones (``K`` is small), ops whose rounding the tests'
    error analysis models; the end knots are set to :math:`\\pm B` exactly.

    >>> spline_knots(torch.zeros(4), bound=2.0)
    tensor([-2., -1.,  0.,  1.,  2.])
    """
    k = unnormalized.shape[-1]
    e = torch.exp(unnormalized - unnormalized.amax(-1, keepdim=True))
    sizes = min_size + (1 - k * min_size) * (e / e.sum(-1, keepdim=True))
    upper = torch.ones(k - 1, k - 1, dtype=sizes.dtype, device=sizes.device).triu()
    inner = 2 * bound * (sizes[..., : k - 1] @ upper) - bound
    end = torch.full_like(sizes[..., :1], bound)
    return torch.cat([-end, inner, end], dim=-1)


def _check_spline_arguments(x: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float,
                            min_bin_width: float, min_bin_height: float, min_derivative: float) -> None:
    """`rational_quadratic_spline`'s arguments, each a `ValueError` naming it when it is not allowed."""
    k = widths.shape[-1] if widths.dim() > 0 else 0
    check_positive("bound", bound)
    for name, value in (("widths", widths), ("heights", heights), ("derivatives", derivatives)):
        want = tuple(x.shape) + ((k - 1,) if name == "derivatives" else (k,))
        if k < 1 or tuple(value.shape) != want:
            raise ValueError(f"rational_quadratic_spline: {name} must have shape {want} (x.shape + (K,) for "
                             f"widths and heights, + (K - 1,) for derivatives), got {tuple(value.shape)}")
    for name, m in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        if not 0 < m * k < 1:
            raise ValueError(f"{name} * K must lie in (0, 1), got {name}={m!r} with K={k}")
    if not 0 < min_derivative < 1:
        raise ValueError(f"min_derivative must lie in (0, 1), got {min_derivative!r}")


def _inverse_position(dy: Tensor, h: Tensor, s: Tensor, d0: Tensor, slack: Tensor) -> Tensor:
    """:math:`\\xi` in the bin from :math:`y - y_k`: the root of appendix A's quadratic, in its stable form
    :math:`2c / (-b - \\sqrt{b^2 - 4ac})`, the form appendix A gives for numerical stability."""
    a = h * (s - d0) + dy * slack
    b = h * d0 - dy * slack
    c = -s * dy
    root = torch.sqrt((b.square() - 4 * a * c).clamp_min(0))  # >= 0 exactly; the clamp absorbs rounding
    return 2 * c / (-b - root)


def rational_quadratic_spline(
    x: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor, inverse: bool = False,
    bound: float = 3.0, min_bin_width: float = MIN_BIN_SIZE, min_bin_height: float = MIN_BIN_SIZE,
    min_derivative: float = MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """The monotone RQ spline on :math:`[-B, B]`, identity outside: ``(y, log |dy/dx|)`` elementwise.

    ``widths`` and ``heights`` have shape ``x.shape + (K,)``, ``derivatives``
    ``x.shape + (K - 1,)``, all unnormalized (see the module docstring).
    With ``inverse=True`` it returns ``(x, log |dx/dy|)`` for ``x`` = the spline's inverse at the input.
    Inputs in :math:`[-B, B)` go through the spline (:math:`-B` is knot 0);
    :math:`B` and beyond are tails, where the log-derivative is 0.

    >>> x = torch.tensor([-4.0, -1.0, 0.5, 2.0])
    >>> g = torch.Generator().manual_seed(0)
    >>> w, h, d = (torch.randn(4, k, generator=g) for k in (5, 5, 4))
    >>> y, log_det = rational_quadratic_spline(x, w, h, d)
    >>> x_back, inv_log_det = rational_quadratic_spline(y, w, h, d, inverse=True)
    >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(inv_log_det, -log_det, atol=1e-5)
    (True, True)
    >>> y[0], log_det[0]   # the tail: the identity
    (tensor(-4.), tensor(0.))
    """
    _check_spline_arguments(x, widths, heights, derivatives, bound, min_bin_width, min_bin_height, min_derivative)
    xs = spline_knots(widths, bound, min_bin_width)  # (..., K + 1)
    ys = spline_knots(heights, bound, min_bin_height)
    shift = math.log(math.expm1(1 - min_derivative))  # softplus(shift) = 1 - min_derivative
    ones = torch.ones_like(derivatives[..., :1])
    d = torch.cat([ones, min_derivative + F.softplus(derivatives + shift), ones], dim=-1)

    inside = (x >= -bound) & (x < bound)
    v = torch.where(inside, x, torch.zeros_like(x))  # tails: a harmless point inside, replaced below
    knots = ys if inverse else xs
    # the bin: how many interior knots lie at or below v (a knot starts its bin); K is small
    idx = (v.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True)

    def at(t: Tensor, i: Tensor) -> Tensor:
        return t.gather(-1, i).squeeze(-1)

    x0, y0, d0 = at(xs, idx), at(ys, idx), at(d, idx)
    w, h, d1 = at(xs, idx + 1) - x0, at(ys, idx + 1) - y0, at(d, idx + 1)
    s = h / w
    slack = d0 + d1 - 2 * s  # D: how far the segment is from the straight line of slope s
    if inverse:
        xi = _inverse_position(v - y0, h, s, d0, slack)
        out = x0 + xi * w
    else:
        xi = (v - x0) / w
    t = xi * (1 - xi)
    denominator = s + slack * t
    if not inverse:
        out = y0 + h * (s * xi.square() + d0 * t) / denominator
    numerator = d1 * xi.square() + 2 * s * t + d0 * (1 - xi).square()
    log_deriv = 2 * torch.log(s) + torch.log(numerator) - 2 * torch.log(denominator)
    if inverse:
        log_deriv = -log_deriv
    return torch.where(inside, out, x), torch.where(inside, log_deriv, torch.zeros_like(log_deriv))


class SplineCoupling(Coupling):
    """NSF's coupling layer (RQ-NSF (C)): :math:`y_1 = x_1,\\; y_2 = \\mathrm{RQS}(x_2;\\, \\theta(x_1))`.

    ``net`` maps the conditioning part to :math:`3K - 1` numbers per
    transformed coordinate, grouped by coordinate: for vectors
    ``(B, n * (3K - 1))``, for images ``(B, C_t * (3K - 1), H, W)`` (``C_t``
    the transformed channels, or all channels for a checkerboard mask), each
    group being ``K`` widths, ``K`` heights and ``K - 1`` interior
    derivatives. :math:`\\log|\\det J|` sums the spline's log-derivatives
    over the transformed entries (the Jacobian is triangular, as for
    `~flowlib.coupling.AffineCoupling`). A zero-initialised net makes the
    layer the identity (module docstring). Durkan et al. 2019, "Neural Spline
    Flows", section 3.2 (https://arxiv.org/abs/1906.04032).

    >>> from flowlib.masks import half_mask
    >>> from flowlib.nets import MLP
    >>> layer = SplineCoupling(half_mask(4), MLP(2, 2 * (3 * 8 - 1), hidden=8, zero_init=False))
    >>> x = torch.randn(3, 4)
    >>> z, log_det = layer(x)
    >>> x_back, inv_log_det = layer.inverse(z)
    >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(inv_log_det, -log_det, atol=1e-5)
    (True, True)
    """

    def __init__(self, mask: Tensor, net: nn.Module, num_bins: int = 8, bound: float = 3.0) -> None:
        check_int("num_bins", num_bins, least=2)
        check_positive("bound", bound)
        super().__init__(mask, net)
        self.num_bins, self.bound = int(num_bins), float(bound)

    def spline_parameters(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Unnormalized widths, heights and derivatives, each of shape ``x2.shape + (K or K - 1,)``."""
        k, per = self.num_bins, 3 * self.num_bins - 1
        raw = self.net(x1)
        want = (x2.shape[0], x2.shape[1] * per, *x2.shape[2:])
        if tuple(raw.shape) != want:
            raise ValueError(f"SplineCoupling: net output must have shape {want} ({per} = 3 * num_bins - 1 "
                             f"numbers per transformed entry), got {tuple(raw.shape)}")
        raw = raw.reshape(x2.shape[0], x2.shape[1], per, *x2.shape[2:]).movedim(2, -1)
        return raw[..., :k], raw[..., k : 2 * k], raw[..., 2 * k :]

    def _transform(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        x1, x2 = self.split(x)
        widths, heights, derivatives = self.spline_parameters(x1, x2)
        y2, log_det = rational_quadratic_spline(x2, widths, heights, derivatives, inverse=inverse, bound=self.bound)
        if not self.by_index:  # checkerboard: the conditioning entries pass through
            y2 = torch.where(self.mask, x2, y2)
            log_det = torch.where(self.mask, torch.zeros_like(log_det), log_det)
        return self.merge(x1, y2), log_det.flatten(1).sum(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(x, inverse=False)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(z, inverse=True)


class SplineAutoregressive(Flow):
    """NSF's autoregressive layer (RQ-NSF (AR), NSF section 3.2) on vectors ``(B, D)``, MAF or IAF style.

    .. math:: z_d = \\mathrm{RQS}\\big(x_d;\\, \\theta_d\\big), \\qquad
              \\log\\Big|\\det \\frac{\\partial z}{\\partial x}\\Big| = \\sum_d \\log \\mathrm{RQS}'\\big(x_d;\\, \\theta_d\\big),

    where the :math:`3K - 1` spline parameters :math:`\\theta_d` (`rational_quadratic_spline`) are
    computed by one `~flowlib.autoregressive.MADE` from :math:`x_{<d}` (``direction="maf"``: ``forward``,
    the density, in one pass; ``inverse``, sampling, in ``D`` passes) or from :math:`z_{<d}`
    (``"iaf"``: the other way round), "<d" meaning before ``d`` in ``order``, exactly as
    `~flowlib.autoregressive.MaskedAutoregressive` does with its affine map. The MADE's output is
    :math:`3K - 1` blocks of ``D`` (block ``j`` holds parameter ``j`` of every dimension): ``K``
    widths, ``K`` heights, ``K - 1`` interior derivatives. The Jacobian is triangular in the order
    with diagonal :math:`\\mathrm{RQS}'(x_d) > 0`; ``inverse``'s log-det is minus ``forward``'s at the
    matching point. The MADE's output layer starts at zero, so the layer starts as the identity
    (module docstring), and outside :math:`[-B, B]` each dimension is the identity (linear tails).

    In two dimensions with the natural order, dimension 0 gets one spline with learned constant
    parameters (nothing comes before it) and dimension 1 a spline conditioned on :math:`x_0`: a
    `SplineCoupling` plus an elementwise spline of :math:`x_0`.

    Reference: C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, "Neural Spline Flows",
    NeurIPS 2019, arXiv:1906.04032 (https://arxiv.org/abs/1906.04032).

    >>> torch.manual_seed(0) and None
    >>> layer = SplineAutoregressive(3, hidden=8, num_hidden_layers=1, num_bins=4)
    >>> x = torch.randn(5, 3)
    >>> z, log_det = layer(x)
    >>> torch.allclose(z, x, atol=1e-6), torch.allclose(log_det, torch.zeros(5), atol=1e-6)  # the identity at start
    (True, True)
    >>> with torch.no_grad():
    ...     _ = layer.net.layers[-1].weight.normal_()
    >>> z, log_det = layer(x)
    >>> x_back, inv_log_det = layer.inverse(z)    # three passes of the net
    >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(inv_log_det, -log_det, atol=1e-5)
    (True, True)
    """

    def __init__(self, dim: int, hidden: int, num_hidden_layers: int, order: Sequence[int] | Tensor | None = None,
                 num_bins: int = 8, bound: float = 3.0, direction: str = "maf") -> None:
        super().__init__()
        check_int("num_bins", num_bins, least=2)
        check_positive("bound", bound)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.num_bins, self.bound = int(num_bins), float(bound)
        self.net = MADE(dim, hidden, num_hidden_layers, order, outputs_per_dim=3 * self.num_bins - 1)
        self.dim, self.direction = dim, direction
        self.order = _check_order(order, dim)

    def spline_parameters(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Unnormalized widths, heights and derivatives from the net's reading ``h``: ``(B, D, K or K - 1)``."""
        k = self.num_bins
        raw = self.net(h).reshape(h.shape[0], 3 * k - 1, self.dim).transpose(1, 2)  # (B, D, 3K - 1)
        return raw[..., :k], raw[..., k : 2 * k], raw[..., 2 * k :]

    def _spline(self, v: Tensor, reads: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        widths, heights, derivatives = self.spline_parameters(reads)
        out, log_deriv = rational_quadratic_spline(v, widths, heights, derivatives, inverse=inverse, bound=self.bound)
        return out, log_deriv.sum(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(x, (self.dim,), type(self).__name__)
        if self.direction == "maf":
            return self._spline(x, x, inverse=False)
        return autoregressive_solve(x, lambda given, reads: self._spline(given, reads, False), self.dim)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(z, (self.dim,), type(self).__name__)
        if self.direction == "iaf":
            return self._spline(z, z, inverse=True)
        return autoregressive_solve(z, lambda given, reads: self._spline(given, reads, True), self.dim)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, direction={self.direction!r}, order={self.order}, num_bins={self.num_bins}, "
                f"bound={self.bound}")
