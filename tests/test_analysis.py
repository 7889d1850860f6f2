"""Tests of flowlib.analysis: dependency patterns, mixing depth, counting, the small training loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowlib.analysis import (
    SCHEMES, count_macs, count_parameters, coupling_stack, dependency, dependency_after, downscale,
    evaluate_bpd, fit, mixing_depth, realnvp_image_single_scale, width_for_params,
)
from flowlib.flow import Sequential
from flowlib.jacobian import flow_log_abs_det
from flowlib.models import FlowModel, realnvp, realnvp_image
from flowlib.preprocess import Dequantize, Logit


def _depth(scheme: str, dim: int = 16, layers: int = 8) -> int | None:
    torch.manual_seed(0)
    stack = coupling_stack(dim, scheme, layers, hidden=16, zero_init=False)
    return mixing_depth(dependency_after(stack, torch.randn(4, dim)))


def test_single_coupling_pattern_is_block_triangular():
    torch.manual_seed(0)
    (layer,) = coupling_stack(6, "half", 1, hidden=8, zero_init=False)
    p = dependency(lambda v: layer(v)[0], torch.randn(3, 6))
    # conditioning half: identity; transformed half: all of x1 plus itself only
    assert torch.equal(p[:3, :3], torch.eye(3, dtype=torch.bool))
    assert not p[:3, 3:].any()
    assert p[3:, :3].all()
    assert torch.equal(p[3:, 3:], torch.eye(3, dtype=torch.bool))


def test_mixing_depths_of_the_schemes():
    # x1 passes a coupling unchanged, so it takes a third coupling to reach it
    assert _depth("alternating") == 3
    assert _depth("half+reverse") == 3
    assert _depth("half+1x1conv") == 1
    assert _depth("half") is None  # the first half is never transformed
    assert _depth("half+random", layers=12) > 3  # some coordinates sit in x1 several times in a row


def test_dependency_after_composes_prefixes():
    torch.manual_seed(0)
    stack = coupling_stack(8, "half+reverse", 2, hidden=8, zero_init=False)
    pats = dependency_after(stack, torch.randn(2, 8))
    assert len(pats) == 2 and all(p.shape == (8, 8) for p in pats)
    assert mixing_depth(pats) is None  # two couplings are not enough
    pats = dependency_after(coupling_stack(8, "half+reverse", 3, hidden=8, zero_init=False), torch.randn(2, 8))
    assert mixing_depth(pats) == 3


@pytest.mark.parametrize("scheme", SCHEMES)
def test_coupling_stack_is_a_flow(scheme):
    torch.manual_seed(0)
    flow = Sequential(*coupling_stack(6, scheme, 3, hidden=8, zero_init=False)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    z, log_det = flow(x)
    assert torch.allclose(flow.inverse(z)[0], x, atol=1e-10)
    assert torch.allclose(log_det, flow_log_abs_det(flow, x), atol=1e-10)


def test_identity_initialised_conv_starts_without_mixing():
    torch.manual_seed(0)
    stack = coupling_stack(6, "half+1x1conv", 2, hidden=8, zero_init=False, conv_init="identity")
    conv = stack[0][1]
    assert torch.allclose(conv.weight(), torch.eye(6))
    assert mixing_depth(dependency_after(stack, torch.randn(3, 6))) is None  # same pattern as "half"
    with pytest.raises(ValueError, match="conv_init"):
        coupling_stack(6, "half+1x1conv", 1, conv_init="zeros")


def test_unknown_scheme():
    with pytest.raises(ValueError, match="scheme"):
        coupling_stack(4, "shuffle", 1)


def test_count_parameters_and_macs():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Conv2d(1, 2, 3, padding=1))
    assert count_parameters(net) == 4 * 3 + 3 + 2 * 9 + 2
    conv = nn.Conv2d(2, 5, 3, padding=1)
    macs = count_macs(conv, lambda: conv(torch.randn(3, 2, 4, 4)), batch_size=3)
    assert macs == 5 * 4 * 4 * 2 * 9


def test_width_for_params():
    build = lambda w: nn.Sequential(nn.Linear(10, w), nn.Linear(w, 10))
    w = width_for_params(build, 2100)
    assert w == 100


def test_single_scale_matches_multiscale_depth_and_costs_more():
    kw = dict(hidden_channels=8, num_blocks=1)
    multi = realnvp_image((1, 8, 8), num_scales=3, **kw)
    single = realnvp_image_single_scale((1, 8, 8), num_scales=3, **kw)
    couplings = lambda m: sum(1 for mod in m.modules() if type(mod).__name__ == "AffineCoupling")
    assert couplings(multi) == couplings(single) == 16
    x = torch.randint(0, 256, (2, 1, 8, 8))
    multi.eval(), single.eval()
    cost = lambda m: count_macs(m, lambda: m.log_prob(x), batch_size=2)
    assert cost(single) > cost(multi)
    assert single.sample(2).shape == (2, 1, 8, 8)


def test_single_scale_log_det_matches_autograd():
    torch.manual_seed(0)
    m = realnvp_image_single_scale((1, 4, 4), num_scales=2, hidden_channels=4, num_blocks=1).double().eval()
    body = Sequential(*list(m.flow)[2:])  # after Dequantize and Logit
    for p in body.parameters():
        nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    assert torch.allclose(body(x)[1], flow_log_abs_det(body, x), atol=1e-8)


def test_downscale():
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    y = downscale(x)
    assert y.shape == (5, 1, 14, 14) and y.dtype == torch.uint8
    assert abs(y.float().mean() - x.float().mean()) < 1.0


def test_fit_lowers_bits_per_dim_and_reports():
    torch.manual_seed(0)
    data = torch.randint(0, 256, (256, 4)) // 64 * 64  # four levels only: learnable
    flow = Sequential(Dequantize(), Logit(0.05), *realnvp(4, num_couplings=2, hidden=16).flow)
    model = FlowModel(flow, "normal", (4,))
    before = evaluate_bpd(model, data)
    r = fit(model, data, valid=data[:64], steps=60, lr=3e-3, batch_size=64, test=data[:64])
    assert len(r.train_bpd) == 60 and r.valid_steps[-1] == 60 and len(r.valid_bpd) == len(r.valid_steps)
    assert math.isfinite(r.test_bpd) and r.test_bpd < before
    assert r.seconds > 0
