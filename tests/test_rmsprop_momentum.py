"""NICE's released optimizer and schedule: against torch's RMSprop, the floor's closed form, and the trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowlib.training import config as Cfg
from flowlib.training import train as T
from flowlib.models import realnvp
from flowlib.training.fit import EXPONENTIAL_DECAY, learning_rate, loss_scale, make_optimizer, train_step
from flowlib.training.rmsprop_momentum import RMSPropMomentum, momentum_ramp


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_matches_torch_rmsprop_without_eps_where_the_floor_is_not_reached(momentum):
    """With gradients far above the floor and a constant rate the update is torch's RMSprop with eps=0."""
    ours, theirs = _net(0), _net(0)
    opt_a = RMSPropMomentum(ours.parameters(), lr=1e-2, averaging=0.95, stabilizer=1e-12, momentum=momentum)
    opt_b = torch.optim.RMSprop(theirs.parameters(), lr=1e-2, alpha=0.95, eps=0.0, momentum=momentum)
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for _ in range(6):
        for net, opt in ((ours, opt_a), (theirs, opt_b)):
            opt.zero_grad()
            (net(x) ** 2).mean().mul(100).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_floor_caps_the_step_of_a_tiny_gradient():
    """|g| = 1e-3: sqrt(0.05 g^2) = 2.2e-4 < 1e-2, so the first step is lr * g / 1e-2 (not lr * g / 2.2e-4)."""
    p = nn.Parameter(torch.tensor([0.0, 0.0], dtype=torch.float64))
    opt = RMSPropMomentum([p], lr=1e-3)
    p.grad = torch.tensor([1e-3, 10.0], dtype=torch.float64)
    opt.step()
    expected = torch.tensor([-1e-3 * 1e-3 / 1e-2, -1e-3 * 10.0 / math.sqrt(0.05 * 100.0)], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)


def test_training_in_bits_per_dim_takes_the_steps_of_training_in_nats():
    """The released floor is on nats-per-example gradients; with it scaled by the loss factor the unit is invisible.

    Tiny gradients (a net started near zero) put some parameters under the floor, where an unscaled floor
    would change the steps by the factor 1 / (D ln 2)."""
    torch.manual_seed(0)
    in_nats = realnvp(2, num_couplings=2, hidden=8).double()
    in_bpd = realnvp(2, num_couplings=2, hidden=8).double()
    in_bpd.load_state_dict(in_nats.state_dict())
    opt_nats = make_optimizer(in_nats, 1e-2, optimizer="rmsprop_momentum")
    opt_bpd = make_optimizer(in_bpd, 1e-2, optimizer="rmsprop_momentum", loss_factor=loss_scale(in_bpd, "bpd"))
    unscaled = realnvp(2, num_couplings=2, hidden=8).double()
    unscaled.load_state_dict(in_nats.state_dict())
    opt_unscaled = make_optimizer(unscaled, 1e-2, optimizer="rmsprop_momentum")
    x = 0.01 * torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        train_step(in_nats, opt_nats, x, unit="nats")
        train_step(in_bpd, opt_bpd, x, unit="bpd")
        train_step(unscaled, opt_unscaled, x, unit="bpd")
    # float64 rounding of gradients summed over 256 points differs between the two units: about 1e-9 in the end
    gap = lambda m: max((a - b).abs().max().item() for a, b in zip(in_nats.parameters(), m.parameters()))  # noqa: E731
    assert gap(in_bpd) < 1e-7 < 1e-3 < gap(unscaled)


def test_exponential_schedule_is_the_released_decay_and_floor():
    lr = 1e-3
    assert learning_rate("exponential", lr, 1000, 1) == pytest.approx(lr / 1.0005**1000, rel=1e-12)
    first_floored = math.ceil(math.log(10) / math.log(EXPONENTIAL_DECAY))
    assert first_floored == 4607
    assert learning_rate("exponential", lr, first_floored - 1, 1) > lr / 10
    assert learning_rate("exponential", lr, first_floored, 1) == lr / 10
    assert learning_rate("exponential", lr, 10**9, 1) == lr / 10


def test_momentum_ramp_is_zero_for_five_epochs_then_half():
    assert [momentum_ramp(e) for e in range(1, 9)] == [0.0] * 5 + [0.5] * 3
    assert momentum_ramp(3, start=2, saturate=4, final=0.8) == pytest.approx(0.4)
    assert [momentum_ramp(e, start=3, saturate=3) for e in (2, 3)] == [0.0, 0.5]


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), "lr must be"), (dict(averaging=1.0), "averaging must be a number in"),
    (dict(momentum=-0.1), "momentum must be a number in"), (dict(stabilizer=0.0), "stabilizer must be"),
])
def test_bad_settings_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RMSPropMomentum([nn.Parameter(torch.zeros(1))], **kwargs)


def test_unknown_optimizer_and_weight_decay_are_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer(nn.Linear(2, 2), optimizer="sgd")
    with pytest.raises(ValueError, match="weight_decay must be 0 with optimizer 'rmsprop_momentum'"):
        Cfg.make_config("realnvp", "quick", "two_moons", optimizer="rmsprop_momentum", weight_decay=1e-5)


def test_trainer_with_the_released_recipe_resumes_exactly(tmp_path):
    """Momentum changes at epoch 6 and the rate decays per step: a run stopped mid-way and resumed is the same run."""
    values = dict(epochs=7, train_size=128, eval_size=64, batch_size=64, log_every=1, precision="fp32",
                  model_kwargs=dict(num_couplings=2, hidden=8), optimizer="rmsprop_momentum", schedule="exponential")
    full = T.train(Cfg.make_config("realnvp", "quick", "two_moons", out_dir=str(tmp_path / "full"), **values),
                   progress=False)
    part_cfg = Cfg.make_config("realnvp", "quick", "two_moons", out_dir=str(tmp_path / "part"), **values)
    T.train(Cfg.make_config("realnvp", "quick", "two_moons", out_dir=str(tmp_path / "part"), max_steps=9, **values),
            progress=False)  # stops in epoch 5, before the momentum rises
    momentum = lambda: torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["optimizer"][  # noqa: E731
        "param_groups"][0]["momentum"]
    assert momentum() == 0.0
    for stop, expected in ((10, 0.0), (11, 0.5)):  # the last step of epoch 5, the first of epoch 6
        T.train(Cfg.make_config("realnvp", "quick", "two_moons", out_dir=str(tmp_path / "part"), max_steps=stop,
                                **values), resume=True, progress=False)
        assert momentum() == expected, stop
    resumed = T.train(part_cfg, resume=True, progress=False)
    assert resumed.steps == full.steps == 14 and resumed.test_bpd == full.test_bpd
    assert [h["train_bpd"] for h in resumed.history] == [h["train_bpd"] for h in full.history]
    state = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["optimizer"]
    assert state["param_groups"][0]["momentum"] == 0.5
    assert state["param_groups"][0]["lr"] == pytest.approx(1e-3 / EXPONENTIAL_DECAY**13, rel=1e-12)
