"""Tests of flowlib.models: FlowModel and the presets nice, realnvp, realnvp_image.

Every preset's log-det is checked against autograd like the single layers in
test_layers.py. Presets with dequantization draw noise on every call, so those
checks fix the noise (``fixed_noise``): the Jacobian of dequantization does
not depend on it, but the logit that follows does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from flowlib import (
    AdditiveCoupling, AffineCoupling, Dequantize, DiagonalScaling, FlowModel, Logit,
    MultiScale, ResidualConvNet, Sequential, Squeeze, StandardLogistic, StandardNormal,
    checkerboard_mask, channel_mask, nice, realnvp, realnvp_image,
)
from flowlib.metrics import bits_per_dim

B = 2
IMAGE = (1, 8, 8)


def small_image_model(preprocess: bool) -> FlowModel:
    return realnvp_image(IMAGE, num_scales=2, hidden_channels=8, num_blocks=1, preprocess=preprocess)


PRESETS: dict[str, tuple[Callable[[], FlowModel], Callable[[], Tensor], bool]] = {
    # name: (build, input, takes 8-bit data)
    "nice": (lambda: nice(6, hidden=8, num_hidden_layers=2), lambda: torch.randn(B, 6), False),
    "nice-odd-dim": (lambda: nice(5, num_couplings=3, hidden=8, num_hidden_layers=1, prior="normal"),
                     lambda: torch.randn(B, 5), False),
    "nice-dequantize": (lambda: nice(6, hidden=8, num_hidden_layers=2, dequantize=True),
                        lambda: torch.randint(0, 256, (B, 6)).float(), True),
    "realnvp": (lambda: realnvp(2, num_couplings=4, hidden=8), lambda: torch.randn(B, 2), False),
    "realnvp-5d": (lambda: realnvp(5, num_couplings=3, hidden=8), lambda: torch.randn(B, 5), False),
    "realnvp_image": (lambda: small_image_model(False), lambda: torch.randn(B, *IMAGE), False),
    "realnvp_image-preprocess": (lambda: small_image_model(True),
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
    if discrete:
        assert torch.equal(x_back, x)  # the integer levels come back exactly
    else:
        torch.testing.assert_close(x_back, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(inv_log_det, -log_det, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", list(PRESETS))
def test_log_prob_is_prior_plus_log_det(name, perturb):
    model, x, _ = make(name, torch.float32, perturb)
    torch.manual_seed(5)
    log_prob = model.log_prob(x)
    torch.manual_seed(5)
    z, log_det = model(x)
    assert log_prob.shape == (B,) and torch.isfinite(log_prob).all()
    torch.testing.assert_close(log_prob, model.prior.log_prob(z) + log_det)


@pytest.mark.parametrize("name", list(PRESETS))
def test_bits_per_dim_formula(name, perturb):
    model, x, _ = make(name, torch.float32, perturb)
    torch.manual_seed(5)
    log_prob = model.log_prob(x)
    torch.manual_seed(5)
    bpd = model.bits_per_dim(x)
    torch.testing.assert_close(bpd, -log_prob / (x[0].numel() * math.log(2)))
    torch.testing.assert_close(bpd, bits_per_dim(log_prob, x[0].numel()))


@pytest.mark.parametrize("name", list(PRESETS))
def test_log_prob_gradients_are_finite(name, perturb):
    model, x, _ = make(name, torch.float32, perturb)
    model.train()
    (-model.log_prob(x).mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", list(PRESETS))
def test_sample_shapes_and_temperature(name, perturb):
    model, x, discrete = make(name, torch.float32, perturb)
    samples, z = model.sample(3, return_latent=True)
    assert samples.shape == (3, *x.shape[1:]) and samples.dtype == torch.float32
    assert z.shape == (3, *model.latent_shape)
    if discrete:
        assert torch.equal(samples, samples.floor()) and samples.min() >= 0 and samples.max() <= 255
    # Temperature 0 is the inverse of the zero latent.
    cold = model.sample(3, temperature=0.0)
    torch.testing.assert_close(cold, model.inverse(torch.zeros(3, *model.latent_shape))[0])
    # Temperature scales the latent draw.
    _, z1 = model.sample(4, generator=torch.Generator().manual_seed(3), return_latent=True)
    _, z_half = model.sample(4, temperature=0.5, generator=torch.Generator().manual_seed(3), return_latent=True)
    torch.testing.assert_close(z_half, 0.5 * z1)
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


def test_nice_defaults_from_signature():
    model = nice(10, hidden=4)
    assert [type(f) for f in model.flow] == [AdditiveCoupling] * 4 + [DiagonalScaling]
    assert sum(isinstance(m, torch.nn.Linear) for m in model.flow[0].net) == 6
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
    # The dequantization term -D log 256 is counted in the log-det.
    torch.manual_seed(3)
    z, log_det = model(x)
    torch.manual_seed(3)
    _, rest = Sequential(*list(model.flow)[1:])(Dequantize()(x)[0])
    torch.testing.assert_close(log_det, rest - 784 * math.log(256))


def test_realnvp_image_without_preprocess_takes_real_images():
    model = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=8, num_blocks=1, preprocess=False)
    assert isinstance(model.flow, MultiScale)
    assert model.log_prob(torch.randn(B, 1, 8, 8)).shape == (B,)


def test_flow_model_with_custom_flow():
    flow = Sequential(AdditiveCoupling(channel_mask(2, 2, 2), ResidualConvNet(1, 1, hidden_channels=4, num_blocks=1)))
    model = FlowModel(flow, "logistic", (2, 2, 2))
    assert model.num_dims == 8 and model.latent_shape == (2, 2, 2)
    x = torch.randn(B, 2, 2, 2)
    torch.testing.assert_close(model.log_prob(x), StandardLogistic().log_prob(x))  # identity at init
