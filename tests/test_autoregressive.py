"""MADE, MAF and IAF (flowlib/autoregressive.py): masks, log-dets, round trips, passes of the net.

References the tests compare against:

* log-dets: autograd's Jacobian in float64 (`assert_log_det`, tests/conftest.py);
* the Jacobian's shape: `flowlib.jacobian.jacobian` in float64, permuted to the layer's order;
* the masks: MADE's rule (Germain et al. 2015, section 4) written out here from the degrees;
* round trips: the input itself, to within `roundoff`'s bound (no tolerance set from a measurement).
"""

from __future__ import annotations


import pytest
import torch
from torch import Tensor, nn

from flowlib import MADE, MaskedAutoregressive, MaskedLinear
from flowlib.autoregressive import made_degrees
from flowlib.jacobian import jacobian

from conftest import assert_close_to_roundoff, assert_every_wrong_inverse_is_caught, roundoff

# HIDDEN >= D - 1 lets every output see all the inputs it may see; 4 hidden units per degree (not 1 or 2) keep
# some of them alive under ReLU, so after `perturb` every allowed dependence is non-zero at some of the B points.
B, D, HIDDEN, LAYERS = 6, 5, 16, 2
ORDERS = {"natural": None, "shuffled": [2, 0, 4, 1, 3]}
DIRECTIONS = ["maf", "iaf"]
DTYPES = [torch.float64, torch.float32]


def degrees_of(order: list[int] | None) -> Tensor:
    """Input degrees written out from the definition: dimension ``order[k]`` has degree ``k + 1``."""
    order = list(range(D)) if order is None else order
    return torch.tensor([order.index(i) + 1 for i in range(D)])


def make(direction: str, order_name: str, dtype: torch.dtype, perturb) -> tuple[MaskedAutoregressive, Tensor]:
    torch.manual_seed(0)
    layer = MaskedAutoregressive(D, HIDDEN, LAYERS, order=ORDERS[order_name], direction=direction).to(dtype)
    perturb(layer)
    return layer.eval(), torch.randn(B, D, dtype=dtype)


class CountCalls(nn.Module):
    """Wraps a net and counts its calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.net(x)


# ---------------------------------------------------------------- MADE


@pytest.mark.parametrize("order_name", list(ORDERS))
def test_made_masks_follow_the_degrees(order_name):
    order = ORDERS[order_name]
    net = MADE(D, HIDDEN, LAYERS, order=order)
    deg_in = degrees_of(order)
    deg_hidden = torch.arange(HIDDEN) % (D - 1) + 1  # cycling through 1..D-1
    assert torch.equal(net.input_degrees, deg_in)
    assert [d.tolist() for d in made_degrees(D, HIDDEN, LAYERS, order)] == (
        [deg_in.tolist()] + [deg_hidden.tolist()] * LAYERS + [deg_in.tolist() * 2])
    # Hidden layers keep deg_out >= deg_in (MADE eq. 13), the output layer deg_out > deg_in (eq. 14).
    expected = [(deg_hidden[:, None] >= deg_in[None, :])]
    expected += [(deg_hidden[:, None] >= deg_hidden[None, :])] * (LAYERS - 1)
    expected += [(deg_in.repeat(2)[:, None] > deg_hidden[None, :])]
    assert len(net.layers) == LAYERS + 1
    for layer, mask in zip(net.layers, expected):
        assert torch.equal(layer.mask, mask.to(layer.mask.dtype))
    # Connectivity (MADE section 4): a path from input j to output d exists iff deg(j) < deg(d), all such pairs.
    paths = net.layers[0].mask
    for layer in net.layers[1:]:
        paths = layer.mask @ paths
    allowed = deg_in.repeat(2)[:, None] > deg_in[None, :]
    assert torch.equal(paths > 0, allowed)
    # Deterministic: a second build has the same masks.
    again = MADE(D, HIDDEN, LAYERS, order=order)
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(net.layers, again.layers))


@pytest.mark.parametrize("order_name", list(ORDERS))
def test_made_output_d_depends_only_on_inputs_of_smaller_degree(order_name, perturb):
    net = perturb(MADE(D, HIDDEN, LAYERS, order=ORDERS[order_name])).double()
    deg = degrees_of(ORDERS[order_name])
    x = torch.randn(B, D, dtype=torch.float64)
    out = net(x)
    for d in range(1, D + 1):
        cols = torch.cat([torch.nonzero(deg == d).flatten(), torch.nonzero(deg == d).flatten() + D])
        later = x.clone()
        later[:, deg >= d] = torch.randn(B, int((deg >= d).sum()), dtype=torch.float64)
        # Masked weights are exact zeros, so the change cannot reach output d at all: bitwise equal.
        assert torch.equal(net(later)[:, cols], out[:, cols])
        for e in range(1, d):  # guard: each input of smaller degree does reach it
            earlier = x.clone()
            earlier[:, deg == e] += 1.0
            assert (net(earlier)[:, cols] - out[:, cols]).abs().amax() > 1e-3


def test_made_with_more_outputs_per_dimension(perturb):
    """``outputs_per_dim`` blocks of D outputs (the spline layer's 3K - 1), each block masked as the first."""
    n = 5
    net = perturb(MADE(D, HIDDEN, LAYERS, order=ORDERS["shuffled"], outputs_per_dim=n)).double()
    deg = degrees_of(ORDERS["shuffled"])
    assert made_degrees(D, HIDDEN, LAYERS, ORDERS["shuffled"], outputs_per_dim=n)[-1].tolist() == deg.tolist() * n
    paths = net.layers[0].mask
    for layer in net.layers[1:]:
        paths = layer.mask @ paths
    assert torch.equal(paths > 0, deg.repeat(n)[:, None] > deg[None, :])
    x = torch.randn(B, D, dtype=torch.float64)
    assert net(x).shape == (B, n * D)
    with pytest.raises(ValueError, match="outputs_per_dim must be"):
        MADE(D, HIDDEN, LAYERS, outputs_per_dim=0)


def test_masked_linear_checks_its_mask():
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 3\)"):
        MaskedLinear(3, 2, torch.ones(3, 2))


# ---------------------------------------------------------------- the flow


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_starts_as_identity(direction):
    layer = MaskedAutoregressive(D, HIDDEN, LAYERS, order=ORDERS["shuffled"], direction=direction)
    x = torch.randn(B, D)
    for pass_ in (layer.forward, layer.inverse):
        y, log_det = pass_(x)
        # mu = 0 and alpha = tanh(0) = 0: (x - 0) * exp(0) = x exactly.
        assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(B))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_perturbed_layer_is_not_the_identity(direction, perturb):
    # Guards the tests below: with perturbed parameters they test a non-trivial map.
    for order_name in ORDERS:
        layer, x = make(direction, order_name, torch.float64, perturb)
        z, log_det = layer(x)
        # Measured: max |z - x| >= 1.17, max |log-det| >= 0.62, its spread over the batch >= 0.17 (alpha depends on x).
        assert (z - x).abs().amax() > 0.1 and log_det.abs().amax() > 0.1 and log_det.std() > 0.01


@pytest.mark.parametrize("order_name", list(ORDERS))
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_log_det_matches_autograd(dtype, direction, inverse, order_name, perturb, assert_log_det):
    layer, x = make(direction, order_name, dtype, perturb)
    if inverse:
        x = layer(x)[0].detach()  # a latent point the layer reaches
    y, log_det = (layer.inverse if inverse else layer.forward)(x)
    assert y.dtype == dtype and log_det.shape == (B,)
    assert_log_det(layer, x, log_det, inverse=inverse)


def check_round_trip(layer: MaskedAutoregressive, x: Tensor) -> None:
    """Both round trips give the input back, with opposite log-dets, to within `roundoff`'s bound.

    The tolerance is derived, not measured: `roundoff` (tests/conftest.py) reruns the same round trip in
    float64 and bounds its rounding error to first order in the dtype's unit roundoff (2**-53 in float64,
    2**-24 in float32): every rounding op of the forward pass and of the inverse (the D sweeps included)
    contributes u times its coefficient, amplified by autograd's float64 sensitivity of the result to it.
    """
    for there, back in (("forward", "inverse"), ("inverse", "forward")):
        h, log_det = getattr(layer, there)(x)
        x_back, back_log_det = getattr(layer, back)(h)
        values = roundoff(lambda m, v: getattr(m, back)(getattr(m, there)(v)[0])[0], layer, x)
        assert_close_to_roundoff(x_back, x, values.bound, f"{back}({there}(x))")
        dets = roundoff(lambda m, v: (lambda h, ld: getattr(m, back)(h)[1] + ld)(*getattr(m, there)(v)), layer, x)
        assert_close_to_roundoff(back_log_det + log_det, torch.zeros_like(log_det), dets.bound, "log-det sum")


@pytest.mark.parametrize("order_name", list(ORDERS))
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(dtype, direction, order_name, perturb):
    check_round_trip(*make(direction, order_name, dtype, perturb))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_round_trip_check_catches_a_wrong_inverse(direction, perturb):
    """Guards the float32 tolerance: an inverse with any one parameter tensor off by 1e-3 fails the check."""
    layer, x = make(direction, "shuffled", torch.float32, perturb)
    names = assert_every_wrong_inverse_is_caught(layer, x)
    assert len(names) == 2 * (LAYERS + 1) + 1  # weights and biases of the MADE, and the scale a


@pytest.mark.parametrize("order_name", list(ORDERS))
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_jacobian_is_triangular_in_the_order(direction, order_name, float64, perturb):
    layer, x = make(direction, order_name, torch.float64, perturb)
    order = list(range(D)) if ORDERS[order_name] is None else ORDERS[order_name]
    z, _ = layer(x)
    for fn, at in ((lambda v: layer(v)[0], x), (lambda v: layer.inverse(v)[0], z.detach())):
        jac = jacobian(fn, at)[:, order][:, :, order]  # rows and columns in autoregressive order
        above = torch.triu(jac, diagonal=1)
        # Exact zeros: every path from a later input goes through a masked weight, an exact 0.
        assert torch.equal(above, torch.zeros_like(above))
        assert (torch.diagonal(jac, dim1=1, dim2=2) > 0).all()  # exp(-alpha) or exp(alpha)
        # Guard: every allowed dependence is there, each below-diagonal entry non-zero at one of the B points
        # at least (measured: the smallest such maximum is 0.017); a sweep short or a mask too strict fails.
        below = torch.tril(jac.abs().amax(0), diagonal=-1) + torch.triu(torch.ones(D, D), diagonal=0)
        assert below.amin() > 1e-3


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_number_of_net_passes(direction):
    # MAF: density (forward) in one pass, sampling (inverse) in D; IAF the other way round.
    layer = MaskedAutoregressive(D, HIDDEN, LAYERS, direction=direction)
    layer.net = CountCalls(layer.net)
    x = torch.randn(B, D)
    expected = {"maf": (1, D), "iaf": (D, 1)}[direction]
    layer(x)
    forward_calls, layer.net.calls = layer.net.calls, 0
    layer.inverse(x)
    assert (forward_calls, layer.net.calls) == expected


def test_log_scale_is_bounded(float64):
    # alpha = a * tanh(raw): even a huge raw log-scale cannot overflow exp(alpha).
    layer = MaskedAutoregressive(D, HIDDEN, LAYERS)
    with torch.no_grad():
        layer.net.layers[-1].bias[:D].fill_(1e4)
        layer.scale.fill_(2.0)
    x = torch.randn(B, D)
    z, log_det = layer(x)
    x_back, inv_log_det = layer.inverse(z)
    assert torch.isfinite(z).all() and torch.isfinite(x_back).all()
    assert torch.equal(log_det, torch.full((B,), -2.0 * D))  # tanh(1e4) = 1 exactly; sums of 2 are exact
    assert torch.equal(inv_log_det, torch.full((B,), 2.0 * D))


def test_one_dimension_is_an_elementwise_affine_map(float64, perturb):
    layer = perturb(MaskedAutoregressive(1, HIDDEN, LAYERS))
    x = torch.randn(B, 1)
    z, log_det = layer(x)
    assert torch.equal(layer(x + 1.0)[1], log_det)  # alpha is a constant: nothing comes before dimension 0


@pytest.mark.parametrize("kwargs, message", [
    ({"dim": 0}, "dim must be at least 1"),
    ({"dim": 2.5}, "dim must be an integer"),
    ({"hidden": True}, "hidden must be an integer"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be at least 1"),
    ({"order": [0, 1, 2]}, "order must be a permutation of 0..4"),
    ({"order": [0, 1, 2, 3, 3]}, "order must be a permutation"),
    ({"order": [0, 1, 2, 3, 4.0]}, "order must be a permutation"),
    ({"direction": "forward"}, "direction must be one of"),
])
def test_constructor_errors(kwargs, message):
    args = {"dim": D, "hidden": HIDDEN, "num_hidden_layers": LAYERS, **kwargs}
    with pytest.raises(ValueError, match=message):
        MaskedAutoregressive(**args)


@pytest.mark.parametrize("shape", [(B,), (B, D + 1), (B, D, 1)])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_shape_errors(shape, direction):
    layer = MaskedAutoregressive(D, HIDDEN, LAYERS, direction=direction)
    for pass_ in (layer.forward, layer.inverse):
        with pytest.raises(ValueError, match=r"MaskedAutoregressive expects input of shape \(B, 5\)"):
            pass_(torch.zeros(shape))
