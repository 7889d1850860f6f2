"""FlowModel's device, dtype, input checks and temperature; Sequential slicing; toy_model; the single-scale RealNVP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowlib.book.analysis import count_macs, count_parameters
from flowlib.coupling import AffineCoupling
from flowlib.distributions import StandardLogistic, StandardNormal
from flowlib.flow import Sequential, value_checks
from flowlib.flow_model import FlowModel
from flowlib.models import nice, realnvp, realnvp_image, realnvp_image_single_scale, toy_model

from conftest import assert_close_to_roundoff, roundoff
from flowlib.multiscale import MultiScale
from flowlib.nets import ResidualConvNet
from flowlib.scaling import DiagonalScaling
from flowlib.book.warp import Warp2D

from conftest import assert_close_to_roundoff, assert_log_det_matches_autograd, assert_same_function, roundoff


# ----------------------------------------------------------------------------- device and dtype


def test_device_and_dtype_of_a_flow_without_parameters() -> None:
    model = FlowModel(Warp2D(scale=(2.0, 0.5)), "normal", (2,))
    assert list(model.parameters()) == []
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    model.double()
    assert model.dtype == torch.float64
    assert model.sample(3).dtype == torch.float64
    assert model.to("meta").device.type == "meta"


def test_dtype_follows_the_flow_it_wraps(float64) -> None:
    torch.set_default_dtype(torch.float32)  # the flow was built in float64, the default is float32 again
    flow = realnvp(2, 2, 8).flow.double()
    assert FlowModel(flow, "normal", (2,)).dtype == torch.float64


def test_anchor_is_not_in_the_state_dict() -> None:
    model = realnvp(2, 2, 8)
    fresh = realnvp(2, 2, 8)
    assert not any("anchor" in k for k in model.state_dict())
    fresh.load_state_dict(model.state_dict())  # strict: checkpoints of before still load


def test_sample_follows_dtype_and_matches_the_prior() -> None:
    # at initialisation the couplings are the identity, so samples are prior draws:
    # the same generator gives the same normal draws, in the model's dtype
    model = realnvp(2, 2, 8).double()
    x = model.sample(5, generator=torch.Generator().manual_seed(7))
    expected = torch.randn(5, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert x.dtype == torch.float64
    assert torch.equal(x, expected)  # the identity couplings subtract 0 and scale by exp(0) = 1: exact


# ----------------------------------------------------------------------------- input checks


def test_log_prob_rejects_another_float_dtype() -> None:
    model = realnvp(2, 2, 8)
    with pytest.raises(ValueError, match=r"expects input of dtype torch.float32 .* got torch.float64"):
        model.log_prob(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"dtype torch.float64 .* got torch.float32"):
        model.double().log_prob(torch.zeros(3, 2))


def test_log_prob_takes_integer_images() -> None:
    model = realnvp_image((1, 4, 4), num_scales=1, hidden_channels=4, num_blocks=1)
    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    assert model.log_prob(x).dtype == torch.float32


def test_log_prob_rejects_nan_and_inf_when_value_checks_are_on() -> None:
    model = realnvp(2, 2, 8)
    x = torch.zeros(4, 2)
    x[1, 0], x[2, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="2 NaN or Inf values"):
        model.log_prob(x)
    with value_checks(False):  # the training loop's later steps: no host sync, NaN propagates
        log_p = model.log_prob(x)
    assert torch.isnan(log_p[1]) and not torch.isfinite(log_p[2]) and torch.isfinite(log_p[[0, 3]]).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
def test_sample_rejects_bad_temperatures(bad: float) -> None:
    with pytest.raises(ValueError, match=f"temperature must be finite and >= 0, got {bad}"):
        realnvp(2, 2, 8).sample(2, temperature=bad)


def test_temperature_scales_the_latent() -> None:
    # a flow z = x e^s with known s: x = T z e^{-s}, so the sample std is T e^{-s}
    layer = DiagonalScaling(2)
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor([0.5, -1.0]))
    model = FlowModel(Sequential(layer), "normal", (2,))
    x = model.sample(200_000, temperature=0.3, generator=torch.Generator().manual_seed(0))
    expected = 0.3 * torch.exp(-layer.log_scale.detach())
    # the sample std of n normals has a standard error of sigma / sqrt(2n): allow 6 of them (as conftest's LAMBDA)
    torch.testing.assert_close(x.std(0), expected, rtol=6 / (2 * 200_000) ** 0.5, atol=0)
    assert torch.equal(model.sample(3, temperature=0.0), torch.zeros(3, 2))


# ----------------------------------------------------------------------------- Sequential slicing


def test_sequential_slice_is_a_sequential_of_the_same_layers(perturb) -> None:
    flow = perturb(realnvp(4, num_couplings=4, hidden=8).flow).double()
    tail = flow[1:]
    assert isinstance(tail, Sequential) and len(tail) == 3
    assert all(a is b for a, b in zip(tail, list(flow)[1:]))
    assert isinstance(flow[1], AffineCoupling) and flow[-1] is list(flow)[-1]
    x = torch.randn(5, 4, dtype=torch.float64)
    h, ld0 = flow[0](x)
    z, ld_tail = tail(h)
    z_all, ld_all = flow(x)
    assert torch.equal(z, z_all)  # the same ops in the same order
    assert_same_function(lambda m, v: (lambda h, ld: ld + m[1:](h)[1])(*m[0](v)), lambda m, v: m(v)[1], flow, x,
                         what="log-det")  # the same terms, added in another order
    assert_log_det_matches_autograd(tail, h, ld_tail)
    assert len(flow[::2]) == 2 and flow[::2][1] is flow[2]


# ----------------------------------------------------------------------------- multi-scale stages by name


def test_multiscale_property() -> None:
    model = realnvp_image((1, 8, 8), num_scales=3, hidden_channels=4, num_blocks=1)
    ms = model.multiscale
    assert isinstance(ms, MultiScale) and ms is model.flow[2]
    assert len(ms.levels) == 2 and len(ms.final) == 4 and ms.final_shape == (4, 2, 2)
    raw = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1, preprocess=False)
    assert raw.multiscale is raw.flow
    with pytest.raises(ValueError, match="no MultiScale"):
        realnvp(2, 2, 8).multiscale


# ----------------------------------------------------------------------------- toy_model


def test_toy_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    toy_model("realnvp", 2, 8, seed=5)
    toy_model("nice", 2, 8, seed=6)
    assert torch.equal(torch.rand(3), expected)


def test_toy_model_is_seeded() -> None:
    same = [toy_model("nice", 2, 8, seed=3) for _ in range(2)]
    assert all(torch.equal(p, q) for p, q in zip(same[0].parameters(), same[1].parameters()))
    other = toy_model("nice", 2, 8, seed=4)
    assert not all(torch.equal(p, q) for p, q in zip(same[0].parameters(), other.parameters()))


def test_toy_model_kinds_and_priors() -> None:
    n = toy_model("nice", 3, 8)
    assert type(n.prior) is StandardLogistic and isinstance(n.flow[-1], DiagonalScaling)
    assert [l.mask.tolist() for l in list(n.flow)[:3]] == [[True, False], [False, True], [True, False]]
    assert type(toy_model("realnvp", 3, 8).prior) is StandardNormal
    assert type(toy_model("nice", 3, 8, prior="normal").prior) is StandardNormal
    assert type(toy_model("realnvp", 3, 8, prior="logistic").prior) is StandardLogistic
    # the same architecture as the presets it wraps
    assert count_parameters(toy_model("nice", 4, 16, 3)) == count_parameters(nice(2, 4, 16, 3))
    with pytest.raises(ValueError, match="kind must be one of"):
        toy_model("glow")


@pytest.mark.parametrize("kind", ["maf", "spline_coupling", "spline_ar"])
def test_new_toy_kinds_are_seeded_and_start_at_the_prior(kind: str) -> None:
    """The autoregressive and spline kinds: seeded, and the identity at the start (zero output layers), so the
    untrained model's density is the prior's: exactly for MAF, to within the `roundoff` bound of the computation
    for the splines (their derivatives come out of softplus within rounding of 1, flowlib.splines). Their log-dets
    and round trips are tested layer by layer (tests/test_autoregressive.py, tests/test_splines.py)."""
    model = toy_model(kind, 4, 16, seed=1)
    again, other = toy_model(kind, 4, 16, seed=1), toy_model(kind, 4, 16, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))
    assert type(model.prior) is StandardNormal and len(model.flow) == 4
    x = 2 * torch.randn(64, 2)
    if kind == "maf":
        assert torch.equal(model.log_prob(x), model.prior.log_prob(x))
    else:
        r = roundoff(lambda m, v: m.log_prob(v), model, x)
        assert_close_to_roundoff(model.log_prob(x), model.prior.log_prob(x.double()), r.bound, "untrained log_prob")


def made_parameters(dim: int, outputs_per_dim: int, hidden: int, layers: int) -> int:
    """`MADE`'s dense weights and biases (masked entries are parameters too): ``D -> hidden ... -> n D``."""
    return mlp_parameters(dim, outputs_per_dim * dim, hidden, layers)


def test_new_toy_kinds_have_the_parameters_their_architecture_gives() -> None:
    k = 8  # bins: 3K - 1 = 23 numbers per transformed coordinate
    assert count_parameters(toy_model("maf", 4, 16)) == 4 * (made_parameters(2, 2, 16, 2) + 2)  # + the scales a
    assert count_parameters(toy_model("spline_coupling", 4, 16)) == 4 * mlp_parameters(1, 3 * k - 1, 16, 2)
    assert count_parameters(toy_model("spline_ar", 4, 16)) == 4 * made_parameters(2, 3 * k - 1, 16, 2)
    assert count_parameters(toy_model("spline_ar", 4, 16, num_bins=4)) == 4 * made_parameters(2, 11, 16, 2)


def mlp_parameters(d_in: int, d_out: int, hidden: int, layers: int) -> int:
    """Weights and biases of `MLP`: ``d_in -> hidden``, ``layers - 1`` times ``hidden -> hidden``, ``hidden -> d_out``."""
    return (d_in + 1) * hidden + (layers - 1) * (hidden + 1) * hidden + (hidden + 1) * d_out


def conv_net_parameters(c_in: int, c_out: int, hidden: int, blocks: int) -> int:
    """`ResidualConvNet`: a 3x3 conv in, ``blocks`` residual blocks (two batch norms of 2 parameters a channel,
    a 3x3 conv without bias and one with), a batch norm and a 3x3 conv out."""
    block = 2 * 2 * hidden + 9 * hidden * hidden + (9 * hidden * hidden + hidden)
    return (9 * c_in + 1) * hidden + blocks * block + 2 * hidden + (9 * hidden + 1) * c_out


def vector_coupling_stack_parameters(dim: int, couplings: int, hidden: int, layers: int, affine: bool) -> int:
    """Couplings on alternating halves (``ceil(D/2)`` and ``floor(D/2)`` conditioning in turn); an affine one has
    a shift and a log-scale per transformed coordinate, and one learned scale factor each (`AffineCoupling.scale`)."""
    total = 0
    for k in range(couplings):
        cond = (dim + 1) // 2 if k % 2 == 0 else dim // 2
        out = dim - cond
        total += mlp_parameters(cond, (2 if affine else 1) * out, hidden, layers) + (out if affine else 0)
    return total


def test_vector_presets_have_the_parameters_their_architecture_gives() -> None:
    # NICE on MNIST (Dinh et al. 2015, section 5.1): 4 additive couplings with 5 hidden layers of 1000 units on
    # 392 + 392 pixels, and a diagonal scaling of 784: 4 * 4,789,392 + 784 = 19,158,352.
    assert count_parameters(nice(784)) == vector_coupling_stack_parameters(784, 4, 1000, 5, False) + 784 == 19_158_352
    assert count_parameters(realnvp(2)) == vector_coupling_stack_parameters(2, 8, 128, 2, True)
    assert count_parameters(realnvp(5, num_couplings=3, hidden=16)) == vector_coupling_stack_parameters(5, 3, 16, 2, True)
    assert count_parameters(toy_model("nice")) == vector_coupling_stack_parameters(2, 8, 64, 2, False) + 2
    assert count_parameters(toy_model("realnvp", 4, 16)) == vector_coupling_stack_parameters(2, 4, 16, 2, True)


@pytest.mark.parametrize("c_in, c_out, hidden, blocks", [(1, 2, 8, 1), (2, 4, 16, 3), (4, 8, 64, 8)])
def test_conv_net_has_the_parameters_of_its_layers(c_in: int, c_out: int, hidden: int, blocks: int) -> None:
    net = ResidualConvNet(c_in, c_out, hidden_channels=hidden, num_blocks=blocks)
    assert count_parameters(net) == conv_net_parameters(c_in, c_out, hidden, blocks)


# ----------------------------------------------------------------------------- single-scale RealNVP


def test_single_scale_log_det_matches_autograd() -> None:
    torch.manual_seed(0)
    m = realnvp_image_single_scale((1, 4, 4), num_scales=2, hidden_channels=4, num_blocks=1).double().eval()
    body = m.flow[2:]  # after Dequantize and Logit
    for p in body.parameters():
        nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    z, log_det = body(x)
    assert_log_det_matches_autograd(body, x, log_det)
    round_trip = roundoff(lambda f, v: f.inverse(f(v)[0])[0], body, x)
    assert_close_to_roundoff(body.inverse(z)[0], x, round_trip.bound, "inverse(forward(x))")


def test_single_scale_has_the_couplings_of_multiscale_and_costs_more() -> None:
    kw = dict(hidden_channels=8, num_blocks=1)
    multi = realnvp_image((1, 8, 8), num_scales=3, **kw).eval()
    single = realnvp_image_single_scale((1, 8, 8), num_scales=3, **kw).eval()
    couplings = lambda m: [mod.mask.shape for mod in m.modules() if isinstance(mod, AffineCoupling)]
    assert len(couplings(multi)) == len(couplings(single)) == 16
    x = torch.randint(0, 256, (2, 1, 8, 8))
    cost = lambda m: count_macs(m, lambda: m.log_prob(x), batch_size=2)
    assert cost(single) > cost(multi)
    assert single.latent_shape == (16, 2, 2) and single.sample(2).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        realnvp_image_single_scale((1, 6, 6), num_scales=3)


@pytest.mark.parametrize("bad, message", [
    (torch.tensor(3.0), r"expects input of shape \(B, 2\), got \(\)"),
    (torch.zeros(3), r"expects input of shape \(B, 2\), got \(3,\)"),
    (torch.zeros(0, 2), r"at least one example, got shape \(0, 2\)"),
])
def test_log_prob_rejects_unbatched_and_empty_input(bad, message):
    with pytest.raises(ValueError, match=message):
        realnvp(2, num_couplings=2, hidden=4).log_prob(bad)


def test_sequential_rejects_a_0d_tensor():
    with pytest.raises(ValueError, match="0-d tensor"):
        realnvp(2, num_couplings=2, hidden=4).flow(torch.tensor(1.0))
