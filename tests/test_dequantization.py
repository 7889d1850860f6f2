"""Variational dequantization and importance-weighted evaluation, against autograd and closed forms.

* the conditional flow's log-det against autograd Jacobians (float64);
* :math:`q(u \\mid x)` is a density on the unit cube (a numerical integral);
* ``inverse(forward(x))`` returns the levels exactly, with opposite log-dets;
* the importance-weighted bound of `flowlib.training.evaluate.evaluate` against the exact
  probability of a level under a model whose CDF is known in closed form;
* the options reach the image models, the config, the trainer and the CLI,
  and bad arguments raise ValueErrors;
* in float32, every level's noisy value stays inside its cell, and the layer's log-dets match float64.

The conditioner nets start at zero (:math:`h = \\varepsilon`), so the
checks perturb their weights first.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from flowlib import Dequantize, Flow, FlowModel, Sequential, VariationalDequantize
from flowlib.training import cli
from flowlib.training import config as Cfg
from flowlib.training import loop as L
from flowlib.training import train as T
from flowlib.datasets.mnist import data_root, mnist_dir
from flowlib.training.evaluate import evaluate, log_likelihood_sum
from flowlib.training.fit import fit
from flowlib.flow import initialize_from_data
from flowlib.models import glow, realnvp_image

HAVE_MNIST = (mnist_dir(data_root()) / "train-images-idx3-ubyte.gz").exists()


def random_layer(perturb, channels: int = 1, scale: float = 0.3, seed: int = 1, **kw) -> VariationalDequantize:
    """A float64 layer in eval mode with perturbed weights and batch-norm statistics (not the identity)."""
    layer = VariationalDequantize(channels, **{"hidden_channels": 4, **kw}).double()
    perturb(layer, scale=scale, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return layer.eval()


def log_normal(eps: Tensor) -> Tensor:
    return torch.distributions.Normal(0.0, 1.0).log_prob(eps).flatten(1).sum(1)


# ----------------------------------------------------------------------------- (a) log-det against autograd


def test_conditional_flow_log_det_matches_autograd(perturb):
    """log|det dh/deps| of the couplings, and the layer's log-det, against torch.autograd Jacobians."""
    layer = random_layer(perturb, channels=2, num_couplings=3)
    x = torch.randint(0, 256, (3, 2, 3, 3)).double()
    torch.manual_seed(7)
    y, log_det = layer(x)
    torch.manual_seed(7)
    eps = torch.randn_like(x)  # the noise forward drew
    D = x[0].numel()
    for b in range(x.shape[0]):
        xb, eb = x[b:b + 1], eps[b:b + 1]
        jac_h = torch.autograd.functional.jacobian(lambda e: layer.noise_to_logit(e, xb)[0], eb).reshape(D, D)
        jac_y = torch.autograd.functional.jacobian(
            lambda e: (xb + torch.sigmoid(layer.noise_to_logit(e, xb)[0])) / 256, eb).reshape(D, D)
        _, ld_h = layer.noise_to_logit(eb, xb)
        torch.testing.assert_close(ld_h, torch.linalg.slogdet(jac_h)[1].reshape(1), rtol=1e-10, atol=1e-10)
        # Not vacuous: the perturbed couplings change volume.
        assert ld_h.abs().item() > 0.1
        # log q(u|x) = log N(eps) - log|det du/deps|, and forward's log_det = -D log 256 - log q
        #            = log|det dy/deps| - log N(eps): the change of variables from eps to y, by autograd.
        expected = torch.linalg.slogdet(jac_y)[1] - log_normal(eb)
        torch.testing.assert_close(log_det[b:b + 1], expected.reshape(1), rtol=1e-10, atol=1e-8)
        torch.testing.assert_close(y[b:b + 1], (xb + torch.sigmoid(layer.noise_to_logit(eb, xb)[0])) / 256)


# ----------------------------------------------------------------------------- (b) q(u|x) is a density


@pytest.mark.parametrize("levels", [(0, 255), (100, 7)])
def test_q_integrates_to_one_over_the_unit_square(levels, perturb):
    """The integral of exp(log q(u|x)) over [0, 1]^2 is 1 for a 1 x 1 x 2 image.

    Quadrature in u with nodes u_i = sigmoid(h_i) on a regular grid of
    h in [-12, 12] (step 0.05) and weights sigmoid'(h_i) * 0.05^2: the nodes
    crowd towards the edges of the square, where q changes fastest. The
    same sum on every other node (step 0.1) differs from it by at most
    3e-6 here, and the integrand on the border of the box is below 1e-10
    per node, so the tolerance of 1e-5 leaves room for both.
    """
    layer = random_layer(perturb, channels=1, scale=0.15, num_couplings=4, num_blocks=1)
    x = torch.tensor(levels, dtype=torch.float64).reshape(1, 1, 1, 2)
    step = 0.05
    g = torch.arange(-12.0, 12.0 + step / 2, step, dtype=torch.float64)
    hh = torch.cartesian_prod(g, g).reshape(-1, 1, 1, 2)
    u = torch.sigmoid(hh)
    weight = (torch.sigmoid(hh) * torch.sigmoid(-hh)).flatten(1).prod(1) * step**2
    with torch.no_grad():
        log_q = torch.cat([layer.log_q(chunk, x.expand(len(chunk), -1, -1, -1)) for chunk in u.split(200_000)])
        _, log_det_g = layer.noise_to_logit(torch.randn(64, 1, 1, 2, dtype=torch.float64), x.expand(64, -1, -1, -1))
    density = (log_q.exp() * weight).reshape(len(g), len(g))
    total, coarse = float(density.sum()), float(4 * density[::2, ::2].sum())
    # Not vacuous: the couplings change volume (a missing log-det would scale the integral by its exp).
    assert log_det_g.abs().max() > 0.3
    # ... and the box holds the mass: the integrand on its border is negligible.
    assert max(density[0].max(), density[-1].max(), density[:, 0].max(), density[:, -1].max()) < 1e-9
    assert abs(coarse - total) < 1e-5
    assert total == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------- (c) round trip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_round_trip_returns_the_levels_and_opposite_log_dets(dtype, mode, perturb):
    layer = random_layer(perturb, channels=2, scale=0.15).to(dtype).train(mode == "train")
    x = torch.randint(0, 256, (4, 2, 3, 4), dtype=torch.uint8)
    x[0, 0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)
    y, log_det = layer(x)
    assert y.dtype == dtype and ((y >= 0) & (y < 1)).all()
    x_back, inv_log_det = layer.inverse(y)
    assert torch.equal(x_back, x.to(dtype))
    # float64: they cancel to ~1e-13. float32: u = 256 y - x is recovered to ~2^-16 at the top levels,
    # which moves log q by up to ~1e-3 per image here.
    tol = dict(rtol=0, atol=__import__("conftest").roundoff(lambda m, v: (lambda y, ld: m.inverse(y)[1] + ld)(*m(v)), layer, x, noise=[layer.logit_to_noise(torch.logit(256 * y - x_back), x_back)[0]]).bound.max().item())  # conftest.roundoff's bound at this forward's noise, recovered from y
    torch.testing.assert_close(inv_log_det, -log_det, **tol)


def test_zero_initialised_q_is_the_logit_normal():
    """Before training h = eps, so q(u|x) = N(logit u) / (u (1 - u)) per dimension, whatever x."""
    layer = VariationalDequantize(1).double()
    u = torch.rand(5, 1, 2, 2, dtype=torch.float64)
    x = torch.randint(0, 256, (5, 1, 2, 2)).double()
    logit = torch.log(u / (1 - u))
    expected = (log_normal(logit.flatten(1)) - torch.log(u * (1 - u)).flatten(1).sum(1))
    torch.testing.assert_close(layer.log_q(u, x), expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- (d) importance weighting


class Affine(Flow):
    """z = a y + b on every dimension: log|det| = D log a."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.a * y + self.b, y.new_full((y.shape[0],), y[0].numel() * math.log(self.a))

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return (z - self.b) / self.a, z.new_full((z.shape[0],), -z[0].numel() * math.log(self.a))


# z = 512 y - 4 = 2 (x + u) - 4 with a standard logistic z: level x of a pixel covers z in [2x - 4, 2x - 2],
# and the density changes by a factor of up to e^2 across a cell, so the plain bound is visibly loose.
A, SHIFT = 512.0, -4.0


def exact_log_prob(x: Tensor) -> Tensor:
    """log P(x) = sum_d log(sigma(z_hi) - sigma(z_lo)) over the cell of each pixel (logistic CDF)."""
    lo, hi = A * x / 256 + SHIFT, A * (x + 1) / 256 + SHIFT
    return torch.log(torch.sigmoid(hi) - torch.sigmoid(lo)).flatten(1).sum(1)


def pixel_log_weight(level: int, n: int = 20_000) -> Tensor:
    """log w(u) = log p_model(level + u) of one pixel under uniform noise, at the n midpoints u of [0, 1).

    p_model(x + u) = p_Z(z) dz/du with z = 2 (x + u) - 4: the logistic density sigma(z) sigma(-z) times 2.
    """
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    z = A * (level + u) / 256 + SHIFT
    return torch.log(torch.sigmoid(z) * torch.sigmoid(-z) * A / 256)


def uniform_noise_moments(x: Tensor) -> dict[str, float]:
    """Exact (midpoint-rule) moments of the uniform-noise weights, averaged over the images of ``x``.

    ``elbo``: E_u[log w], the expected plain bound; ``var_log``: Var[log w]; ``relvar``: Var[w] / E[w]^2.
    The pixels' noise is independent, so log w is a sum over pixels and w a product.
    """
    per_level = {}
    for level in x.unique().long().tolist():
        lw = pixel_log_weight(level)
        per_level[level] = (float(lw.mean()), float(lw.var(unbiased=False)), float(lw.exp().mean()),
                            float((2 * lw).exp().mean()))
    images = [[per_level[v] for v in image] for image in x.flatten(1).long().tolist()]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return dict(
        elbo=mean([sum(p[0] for p in im) for im in images]),
        var_log=mean([sum(p[1] for p in im) for im in images]),
        relvar=mean([math.prod(p[3] / p[2] ** 2 for p in im) - 1 for im in images]),
    )


def iw_data() -> Tensor:
    levels = torch.cartesian_prod(torch.arange(4.0), torch.arange(4.0))  # every pair of levels 0..3
    return levels.repeat(16, 1).reshape(-1, 1, 1, 2).double()  # 256 images of 1 x 2 pixels


def test_importance_weighting_approaches_the_exact_discrete_log_likelihood(float64):
    """Uniform dequantization: evaluate(samples=K) rises with K towards the closed-form log P(x)."""
    model = FlowModel(Sequential(Dequantize(), Affine(A, SHIFT)), "logistic", (1, 1, 2))
    x = iw_data()
    exact = float(exact_log_prob(x).mean())
    est = {k: -evaluate(model, x, batch_size=len(x), samples=k).nats for k in (1, 16, 1024)}
    m = uniform_noise_moments(x)
    # Standard errors of the mean over N images: sqrt(Var[log w] / N) for K = 1, and by the delta method
    # sqrt(relvar / (K N)) for K samples, whose bias is about -relvar / (2K).
    se = {1: math.sqrt(m["var_log"] / len(x)), **{k: math.sqrt(m["relvar"] / k / len(x)) for k in (16, 1024)}}
    # The plain bound is below log P(x) by far more than the noise of these estimates ...
    assert exact - m["elbo"] > 3 * se[1] and exact - m["elbo"] > 30 * se[1024]
    # ... and K = 1 estimates it, within 4 standard errors.
    assert abs(est[1] - m["elbo"]) < 4 * se[1]
    # K = 16 and K = 1024 close the gap, in order within noise (each set of noise extends the previous one).
    assert est[1] < est[16] < est[1024] + 4 * se[16] and est[16] < exact + 4 * se[16]
    # K = 1024 lands within 4 standard errors (plus its bias) of the exact value.
    assert abs(est[1024] - exact) < 4 * se[1024] + m["relvar"] / 2048


def test_importance_weighting_with_variational_dequantization(float64, perturb):
    """A (perturbed, untrained) variational q: the plain bound is below log P(x) and K samples tighten it."""
    layer = random_layer(perturb, channels=1, scale=0.2, num_couplings=2, num_blocks=1)
    model = FlowModel(Sequential(layer, Affine(A, SHIFT)), "logistic", (1, 1, 2)).double()
    x = iw_data()
    exact = float(exact_log_prob(x).mean())
    est = {k: -evaluate(model, x, batch_size=len(x), samples=k).nats for k in (1, 16, 256)}
    assert est[1] < est[16] < est[256] < exact + 0.01
    assert exact - est[256] < 0.5 * (exact - est[1])


def test_training_q_tightens_the_plain_bound(float64):
    """Fitting q alone (the model is fixed) lifts the K = 1 bound above the uniform one, towards log P(x).

    The best q(u|x) is proportional to p_model(x + u), where the bound is log P(x) itself; on levels 0
    and 1 the logistic density rises across each cell, so the uniform noise is far from it.
    """
    torch.manual_seed(0)
    layer = VariationalDequantize(1, hidden_channels=8, num_couplings=2, num_blocks=1)
    model = FlowModel(Sequential(layer, Affine(A, SHIFT)), "logistic", (1, 1, 2))
    x = torch.cartesian_prod(torch.arange(2.0), torch.arange(2.0)).repeat(64, 1).reshape(-1, 1, 1, 2)
    exact, uniform = float(exact_log_prob(x).mean()), uniform_noise_moments(x)["elbo"]
    fit(model, x, steps=150, batch_size=64, lr=1e-2, unit="nats")
    after = -evaluate(model, x, batch_size=len(x)).nats
    assert after > uniform + 0.05 and exact - after < 0.5 * (exact - uniform)
    assert after < exact + 0.02


def test_logistic_base_starts_as_uniform_dequantization(float64):
    """With a logistic base the zero-initialised q is U(0, 1): the same y and log-det as `Dequantize`.

    sigmoid(logit(v)) = v, so with the same uniform draws v the two layers agree (to rounding), and
    log q(u|x) = log sigma'(eps) - log sigma'(eps) = 0 for every u.
    """
    layer = VariationalDequantize(2, base="logistic")
    x = torch.randint(0, 256, (3, 2, 4, 4))
    torch.manual_seed(3)
    y, log_det = layer(x)
    torch.manual_seed(3)
    y_uniform, log_det_uniform = Dequantize()(x)
    torch.testing.assert_close(y, y_uniform.double(), rtol=0, atol=1e-12)
    torch.testing.assert_close(log_det, log_det_uniform.double(), rtol=0, atol=1e-9)
    u = torch.rand(3, 2, 4, 4)
    torch.testing.assert_close(layer.log_q(u, x), torch.zeros(3), rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- models, config, trainer, CLI


def test_image_models_take_the_dequantization_option():
    torch.manual_seed(0)
    uniform = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1)
    torch.manual_seed(0)
    variational = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1,
                                dequantization="variational")
    assert isinstance(uniform.flow[0], Dequantize) and isinstance(variational.flow[0], VariationalDequantize)
    # The dequantizer is built after the body: the same seed gives the same body weights.
    a, b = uniform.multiscale.state_dict(), variational.multiscale.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    assert torch.isfinite(variational.log_prob(x)).all()


def test_glow_variational_in_float64_under_data_init():
    model = glow((1, 8, 8), num_scales=2, steps_per_scale=1, hidden_channels=4,
                 dequantization="variational").double()
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    assert len(initialize_from_data(model, x)) > 0
    log_p = model.log_prob(x)
    assert log_p.dtype == torch.float64 and torch.isfinite(log_p).all()
    sample = model.sample(2)
    assert sample.shape == (2, 1, 8, 8) and ((sample >= 0) & (sample <= 255)).all()


def test_eval_samples_config_and_cli(monkeypatch):
    config = Cfg.make_config("realnvp", "quick", eval_samples=16)
    assert config.eval_samples == 16 and Path(config.out_dir).name.endswith("-is16")
    assert Cfg.make_config("realnvp", "quick").eval_samples == 1
    assert Cfg.config_differences(Cfg.make_config("realnvp", "quick"), config) == ["eval_samples"]
    # An older config without the field reads as eval_samples=1.
    old = Cfg.config_dict(Cfg.make_config("realnvp", "quick"))
    del old["eval_samples"]
    assert Cfg.config_from_dict(old).eval_samples == 1
    seen = {}

    class Done:
        interrupted = False

        def summary(self) -> str:
            return "done"

    def fake_train(config, resume=False, progress=True):
        seen["config"] = config
        return Done()

    monkeypatch.setattr(cli, "train", fake_train)
    assert cli.main(["realnvp", "--preset", "quick", "--eval-samples", "8"]) == 0
    assert seen["config"].eval_samples == 8


@pytest.mark.skipif(not HAVE_MNIST, reason="MNIST not available: set FLOWLIB_DATA")
def test_trainer_uses_eval_samples_for_the_test_set_only(tmp_path, monkeypatch):
    calls = []
    real = L.log_likelihood_sum

    def recording(*args, **kwargs):
        calls.append(kwargs.get("samples", 1))
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "log_likelihood_sum", recording)
    config = Cfg.make_config(
        "realnvp", "quick", out_dir=str(tmp_path / "run"), train_size=64, eval_size=16, epochs=1, batch_size=32,
        eval_batch_size=16, precision="fp32", eval_samples=3,
        model_kwargs=dict(hidden_channels=4, num_blocks=1, num_scales=2, dequantization="variational"))
    result = T.train(config, progress=False)
    assert calls == [1, 3]  # one validation chunk, then one test chunk
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["config"]["eval_samples"] == 3 and saved["test_bpd"] == result.test_bpd
    assert "3 importance samples" in result.summary()


# ----------------------------------------------------------------------------- (e) bad arguments


@pytest.mark.parametrize("call, message", [
    (lambda: evaluate(FlowModel(Sequential(Dequantize()), "logistic", (2,)), torch.zeros(4, 2), samples=0),
     r"samples must be an integer >= 1, got 0"),
    (lambda: log_likelihood_sum(FlowModel(Sequential(Dequantize()), "logistic", (2,)), torch.zeros(4, 2),
                                samples=2.5), r"samples must be an integer >= 1, got 2.5"),
    (lambda: realnvp_image((1, 8, 8), num_scales=2, dequantization="learned"),
     r"dequantization must be one of \('uniform', 'variational'\), got 'learned'"),
    (lambda: glow((1, 8, 8), num_scales=2, dequantization="Variational"), r"dequantization must be one of"),
    (lambda: realnvp_image((1, 8, 8), num_scales=2, preprocess=False, dequantization="variational"),
     r"needs preprocess=True"),
    (lambda: VariationalDequantize(1)(torch.full((2, 1, 2, 2), 0.5)), r"non-integer values"),
    (lambda: VariationalDequantize(1)(torch.full((2, 1, 2, 2), 256.0)), r"8-bit data, integers in \[0, 255\]"),
    (lambda: VariationalDequantize(3)(torch.zeros(2, 1, 2, 2)), r"expects input of shape \(B, 3, \*, \*\)"),
    (lambda: VariationalDequantize(1)(torch.zeros(2, 1, 1, 1)), r"at least 2 pixels"),
    (lambda: VariationalDequantize(1)(torch.zeros(0, 1, 2, 2)), r"at least one example"),
    (lambda: VariationalDequantize(0), r"channels must be at least 1, got 0"),
    (lambda: VariationalDequantize(1, num_couplings=0), r"num_couplings must be at least 1, got 0"),
    (lambda: VariationalDequantize(1, hidden_channels=0), r"hidden_channels must be at least 1, got 0"),
    (lambda: VariationalDequantize(1, num_blocks=-1), r"num_blocks must be at least 0, got -1"),
    (lambda: VariationalDequantize(1, base="uniform"), r"base must be one of \('normal', 'logistic'\), got 'uniform'"),
    (lambda: Cfg.make_config("realnvp", "quick", eval_samples=0), r"eval_samples must be a positive integer"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- (f) float32: cells and edges

LEVELS = torch.arange(256.0).reshape(1, 1, 16, 16)  # every level of 8-bit data, once


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer_kind", ["uniform", "variational"])
def test_every_level_stays_inside_its_cell_with_noise_next_to_1(dtype, layer_kind, monkeypatch):
    """y = (x + u) / 256 in [x, x + 1) / 256 for all 256 levels x, with u at the largest float below 1 (or 1).

    Uniform: u = 1 - eps/2, the largest value torch.rand gives. Variational (untrained, logistic base, so
    h = eps): h = logit(1 - eps/2), whose sigmoid is within a rounding of 1, and h = 40, whose sigmoid is
    exactly 1.0 in both dtypes. Unclamped, x + u rounds up to x + 1 in every level x >= 1 (the spacing
    of floats at x + 1 is at least 2 eps > 2 (1 - u)), so y would reach the next level and, at x = 255, 1.0.
    """
    x = LEVELS.to(dtype)
    top = 1 - torch.finfo(dtype).eps / 2
    if layer_kind == "uniform":
        layer = Dequantize().to(dtype)
        monkeypatch.setattr(torch, "rand_like", lambda like: torch.full_like(like, top))
        noises = [None]
    else:
        layer = VariationalDequantize(1, hidden_channels=2, num_couplings=2, base="logistic").to(dtype).eval()
        noises = [math.log(top) - math.log1p(-top), 40.0]
    for h in noises:
        if h is not None:
            monkeypatch.setattr(layer, "_sample_base", lambda like, h=h: torch.full_like(like, h))
        with torch.no_grad():
            y, _ = layer(x)
            x_back, _ = layer.inverse(y)
        assert y.dtype == dtype
        assert ((y >= x / 256) & (y < (x + 1) / 256) & (y < 1)).all()
        assert torch.equal(torch.floor(y * 256), x) and torch.equal(x_back, x)


def test_logistic_base_draws_are_symmetric(monkeypatch):
    """The extreme uniform draws, 0 and the largest below 1, give opposite logistic noise (+-16.6 in float32).

    Before, 0 was moved to the smallest normal float, 1.2e-38, and gave eps = -87.3 against +16.6 at the top.
    """
    layer = VariationalDequantize(1, base="logistic")
    step = torch.finfo(torch.float32).eps / 2
    monkeypatch.setattr(torch, "rand_like", lambda like: torch.tensor([0.0, 1 - step]))
    eps = layer._sample_base(torch.zeros(2))
    assert eps[0].item() == -eps[1].item() == pytest.approx(math.log(step / (1 - step)), rel=1e-6)


def test_glow_dequantizer_in_float32_matches_float64(perturb, monkeypatch):
    """The variational dequantizer of a Glow, float32 against float64, on all-0, all-255 and random images.

    The same noise eps goes into a float32 layer and its float64 copy; four pixels of each image get
    h = 18, -18, 12, -12 (u = sigmoid(h) at or beyond what float32 resolves in a cell: sigmoid(18) is 1.0
    in float32, and at x = 255 the cell's spacing is 2^-16). Checked:

    * forward: y inside each cell, and the log-det equals float64's;
    * inverse of that y: the levels come back, and the log-det equals the float64 value of
      D log 256 + log q(u | x) at the u that the float32 y carries, clamped into [r, 1 - r] with r the
      spacing of float32 just below (x + 1) / 256, times 256 (the layer's documented convention).

    Before, the forward's y of h = 18 rounded up to the next level (the inverse gave back x + 1), and
    the inverse evaluated log q at u = 1.2e-38 (h = -87) where the y sat on its cell's edge: 45 to 147
    nats off per image.

    Tolerance: each log-det sums terms of size at most S = sum_d (|eps_d| + |h_d| + 2 log 4 + sum_k |a_k|)
    (|log sigma'(t)| <= |t| + log 4; each coupling's |s| <= |a_k|); a float32 term carries a relative error
    of about 2^-24 per rounding along its path, which has 4 couplings of about 4 roundings each (the
    net's output, tanh or exp, the affine update), so 16 * 2^-24 * S (observed: below 2^-24 * S).
    """
    torch.manual_seed(0)
    model = glow((1, 8, 8), num_scales=2, steps_per_scale=1, hidden_channels=4, dequantization="variational")
    layer = model.flow[0]
    perturb(layer, scale=0.05, seed=1)
    layer.eval()
    layer64 = copy.deepcopy(layer).double()
    g = torch.Generator().manual_seed(0)
    images = {"all-0": torch.zeros(4, 1, 8, 8), "all-255": torch.full((4, 1, 8, 8), 255.0),
              "random": torch.randint(0, 256, (4, 1, 8, 8), generator=g).float()}
    a = sum(c.scale.detach().double().abs().max().item() for c in layer64.couplings)
    for name, x in images.items():
        x = x.double()
        v = torch.rand(x.shape, generator=g, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
        h = torch.log(v) - torch.log1p(-v)
        h[:, 0, 0, :4] = torch.tensor([18.0, -18.0, 12.0, -12.0])
        with torch.no_grad():
            eps, _ = layer64.logit_to_noise(h, x)  # the noise that gives these h
            out = {}
            for lay in (layer, layer64):
                monkeypatch.setattr(lay, "_sample_base", lambda like, e=eps: e.to(like.dtype))
                y, log_det = lay(x.to(lay.dtype))
                x_back, inv_log_det = lay.inverse(y)
                out[lay.dtype] = y, log_det.double(), x_back, inv_log_det.double()
            y32, log_det32, x_back32, inv_log_det32 = out[torch.float32]
            tol = 16 * 2.0**-24 * (eps.abs() + h.abs() + 2 * math.log(4) + a).flatten(1).sum(1)
            assert ((y32 >= x / 256) & (y32 < (x + 1) / 256)).all(), name
            assert torch.equal(x_back32.double(), x), name
            assert ((log_det32 - out[torch.float64][1]).abs() <= tol).all(), name
            top = ((x + 1) / 256).float()
            r = ((top - torch.nextafter(top, torch.zeros_like(top))) * 256).double()
            u = torch.minimum(torch.maximum(y32.double() * 256 - x, r), 1 - r)
            reference = 64 * math.log(256) + layer64.log_q(u, x)
            assert ((inv_log_det32 - reference).abs() <= tol).all(), name
