"""Tests of the rational-quadratic spline, `SplineCoupling` and `SplineAutoregressive` (flowlib/splines.py).

Every float comparison with an exact value takes its tolerance from `roundoff` (tests/conftest.py): the same
computation in the test's dtype and in float64, with a first-order bound on its rounding error derived from
the unit roundoff u (2**-53 in float64, 2**-24 in float32) and each rounding's float64 sensitivity. Exact
claims (the spline passes through its knots, ``inverse`` of a knot is the knot) are compared bit for bit.
The finite-difference tolerance is the Richardson estimate of the truncation error plus the rounding bound.

Autograd references (`assert_log_det`) are used with moderate parameters: the fixture's bound on autograd's
own error takes each Jacobian entry to be correct to a few ulps of itself, which autograd through the
spline's quotient (``(N'Q - N Q') / Q^2``) does not achieve where the derivative is tiny next to its terms.
Extreme parameters (bins at the minimum width, derivatives at the minimum) are checked by round trips,
monotonicity and finite differences instead.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowlib import MLP, ResidualConvNet, SplineAutoregressive, SplineCoupling, checkerboard_mask, channel_mask, half_mask
from flowlib.flow import Flow
from flowlib.jacobian import jacobian
from flowlib.masks import alternating_mask
from flowlib.splines import MIN_BIN_SIZE, MIN_DERIVATIVE, rational_quadratic_spline, spline_knots

from conftest import assert_close_to_roundoff, assert_every_wrong_inverse_is_caught, assert_same_function, roundoff

K, BOUND, DIM = 8, 3.0, 3  # bins, bound, coordinates of the spline tests
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


class Spline(Flow):
    """The spline with fixed parameters, one set per coordinate of a ``(B, D)`` input, as a `Flow`."""

    def __init__(self, widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float = BOUND) -> None:
        super().__init__()
        self.register_buffer("widths", widths)
        self.register_buffer("heights", heights)
        self.register_buffer("derivatives", derivatives)
        self.bound = bound

    def apply(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        p = [t.expand(*x.shape, t.shape[-1]) for t in (self.widths, self.heights, self.derivatives)]
        return rational_quadratic_spline(x, *p, inverse=inverse, bound=self.bound)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, log_det = self.apply(x, False)
        return y, log_det.sum(1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x, log_det = self.apply(z, True)
        return x, log_det.sum(1)

    def knots(self) -> tuple[Tensor, Tensor]:
        return spline_knots(self.widths, self.bound), spline_knots(self.heights, self.bound)


# Parameter sets (unnormalized): moderate, and extreme ones whose bins sit at the minimum width and height
# (logits 30 apart) and whose interior derivatives sit at the minimum (-40: softplus = 4e-21) or are large.
PARAMETERS = {
    "moderate": (1.0, 1.0, 1.0, 0.0),
    "narrow-bins": (30.0, 30.0, 1.0, 0.0),
    "minimum-derivatives": (1.0, 1.0, 0.0, -40.0),
    "extreme": (30.0, 30.0, 40.0, 0.0),
}


def spline(kind: str, dim: int = DIM, dtype: torch.dtype = torch.float64, seed: int = 0) -> Spline:
    ws, hs, ds, d0 = PARAMETERS[kind]
    g = torch.Generator().manual_seed(seed)
    p = [ws * torch.randn(dim, K, generator=g, dtype=torch.float64),
         hs * torch.randn(dim, K, generator=g, dtype=torch.float64),
         ds * torch.randn(dim, K - 1, generator=g, dtype=torch.float64) + d0]
    return Spline(*(t.to(dtype) for t in p))


def place(knots: Tensor, where: str, seed: int = 0) -> Tensor:
    """Points for knots ``(..., D, K + 1)``, shape ``(..., D)``: inside bins, exactly on knots, or in the tails.

    ``knots`` gives one knot vector per point (a leading batch dimension) or one per coordinate, in which case
    ``B = K + 1`` points are made so that every knot, the two ends ``-B`` and ``B`` included, is hit.
    """
    g = torch.Generator().manual_seed(seed)
    if knots.dim() == 2:
        knots = knots.expand(K + 1, *knots.shape)
    shape = knots.shape[:-1]
    if where == "knots":
        j = (torch.arange(shape.numel()) % (K + 1)).reshape(*shape, 1)
        return knots.gather(-1, j).squeeze(-1)
    if where == "inside":
        j = torch.randint(0, K, (*shape, 1), generator=g)
        xi = (0.05 + 0.9 * torch.rand(*shape, generator=g, dtype=torch.float64)).to(knots.dtype)
        left = knots.gather(-1, j).squeeze(-1)
        return left + xi * (knots.gather(-1, j + 1).squeeze(-1) - left)
    sign = torch.where(torch.arange(shape.numel()).reshape(shape) % 2 == 0, 1.0, -1.0)
    return (sign * (BOUND + 0.01 + 2 * torch.rand(*shape, generator=g, dtype=torch.float64))).to(knots.dtype)


def check_round_trip(flow: nn.Module, x: Tensor, w: Tensor) -> None:
    """``inverse(forward(x)) = x`` and ``forward(inverse(w)) = w``, with opposite log-dets, to within roundoff.

    The tolerance (float32 as float64) is `roundoff`'s bound for that same round trip in the input's dtype:
    every rounding of the float32 pass (u = 2**-24) times its sensitivity, by autograd in float64, through the
    rest of the forward pass and the inverse, combined with a 6-sigma Hoeffding margin. So an ill-conditioned
    inverse (a flat segment: dx/dy up to 1/min derivative) gets the tolerance its conditioning implies.
    """
    for there, back, start in (("forward", "inverse", x), ("inverse", "forward", w)):

        def trip(m: nn.Module, v: Tensor) -> Tensor:  # the round trip and the sum of the two log-dets, in one
            mid, log_det = getattr(m, there)(v)
            again, back_log_det = getattr(m, back)(mid)
            return torch.cat([again.flatten(1), (log_det + back_log_det).unsqueeze(1)], dim=1)

        r = roundoff(trip, flow, start)
        expected = torch.cat([start.flatten(1), start.new_zeros(start.shape[0], 1)], dim=1)
        assert_close_to_roundoff(trip(flow, start), expected, r.bound, f"round trip and log-dets ({there} first)")


# ----------------------------------------------------------------------------- the spline against its definition


def test_knots_are_the_cumulative_sums_of_the_bin_sizes():
    """`spline_knots` against a plain running sum of ``2B (m + (1 - K m) softmax)``, and its exact ends."""
    theta = 3 * torch.randn(4, K, dtype=torch.float64)

    def running_sum(_, t: Tensor) -> Tensor:
        e = torch.exp(t - t.amax(-1, keepdim=True))
        sizes = 2 * BOUND * (MIN_BIN_SIZE + (1 - K * MIN_BIN_SIZE) * e / e.sum(-1, keepdim=True))
        knots = [torch.full_like(t[:, 0], -BOUND)]
        for k in range(K):
            knots.append(knots[-1] + sizes[:, k])
        return torch.stack(knots, dim=-1)

    assert_same_function(lambda _, t: spline_knots(t, BOUND), running_sum, nn.Identity(), theta, what="knots")
    knots = spline_knots(theta, BOUND)
    assert (knots[:, 0] == -BOUND).all() and (knots[:, -1] == BOUND).all()
    assert (knots.diff(dim=-1) > 0).all()
    assert torch.equal(spline_knots(torch.zeros(K), 2.0), torch.linspace(-2.0, 2.0, K + 1))


def _assert_identity_to_roundoff(flow, x, dtype) -> None:
    """Both directions of ``flow`` return ``x`` and log-det 0 to within the roundoff bound of their own computation."""
    for direction in ("forward", "inverse"):
        out, log_det = getattr(flow, direction)(x)
        values = roundoff(lambda m, v: getattr(m, direction)(v)[0], flow, x)
        dets = roundoff(lambda m, v: getattr(m, direction)(v)[1], flow, x)
        assert_close_to_roundoff(out, x, values.bound, f"{direction} of the zero layer")
        assert_close_to_roundoff(log_det, torch.zeros_like(log_det), dets.bound, f"{direction} log-det")
        # power: the bounds stay at rounding level (64 ulps of B), so a layer that moved x by more would fail
        assert (values.bound <= 64 * torch.finfo(dtype).eps * BOUND).all()


@pytest.mark.parametrize("kind", list(PARAMETERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_spline_passes_through_its_knots_exactly(kind, dtype):
    """At knot k the value is the cumulative height y_k, bit for bit (xi = 0), and the inverse gives x_k back."""
    f = spline(kind, dtype=dtype)
    xs, ys = f.knots()
    x = xs.T.contiguous()  # (K + 1, D): row k is knot k of every coordinate, -B and B included
    y, _ = f(x)
    assert torch.equal(y, ys.T)
    x_back, _ = f.inverse(ys.T.contiguous())
    assert torch.equal(x_back, x)


@pytest.mark.parametrize("kind", list(PARAMETERS))
def test_derivative_at_a_knot_is_the_knot_derivative(kind):
    """Eq. 5 at xi = 0 gives delta_k: 1 at the ends, ``m + softplus(theta + log(e^(1 - m) - 1))`` inside."""
    f = spline(kind)

    def expected(m: Spline, x: Tensor) -> Tensor:
        inner = MIN_DERIVATIVE + F.softplus(m.derivatives + math.log(math.expm1(1 - MIN_DERIVATIVE)))
        ones = torch.ones_like(inner[:, :1])
        return torch.log(torch.cat([ones, inner, ones], dim=-1)).T[:K]  # the knot B is the tail's start

    x = f.knots()[0].T[:K].contiguous()
    assert_same_function(lambda m, v: m.apply(v, False)[1], expected, f, x, what="log delta_k")


@pytest.mark.parametrize("kind", list(PARAMETERS))
def test_values_inside_the_bins_match_the_papers_formula(kind):
    """The module's spline against eq. 4 of the paper written out bin by bin, inside bins and in the tails."""
    f = spline(kind)
    x = torch.cat([place(f.knots()[0], "inside"), place(f.knots()[0], "tails")])

    def paper(m: Spline, v: Tensor) -> Tensor:  # y_k + h [s xi^2 + d_k t] / [s + (d_k1 + d_k - 2s) t], t = xi (1 - xi)
        xs, ys = m.knots()
        inner = MIN_DERIVATIVE + F.softplus(m.derivatives + math.log(math.expm1(1 - MIN_DERIVATIVE)))
        d = torch.cat([torch.ones_like(inner[:, :1]), inner, torch.ones_like(inner[:, :1])], dim=-1)
        y = v
        for k in range(K):
            h, w = ys[:, k + 1] - ys[:, k], xs[:, k + 1] - xs[:, k]
            s, xi = h / w, (v - xs[:, k]) / w
            t = xi * (1 - xi)
            value = ys[:, k] + h * (s * xi**2 + d[:, k] * t) / (s + (d[:, k + 1] + d[:, k] - 2 * s) * t)
            y = torch.where((v >= xs[:, k]) & (v < xs[:, k + 1]), value, y)
        return y

    assert_same_function(lambda m, v: m(v)[0], paper, f, x, what="spline value")


@pytest.mark.parametrize("kind", list(PARAMETERS))
def test_derivative_matches_central_differences(kind):
    """exp(log-derivative) against central differences D(h) at points inside bins (float64).

    Error of D(h): c h^2 + O(h^4) + rounding r(h), |r(h)| <= (b(x+h) + b(x-h)) / 2h with b the roundoff bound of
    the spline value. From D(2h) - D(h) = 3 c h^2 + r(2h) - r(h), the tolerance
    |D(h) - D(2h)| + 2 rho(h) + rho(2h) covers |D(h) - f'| with a factor 3 on the truncation term (Richardson).
    Steps are 1e-3 of the bin width, so x +- 2h stays in the bin where the spline is smooth.
    """
    f = spline(kind)
    xs = f.knots()[0]
    x = place(xs, "inside")
    j = (x.unsqueeze(-1) >= xs[..., 1:-1]).sum(-1, keepdim=True)
    step = 1e-3 * (xs.expand(K + 1, -1, -1).gather(-1, j + 1) - xs.expand(K + 1, -1, -1).gather(-1, j)).squeeze(-1)
    bound = lambda v: roundoff(lambda m, t: m(t)[0], f, v).bound  # noqa: E731

    def central(h: Tensor) -> tuple[Tensor, Tensor]:
        diff = (f(x + h)[0] - f(x - h)[0]) / (2 * h)
        return diff, (bound(x + h) + bound(x - h)) / (2 * h)

    d1, rho1 = central(step)
    d2, rho2 = central(2 * step)
    analytic = roundoff(lambda m, v: torch.exp(m.apply(v, False)[1]), f, x)
    tolerance = (d1 - d2).abs() + 2 * rho1 + rho2 + analytic.bound
    assert ((d1 - analytic.value).abs() <= tolerance).all()
    assert (tolerance < 0.01 * analytic.value).all()  # power: a derivative 1% off would fail


@pytest.mark.parametrize("where", ["inside", "knots", "tails"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_spline_log_det_matches_autograd(where, dtype, assert_log_det):
    f = spline("moderate", dtype=dtype)
    xs, ys = f.knots()
    x = place(xs, where)
    assert_log_det(f, x, f(x)[1])
    z = place(ys, where)
    assert_log_det(f, z, f.inverse(z)[1], inverse=True)


@pytest.mark.parametrize("kind", list(PARAMETERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_spline_round_trip(kind, dtype):
    f = spline(kind, dtype=dtype)
    xs, ys = f.knots()
    x = torch.cat([place(xs, "inside"), place(xs, "knots"), place(xs, "tails", seed=1)])
    z = torch.cat([place(ys, "inside"), place(ys, "knots"), place(ys, "tails", seed=1)])
    check_round_trip(f, x, z)


def test_round_trip_check_catches_a_wrong_inverse():
    """Guards the tolerance: an inverse whose heights are off by 1e-3 fails the roundoff-bounded check."""
    f = spline("moderate", dtype=torch.float32)
    x = place(f.knots()[0], "inside")
    bound = roundoff(lambda m, v: m.inverse(m(v)[0])[0], f, x).bound
    wrong = Spline(f.widths, f.heights + 1e-3 * (torch.arange(K) == 2), f.derivatives)  # softmax: shift one logit
    with pytest.raises(AssertionError, match="beyond their roundoff bound"):
        assert_close_to_roundoff(wrong.inverse(f(x)[0])[0], x, bound)


@pytest.mark.parametrize("kind", list(PARAMETERS))
def test_spline_is_increasing(kind):
    """Strictly increasing on a dense grid over [-B - 1, B + 1] (float64, both directions), and across each knot.

    The grid's step, 1.5e-3, times the smallest derivative (about 2 s^2 / delta >= 1e-8 here) is far above the
    rounding of the values, so strict increase is an exact claim there. One ulp either side of a knot the
    increase is below one ulp of the value: there the check is non-decrease to within the values' roundoff.
    """
    f = spline(kind)
    grid = torch.linspace(-BOUND - 1, BOUND + 1, 4001, dtype=torch.float64).unsqueeze(1).expand(-1, DIM)
    for inverse, knots in ((False, f.knots()[0]), (True, f.knots()[1])):
        out, log_det = f.apply(grid, inverse)
        assert (out.diff(dim=0) > 0).all() and torch.isfinite(log_det).all()
        k = knots.T.contiguous()
        near = torch.stack([torch.nextafter(k, k - 1), k, torch.nextafter(k, k + 1)], dim=1).flatten(0, 1)
        values = roundoff(lambda m, v: m.apply(v, inverse)[0], f, near)
        out, bound = values.value.unflatten(0, (K + 1, 3)), values.bound.unflatten(0, (K + 1, 3))
        assert (out.diff(dim=1) >= -(bound[:, 1:] + bound[:, :-1])).all()  # left of knot -> knot -> right of knot


# ----------------------------------------------------------------------------- the coupling layer


def layer(mask: Tensor, dtype: torch.dtype, perturb, zero: bool = False) -> SplineCoupling:
    per = 3 * K - 1
    if mask.dim() == 1:
        n = int(mask.sum())
        net = MLP(n, (mask.numel() - n) * per, hidden=16)
    elif mask[:, 0, 0].all() or not mask[:, 0, 0].any():  # checkerboard: the net sees every channel
        net = ResidualConvNet(mask.shape[0], mask.shape[0] * per, hidden_channels=8, num_blocks=1)
    else:
        n = int(mask[:, 0, 0].sum())
        net = ResidualConvNet(n, (mask.shape[0] - n) * per, hidden_channels=8, num_blocks=1)
    flow = SplineCoupling(mask, net, num_bins=K, bound=BOUND).to(dtype).eval()
    return flow if zero else perturb(flow)


MASKS = {
    "half": lambda: half_mask(6),
    "alternating": lambda: alternating_mask(5, parity=1),
    "checkerboard": lambda: checkerboard_mask(2, 2, 2),
    "channel": lambda: channel_mask(3, 1, 2, parity=1),
}


def placed_input(flow: SplineCoupling, where: str, inverse: bool, dtype: torch.dtype) -> Tensor:
    """A ``(K + 1, 6)`` input to a half-mask layer whose transformed half sits inside bins, on knots or in tails."""
    x1 = torch.randn(K + 1, 3, dtype=dtype)
    with torch.no_grad():
        widths, heights, _ = flow.spline_parameters(x1, x1)
        x2 = place(spline_knots(heights if inverse else widths, BOUND), where)
    return torch.cat([x1, x2], dim=1)


@pytest.mark.parametrize("where", ["inside", "knots", "tails"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_coupling_log_det_matches_autograd(where, dtype, perturb, assert_log_det):
    flow = layer(half_mask(6), dtype, perturb)
    x = placed_input(flow, where, False, dtype)
    z, log_det = flow(x)
    assert_log_det(flow, x, log_det)
    w = placed_input(flow, where, True, dtype)
    assert_log_det(flow, w, flow.inverse(w)[1], inverse=True)
    if where == "tails":  # the identity, exactly
        assert (log_det == 0).all() and torch.equal(z, x) and torch.equal(flow.inverse(w)[0], w)
    if where != "inside":  # knots go to knots (xi = 0) and tails to themselves: exact round trips
        assert torch.equal(flow.inverse(z)[0], x) and torch.equal(flow(flow.inverse(w)[0])[0], w)


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_coupling_log_det_and_round_trip_for_every_mask(mask, dtype, perturb, assert_log_det):
    flow = layer(MASKS[mask](), dtype, perturb)
    x = 2 * torch.randn(2, *MASKS[mask]().shape, dtype=dtype)
    z, log_det = flow(x)
    assert not torch.allclose(z, x)  # the perturbed layer really transforms
    assert_log_det(flow, x, log_det)
    check_round_trip(flow, x, 2 * torch.randn_like(x))


class _Constant(nn.Module):
    """A "net" that returns a fixed output for every example."""

    def __init__(self, out: Tensor) -> None:
        super().__init__()
        self.register_buffer("out", out)

    def forward(self, x: Tensor) -> Tensor:
        return self.out.expand(x.shape[0], *self.out.shape)


@pytest.mark.parametrize("mask", list(MASKS))
def test_net_output_is_grouped_by_transformed_entry(mask, float64):
    """The net's 3K - 1 numbers per transformed entry are that entry's widths, heights and derivatives, in order.

    With a net that returns a fixed random output, the layer must equal `rational_quadratic_spline` applied
    entry by entry with the documented grouping: group ``j`` for the ``j``-th transformed coordinate (vectors)
    or channel (channel masks), group ``c`` for channel ``c`` (checkerboard), at the entry's pixel.
    """
    m = MASKS[mask]()
    flow = layer(m, torch.float64, lambda f: f)
    x = 2 * torch.randn(2, *m.shape)
    per = 3 * K - 1
    flow.net = _Constant(torch.randn(flow.net(flow.split(x)[0]).shape[1:]))
    transformed = (~m).nonzero().flatten() if m.dim() == 1 else (~m[:, 0, 0]).nonzero().flatten()

    def entry_by_entry(f: SplineCoupling, v: Tensor) -> Tensor:
        out, total = v.clone(), v.new_zeros(v.shape[0], 1)
        for index in (~m).nonzero().tolist():
            group = int((transformed == index[0]).nonzero()) if f.by_index else index[0]
            p = f.net.out[group * per : (group + 1) * per]
            p = p if m.dim() == 1 else p[:, index[1], index[2]]
            at = (slice(None), *index)
            y, ld = rational_quadratic_spline(v[at], p[:K].expand(2, K), p[K : 2 * K].expand(2, K),
                                              p[2 * K :].expand(2, K - 1), bound=f.bound)
            out[at] = y
            total = total + ld.unsqueeze(1)
        return torch.cat([out.flatten(1), total], dim=1)

    layer_output = lambda f, v: torch.cat([f(v)[0].flatten(1), f(v)[1].unsqueeze(1)], dim=1)  # noqa: E731
    assert_same_function(layer_output, entry_by_entry, flow, x, what="layer against entry-by-entry spline")


@pytest.mark.parametrize("mask", ["half", "checkerboard"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_initialised_coupling_is_the_identity(mask, dtype, perturb):
    """Zero net output: equal bins (s = 1, x and y knots equal bit for bit) and unit derivatives, so y = x.

    The identity is exact in exact arithmetic; computed, the layer returns x and log-det 0 to within the
    roundoff bound of its own computation (derivatives come out of softplus within rounding of 1).
    """
    flow = layer(MASKS[mask](), dtype, perturb, zero=True)
    x = 2 * torch.randn(4, *MASKS[mask]().shape, dtype=dtype)
    x = torch.where(x.abs() < BOUND, x, x / 2)  # mostly inside [-B, B]: the spline, not the tails
    equal_bins = torch.linspace(-BOUND, BOUND, K + 1, dtype=dtype)
    assert torch.equal(spline_knots(torch.zeros(K, dtype=dtype), BOUND), equal_bins)
    _assert_identity_to_roundoff(flow, x, dtype)


def test_bad_arguments_raise_value_errors():
    net = MLP(3, 3 * (3 * K - 1), hidden=8)
    for bins in (1, 0, 2.5, True, "8"):
        with pytest.raises(ValueError, match="num_bins"):
            SplineCoupling(half_mask(6), net, num_bins=bins)
    for bound in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="bound"):
            SplineCoupling(half_mask(6), net, bound=bound)
    flow = SplineCoupling(half_mask(6), net, num_bins=K)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 6\)"):
        flow(torch.randn(2, 5))
    with pytest.raises(ValueError, match="net output must have shape"):
        SplineCoupling(half_mask(6), MLP(3, 3 * 3 * K, hidden=8), num_bins=K)(torch.randn(2, 6))
    x, w, h, d = torch.randn(4), torch.randn(4, K), torch.randn(4, K), torch.randn(4, K - 1)
    for bad in ((x, w[:, 1:], h, d), (x, w, h[:2], d), (x, w, h, w), (x, w[0], h, d)):
        with pytest.raises(ValueError, match="must have shape"):
            rational_quadratic_spline(*bad)
    with pytest.raises(ValueError, match="bound"):
        rational_quadratic_spline(x, w, h, d, bound=0.0)
    with pytest.raises(ValueError, match="min_bin_width"):
        rational_quadratic_spline(x, w, h, d, min_bin_width=1 / K)
    with pytest.raises(ValueError, match="min_derivative"):
        rational_quadratic_spline(x, w, h, d, min_derivative=1.0)


# ----------------------------------------------------------------------------- the autoregressive layer

AR_DIM, AR_HIDDEN, AR_LAYERS = 3, 16, 2
AR_ORDERS = {"natural": None, "shuffled": [2, 0, 1]}


def ar_layer(direction: str, order_name: str, dtype: torch.dtype, perturb, zero: bool = False) -> SplineAutoregressive:
    torch.manual_seed(0)
    flow = SplineAutoregressive(AR_DIM, AR_HIDDEN, AR_LAYERS, order=AR_ORDERS[order_name], num_bins=K, bound=BOUND,
                                direction=direction).to(dtype).eval()
    return flow if zero else perturb(flow)


def ar_placed_input(flow: SplineAutoregressive, where: str, inverse: bool, dtype: torch.dtype) -> Tensor:
    """``K + 1`` inputs of ``flow.forward`` (or ``inverse``) whose every coordinate lies inside a bin, on a knot or in
    a tail of the spline that coordinate meets.

    Dimension ``d``'s spline depends only on what comes before ``d`` in the order, on the side the net reads (the
    input itself, or the output computed from it), so placing the dimensions one by one in the order leaves each
    placed one where it was put. With ``K + 1`` points, "knots" hits every knot, ``-B`` and ``B`` included.
    """
    v = 2 * torch.randn(K + 1, AR_DIM, dtype=dtype)
    reads_input = (flow.direction == "maf") != inverse  # MAF forward and IAF inverse: the net reads the input
    with torch.no_grad():
        for d in flow.order:
            reads = v if reads_input else (flow.inverse if inverse else flow.forward)(v)[0]
            widths, heights, _ = flow.spline_parameters(reads)
            # the knots of all dimensions at once, as the layer computes them (same shapes, same rounding)
            knots = spline_knots(heights if inverse else widths, BOUND)[:, d : d + 1]  # (K + 1, 1, K + 1)
            v[:, d] = place(knots, where, seed=d)[:, 0]
    return v


@pytest.mark.parametrize("order_name", list(AR_ORDERS))
@pytest.mark.parametrize("direction", ["maf", "iaf"])
@pytest.mark.parametrize("where", ["inside", "knots", "tails"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_autoregressive_log_det_matches_autograd(dtype, where, direction, order_name, perturb, assert_log_det):
    flow = ar_layer(direction, order_name, dtype, perturb)
    x = ar_placed_input(flow, where, False, dtype)
    z, log_det = flow(x)
    assert z.dtype == dtype and log_det.shape == (K + 1,)
    assert_log_det(flow, x, log_det)
    w = ar_placed_input(flow, where, True, dtype)
    assert_log_det(flow, w, flow.inverse(w)[1], inverse=True)
    if where == "tails":  # every coordinate in a tail: the identity, exactly
        assert torch.equal(z, x) and (log_det == 0).all() and torch.equal(flow.inverse(w)[0], w)
    if where != "inside":  # knots go to knots (xi = 0), tails to themselves: exact round trips, sweeps included
        assert torch.equal(flow.inverse(z)[0], x) and torch.equal(flow(flow.inverse(w)[0])[0], w)


@pytest.mark.parametrize("order_name", list(AR_ORDERS))
@pytest.mark.parametrize("direction", ["maf", "iaf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_autoregressive_round_trip(dtype, direction, order_name, perturb):
    """Both round trips, inside bins, on knots and in tails, to within the `roundoff` bound of the same trip."""
    flow = ar_layer(direction, order_name, dtype, perturb)
    x = torch.cat([ar_placed_input(flow, where, False, dtype) for where in ("inside", "knots", "tails")])
    w = torch.cat([ar_placed_input(flow, where, True, dtype) for where in ("inside", "knots", "tails")])
    check_round_trip(flow, x, w)


def test_autoregressive_round_trip_check_catches_a_wrong_inverse(perturb):
    """Guards the float32 tolerance: an inverse with any one parameter tensor off by 1e-3 fails the check."""
    flow = ar_layer("maf", "shuffled", torch.float32, perturb)
    names = assert_every_wrong_inverse_is_caught(flow, ar_placed_input(flow, "inside", False, torch.float32))
    assert len(names) == 2 * (AR_LAYERS + 1)  # the MADE's weights and biases


@pytest.mark.parametrize("direction", ["maf", "iaf"])
def test_perturbed_autoregressive_layer_is_not_the_identity(direction, perturb):
    # Guards the tests above: with perturbed parameters they test a non-trivial map.
    flow = ar_layer(direction, "shuffled", torch.float64, perturb)
    x = ar_placed_input(flow, "inside", False, torch.float64)
    z, log_det = flow(x)
    assert (z - x).abs().amax() > 0.1 and log_det.abs().amax() > 0.1 and log_det.std() > 0.01


@pytest.mark.parametrize("order_name", list(AR_ORDERS))
@pytest.mark.parametrize("direction", ["maf", "iaf"])
def test_autoregressive_jacobian_is_triangular_in_the_order(direction, order_name, float64, perturb):
    flow = ar_layer(direction, order_name, torch.float64, perturb)
    order = list(range(AR_DIM)) if AR_ORDERS[order_name] is None else AR_ORDERS[order_name]
    x = ar_placed_input(flow, "inside", False, torch.float64)
    z = ar_placed_input(flow, "inside", True, torch.float64)
    for fn, at in ((lambda v: flow(v)[0], x), (lambda v: flow.inverse(v)[0], z)):
        jac = jacobian(fn, at)[:, order][:, :, order]
        above = torch.triu(jac, diagonal=1)
        assert torch.equal(above, torch.zeros_like(above))  # masked weights are exact zeros
        assert (torch.diagonal(jac, dim1=1, dim2=2) > 0).all()  # the splines increase
        below = torch.tril(jac.abs().amax(0), diagonal=-1) + torch.triu(torch.ones(AR_DIM, AR_DIM), diagonal=0)
        assert below.amin() > 1e-3  # guard: every allowed dependence is there


@pytest.mark.parametrize("direction", ["maf", "iaf"])
def test_autoregressive_number_of_net_passes(direction):
    """MAF: density (forward) in one pass, sampling (inverse) in D; IAF the other way round."""
    flow = SplineAutoregressive(AR_DIM, AR_HIDDEN, AR_LAYERS, num_bins=K, direction=direction)
    calls = []
    flow.net.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(4, AR_DIM)
    flow(x)
    forward_calls = len(calls)
    flow.inverse(x)
    assert (forward_calls, len(calls) - forward_calls) == {"maf": (1, AR_DIM), "iaf": (AR_DIM, 1)}[direction]


@pytest.mark.parametrize("order_name", list(AR_ORDERS))
def test_autoregressive_net_output_is_grouped_by_parameter(order_name, float64):
    """The MADE's output is 3K - 1 blocks of D: block j holds parameter j (K widths, K heights, K - 1 derivatives)
    of every dimension. With a net that returns a fixed random output, the layer is `rational_quadratic_spline`
    applied dimension by dimension with those parameters."""
    flow = ar_layer("maf", order_name, torch.float64, lambda f: f)
    per = 3 * K - 1
    flow.net = _Constant(torch.randn(per * AR_DIM))
    x = 2 * torch.randn(5, AR_DIM)

    def dimension_by_dimension(f: SplineAutoregressive, v: Tensor) -> Tensor:
        out, total = [], v.new_zeros(v.shape[0])
        for d in range(AR_DIM):
            p = f.net.out.reshape(per, AR_DIM)[:, d].expand(v.shape[0], per)
            y, ld = rational_quadratic_spline(v[:, d], p[:, :K], p[:, K : 2 * K], p[:, 2 * K :], bound=f.bound)
            out.append(y)
            total = total + ld
        return torch.cat([torch.stack(out, dim=1), total.unsqueeze(1)], dim=1)

    layer_output = lambda f, v: torch.cat([f(v)[0], f(v)[1].unsqueeze(1)], dim=1)  # noqa: E731
    assert_same_function(layer_output, dimension_by_dimension, flow, x, what="layer against dimension-by-dimension")


@pytest.mark.parametrize("direction", ["maf", "iaf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_initialised_autoregressive_layer_is_the_identity(direction, dtype, perturb):
    """The MADE's output layer starts at zero: equal bins and unit derivatives, y = x to within roundoff."""
    flow = ar_layer(direction, "shuffled", dtype, perturb, zero=True)
    x = 2 * torch.randn(4, AR_DIM, dtype=dtype)
    x = torch.where(x.abs() < BOUND, x, x / 2)
    _assert_identity_to_roundoff(flow, x, dtype)


def test_autoregressive_bad_arguments_raise_value_errors():
    for bins in (1, 2.5, True):
        with pytest.raises(ValueError, match="num_bins"):
            SplineAutoregressive(AR_DIM, AR_HIDDEN, AR_LAYERS, num_bins=bins)
    for bound in (0.0, float("inf")):
        with pytest.raises(ValueError, match="bound"):
            SplineAutoregressive(AR_DIM, AR_HIDDEN, AR_LAYERS, bound=bound)
    with pytest.raises(ValueError, match="direction must be one of"):
        SplineAutoregressive(AR_DIM, AR_HIDDEN, AR_LAYERS, direction="forward")
    with pytest.raises(ValueError, match="order must be a permutation"):
        SplineAutoregressive(AR_DIM, AR_HIDDEN, AR_LAYERS, order=[0, 0, 1])
    flow = SplineAutoregressive(AR_DIM, AR_HIDDEN, AR_LAYERS)
    for pass_ in (flow.forward, flow.inverse):
        with pytest.raises(ValueError, match=r"SplineAutoregressive expects input of shape \(B, 3\)"):
            pass_(torch.zeros(2, AR_DIM + 1))
