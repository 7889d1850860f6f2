"""flowlib.book.diagnostics against closed forms: prior moments and quantiles, tempered densities, the AUROC."""

from __future__ import annotations

import math

import pytest
import torch

from flowlib.book.diagnostics import (auroc, dead_unit_fractions, encode, latent_moments, prior_quantile, qq_points,
                                      tempered_log_prob)
from flowlib.distributions import Prior, StandardLogistic, StandardNormal
from flowlib.flow_model import FlowModel
from flowlib.models import toy_model
from flowlib.scaling import DiagonalScaling

# ----------------------------------------------------------------------------- latent statistics


@pytest.mark.parametrize("prior, kurtosis", [(StandardNormal(), 0.0), (StandardLogistic(), 1.2)])
def test_moments_of_prior_draws_match_the_closed_forms(prior: Prior, kurtosis: float) -> None:
    # normal: mean 0, std 1, skewness 0, excess kurtosis 0; logistic: std pi / sqrt(3), excess kurtosis 6/5
    z = prior.sample((400_000, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    m = latent_moments(z)
    torch.testing.assert_close(m["mean"], torch.zeros(2, dtype=torch.float64), atol=0.01, rtol=0)
    torch.testing.assert_close(m["std"], torch.full((2,), prior.std, dtype=torch.float64), atol=0, rtol=0.01)
    torch.testing.assert_close(m["skewness"], torch.zeros(2, dtype=torch.float64), atol=0.03, rtol=0)
    torch.testing.assert_close(m["excess_kurtosis"], torch.full((2,), kurtosis, dtype=torch.float64),
                               atol=0.1, rtol=0)


def test_moments_need_two_codes() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        latent_moments(torch.zeros(1, 3))


def test_quantiles_invert_the_cdfs() -> None:
    p = torch.linspace(0.001, 0.999, 101, dtype=torch.float64)
    normal_cdf = 0.5 * (1 + torch.erf(prior_quantile(StandardNormal(), p) / math.sqrt(2)))
    torch.testing.assert_close(normal_cdf, p, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.sigmoid(prior_quantile(StandardLogistic(), p)), p, rtol=0, atol=1e-12)
    # a tabulated value: Phi^{-1}(0.975) = 1.959963985
    assert prior_quantile(StandardNormal(), torch.tensor([0.975], dtype=torch.float64)).item() == pytest.approx(
        1.959963985, abs=1e-9)


def test_quantiles_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        prior_quantile(StandardNormal(), torch.tensor([0.0, 0.5]))

    class Other(Prior):
        pass

    with pytest.raises(ValueError, match="no quantile function"):
        prior_quantile(Other(), torch.tensor([0.5]))


def test_qq_points_of_prior_draws_lie_on_the_diagonal() -> None:
    prior = StandardLogistic()
    z = prior.sample((200_000,), dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    q_prior, q_sample = qq_points(z, prior, num=50)
    assert q_prior.shape == q_sample.shape == (50,)
    assert bool((q_prior[1:] > q_prior[:-1]).all())
    torch.testing.assert_close(q_sample, q_prior, rtol=0, atol=0.1)  # the extreme quantile p = 0.99 is the loosest


# ----------------------------------------------------------------------------- temperature


def _scaling_model(prior: str, log_scale: list[float]) -> FlowModel:
    layer = DiagonalScaling(len(log_scale))
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor(log_scale))
        layer.initialized.fill_(True)
    return FlowModel(layer, prior, (len(log_scale),)).double()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_tempered_density_of_a_scaling_is_the_rescaled_prior(temperature: float) -> None:
    # z = e^s x: the samples e^{-s} T u have density N(x; 0, (T e^{-s})^2) (normal prior) or a logistic of
    # scale T e^{-s}: log density -x/b - 2 log(1 + e^{-x/b}) - log b, b = T e^{-s}
    s = [0.3, -0.8]
    x = torch.tensor([[0.4, -1.2], [2.0, 0.1]], dtype=torch.float64)
    b = temperature * torch.exp(-torch.tensor(s, dtype=torch.float64))
    normal = (-0.5 * (x / b) ** 2 - torch.log(b) - 0.5 * math.log(2 * math.pi)).sum(1)
    logistic = (-x / b - 2 * torch.log1p(torch.exp(-x / b)) - torch.log(b)).sum(1)
    for prior, expected in (("normal", normal), ("logistic", logistic)):
        model = _scaling_model(prior, s)
        z, log_det = model(x)
        torch.testing.assert_close(tempered_log_prob(model.prior, z, log_det, temperature), expected)


@pytest.mark.parametrize("kind", ["nice", "realnvp"])
def test_tempered_density_integrates_to_one(kind: str, perturb) -> None:
    model = perturb(toy_model(kind, num_couplings=4, hidden=16), scale=0.1).double().eval()
    axis = torch.linspace(-9, 9, 361, dtype=torch.float64)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([gx.flatten(), gy.flatten()], 1)
    step = (axis[1] - axis[0]).item()
    with torch.no_grad():
        z, log_det = model(points)
        for temperature in (0.6, 1.0):
            mass = tempered_log_prob(model.prior, z, log_det, temperature).exp().sum().item() * step ** 2
            assert mass == pytest.approx(1.0, abs=0.01), (kind, temperature, mass)
        torch.testing.assert_close(tempered_log_prob(model.prior, z, log_det, 1.0), model.log_prob(points))


def _spread_of_gap(model: FlowModel, temperature: float) -> float:
    """Standard deviation over points of log q_T(x) - log p(x) / T^2 (zero iff q_T is proportional to p^(1/T^2))."""
    x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 2
    with torch.no_grad():
        z, log_det = model(x)
        gap = tempered_log_prob(model.prior, z, log_det, temperature) - model.log_prob(x) / temperature ** 2
    return gap.std().item()


def test_temperature_is_a_power_of_p_only_for_volume_preserving_flows_with_a_normal_prior(perturb) -> None:
    volume_preserving = perturb(toy_model("nice", 4, 16, prior="normal"), scale=0.3).double()
    assert _spread_of_gap(volume_preserving, 0.7) < 1e-10
    for model in (perturb(toy_model("nice", 4, 16, prior="logistic"), scale=0.3).double(),
                  perturb(toy_model("realnvp", 4, 16), scale=0.3).double()):
        assert _spread_of_gap(model, 0.7) > 1e-2


def test_temperature_must_be_positive() -> None:
    with pytest.raises(ValueError, match="finite and > 0"):
        tempered_log_prob(StandardNormal(), torch.zeros(1, 2), torch.zeros(1), 0.0)


def test_encode_matches_the_model_in_batches() -> None:
    model = toy_model("realnvp", 2, 8).eval()
    x = torch.randn(7, 2)
    z, log_det = encode(model, x, batch_size=3)
    z_ref, log_det_ref = model(x)
    torch.testing.assert_close(z, z_ref.detach())
    torch.testing.assert_close(model.prior.log_prob(z) + log_det, model.log_prob(x).detach())
    with pytest.raises(ValueError, match="batch_size"):
        encode(model, x, batch_size=0)


# ----------------------------------------------------------------------------- AUROC


def test_auroc_equals_the_pairwise_count_with_ties() -> None:
    gen = torch.Generator().manual_seed(6)
    a = torch.randint(0, 5, (40,), generator=gen).double()
    b = torch.randint(0, 7, (30,), generator=gen).double()
    pairs = (b[:, None] > a[None, :]).double() + 0.5 * (b[:, None] == a[None, :]).double()
    assert auroc(a, b) == pytest.approx(pairs.mean().item(), abs=1e-12)
    assert auroc(a, a) == pytest.approx(0.5)
    assert auroc(a, b) + auroc(b, a) == pytest.approx(1.0)


def test_auroc_of_two_normals_is_phi_of_d_over_root_two() -> None:
    # X ~ N(0, 1), Y ~ N(d, 1): P(Y > X) = Phi(d / sqrt(2))
    gen = torch.Generator().manual_seed(7)
    d = 1.0
    inside = torch.randn(5000, generator=gen, dtype=torch.float64)
    outside = torch.randn(5000, generator=gen, dtype=torch.float64) + d
    expected = 0.5 * (1 + math.erf(d / 2))  # Phi(d / sqrt 2) = (1 + erf(d / 2)) / 2
    assert auroc(inside, outside) == pytest.approx(expected, abs=0.015)


def test_auroc_needs_scores() -> None:
    with pytest.raises(ValueError, match="at least one score"):
        auroc(torch.zeros(0), torch.ones(3))


def test_dead_unit_fractions_counts_units_off_for_every_input_and_leaves_the_modes_alone():
    from flowlib.flow import Sequential
    from flowlib.models import nice

    torch.manual_seed(0)
    model = nice(4, num_couplings=2, hidden=8, num_hidden_layers=2)
    with torch.no_grad():  # every first-layer unit on; second layer: 3 of 8 units off in the first net, none in the second
        for coupling in model.flow[:2]:
            for linear in (coupling.net[0], coupling.net[2]):
                linear.weight.zero_()
                linear.bias.fill_(1.0)
        model.flow[0].net[2].bias[:3] = -1.0
    model.train()
    model.flow[1].eval()  # mixed modes come back as they were
    assert dead_unit_fractions(model, torch.rand(50, 4)) == [0.0, pytest.approx((3 / 8 + 0) / 2)]
    assert model.training and model.flow[0].training and not model.flow[1].training
    with pytest.raises(ValueError, match="needs a flow model"):
        dead_unit_fractions(torch.nn.Linear(2, 2), torch.rand(3, 2))
    with pytest.raises(ValueError, match="whose nets are MLPs, found none"):
        dead_unit_fractions(FlowModel(Sequential(DiagonalScaling(2)), "normal", (2,)), torch.rand(3, 2))
