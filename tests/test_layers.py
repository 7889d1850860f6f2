"""Tests of every flowlib layer: log-dets against autograd, round trips, structure.

Every layer is checked the same way (parametrised over the cases in `CASES`):
its forward log-det and its inverse's log-det agree with ``torch.func``
Jacobians in float64 (tight) and float32 (loose), ``inverse(forward(x))``
returns ``x``, and the inverse's log-det is minus the forward's at matching
points. Parameters are perturbed first: the conditioner nets start at zero,
which would make every coupling the identity and the checks vacuous.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from flowlib import (
    MLP, ActNorm, AdditiveCoupling, AffineCoupling, BatchNormFlow, Dequantize, DiagonalScaling,
    InvertibleConv1x1, Logit, MultiScale, Permutation, RandomPermutation, ResidualConvNet,
    ReversePermutation, Sequential, Squeeze, StandardNormal, alternating_mask, channel_mask,
    checkerboard_mask, half_mask, jacobian, log_abs_det_jacobian,
)
from flowlib.distributions import make_prior
from flowlib.flow import initialize_from_data
from flowlib.masks import is_channelwise
from flowlib.reshape import squeeze, unsqueeze

from conftest import (
    LAMBDA, assert_close_to_roundoff, assert_every_wrong_inverse_is_caught, assert_same_function, autograd_log_det,
    roundoff, slogdet_bound,
)

B = 3

MASKS: dict[str, Callable[[], Tensor]] = {
    "alternating0": lambda: alternating_mask(5, parity=0),
    "alternating1": lambda: alternating_mask(6, parity=1),
    "half0": lambda: half_mask(5, parity=0),
    "half1": lambda: half_mask(6, parity=1),
    "checkerboard0": lambda: checkerboard_mask(2, 4, 4, parity=0),
    "checkerboard1": lambda: checkerboard_mask(1, 3, 3, parity=1),
    "channel0": lambda: channel_mask(3, 3, 3, parity=0),
    "channel1": lambda: channel_mask(3, 2, 4, parity=1),
}


def coupling(cls: type, mask: Tensor, hidden: int = 8) -> tuple[nn.Module, Tensor]:
    """A coupling of class ``cls`` on ``mask`` with a small (zero-initialised) net, and an input."""
    width = 1 if cls is AdditiveCoupling else 2
    if mask.dim() == 1:
        n_cond = int(mask.sum())
        net = MLP(n_cond, width * (mask.numel() - n_cond), hidden=hidden)
    elif is_channelwise(mask):
        n_cond = int(mask[:, 0, 0].sum())
        net = ResidualConvNet(n_cond, width * (mask.shape[0] - n_cond), hidden_channels=hidden, num_blocks=1)
    else:
        net = ResidualConvNet(mask.shape[0], width * mask.shape[0], hidden_channels=hidden, num_blocks=1)
    return cls(mask, net), torch.randn(B, *mask.shape)


def batchnorm(shape: tuple[int, ...]) -> tuple[nn.Module, Tensor]:
    bn = BatchNormFlow(shape[0])
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(shape[0]))
        bn.running_var.copy_(torch.rand(shape[0]) + 0.5)
    return bn, 2 * torch.randn(B, *shape) + 1


def actnorm(shape: tuple[int, ...]) -> tuple[nn.Module, Tensor]:
    an = ActNorm(shape[0])
    initialize_from_data(an, 3 * torch.randn(16, *shape) - 2)
    return an, torch.randn(B, *shape)


def sequential() -> tuple[nn.Module, Tensor]:
    an, _ = actnorm((6,))
    bn, _ = batchnorm((6,))
    flow = Sequential(
        an,
        coupling(AffineCoupling, alternating_mask(6))[0],
        ReversePermutation(6),
        coupling(AdditiveCoupling, half_mask(6, parity=1))[0],
        RandomPermutation(6, seed=3),
        InvertibleConv1x1(6, seed=1),
        bn,
        DiagonalScaling(6),
    )
    return flow, torch.randn(B, 6)


def multiscale() -> tuple[nn.Module, Tensor]:
    level = Sequential(
        coupling(AffineCoupling, checkerboard_mask(1, 4, 4))[0],
        Squeeze(),
        coupling(AffineCoupling, channel_mask(4, 2, 2, parity=1))[0],
        InvertibleConv1x1(4, seed=2),
    )
    final = Sequential(
        coupling(AdditiveCoupling, checkerboard_mask(2, 2, 2, parity=1))[0],
        coupling(AffineCoupling, channel_mask(2, 2, 2))[0],
    )
    return MultiScale([level], final, shape=(1, 4, 4)), torch.randn(B, 1, 4, 4)


CASES: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    **{f"additive-{m}": (lambda m=m: coupling(AdditiveCoupling, MASKS[m]())) for m in MASKS},
    **{f"affine-{m}": (lambda m=m: coupling(AffineCoupling, MASKS[m]())) for m in MASKS},
    "diagonal-vector": lambda: (DiagonalScaling(5), torch.randn(B, 5)),
    "diagonal-image": lambda: (DiagonalScaling((2, 3, 3)), torch.randn(B, 2, 3, 3)),
    "permutation-vector": lambda: (Permutation(torch.tensor([2, 0, 3, 1])), torch.randn(B, 4)),
    "reverse-vector": lambda: (ReversePermutation(5), torch.randn(B, 5)),
    "reverse-image": lambda: (ReversePermutation(3), torch.randn(B, 3, 2, 2)),
    "random-vector": lambda: (RandomPermutation(6, seed=4), torch.randn(B, 6)),
    "random-image": lambda: (RandomPermutation(4, seed=4), torch.randn(B, 4, 2, 3)),
    "squeeze": lambda: (Squeeze(), torch.randn(B, 2, 4, 6)),
    "multiscale": multiscale,
    "batchnorm-vector": lambda: batchnorm((4,)),
    "batchnorm-image": lambda: batchnorm((3, 2, 3)),
    "actnorm-vector": lambda: actnorm((4,)),
    "actnorm-image": lambda: actnorm((3, 2, 3)),
    "conv1x1-vector": lambda: (InvertibleConv1x1(4, seed=0), torch.randn(B, 4)),
    "conv1x1-image": lambda: (InvertibleConv1x1(3, seed=0), torch.randn(B, 3, 2, 3)),
    "dequantize": lambda: (Dequantize(), torch.randint(0, 256, (B, 5)).float()),
    "dequantize-image": lambda: (Dequantize(), torch.randint(0, 256, (B, 1, 3, 3)).float()),
    "logit": lambda: (Logit(alpha=0.05), 0.98 * torch.rand(B, 5) + 0.01),
    "logit-no-alpha-image": lambda: (Logit(alpha=0.0), 0.98 * torch.rand(B, 2, 2, 2) + 0.01),
    "sequential": sequential,
}

# The inverse of dequantization rounds down to the levels: not differentiable.
INVERTIBLE_CASES = [name for name in CASES if not name.startswith("dequantize")]
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


def make(name: str, dtype: torch.dtype, perturb) -> tuple[nn.Module, Tensor]:
    """Build case ``name`` in ``dtype`` with perturbed parameters, in eval mode."""
    torch.manual_seed(0)
    flow, x = CASES[name]()
    flow, x = flow.to(dtype), x.to(dtype)
    perturb(flow)
    return flow.eval(), x


def test_every_parametrised_layer_really_changes_its_input(perturb):
    # Guards the suite itself: after perturbation, no case is the identity.
    for name in CASES:
        flow, x = make(name, torch.float64, perturb)
        z, _ = flow(x)
        if z.shape == x.shape and not name.startswith("dequantize"):
            assert not torch.allclose(z, x), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_forward_log_det_matches_autograd(name, dtype, perturb, assert_log_det):
    flow, x = make(name, dtype, perturb)
    torch.manual_seed(1)  # Dequantize: the log-det does not depend on the noise
    z, log_det = flow(x)
    assert log_det.dtype == dtype and z.dtype == dtype
    assert_log_det(flow, x, log_det)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", INVERTIBLE_CASES)
def test_inverse_log_det_matches_autograd(name, dtype, perturb, assert_log_det):
    flow, x = make(name, dtype, perturb)
    z, _ = flow(x)
    x_back, log_det = flow.inverse(z)
    assert log_det.dtype == dtype
    assert_log_det(flow, z, log_det, inverse=True)


def check_round_trip(flow: nn.Module, x: Tensor) -> None:
    """``inverse(forward(x)) = x`` with opposite log-dets, and from the latent side, to within roundoff.

    Each tolerance is `roundoff`'s bound for the same computation in ``x``'s dtype (see tests/conftest.py):
    first-order in u = 2**-24 (float32) or 2**-53 (float64), every rounding amplified by its float64
    sensitivity through the rest of the forward pass and the inverse.
    """
    z, log_det = flow(x)
    x_back, inv_log_det = flow.inverse(z)
    values = roundoff(lambda m, v: m.inverse(m(v)[0])[0], flow, x)
    assert_close_to_roundoff(x_back, x, values.bound, "inverse(forward(x))")
    dets = roundoff(lambda m, v: (lambda z, ld: m.inverse(z)[1] + ld)(*m(v)), flow, x)
    assert_close_to_roundoff(inv_log_det + log_det, torch.zeros_like(log_det), dets.bound, "log-det sum")
    # ... and starting from the latent side.
    w = torch.randn_like(z)
    x_w, inv_w = flow.inverse(w)
    w_back, fwd_w = flow(x_w)
    values = roundoff(lambda m, v: m(m.inverse(v)[0])[0], flow, w)
    assert_close_to_roundoff(w_back, w, values.bound, "forward(inverse(w))")
    dets = roundoff(lambda m, v: (lambda h, ld: m(h)[1] + ld)(*m.inverse(v)), flow, w)
    assert_close_to_roundoff(fwd_w + inv_w, torch.zeros_like(inv_w), dets.bound, "log-det sum (latent side)")


@pytest.mark.parametrize("name", INVERTIBLE_CASES)
def test_round_trip_and_opposite_log_dets(name, perturb):
    check_round_trip(*make(name, torch.float64, perturb))


@pytest.mark.parametrize("name", INVERTIBLE_CASES)
def test_round_trip_float32(name, perturb):
    # The multi-scale case, two conv-net couplings deep with ||J^-1|| = 620, has the loosest bound (1.7e-2
    # at its worst element); its measured error, 6.8e-5 (AMD, 1 thread) and 2e-4 (Intel AMX), is < 3% of it.
    check_round_trip(*make(name, torch.float32, perturb))


# Cases with parameters: the guard below shifts each of them.
PARAMETRISED = [name for name in INVERTIBLE_CASES if not name.startswith(("permutation", "reverse", "random", "squeeze", "logit"))]
# Cases whose log-det depends on the parameters (additive couplings are volume preserving).
LOG_DET_PARAMETRISED = [name for name in PARAMETRISED if not name.startswith("additive")]


@pytest.mark.parametrize("name", PARAMETRISED)
def test_round_trip_check_catches_a_wrong_inverse(name, perturb):
    """Guards the tolerances: an inverse with any one parameter tensor off by 1e-3 fails the round-trip check.

    The bound is the correct flow's (the wrong pair's differs from it by a relative O(1e-3)). The tightest
    case is the multi-scale flow's first coupling scale, caught with its error 1.08x the bound.
    """
    flow, x = make(name, torch.float32, perturb)
    assert_every_wrong_inverse_is_caught(flow, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LOG_DET_PARAMETRISED)
def test_log_det_check_catches_a_wrong_log_det(name, dtype, perturb, assert_log_det):
    """Guards the autograd check: a log-det computed with the parameters off by 1e-3 fails it."""
    flow, x = make(name, dtype, perturb)
    wrong = copy.deepcopy(flow)
    with torch.no_grad():
        for p in wrong.parameters():
            p.add_(1e-3)
    with pytest.raises(AssertionError, match="beyond their roundoff bound"):
        assert_log_det(flow, x, wrong(x)[1])
    z, _ = flow(x)
    with pytest.raises(AssertionError, match="beyond their roundoff bound"):
        assert_log_det(flow, z, wrong.inverse(z)[1], inverse=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["dequantize", "dequantize-image"])
def test_dequantize_round_trip_recovers_levels(name, dtype, perturb):
    flow, x = make(name, dtype, perturb)
    y, log_det = flow(x)
    assert ((y >= 0) & (y < 1)).all()
    assert not torch.equal(y * 256, x)  # noise was added
    x_back, inv_log_det = flow.inverse(y)
    assert torch.equal(x_back, x)
    # -D log 256 is one Python float rounded once to the dtype, here and in the layer: equal bits.
    assert torch.equal(log_det, torch.full((B,), -x[0].numel() * math.log(256), dtype=dtype))
    assert torch.equal(inv_log_det, -log_det)


def test_dequantize_uint8_and_levels(float64):
    x = torch.tensor([[0, 17, 255]], dtype=torch.uint8)
    y, log_det = Dequantize()(x)
    assert y.dtype == torch.float64
    assert torch.equal(torch.floor(y * 256), x.double())
    assert log_det.item() == -3 * math.log(256)  # the same Python float, stored in float64: exact
    y4, log_det4 = Dequantize(num_levels=4)(torch.tensor([[0.0, 3.0]]))
    assert ((y4 >= torch.tensor([0.0, 0.75])) & (y4 < torch.tensor([0.25, 1.0]))).all()
    assert log_det4.item() == -2 * math.log(4)


def test_logit_values(float64):
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    z, log_det = Logit(alpha=0.1)(x)
    p = lambda v: 0.1 + 0.8 * v  # noqa: E731
    assert_same_function(lambda m, v: m(v)[0], lambda m, v: torch.log(p(v) / (1 - p(v))), Logit(alpha=0.1), x)
    assert_same_function(lambda m, v: m(v)[1], lambda m, v: (math.log(0.8) - torch.log(p(v) * (1 - p(v)))).sum(1),
                         Logit(alpha=0.1), x, what="log-det")


# ---------------------------------------------------------------- couplings


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("cls", [AdditiveCoupling, AffineCoupling])
def test_coupling_jacobian_is_block_triangular(cls, mask_name, float64, perturb):
    torch.manual_seed(0)
    mask = MASKS[mask_name]()
    layer, x = coupling(cls, mask)
    perturb(layer).eval()
    flat = mask.flatten()
    cond, trans = torch.nonzero(flat).flatten(), torch.nonzero(~flat).flatten()
    order, n = torch.cat([cond, trans]), len(cond)
    jac = jacobian(lambda v: layer(v)[0], x)
    blocks = jac[:, order][:, :, order]  # (conditioning, transformed) ordering
    eye = lambda k: torch.eye(k).expand(B, k, k)  # noqa: E731
    # Exact: y1 copies x1 (or adds an exact 0 where the mask multiplies by 0), so autograd's entries are 1 and 0.
    assert torch.equal(blocks[:, :n, :n], eye(n))  # dy1/dx1 = I
    assert torch.equal(blocks[:, :n, n:], torch.zeros_like(blocks[:, :n, n:]))  # dy1/dx2 = 0
    # y2 depends on x1 (the net is not trivial): after perturbation the largest
    # entry of this block is between 0.16 (additive-half0) and 5.6 in every case.
    assert blocks[:, n:, :n].abs().amax() > 0.1
    lower_right = blocks[:, n:, n:]
    if cls is AdditiveCoupling:
        assert torch.equal(lower_right, eye(len(trans)))
        assert torch.equal(torch.diagonal(jac, dim1=1, dim2=2), torch.ones(B, flat.numel()))
    else:
        s, _ = layer.scale_and_shift(layer.split(x)[0])
        s_trans = s.flatten(1) if layer.by_index else s.flatten(1)[:, trans]
        assert s_trans.abs().amax() > 0.1  # measured: 0.42 to 1.2 across the masks
        # exp(s), by autograd (under vmap) and here: each within the roundoff bound of computing exp(s).
        exp_s = roundoff(lambda m, v: torch.exp(m.scale_and_shift(m.split(v)[0])[0]), layer, x)
        bound = 2 * exp_s.bound.flatten(1) if layer.by_index else 2 * exp_s.bound.flatten(1)[:, trans]
        assert torch.equal(lower_right, torch.diag_embed(torch.diagonal(lower_right, dim1=1, dim2=2)))
        assert_close_to_roundoff(torch.diagonal(lower_right, dim1=1, dim2=2), torch.exp(s_trans), bound, "exp(s)")
        select = (lambda s: s.flatten(1)) if layer.by_index else (lambda s: s.flatten(1)[:, trans])  # noqa: E731
        assert_same_function(lambda m, v: m(v)[1], lambda m, v: select(m.scale_and_shift(m.split(v)[0])[0]).sum(1),
                             layer, x, what="log-det")


class Recorder(nn.Module):
    """Wraps a net and records what it is called on."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        return self.net(x)


@pytest.mark.parametrize("cls", [AdditiveCoupling, AffineCoupling])
@pytest.mark.parametrize("mask_name", ["alternating0", "alternating1", "half0", "half1", "channel0", "channel1"])
def test_indexed_couplings_call_net_on_conditioning_part_only(cls, mask_name, perturb):
    mask = MASKS[mask_name]()
    layer, x = coupling(cls, mask)
    perturb(layer).eval()
    layer.net = Recorder(layer.net)
    split = mask if mask.dim() == 1 else mask[:, 0, 0]
    cond = torch.nonzero(split).flatten()
    z, _ = layer(x)
    layer.inverse(z)
    assert len(layer.net.inputs) == 2
    for seen in layer.net.inputs:
        assert seen.shape == (B, len(cond), *mask.shape[1:])
        assert torch.equal(seen, x[:, cond])  # a copy


@pytest.mark.parametrize("cls", [AdditiveCoupling, AffineCoupling])
def test_checkerboard_coupling_net_sees_masked_input(cls, perturb):
    mask = checkerboard_mask(2, 4, 4, parity=1)
    layer, x = coupling(cls, mask)
    perturb(layer).eval()
    layer.net = Recorder(layer.net)
    layer(x)
    (seen,) = layer.net.inputs
    assert seen.shape == x.shape
    assert torch.equal(seen, x * mask)  # multiplying by 0 and 1 is exact


def test_affine_scale_is_bounded(float64):
    # s = a * tanh(raw): even a huge raw scale cannot overflow exp(s).
    layer, x = coupling(AffineCoupling, half_mask(4))
    with torch.no_grad():
        layer.net[-1].bias.fill_(1e4)
        layer.scale.fill_(2.0)
    z, log_det = layer(x)
    assert torch.isfinite(z).all()
    assert torch.equal(log_det, torch.full((B,), 4.0))  # tanh(1e4) = 1 exactly, and 2 + 2 = 4


def test_couplings_start_as_identity():
    for cls in (AdditiveCoupling, AffineCoupling):
        for mask in (alternating_mask(4), checkerboard_mask(2, 2, 2), channel_mask(2, 2, 2)):
            layer, x = coupling(cls, mask)
            z, log_det = layer(x)
            assert torch.equal(z, x) and torch.equal(log_det, torch.zeros(B))


# ------------------------------------------------------------- permutations


def test_random_permutation_is_seeded():
    torch.manual_seed(123)
    a = RandomPermutation(10, seed=7)
    torch.manual_seed(456)  # the global random state does not matter
    b = RandomPermutation(10, seed=7)
    c = RandomPermutation(10, seed=8)
    assert torch.equal(a.perm, b.perm)
    assert not torch.equal(a.perm, c.perm)
    assert not torch.equal(a.perm, torch.arange(10))
    assert torch.equal(torch.sort(a.perm).values, torch.arange(10))


def test_random_permutation_is_saved_with_the_model():
    saved = Sequential(RandomPermutation(10, seed=0), DiagonalScaling(10))
    assert "flows.0.perm" in saved.state_dict()
    restored = Sequential(RandomPermutation(10, seed=1), DiagonalScaling(10))
    assert not torch.equal(saved[0].perm, restored[0].perm)
    restored.load_state_dict(saved.state_dict())
    x = torch.randn(B, 10)
    assert torch.equal(restored(x)[0], saved(x)[0])
    assert torch.equal(restored.inverse(saved(x)[0])[0], x)


@pytest.mark.parametrize("perm", [ReversePermutation(4), RandomPermutation(4, seed=5), Permutation(torch.tensor([1, 3, 0, 2]))])
def test_permutations_on_images_move_whole_channels(perm):
    x = torch.randn(B, 4, 3, 5)
    z, log_det = perm(x)
    for i in range(4):
        assert torch.equal(z[:, i], x[:, perm.perm[i]])  # every pixel stays where it was
    assert torch.equal(log_det, torch.zeros(B))
    assert torch.equal(perm.inverse(z)[0], x)


def test_reverse_permutation_values():
    x = torch.arange(10.0).reshape(2, 5)
    assert torch.equal(ReversePermutation(5)(x)[0], x.flip(1))


# ----------------------------------------------------- squeeze, multi-scale


def test_squeeze_index_mapping():
    x = torch.randn(2, 3, 4, 6)
    z, log_det = Squeeze()(x)
    assert z.shape == (2, 12, 2, 3)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(z[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
    assert torch.equal(log_det, torch.zeros(2))
    assert torch.equal(unsqueeze(squeeze(x)), x)


def test_multiscale_latent_shapes_and_factor_out():
    ms = MultiScale([Squeeze(), Squeeze()], ReversePermutation(4), shape=(1, 8, 8))
    assert ms.latent_shapes == [(2, 4, 4), (4, 2, 2), (4, 2, 2)]
    x = torch.randn(B, 1, 8, 8)
    z, log_det = ms(x)
    assert z.shape == (B, 64) and torch.equal(log_det, torch.zeros(B))
    pieces = ms.split_latent(z)
    assert [tuple(p.shape[1:]) for p in pieces] == ms.latent_shapes
    once = squeeze(x)
    twice = squeeze(once[:, 2:])
    assert torch.equal(pieces[0], once[:, :2])  # factored out after scale 1
    assert torch.equal(pieces[1], twice[:, :4])  # factored out after scale 2
    assert torch.equal(pieces[2], twice[:, 4:].flip(1))  # the final flow's output
    assert torch.equal(ms.join_latent(pieces), z)
    assert torch.equal(ms.inverse(z)[0], x)


# ------------------------------------------------------------ normalisation


@pytest.mark.parametrize("shape", [(4,), (3, 2, 3)])
def test_batchnorm_train_mode_uses_batch_statistics(shape, float64, perturb):
    """The layer against its formulas, each pair to within the sum of their roundoff bounds (float64)."""
    bn = perturb(BatchNormFlow(shape[0], momentum=0.1, eps=1e-4))
    with torch.no_grad():
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(2.0)
    x = 3 * torch.randn(8, *shape) + 2
    dims = [0] if len(shape) == 1 else [0, 2, 3]
    pixels = 1 if len(shape) == 1 else shape[1] * shape[2]
    per = (lambda t: t.view(1, -1)) if len(shape) == 1 else (lambda t: t.view(1, -1, 1, 1))  # noqa: E731
    mean, var = (lambda v: v.mean(dims)), (lambda v: v.var(dims, unbiased=False))  # noqa: E731

    def normalised(m, v, mu, sigma2):
        return (v - per(mu)) / torch.sqrt(per(sigma2) + 1e-4) * per(torch.exp(m.log_gamma)) + per(m.beta)

    def log_det(m, sigma2):
        return (pixels * (m.log_gamma - 0.5 * torch.log(sigma2 + 1e-4)).sum()).expand(8)

    bn.train()
    assert_same_function(lambda m, v: m(v)[0], lambda m, v: normalised(m, v, mean(v), var(v)), bn, x)
    assert_same_function(lambda m, v: m(v)[1], lambda m, v: log_det(m, var(v)), bn, x, what="log-det")
    assert_same_function(lambda m, v: (m(v), m.running_mean)[1], lambda m, v: 0.9 * 0.5 + 0.1 * mean(v), bn, x,
                         what="running mean")
    assert_same_function(lambda m, v: (m(v), m.running_var)[1], lambda m, v: 0.9 * 2.0 + 0.1 * var(v), bn, x,
                         what="running variance")
    # Eval mode uses the running averages instead (after one training step).
    bn(x)
    bn.eval()
    assert_same_function(lambda m, v: m(v)[0], lambda m, v: normalised(m, v, m.running_mean, m.running_var), bn, x)
    assert_same_function(lambda m, v: m(v)[1], lambda m, v: log_det(m, m.running_var), bn, x, what="log-det")


@pytest.mark.parametrize("shape", [(4,), (3, 2, 3)])
def test_actnorm_data_dependent_init(shape):
    an = ActNorm(shape[0])
    assert not an.initialized
    x = 3 * torch.randn(32, *shape) - 2
    dims = [0] if len(shape) == 1 else [0, 2, 3]
    # Bounds for initialising from x and then normalising it, rounding in the statistics included.
    mean = roundoff(lambda m, v: (initialize_from_data(m, v), m(v)[0].mean(dims))[1], an, x)
    spread = roundoff(lambda m, v: (initialize_from_data(m, v), m(v)[0].std(dims, unbiased=False))[1], an, x)
    assert initialize_from_data(an, x) == [""]
    z, _ = an(x)
    assert_close_to_roundoff(z.mean(dims), torch.zeros(shape[0]), mean.bound, "mean")  # exactly 0
    # exactly s / (s + 1e-6) for the spread s of x, which is within 1e-6 / s of 1
    assert_close_to_roundoff(z.std(dims, unbiased=False), spread.reference, spread.bound, "spread")
    assert ((1 - spread.reference) * x.double().std(dims, unbiased=False) <= 1e-6).all()
    assert an.initialized and "initialized" in an.state_dict()
    bias = an.bias.detach().clone()
    an(5 * x + 7)  # later batches do not re-initialise
    assert initialize_from_data(an, 5 * x + 7) == []  # nor does a second call (a resumed run)
    assert torch.equal(an.bias, bias)


def test_actnorm_does_not_initialise_outside_the_hook():
    an = ActNorm(3).train()
    x = torch.randn(4, 3)
    z, log_det = an(x)
    assert not an.initialized and torch.equal(z, x) and torch.equal(log_det, torch.zeros(4))


@pytest.mark.parametrize("prior", ["normal", "logistic"])
def test_diagonal_scaling_data_init_gives_the_prior_spread(prior):
    """After the hook, each output's spread is the prior's: 1 for the normal, pi/sqrt(3) for the logistic."""
    std = {"normal": 1.0, "logistic": math.pi / math.sqrt(3)}[prior]
    layer = DiagonalScaling(5, init_std=make_prior(prior).std)
    x = torch.randn(4096, 5) * torch.tensor([0.05, 0.1, 1.0, 10.0, 100.0]) + 3
    init = lambda m, v: initialize_from_data(Sequential(m), v)  # noqa: E731
    spread = roundoff(lambda m, v: (init(m, v), m(v)[0].std(0, unbiased=False))[1], layer, x)
    first_log_det = roundoff(lambda m, v: (init(m, v), m(v)[1][:1])[1], layer, x)
    assert initialize_from_data(Sequential(layer), x) == ["flows.0"]
    z, log_det = layer(x)
    assert_close_to_roundoff(z.std(0, unbiased=False), torch.full((5,), std, dtype=torch.float64), spread.bound, "spread")
    # log|det| is the log of the volume change: sum of log(std_out / std_in).
    expected = roundoff(lambda _, v: torch.log(std / v.std(0, unbiased=False)).sum(), nn.Identity(), x.double())
    assert_close_to_roundoff(log_det, expected.value.expand(4096), first_log_det.bound + expected.bound, "log-det")


@pytest.mark.parametrize("shape", [(4,), (4, 3, 2)])
def test_conv1x1_is_a_per_pixel_linear_map(shape, float64, perturb):
    conv = perturb(InvertibleConv1x1(4, seed=3))
    w = conv.weight()
    x = torch.randn(B, *shape)
    # slogdet of the computed W (the error of computing W propagated, plus slogdet's own) against sum(log s)
    det = roundoff(lambda m, _: torch.linalg.slogdet(m.weight())[1], conv, x)
    total = roundoff(lambda m, _: m.log_s.sum(), conv, x)
    assert_close_to_roundoff(torch.linalg.slogdet(w)[1], total.value, det.bound + total.bound, "log|det W|")
    z, _ = conv(x)
    expected = lambda m, v: (m.weight() @ v.reshape(B, 4, -1)).reshape(v.shape)  # noqa: E731
    assert_same_function(lambda m, v: m(v)[0], expected, conv, x)


def test_conv1x1_starts_as_rotation():
    """W = P L U from float32 QR and LU of a Gaussian matrix is orthogonal to within their roundoff.

    With n = 5 and u = 2**-24: Householder QR gives columns orthonormal to u * sum of n^2 roundings each
    (Higham, Accuracy and Stability, theorem 19.4), so |Q^T Q - I| <= 2 LAMBDA u n; LU's backward error
    is LAMBDA u sqrt(n) |L| |U| per entry, which moves W W^T by twice that times |W|; and rebuilding W
    from the parameters and forming W W^T round too (`roundoff`).
    """
    conv = InvertibleConv1x1(5, seed=0)
    w = conv.weight().detach()
    n, u = 5, 2.0**-24
    product = roundoff(lambda m, _: m.weight() @ m.weight().T, conv, torch.zeros(1))
    lower = torch.tril(conv.lower.detach(), -1) + torch.eye(n)
    upper = torch.triu(conv.upper.detach(), 1) + torch.diag(torch.exp(conv.log_s.detach()))
    lu = LAMBDA * u * math.sqrt(n) * (lower.abs() @ upper.abs())
    bound = 2 * LAMBDA * u * n + 2 * lu @ w.abs().T + product.bound
    assert_close_to_roundoff(w @ w.T, torch.eye(n), bound, "W W^T")


def test_diagonal_scaling_pushes_a_normal_to_the_closed_form(float64):
    """z = h e^s: the inverse sends N(0, 1) to N(0, e^{-2s}) (spread and density, not the code's formula)."""
    log_scale = torch.tensor([[-1.0, 0.0, 0.5], [1.5, -0.25, 2.0]])
    layer = DiagonalScaling((2, 3))
    with torch.no_grad():
        layer.log_scale.copy_(log_scale)
    std = torch.exp(-log_scale)
    # Sampling: the empirical spread of f^{-1}(z), z ~ N(0, 1), is e^{-s}.
    z = torch.randn(200_000, 2, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    h, _ = layer.inverse(z)
    # the sample std of 2e5 normals is within 1/sqrt(2 * 2e5) = 0.16% of sigma (1 s.d.); allow 1%
    torch.testing.assert_close(h.std(0), std, rtol=1e-2, atol=0)
    # Density: the change of variables with the forward log-det is N(0, e^{-2s}) exactly.
    x = std * torch.randn(16, 2, 3)
    assert_same_function(
        lambda m, v: (lambda z, log_det: StandardNormal().log_prob(z) + log_det)(*m(v)),
        lambda m, v: torch.distributions.Normal(torch.zeros(2, 3), torch.exp(-m.log_scale)).log_prob(v).flatten(1).sum(1),
        layer, x, what="log-density")


def test_sequential_log_det_is_the_log_det_of_the_composition(perturb):
    """Sequential's summed log-dets equal autograd's log|det| of the layers composed by hand (float64)."""
    flow, x = make("sequential", torch.float64, perturb)

    def composed(v: Tensor) -> Tensor:
        for layer in flow:
            v = layer(v)[0]
        return v

    def composed_inverse(v: Tensor) -> Tensor:
        for layer in reversed(list(flow)):
            v = layer.inverse(v)[0]
        return v

    z, log_det = flow(x)
    assert torch.equal(z, composed(x))  # the same ops in the same order
    # Tolerances: the roundoff bound of the analytic log-det plus that of autograd's slogdet (conftest).
    analytic = roundoff(lambda m, v: m(v)[1], flow, x)
    reference, reference_bound = autograd_log_det(composed, x, analytic.sites)
    assert_close_to_roundoff(log_det, reference, analytic.bound + reference_bound, "log-det")
    assert_close_to_roundoff(log_det, log_abs_det_jacobian(composed, x), analytic.bound + reference_bound, "log-det")
    # The chain rule, layer by layer: J = J_K ... J_1 with each J_k by autograd at its own input
    # (K products of 6 x 6 matrices add K * 6 roundings to every entry).
    jac, h = torch.eye(6, dtype=torch.float64).expand(B, 6, 6), x
    for layer in flow:
        jac = jacobian(lambda v, layer=layer: layer(v)[0], h) @ jac
        h = layer(h)[0]
    chain_bound = slogdet_bound(jac, analytic.sites + 6 * len(flow))
    assert_close_to_roundoff(log_det, torch.linalg.slogdet(jac)[1], analytic.bound + chain_bound, "chain rule")
    assert log_det.abs().min() > 1.0  # far from 0: a dropped or sign-flipped layer term would show
    # The inverse direction: the layers' inverses in reverse order.
    _, inv_log_det = flow.inverse(z)
    analytic = roundoff(lambda m, v: m.inverse(v)[1], flow, z)
    reference, reference_bound = autograd_log_det(composed_inverse, z, analytic.sites)
    assert_close_to_roundoff(inv_log_det, reference, analytic.bound + reference_bound, "inverse log-det")
    trajectory = flow.trajectory(x)
    assert len(trajectory) == len(flow) + 1 and torch.equal(trajectory[-1], z)
