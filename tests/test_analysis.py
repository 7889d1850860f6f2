"""flowlib.book.analysis: dependency patterns against known Jacobians, mixing depths, parameter and MAC counts."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from flowlib.book.analysis import (count_macs, count_parameters, dependency, dependency_after, equal_time_steps,
                                   mixing_depth, pass_seconds, width_for_params)
from flowlib.conv1x1 import InvertibleConv1x1
from flowlib.flow import Sequential
from flowlib.jacobian import flow_log_abs_det
from flowlib.models import realnvp_image
from flowlib.book.shuffling import SCHEMES, coupling_stack


# ----------------------------------------------------------------------------- dependency


def test_dependency_is_the_union_over_examples() -> None:
    # d(x0 * x1)/dx0 = x1 is zero at the first example only: the union still has it
    fn = lambda x: torch.stack([x[:, 0] * x[:, 1], x[:, 2] ** 2], 1)
    x = torch.tensor([[1.0, 0.0, 2.0], [1.0, 3.0, 0.5]])
    assert dependency(fn, x).tolist() == [[True, True, False], [False, False, True]]
    assert dependency(fn, x[:1]).tolist() == [[False, True, False], [False, False, True]]
    # tol: entries of magnitude at most tol do not count; at the second example the Jacobian is
    # [[x1, x0, 0], [0, 0, 2 x2]] = [[3, 1, 0], [0, 0, 1]]
    assert dependency(fn, x[1:], tol=1.5).tolist() == [[True, False, False], [False, False, False]]


def test_single_coupling_pattern_is_block_triangular() -> None:
    (layer,) = coupling_stack(6, "half", 1, hidden=8, zero_init=False)
    p = dependency(lambda v: layer(v)[0], torch.randn(3, 6))
    eye = torch.eye(3, dtype=torch.bool)
    assert torch.equal(p[:3, :3], eye) and not p[:3, 3:].any()
    assert p[3:, :3].all() and torch.equal(p[3:, 3:], eye)


def test_dependency_after_is_the_pattern_of_each_prefix() -> None:
    stack = coupling_stack(8, "half+reverse", 3, hidden=8, zero_init=False)
    x = torch.randn(2, 8)
    pats = dependency_after(stack, x)
    assert len(pats) == 3 and len(dependency_after(stack, x, max_layers=2)) == 2
    for k, p in enumerate(pats, start=1):  # against the Jacobian of the composition, by autograd
        prefix = Sequential(*stack[:k])
        j = torch.func.vmap(torch.func.jacrev(lambda v: prefix(v[None])[0][0]))(x)
        assert torch.equal(p, (j != 0).any(0))


def test_mixing_depth() -> None:
    eye, full = torch.eye(3, dtype=torch.bool), torch.ones(3, 3, dtype=torch.bool)
    assert mixing_depth([eye, eye, full, full]) == 3
    assert mixing_depth([eye, eye]) is None and mixing_depth([]) is None


def _depth(scheme: str, dim: int = 16, layers: int = 8) -> int | None:
    stack = coupling_stack(dim, scheme, layers, hidden=16, zero_init=False)
    return mixing_depth(dependency_after(stack, torch.randn(4, dim)))


def test_mixing_depths_of_the_schemes() -> None:
    # x1 passes a coupling unchanged, so it takes a third coupling to reach every output from every input
    assert _depth("alternating") == 3
    assert _depth("half+reverse") == 3
    assert _depth("half+1x1conv") == 1  # a rotation mixes everything at once
    assert _depth("half") is None  # the first half is never transformed
    assert _depth("half+random", layers=12) > 3  # some coordinates sit in x1 several times in a row


@pytest.mark.parametrize("scheme", SCHEMES)
def test_coupling_stack_is_a_flow(scheme: str) -> None:
    flow = Sequential(*coupling_stack(6, scheme, 3, hidden=8, zero_init=False)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    z, log_det = flow(x)
    torch.testing.assert_close(flow.inverse(z)[0], x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_det, flow_log_abs_det(flow, x), rtol=1e-10, atol=1e-10)


def test_identity_initialised_conv_starts_without_mixing() -> None:
    stack = coupling_stack(6, "half+1x1conv", 2, hidden=8, zero_init=False, conv_init="identity")
    torch.testing.assert_close(stack[0][1].weight(), torch.eye(6))
    assert mixing_depth(dependency_after(stack, torch.randn(3, 6))) is None  # the pattern of "half"
    with pytest.raises(ValueError, match="conv_init"):
        coupling_stack(6, "half+1x1conv", 1, conv_init="zeros")
    with pytest.raises(ValueError, match="scheme"):
        coupling_stack(4, "shuffle", 1)


# ----------------------------------------------------------------------------- size and cost


def test_count_parameters_of_plain_layers() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Conv2d(1, 2, 3, padding=1))
    assert count_parameters(net) == sum(p.numel() for p in net.parameters()) == 4 * 3 + 3 + 2 * 9 + 2
    net[0].requires_grad_(False)  # frozen weights are not trained, so not counted
    assert count_parameters(net) == 2 * 9 + 2


class _Weight(nn.Module):
    """``conv.weight()`` as a module's forward, so that torch.func can differentiate it by parameter."""

    def __init__(self, conv: InvertibleConv1x1) -> None:
        super().__init__()
        self.conv = conv

    def forward(self) -> torch.Tensor:
        return self.conv.weight()


@pytest.mark.parametrize("c", [2, 5])
def test_count_parameters_of_a_1x1_conv_is_its_degrees_of_freedom(c: int) -> None:
    # the rank of dW / d(parameters) is the number of directions in which W can move
    module = _Weight(InvertibleConv1x1(c, seed=1).double())
    params = {name: p.detach() for name, p in module.named_parameters()}
    jac = torch.func.jacrev(lambda ps: torch.func.functional_call(module, ps, ()))(params)
    rank = torch.linalg.matrix_rank(torch.cat([j.reshape(c * c, -1) for j in jac.values()], 1))
    assert count_parameters(module.conv) == int(rank) == c * c
    assert sum(p.numel() for p in module.parameters()) == 2 * c * c + c  # what is stored
    module.requires_grad_(False)
    assert count_parameters(module.conv) == 0


def test_count_macs_matches_torch_flop_counter() -> None:
    # torch counts 2 FLOPs per multiply-accumulate of a matmul or convolution
    net = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6 * 5 * 5, 7))
    x = torch.randn(3, 4, 9, 9)
    with FlopCounterMode(display=False) as counter:
        net(x)
    assert count_macs(net, lambda: net(x), batch_size=3) == counter.get_total_flops() / 2 / 3


def test_count_macs_of_a_realnvp_matches_torch_flop_counter() -> None:
    model = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1).eval()
    x = torch.randint(0, 256, (2, 1, 8, 8))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.log_prob(x)
    convs = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
    assert count_macs(model, lambda: model.log_prob(x), batch_size=2) == convs / 2 / 2


def test_width_for_params_is_the_closest_width() -> None:
    build = lambda w: nn.Sequential(nn.Linear(10, w), nn.Linear(w, 10))
    for target in (2100, 2111, 777, 5):
        best = min(range(1, 300), key=lambda w: (abs(count_parameters(build(w)) - target), w))
        assert width_for_params(build, target, high=300) == best


class _Slow(nn.Module):
    """A flow model whose step takes at least ``seconds`` (a sleep in log_prob), for `equal_time_steps`."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        from flowlib.flow_model import FlowModel
        from flowlib.scaling import DiagonalScaling

        self.inner, self.seconds = FlowModel(DiagonalScaling(2), "normal", (2,)), seconds
        self.num_dims = 2

    def forward(self, x: torch.Tensor):
        return self.inner(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.inner.log_prob(x)


def test_equal_time_steps_gives_a_twice_slower_model_half_the_steps():
    # Step times are dominated by sleeps of 10 and 20 ms (a step of this tiny model takes well under 1 ms), so
    # the slower model must get close to half the reference's steps: the sleeps set the ratio, not this machine.
    models = {"fast": _Slow(0.010), "slow": _Slow(0.020)}
    result = equal_time_steps(models, torch.randn(16, 2), "fast", steps=1000, rounds=3)
    assert result.steps["fast"] == 1000
    assert 0.4 * 1000 <= result.steps["slow"] <= 0.55 * 1000
    assert result.step_seconds["slow"] >= 0.020 and result.step_seconds["fast"] >= 0.010
    with pytest.raises(ValueError, match="reference must be one of"):
        equal_time_steps(models, torch.randn(16, 2), "medium", steps=10)


class _SleepyFlow(nn.Module):
    """A flow whose forward sleeps ``forward_s`` and whose inverse sleeps ``inverse_s`` (identity, log-det 0)."""

    def __init__(self, forward_s: float, inverse_s: float) -> None:
        super().__init__()
        self.forward_s, self.inverse_s = forward_s, inverse_s

    def forward(self, x: torch.Tensor):
        time.sleep(self.forward_s)
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor):
        time.sleep(self.inverse_s)
        return z, z.new_zeros(z.shape[0])


def test_pass_seconds_times_each_direction():
    # The sleeps (5 and 15 ms) dominate the passes, so each median is at least its sleep and the slow
    # direction is the slower one: the sleeps set the order, not this machine.
    times = pass_seconds({"maf-like": _SleepyFlow(0.005, 0.015), "iaf-like": _SleepyFlow(0.015, 0.005)},
                         torch.randn(4, 2), rounds=3)
    assert times["maf-like"]["forward"] >= 0.005 and times["maf-like"]["inverse"] >= 0.015
    assert times["maf-like"]["forward"] < times["maf-like"]["inverse"]
    assert times["iaf-like"]["forward"] > times["iaf-like"]["inverse"]
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        pass_seconds({"a": _SleepyFlow(0, 0)}, torch.randn(4, 2), rounds=0)
