"""Polyak averaging (`flowlib.training.averaging`) against its closed form."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from flowlib.training.averaging import WeightAverage, average_beta


@pytest.mark.parametrize("beta", [0.3, 0.9, 0.999])
def test_the_running_update_is_the_normalised_exponential_average(beta: float, average_closed_form: Callable) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    average = WeightAverage(net, beta)
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in net.state_dict()}
    for _ in range(25):
        for p in net.parameters():
            p.data.normal_()
        net.train()(torch.randn(8, 3, dtype=torch.float64))  # moves batch norm's running statistics
        average.update(net)
        for name, value in net.state_dict().items():
            seen[name].append(value.clone())
    for name, averaged in average.model.state_dict().items():
        if averaged.is_floating_point():
            torch.testing.assert_close(averaged, average_closed_form(seen[name], beta), rtol=1e-12, atol=1e-12)
        else:  # the step counter of batch norm is copied, not averaged
            assert torch.equal(averaged, seen[name][-1]), name


def test_the_average_is_its_own_copy_in_eval_mode_without_gradients() -> None:
    net = nn.Linear(2, 2)
    average = WeightAverage(net, 0.9)
    assert average.model is not net and not average.model.training
    assert not any(p.requires_grad for p in average.model.parameters())
    average.update(net)  # the first average is the weights themselves
    assert torch.equal(average.model.weight, net.weight)
    with torch.no_grad():
        net.weight.add_(1.0)
    assert not torch.equal(average.model.weight, net.weight)


def test_a_saved_average_restores_exactly_and_refuses_another_beta() -> None:
    net = nn.Linear(2, 2)
    a = WeightAverage(net, 0.9)
    for _ in range(3):
        with torch.no_grad():
            net.weight.mul_(1.5)
        a.update(net)
    b = WeightAverage(nn.Linear(2, 2), 0.9)
    b.load_state_dict(a.state_dict())
    assert b.updates == 3 and torch.equal(b.model.weight, a.model.weight)
    with pytest.raises(ValueError, match="the saved average has beta 0.9, this one 0.5"):
        WeightAverage(nn.Linear(2, 2), 0.5).load_state_dict(a.state_dict())


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5, float("nan")])
def test_a_beta_outside_the_open_unit_interval_is_refused(beta: float) -> None:
    with pytest.raises(ValueError, match="beta must be in \\(0, 1\\)"):
        WeightAverage(nn.Linear(1, 1), beta)


def test_one_step_is_no_average() -> None:
    assert average_beta(2, 8) == 1 - 1 / 16
    with pytest.raises(ValueError, match="an average needs more than one step: got 1 epochs of 1 steps"):
        average_beta(1, 1)
