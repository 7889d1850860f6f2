"""Tests of every flowlib layer: log-dets against autograd, round trips, structure.

Every layer is checked the same way (parametrised over the cases in `CASES`):
its forward log-det and its inverse's log-det agree with ``torch.func``
Jacobians in float64 (tight) and float32 (loose), ``inverse(forward(x))``
returns ``x``, and the inverse's log-det is minus the forward's at matching
points. Parameters are perturbed first: the conditioner nets start at zero,
which would make every coupling the identity and the checks vacuous.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("name", INVERTIBLE_CASES)
def test_round_trip_and_opposite_log_dets(name, perturb):
    flow, x = make(name, torch.float64, perturb)
    z, log_det = flow(x)
    x_back, inv_log_det = flow.inverse(z)
    # In float64 every case comes back to within 1.1e-13 (values) and 1.9e-14
    # (log-dets), the worst being the multi-scale case: 1e-12 leaves ~10x.
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(inv_log_det, -log_det, rtol=0, atol=1e-12)
    # ... and starting from the latent side.
    w = torch.randn_like(z)
    x_w, inv_w = flow.inverse(w)
    w_back, fwd_w = flow(x_w)
    torch.testing.assert_close(w_back, w, rtol=0, atol=1e-12)
    torch.testing.assert_close(fwd_w, -inv_w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", INVERTIBLE_CASES)
def test_round_trip_float32(name, perturb):
    flow, x = make(name, torch.float32, perturb)
    z, log_det = flow(x)
    x_back, inv_log_det = flow.inverse(z)
    # Measured in float32: the multi-scale case (two conv-net couplings deep)
    # comes back to within 6.8e-5, every other case within 1.5e-6; the
    # log-dets agree to 8.6e-6 (multi-scale) and 5e-7 (others).
    atol = 1e-4 if name == "multiscale" else 1e-5
    torch.testing.assert_close(x_back, x, rtol=0, atol=atol)
    torch.testing.assert_close(inv_log_det, -log_det, rtol=0, atol=5e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["dequantize", "dequantize-image"])
def test_dequantize_round_trip_recovers_levels(name, dtype, perturb):
    flow, x = make(name, dtype, perturb)
    y, log_det = flow(x)
    assert ((y >= 0) & (y < 1)).all()
    assert not torch.equal(y * 256, x)  # noise was added
    x_back, inv_log_det = flow.inverse(y)
    assert torch.equal(x_back, x)
    torch.testing.assert_close(log_det, torch.full((B,), -x[0].numel() * math.log(256), dtype=dtype))
    torch.testing.assert_close(inv_log_det, -log_det, rtol=0, atol=0)


def test_dequantize_uint8_and_levels(float64):
    x = torch.tensor([[0, 17, 255]], dtype=torch.uint8)
    y, log_det = Dequantize()(x)
    assert y.dtype == torch.float64
    assert torch.equal(torch.floor(y * 256), x.double())
    assert log_det.item() == pytest.approx(-3 * math.log(256))
    y4, log_det4 = Dequantize(num_levels=4)(torch.tensor([[0.0, 3.0]]))
    assert ((y4 >= torch.tensor([0.0, 0.75])) & (y4 < torch.tensor([0.25, 1.0]))).all()
    assert log_det4.item() == pytest.approx(-2 * math.log(4))


def test_logit_values(float64):
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    z, log_det = Logit(alpha=0.1)(x)
    p = 0.1 + 0.8 * x
    torch.testing.assert_close(z, torch.log(p / (1 - p)))
    torch.testing.assert_close(log_det, (math.log(0.8) - torch.log(p * (1 - p))).sum(1))


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
    torch.testing.assert_close(blocks[:, :n, :n], eye(n), rtol=0, atol=1e-12)  # dy1/dx1 = I
    assert torch.equal(blocks[:, :n, n:], torch.zeros_like(blocks[:, :n, n:]))  # dy1/dx2 = 0
    # y2 depends on x1 (the net is not trivial): after perturbation the largest
    # entry of this block is between 0.16 (additive-half0) and 5.6 in every case.
    assert blocks[:, n:, :n].abs().amax() > 0.1
    lower_right = blocks[:, n:, n:]
    if cls is AdditiveCoupling:
        torch.testing.assert_close(lower_right, eye(len(trans)), rtol=0, atol=1e-12)
        assert torch.equal(torch.diagonal(jac, dim1=1, dim2=2), torch.ones(B, flat.numel()))
    else:
        s, _ = layer.scale_and_shift(layer.split(x)[0])
        s_trans = s.flatten(1) if layer.by_index else s.flatten(1)[:, trans]
        assert s_trans.abs().amax() > 0.1  # measured: 0.42 to 1.2 across the masks
        torch.testing.assert_close(lower_right, torch.diag_embed(torch.exp(s_trans)), rtol=0, atol=1e-12)
        torch.testing.assert_close(layer(x)[1], s_trans.sum(1))


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
        torch.testing.assert_close(seen, x[:, cond])


@pytest.mark.parametrize("cls", [AdditiveCoupling, AffineCoupling])
def test_checkerboard_coupling_net_sees_masked_input(cls, perturb):
    mask = checkerboard_mask(2, 4, 4, parity=1)
    layer, x = coupling(cls, mask)
    perturb(layer).eval()
    layer.net = Recorder(layer.net)
    layer(x)
    (seen,) = layer.net.inputs
    assert seen.shape == x.shape
    torch.testing.assert_close(seen, x * mask)


def test_affine_scale_is_bounded(float64):
    # s = a * tanh(raw): even a huge raw scale cannot overflow exp(s).
    layer, x = coupling(AffineCoupling, half_mask(4))
    with torch.no_grad():
        layer.net[-1].bias.fill_(1e4)
        layer.scale.fill_(2.0)
    z, log_det = layer(x)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(log_det, torch.full((B,), 4.0))


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
    bn = perturb(BatchNormFlow(shape[0], momentum=0.1, eps=1e-4))
    with torch.no_grad():
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(2.0)
    x = 3 * torch.randn(8, *shape) + 2
    dims = [0] if len(shape) == 1 else [0, 2, 3]
    pixels = 1 if len(shape) == 1 else shape[1] * shape[2]
    view = (1, -1) if len(shape) == 1 else (1, -1, 1, 1)
    mean, var = x.mean(dims), x.var(dims, unbiased=False)
    z, log_det = bn.train()(x)
    expected = (x - mean.view(view)) / torch.sqrt(var.view(view) + 1e-4)
    expected = expected * torch.exp(bn.log_gamma).view(view) + bn.beta.view(view)
    torch.testing.assert_close(z, expected)
    formula = pixels * (bn.log_gamma - 0.5 * torch.log(var + 1e-4)).sum()
    torch.testing.assert_close(log_det, formula.expand(8))
    torch.testing.assert_close(bn.running_mean, 0.9 * 0.5 + 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 * 2.0 + 0.1 * var)
    # Eval mode uses the running averages instead.
    z_eval, log_det_eval = bn.eval()(x)
    std = torch.sqrt(bn.running_var + 1e-4)
    expected_eval = (x - bn.running_mean.view(view)) / std.view(view) * torch.exp(bn.log_gamma).view(view)
    torch.testing.assert_close(z_eval, expected_eval + bn.beta.view(view))
    torch.testing.assert_close(log_det_eval, (pixels * (bn.log_gamma - torch.log(std)).sum()).expand(8))


@pytest.mark.parametrize("shape", [(4,), (3, 2, 3)])
def test_actnorm_data_dependent_init(shape):
    an = ActNorm(shape[0])
    assert not an.initialized
    x = 3 * torch.randn(32, *shape) - 2
    assert initialize_from_data(an, x) == [""]
    z, _ = an(x)
    dims = [0] if len(shape) == 1 else [0, 2, 3]
    torch.testing.assert_close(z.mean(dims), torch.zeros(shape[0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std(dims, unbiased=False), torch.ones(shape[0]), rtol=0, atol=1e-4)
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
    assert initialize_from_data(Sequential(layer), x) == ["flows.0"]
    z, log_det = layer(x)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.full((5,), std), rtol=1e-4, atol=0)
    # log|det| is the log of the volume change: sum of log(std_out / std_in).
    expected = torch.log(std / x.std(0, unbiased=False)).sum()
    torch.testing.assert_close(log_det, expected.expand(4096), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(4,), (4, 3, 2)])
def test_conv1x1_is_a_per_pixel_linear_map(shape, float64, perturb):
    conv = perturb(InvertibleConv1x1(4, seed=3))
    w = conv.weight()
    assert torch.linalg.slogdet(w)[1].item() == pytest.approx(conv.log_s.sum().item(), abs=1e-10)
    x = torch.randn(B, *shape)
    z, _ = conv(x)
    expected = torch.einsum("ij,bj...->bi...", w, x)
    torch.testing.assert_close(z, expected)


def test_conv1x1_starts_as_rotation():
    w = InvertibleConv1x1(5, seed=0).weight()
    # float32 QR then LU reproduce an orthogonal matrix to 3e-7
    torch.testing.assert_close(w @ w.T, torch.eye(5), rtol=0, atol=2e-6)


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
    z, log_det = layer(x)
    expected = torch.distributions.Normal(torch.zeros(2, 3), std).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(StandardNormal().log_prob(z) + log_det, expected, rtol=0, atol=1e-12)


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
    torch.testing.assert_close(z, composed(x), rtol=0, atol=0)
    torch.testing.assert_close(log_det, log_abs_det_jacobian(composed, x), rtol=1e-10, atol=1e-10)
    # The chain rule, layer by layer: J = J_K ... J_1 with each J_k by autograd at its own input.
    jac, h = torch.eye(6, dtype=torch.float64).expand(B, 6, 6), x
    for layer in flow:
        jac = jacobian(lambda v, layer=layer: layer(v)[0], h) @ jac
        h = layer(h)[0]
    torch.testing.assert_close(log_det, torch.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-10)
    assert log_det.abs().min() > 1.0  # far from 0: a dropped or sign-flipped layer term would show
    # The inverse direction: the layers' inverses in reverse order.
    _, inv_log_det = flow.inverse(z)
    torch.testing.assert_close(inv_log_det, log_abs_det_jacobian(composed_inverse, z), rtol=1e-10, atol=1e-10)
    trajectory = flow.trajectory(x)
    assert len(trajectory) == len(flow) + 1 and torch.equal(trajectory[-1], z)
