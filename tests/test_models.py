"""Tests of flowlib.models: FlowModel and the presets nice, realnvp, realnvp_image, glow.

Every preset's log-det is checked against autograd like the single layers in
test_layers.py. Presets with dequantization draw noise on every call, so those
checks fix the noise (``fixed_noise``): the Jacobian of dequantization does
not depend on it, but the logit that follows does.

``log_prob`` and ``bits_per_dim`` are checked against answers computed another
way: a numerical integral of the density, closed-form densities from
``torch.distributions``, and exact probabilities of discrete levels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from flowlib import (
    AdditiveCoupling, AffineCoupling, Dequantize, DiagonalScaling, FlowModel, InvertibleConv1x1, Logit,
    MultiScale, ResidualConvNet, Sequential, Squeeze, StandardLogistic, StandardNormal,
    alternating_mask, checkerboard_mask, channel_mask, jacobian, nice, realnvp, realnvp_image,
)
from flowlib.flow import initialize_from_data
from flowlib.models import GLOW_PERMUTATIONS, glow
from flowlib.distributions import Prior
from flowlib.metrics import bits_per_dim, unit_interval_nats_to_bits_per_dim

from conftest import assert_close_to_roundoff, assert_same_function, roundoff

B = 2
IMAGE = (1, 8, 8)


def small_image_model(preprocess: bool) -> FlowModel:
    return realnvp_image(IMAGE, num_scales=2, hidden_channels=8, num_blocks=1, preprocess=preprocess)


PRESETS: dict[str, tuple[Callable[[], FlowModel], Callable[[], Tensor], bool]] = {
    # name: (build, input, takes 8-bit data)
    "nice": (lambda: nice(6, hidden=8, num_hidden_layers=2), lambda: torch.randn(B, 6), False),
    "nice-odd-dim": (lambda: nice(5, num_couplings=3, hidden=8, num_hidden_layers=1, prior="normal"),
                     lambda: torch.randn(B, 5), False),
    "nice-dropout": (lambda: nice(6, hidden=8, num_hidden_layers=2, dropout=0.1), lambda: torch.randn(B, 6), False),
    "nice-dequantize": (lambda: nice(6, hidden=8, num_hidden_layers=2, dequantize=True),
                        lambda: torch.randint(0, 256, (B, 6)).float(), True),
    "realnvp": (lambda: realnvp(2, num_couplings=4, hidden=8), lambda: torch.randn(B, 2), False),
    "realnvp-5d": (lambda: realnvp(5, num_couplings=3, hidden=8), lambda: torch.randn(B, 5), False),
    "realnvp_image": (lambda: small_image_model(False), lambda: torch.randn(B, *IMAGE), False),
    "realnvp_image-preprocess": (lambda: small_image_model(True),
                                 lambda: torch.randint(0, 256, (B, *IMAGE)).float(), True),
    **{f"glow-{p}": (lambda p=p: glow(IMAGE, num_scales=2, steps_per_scale=2, hidden_channels=8, permutation=p,
                                      preprocess=False), lambda: torch.randn(B, *IMAGE), False)
       for p in GLOW_PERMUTATIONS},
    "glow-preprocess": (lambda: glow(IMAGE, num_scales=2, steps_per_scale=2, hidden_channels=8),
                        lambda: torch.randint(0, 256, (B, *IMAGE)).float(), True),
}
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


def make(name: str, dtype: torch.dtype, perturb) -> tuple[FlowModel, Tensor, bool]:
    """Preset ``name`` in ``dtype``, parameters perturbed, in eval mode, with an input."""
    build, data, discrete = PRESETS[name]
    torch.manual_seed(0)
    model, x = build().to(dtype), data().to(dtype)
    perturb(model, scale=0.1)
    return model.eval(), x, discrete


@pytest.fixture
def fixed_noise(monkeypatch):
    """Make dequantization noise a fixed function of position (the same under vmap)."""
    noise: dict[tuple[int, ...], Tensor] = {}

    def rand_like(x: Tensor, **kwargs) -> Tensor:
        shape = tuple(x.shape[1:])
        if shape not in noise:
            noise[shape] = torch.rand(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        return noise[shape].to(x.dtype).expand_as(x)

    monkeypatch.setattr(torch, "rand_like", rand_like)


def continuous_part(model: FlowModel) -> Sequential | torch.nn.Module:
    """The model's flow without the dequantization (whose inverse rounds, so has no Jacobian)."""
    flow = model.flow
    if isinstance(flow, Sequential) and isinstance(flow[0], Dequantize):
        return Sequential(*list(flow)[1:])
    return flow


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_forward_log_det_matches_autograd(name, dtype, perturb, assert_log_det, fixed_noise):
    model, x, _ = make(name, dtype, perturb)
    z, log_det = model(x)
    assert z.dtype == dtype and log_det.dtype == dtype
    assert_log_det(model.flow, x, log_det)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_inverse_log_det_matches_autograd(name, dtype, perturb, assert_log_det):
    model, x, _ = make(name, dtype, perturb)
    z, _ = model(x)
    flow = continuous_part(model)
    _, log_det = flow.inverse(z)
    assert_log_det(flow, z, log_det, inverse=True)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_round_trip_and_opposite_log_dets(name, perturb, float64):
    model, x, discrete = make(name, torch.float64, perturb)
    z, log_det = model(x)
    assert z.shape == (B, *model.latent_shape)
    x_back, inv_log_det = model.inverse(z)
    # Tolerances: `roundoff`'s bound for the same round trip (u = 2**-53, amplified through the inverse).
    # With dequantization the noise differs between calls: the log-dets are checked on roundoff's own pass,
    # which its bound describes.
    if discrete:
        assert torch.equal(x_back, x)  # the integer levels come back exactly
    else:
        values = roundoff(lambda m, v: m.inverse(m(v)[0])[0], model, x)
        assert_close_to_roundoff(x_back, x, values.bound, "inverse(forward(x))")
    dets = roundoff(lambda m, v: (lambda z, ld: m.inverse(z)[1] + ld)(*m(v)), model, x)
    assert_close_to_roundoff(dets.value, torch.zeros(B), dets.bound, "log-det sum")
    if not discrete:
        assert_close_to_roundoff(inv_log_det + log_det, torch.zeros(B), dets.bound, "log-det sum")


# ------------------------------------------- log_prob against independent answers
#
# None of these recompute ``prior.log_prob(z) + log_det``: each compares
# ``log_prob`` / ``bits_per_dim`` with something computed another way (a
# numerical integral, a closed-form density from torch.distributions, an exact
# discrete probability), so a wrong sign or a missing log-det term fails them.


def _grid(half_width: float, n: int) -> tuple[Tensor, float]:
    """The ``n x n`` points of a regular grid on ``[-half_width, half_width]^2`` and the cell area."""
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1), float(g[1] - g[0]) ** 2


@pytest.mark.parametrize(
    ("build", "half_width"),
    [
        pytest.param(lambda: realnvp(2, num_couplings=4, hidden=8), 20.0, id="realnvp"),
        # the logistic prior has exponential tails: a wider box
        pytest.param(lambda: nice(2, hidden=8, num_hidden_layers=2), 40.0, id="nice-logistic"),
    ],
)
def test_density_integrates_to_one(build, half_width, perturb):
    """exp(log_prob) of a perturbed 2-D model integrates to 1 (Riemann sum on a 1001 x 1001 grid)."""
    torch.manual_seed(0)
    model = perturb(build(), scale=0.3).double().eval()
    points, cell = _grid(half_width, 1001)
    with torch.no_grad():
        log_prob = torch.cat([model.log_prob(chunk) for chunk in points.split(250_000)])
        _, log_det = model(points[::97])
    # Not vacuous: the log-det is far from 0 (a missing or sign-flipped term
    # would scale the integral by exp(+-log_det)). Here it spans about
    # [-2.5, 3.2] (realnvp) and is -0.45 everywhere (nice, the scaling only).
    assert log_det.abs().max() > 0.4
    density = log_prob.exp().reshape(1001, 1001)
    # ... and the box holds the mass: the density on its border is at most 8e-8.
    border = torch.cat([density[0], density[-1], density[:, 0], density[:, -1]])
    assert border.max() < 1e-6
    # Tolerance, a posteriori: the sum on every other node (step 2h) differs from the sum at step h by
    # about 3x the latter's error (an O(h^2) rule: the nets are piecewise linear), so |I_h - I_2h| bounds
    # |I_h - 1| with a margin of 3. The mass beyond the box is below exp(-30) (the prior's tails, at
    # least 20 latent units out), negligible next to it.
    total, coarse = float(density.sum() * cell), float(density[::2, ::2].sum() * 4 * cell)
    assert abs(total - 1) <= abs(total - coarse)


def _fixed_log_scale(shape: int, values: list[float]) -> DiagonalScaling:
    layer = DiagonalScaling(shape)
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor(values))
    return layer


def test_log_prob_of_a_scaling_is_the_closed_form_normal(float64):
    """z = x e^s with z ~ N(0, 1) means x ~ N(0, e^{-2s}): compare with torch.distributions.Normal."""
    s = torch.tensor([-1.0, 0.5, 2.0])
    model = FlowModel(Sequential(_fixed_log_scale(3, s.tolist())), "normal", (3,))
    x = 3 * torch.randn(64, 3)
    # Tolerances: the sum of the two computations' `roundoff` bounds (float64).
    normal = lambda v: torch.distributions.Normal(torch.zeros(3), torch.exp(-s)).log_prob(v).sum(1)  # noqa: E731
    assert_same_function(lambda m, v: m.log_prob(v), lambda m, v: normal(v), model, x, what="log_prob")
    # bits/dim of the same closed form (the model's D is 3).
    assert_same_function(lambda m, v: m.bits_per_dim(v), lambda m, v: -normal(v) / (3 * math.log(2)), model, x,
                         what="bits/dim")


def test_log_prob_of_a_scaling_is_the_closed_form_logistic(float64):
    """z = x e^s with a standard logistic z means x is logistic with scale e^{-s}."""
    s = torch.tensor([-1.0, 0.5, 2.0])
    model = FlowModel(Sequential(_fixed_log_scale(3, s.tolist())), "logistic", (3,))
    D = torch.distributions
    # Logistic(0, b) as torch.distributions builds it: logit of a uniform, times b.
    logistic = D.TransformedDistribution(
        D.Uniform(torch.zeros(3), torch.ones(3)),
        [D.SigmoidTransform().inv, D.AffineTransform(torch.zeros(3), torch.exp(-s))],
    )
    x = torch.exp(-s) * torch.randn(64, 3)  # a few scales wide, where the sigmoid does not saturate
    assert_same_function(lambda m, v: m.log_prob(v), lambda m, v: logistic.log_prob(v).sum(1), model, x,
                         what="log_prob")


def test_log_prob_of_a_linear_flow_is_the_closed_form_gaussian(float64, perturb):
    """z = A x with z ~ N(0, I) means x ~ N(0, (A^T A)^{-1}); A is read off by autograd."""
    flow = perturb(Sequential(InvertibleConv1x1(4, seed=2), _fixed_log_scale(4, [0.7, -0.3, 0.0, 1.2])))
    model = FlowModel(flow, "normal", (4,)).eval()
    x = torch.randn(32, 4)
    A = jacobian(lambda v: flow(v)[0], x[:1])[0]  # the flow is linear: one Jacobian for all x
    assert abs(float(torch.linalg.slogdet(A.detach())[1])) > 0.5  # a log-det term that matters
    # The same A from the flow's images of the unit vectors, so that `roundoff` follows its rounding too.
    assert torch.equal(A, flow(torch.eye(4))[0].T)

    def gaussian(m, v):
        a = m.flow(torch.eye(4))[0].T
        return torch.distributions.MultivariateNormal(torch.zeros(4), precision_matrix=a.T @ a).log_prob(v)

    assert_same_function(lambda m, v: m.log_prob(v), gaussian, model, x, what="log_prob")


class UnitUniform(Prior):
    """The uniform density on [0, 1)^D (a test prior: log-density 0 inside, -inf outside)."""

    def log_density(self, z: Tensor) -> Tensor:
        inside = (z >= 0) & (z < 1)
        return torch.where(inside, 0.0, -math.inf).to(z.dtype)

    def standard_sample(self, shape, *, device=None, dtype=torch.float32, generator=None) -> Tensor:
        return torch.rand(shape, device=device, dtype=dtype, generator=generator)


@pytest.mark.parametrize(("num_levels", "bits"), [(256, 8.0), (16, 4.0), (2, 1.0)])
def test_uniform_over_the_levels_has_log2_levels_bits_per_dim(num_levels, bits):
    """Dequantization into a uniform density puts mass 1/L on each of L levels: log2(L) bits/dim exactly."""
    model = FlowModel(Sequential(Dequantize(num_levels)), UnitUniform(), (5,)).double()
    x = torch.randint(0, num_levels, (16, 5)).double()
    exact = torch.full((16,), bits, dtype=torch.float64)
    assert_close_to_roundoff(model.bits_per_dim(x), exact, roundoff(lambda m, v: m.bits_per_dim(v), model, x).bound)
    # The same number from the log-likelihood and from metrics' unit-interval conversion
    # (the continuous density on [0, 1)^D is 1, so log p(y) = 0 nats).
    torch.testing.assert_close(bits_per_dim(model.log_prob(x), 5), model.bits_per_dim(x), rtol=0, atol=0)
    # log2 of a power of two is exact in any libm within 1 ulp, and 0 / (D log 2) = 0
    assert unit_interval_nats_to_bits_per_dim(0.0, 5, num_levels) == bits


def test_dequantized_density_averages_to_the_exact_discrete_probability(float64, monkeypatch):
    """Averaged over the dequantization noise, exp(log_prob) is the probability of the level.

    Model: Dequantize -> Logit(alpha) -> z = y' e^s with z ~ N(0, 1), on one
    8-bit pixel. Level k covers y in [k/256, (k+1)/256), so
    P(k) = Phi(e^s logit(a + (1 - 2a)(k+1)/256)) - Phi(e^s logit(a + (1 - 2a)k/256)),
    with Phi the normal CDF. Since log_prob includes the -log 256 of
    dequantization, E_u[exp(log_prob(k))] = P(k); the expectation is taken by
    the midpoint rule over u (the noise is patched to a grid).
    """
    alpha, s = 0.05, -0.4
    model = FlowModel(Sequential(Dequantize(), Logit(alpha), _fixed_log_scale(1, [s])), "normal", (1,))
    levels = torch.tensor([0.0, 1.0, 17.0, 100.0, 128.0, 254.0, 255.0])

    def midpoint(grid: int) -> Tensor:
        u = (torch.arange(grid) + 0.5) / grid
        monkeypatch.setattr(torch, "rand_like", lambda x, **kwargs: u.repeat(len(levels)).reshape(x.shape))
        return model.log_prob(levels.repeat_interleave(grid).unsqueeze(1)).reshape(len(levels), grid)

    log_prob = midpoint(400)
    mass, coarse = log_prob.exp().mean(1), midpoint(200).exp().mean(1)

    def cdf(y: Tensor) -> Tensor:
        p = alpha + (1 - 2 * alpha) * y
        return torch.special.ndtr(math.exp(s) * torch.log(p / (1 - p)))

    exact = cdf((levels + 1) / 256) - cdf(levels / 256)
    # Tolerance, a posteriori: the midpoint rule's error is O(1/n^2) (a smooth integrand), so the rule
    # with 200 nodes is 4x as far off as with 400 and their difference is 3x the latter's error.
    assert_close_to_roundoff(mass, exact, (mass - coarse).abs(), "midpoint rule")
    # Jensen: the bound E_u[log p] is below log E_u[p] = log P(k), by at most (max_u log p - min_u log p)^2 / 8
    # (Hoeffding's lemma: log E e^Y <= E Y + (b - a)^2 / 8 for Y in [a, b]; here on the 400 nodes, 4e-12
    # to 3.6e-5 nats).
    gap = mass.log() - log_prob.mean(1)
    spread = log_prob.amax(1) - log_prob.amin(1)
    assert (gap >= 0).all() and (gap <= spread**2 / 8).all()


@pytest.mark.parametrize("name", list(PRESETS))
def test_log_prob_gradients_are_finite(name, perturb):
    model, x, _ = make(name, torch.float32, perturb)
    model.train()
    (-model.log_prob(x).mean()).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # After perturbation every parameter of every preset reaches the loss, so
    # every gradient is nonzero (a layer cut out of the graph would show here).
    assert [name for name, g in grads.items() if not g.abs().sum() > 0] == []


@pytest.mark.parametrize("name", list(PRESETS))
def test_sample_shapes_and_temperature(name, perturb):
    model, x, discrete = make(name, torch.float32, perturb)
    samples, z = model.sample(3, return_latent=True)
    assert samples.shape == (3, *x.shape[1:]) and samples.dtype == torch.float32
    assert z.shape == (3, *model.latent_shape)
    if discrete:
        assert torch.equal(samples, samples.floor()) and samples.min() >= 0 and samples.max() <= 255
    # Temperature 0 is the inverse of the zero latent: the same computation, bit for bit.
    cold = model.sample(3, temperature=0.0)
    assert torch.equal(cold, model.inverse(torch.zeros(3, *model.latent_shape))[0])
    # Temperature scales the latent draw (by 0.5, a power of two: exactly).
    _, z1 = model.sample(4, generator=torch.Generator().manual_seed(3), return_latent=True)
    _, z_half = model.sample(4, temperature=0.5, generator=torch.Generator().manual_seed(3), return_latent=True)
    assert torch.equal(z_half, 0.5 * z1)
    with pytest.raises(ValueError, match="n must be at least 1, got 0"):
        model.sample(0)


@pytest.mark.parametrize("name", ["nice", "nice-dequantize", "realnvp", "realnvp_image-preprocess"])
def test_state_dict_round_trip(name, perturb, tmp_path):
    build, data, _ = PRESETS[name]
    torch.manual_seed(0)
    saved = perturb(build(), scale=0.1)
    x = data()
    saved(x)  # a training-mode pass moves the BatchNorm running averages of conv nets
    torch.save(saved.state_dict(), tmp_path / "model.pt")
    torch.manual_seed(1)
    loaded = build()
    loaded.load_state_dict(torch.load(tmp_path / "model.pt"))
    saved.eval(), loaded.eval()
    torch.manual_seed(2)
    expected = saved.log_prob(x)
    torch.manual_seed(2)
    got = loaded.log_prob(x)
    assert torch.equal(got, expected)
    torch.manual_seed(1)
    fresh = build().eval()
    torch.manual_seed(2)
    assert not torch.allclose(fresh.log_prob(x), expected)


# ---------------------------------------------------------------- structure


def test_nice_mnist_structure():
    model = nice(784)
    assert sum(p.numel() for p in model.parameters()) == 19158352
    assert isinstance(model.prior, StandardLogistic)
    layers = list(model.flow)
    assert [type(f) for f in layers] == [AdditiveCoupling] * 4 + [DiagonalScaling]
    for k, layer in enumerate(layers[:4]):
        # Odd and even coordinates swap roles at every layer.
        assert torch.equal(layer.mask, torch.arange(784) % 2 == k % 2)
        linears = [m for m in layer.net if isinstance(m, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == (
            [(392, 1000)] + [(1000, 1000)] * 4 + [(1000, 392)]
        )
        assert sum(isinstance(m, torch.nn.ReLU) for m in layer.net) == 5
    x = torch.randn(B, 784)
    z, log_det = model(x)
    assert z.shape == (B, 784) and torch.equal(log_det, torch.zeros(B))


def test_nice_dropout_acts_in_training_only(perturb):
    torch.manual_seed(0)
    model = nice(6, hidden=32, num_hidden_layers=2, dropout=0.5)
    perturb(model, scale=0.5)
    x = torch.randn(64, 6)
    z1, z2 = model(x)[0], model(x)[0]  # training mode: each call drops other units
    assert not torch.equal(z1, z2)
    model.eval()
    z = model(x)[0]
    assert torch.equal(model(x)[0], z)
    # evaluation mode is the plain network: the same weights without the dropout layers
    for layer in model.flow:
        if isinstance(layer, AdditiveCoupling):
            layer.net = torch.nn.Sequential(*[m for m in layer.net if not isinstance(m, torch.nn.Dropout)])
    assert torch.equal(model(x)[0], z)


def test_zero_hidden_biases_keep_the_deep_units_of_nices_nets_responsive_at_initialisation():
    """Deep in a PyTorch-initialised ReLU net a unit's pre-activation is mostly its bias, the same for every input.

    On 1000 digit-like inputs (20% ink), a unit *responds* when it is on for some and off for others. In the
    fifth hidden layer of NICE's 5 x 1000 nets fewer than 40% respond with PyTorch's default biases, more
    than 85% with zero biases (measured 27% and 29%, 95% and 97%, on seeds 0 and 1)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1000, 392, generator=g) < 0.2) * torch.rand(1000, 392, generator=g)

    def responsive(net: torch.nn.Module) -> list[float]:
        fractions, a = [], x
        with torch.no_grad():
            for module in net:
                a = module(a)
                if isinstance(module, torch.nn.ReLU):
                    on = a > 0
                    fractions.append((on.any(0) & ~on.all(0)).float().mean().item())
        return fractions

    for seed in range(2):
        torch.manual_seed(seed)
        default = responsive(nice(784).flow[0].net)
        torch.manual_seed(seed)
        zero = responsive(nice(784, zero_hidden_bias=True).flow[0].net)
        assert default[0] > 0.99 and zero[0] > 0.99  # the first layer sees the data directly either way
        assert default[4] < 0.4 < 0.85 < zero[4]
    biases = [m.bias for m in nice(784, zero_hidden_bias=True).flow[0].net if isinstance(m, torch.nn.Linear)]
    assert all(torch.equal(b, torch.zeros_like(b)) for b in biases)  # the output layer starts at zero too


def test_nice_is_the_papers_architecture():
    # NICE's MNIST model (Dinh et al. 2015, section 5.1): four additive couplings on alternating halves, each
    # coupling function a ReLU MLP with five hidden layers of 1000 units, a diagonal scaling, a logistic prior.
    model = nice(784)
    assert [type(f) for f in model.flow] == [AdditiveCoupling] * 4 + [DiagonalScaling]
    for k, coupling in enumerate(model.flow[:4]):
        linears = [m for m in coupling.net if isinstance(m, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(392, 1000)] + [(1000, 1000)] * 4 + [(1000, 392)]
        assert torch.equal(coupling.mask, alternating_mask(784, parity=k % 2))
    assert isinstance(model.prior, StandardLogistic)
    assert isinstance(nice(10, hidden=4, prior="normal").prior, StandardNormal)


def test_realnvp_structure():
    model = realnvp(2)
    assert isinstance(model.prior, StandardNormal)
    assert [type(f) for f in model.flow] == [AffineCoupling] * 8
    masks = [layer.mask for layer in model.flow]
    assert all(torch.equal(a, ~b) for a, b in zip(masks, masks[1:]))


def _mask_kind(layer: AffineCoupling) -> str:
    c, h, w = layer.mask.shape
    kinds = {f"checkerboard{p}": checkerboard_mask(c, h, w, p) for p in (0, 1)}
    if c >= 2:
        kinds.update({f"channel{p}": channel_mask(c, h, w, p) for p in (0, 1)})
    return next((kind for kind, mask in kinds.items() if torch.equal(layer.mask, mask)), "other")


def test_realnvp_image_mnist_structure():
    model = realnvp_image((1, 28, 28))
    assert isinstance(model.prior, StandardNormal)
    dequantize, logit, body = model.flow
    assert isinstance(dequantize, Dequantize) and isinstance(logit, Logit) and isinstance(body, MultiScale)
    assert body.latent_shapes == [(2, 14, 14), (4, 7, 7), (4, 7, 7)]
    assert model.latent_shape == (784,)
    assert len(body.levels) == 2
    for level, (c, h, w) in zip(body.levels, [(1, 28, 28), (2, 14, 14)]):
        layers = list(level)
        assert [type(f) for f in layers] == [AffineCoupling] * 3 + [Squeeze] + [AffineCoupling] * 3
        assert [_mask_kind(f) for f in layers[:3]] == ["checkerboard0", "checkerboard1", "checkerboard0"]
        assert all(f.mask.shape == (c, h, w) for f in layers[:3])
        assert [_mask_kind(f) for f in layers[4:]] == ["channel0", "channel1", "channel0"]
        assert all(f.mask.shape == (4 * c, h // 2, w // 2) for f in layers[4:])
        assert all(isinstance(f.net, ResidualConvNet) for f in layers if isinstance(f, AffineCoupling))
    final = list(body.final)
    assert [_mask_kind(f) for f in final] == ["checkerboard0", "checkerboard1"] * 2
    assert all(f.mask.shape == (4, 7, 7) and isinstance(f.net, ResidualConvNet) for f in final)


def test_realnvp_image_log_prob_on_uint8():
    model = realnvp_image((1, 28, 28), hidden_channels=8, num_blocks=1).eval()
    x = torch.randint(0, 256, (B, 1, 28, 28), dtype=torch.uint8)
    log_prob = model.log_prob(x)
    assert log_prob.shape == (B,) and log_prob.dtype == torch.float32 and torch.isfinite(log_prob).all()
    # The dequantization term -D log 256 is counted in the log-det (both sides draw the same noise).
    torch.manual_seed(3)
    z, log_det = model(x)
    torch.manual_seed(3)
    _, rest = Sequential(*list(model.flow)[1:])(Dequantize()(x)[0])
    torch.manual_seed(3)
    whole = roundoff(lambda m, v: m(v)[1], model, x)
    torch.manual_seed(3)
    parts = roundoff(lambda m, v: Sequential(*list(m.flow)[1:])(Dequantize()(v)[0])[1] - 784 * math.log(256), model, x)
    assert_close_to_roundoff(log_det, rest - 784 * math.log(256), whole.bound + parts.bound, "log-det")


def test_realnvp_image_without_preprocess_takes_real_images():
    model = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=8, num_blocks=1, preprocess=False)
    assert isinstance(model.flow, MultiScale)
    assert model.log_prob(torch.randn(B, 1, 8, 8)).shape == (B,)


def test_flow_model_with_custom_flow():
    flow = Sequential(AdditiveCoupling(channel_mask(2, 2, 2), ResidualConvNet(1, 1, hidden_channels=4, num_blocks=1)))
    model = FlowModel(flow, "logistic", (2, 2, 2))
    assert model.num_dims == 8 and model.latent_shape == (2, 2, 2)
    x = torch.randn(B, 2, 2, 2)
    assert torch.equal(model.log_prob(x), StandardLogistic().log_prob(x))  # identity at init: z = x, log-det 0


# ------------------------------------------------------------------------- glow


def test_glow_mnist_structure():
    """Two scales on 28x28: squeeze to 4x14x14, factor out 2 channels, squeeze to 8x7x7 (Glow, figure 2)."""
    model = glow((1, 28, 28), num_scales=2, steps_per_scale=3, hidden_channels=8)
    body = model.multiscale
    assert body.latent_shapes == [(2, 14, 14), (8, 7, 7)]
    assert sum(math.prod(s) for s in body.latent_shapes) == 784
    step = body.levels[0][1]
    assert [type(m).__name__ for m in step] == ["ActNorm", "InvertibleConv1x1", "AffineCoupling"]
    assert len(body.levels[0]) == 1 + 3 and len(body.final) == 1 + 3


def test_glow_actnorm_starts_from_the_data():
    """After `initialize_from_data` every ActNorm's output has zero mean, unit variance per channel."""
    from flowlib.normalization import ActNorm

    model = glow(IMAGE, num_scales=2, steps_per_scale=2, hidden_channels=8)
    x = torch.randint(0, 256, (64, *IMAGE)).float()
    names = initialize_from_data(model, x)
    assert len(names) == 4 and all(name.endswith(".0") for name in names)
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out[0]))
             for m in model.modules() if isinstance(m, ActNorm)]
    with torch.no_grad():
        torch.manual_seed(0)
        model.train()
        initialize_from_data(model, x)  # already initialised: a no-op
    for h in hooks:
        h.remove()
    assert outputs == []
    with torch.no_grad():
        hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out[0]))
                 for m in model.modules() if isinstance(m, ActNorm)]
        model(x)
    # the first ActNorm sees the same data distribution it was initialised on, up to a new noise draw
    first = outputs[0]
    assert first.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (first.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_glow_rejects_bad_arguments():
    with pytest.raises(ValueError, match="permutation must be one of"):
        glow(IMAGE, permutation="random")
    with pytest.raises(ValueError, match="steps_per_scale"):
        glow(IMAGE, steps_per_scale=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        glow((1, 6, 6), num_scales=2)
