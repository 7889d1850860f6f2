"""The one fit loop and the one evaluation, against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from flowlib import Dequantize, FlowModel, Sequential
from flowlib.training.evaluate import evaluate
from flowlib.training.fit import fit, learning_rate
from flowlib.models import realnvp
from flowlib.scaling import DiagonalScaling


def gaussian_scale_model() -> FlowModel:
    """z = x e^s with a N(0, 1) prior: the density N(0, e^{-2s}), whose maximum-likelihood e^{-s} is the data's RMS."""
    return FlowModel(Sequential(DiagonalScaling(1)), "normal", (1,))


def test_evaluate_is_the_closed_form_gaussian_nll():
    model = gaussian_scale_model()
    with torch.no_grad():
        model.flow[0].log_scale.fill_(math.log(0.5))  # sigma = 2
    x = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0)) * 3
    sigma = 2.0
    expected = 0.5 * math.log(2 * math.pi * sigma**2) + 0.5 * float((x**2).mean()) / sigma**2
    e = evaluate(model, x, batch_size=64)
    assert e.nats == pytest.approx(expected, rel=1e-6)
    assert e.bpd == pytest.approx(expected / math.log(2), rel=1e-6)  # D = 1
    assert e.count == 1000


def test_fit_finds_the_maximum_likelihood_scale():
    x = torch.randn(4096, 1, generator=torch.Generator().manual_seed(1)) * 3
    model = gaussian_scale_model()
    model.flow[0].initialized.fill_(True)  # start at s = 0, not at the answer
    result = fit(model, x, steps=400, batch_size=256, lr=0.05, unit="nats", clip_grad=None)
    rms = float(x.pow(2).mean().sqrt())
    assert float(model.flow[0].log_scale.detach().exp().reciprocal()) == pytest.approx(rms, rel=0.02)
    assert result.train_loss[-1] < result.train_loss[0] - 0.5
    # The data-dependent start puts it at the answer (the batch's standard deviation) before any step.
    fresh = gaussian_scale_model()
    fit(fresh, x, steps=1, batch_size=4096, lr=1e-12, unit="nats", clip_grad=None)
    assert float(fresh.flow[0].log_scale.detach().exp().reciprocal()) == pytest.approx(float(x.std(unbiased=False)), rel=1e-4)


def test_fit_is_reproducible_and_reports_on_schedule():
    data = torch.randn(512, 2, generator=torch.Generator().manual_seed(2))
    calls = []
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = realnvp(2, num_couplings=2, hidden=8)
        runs.append(fit(model, data, steps=25, batch_size=64, unit="nats", valid=data[:100], eval_every=10,
                        callback=lambda step, loss: calls.append((step, loss)), callback_every=10))
    assert runs[0].train_loss == runs[1].train_loss and runs[0].valid_loss == runs[1].valid_loss
    assert runs[0].valid_steps == [10, 20, 25]
    steps = [s for s, _ in calls[:3]]
    assert steps == [10, 20, 25]
    assert calls[2][1] == pytest.approx(sum(runs[0].train_loss[20:25]) / 5, rel=1e-6)


def test_evaluation_noise_is_fixed_and_leaves_the_callers_random_state():
    model = FlowModel(Sequential(Dequantize(), DiagonalScaling(4)), "normal", (4,))
    x = torch.randint(0, 256, (300, 4), dtype=torch.uint8)
    before = torch.get_rng_state()
    a, b = evaluate(model, x, batch_size=50), evaluate(model, x, batch_size=50)
    assert a == b
    assert torch.equal(torch.get_rng_state(), before)


def test_cosine_schedule_closed_form():
    total = 100
    for step in (0, 25, 50, 75, 100):
        assert learning_rate("cosine", 2.0, step, total) == pytest.approx(1.0 + math.cos(math.pi * step / total))
    with pytest.raises(ValueError, match="schedule must be one of"):
        learning_rate("linear", 1.0, 0, 10)


def test_cosine_schedule_to_a_floor_closed_form():
    """With ``min_lr`` the cosine runs from lr to min_lr: half-way it is their mean, at the end min_lr."""
    lr, floor, total = 1e-3, 2e-4, 400
    assert learning_rate("cosine", lr, 0, total, min_lr=floor) == lr
    assert learning_rate("cosine", lr, total // 2, total, min_lr=floor) == pytest.approx((lr + floor) / 2, rel=1e-12)
    assert learning_rate("cosine", lr, total, total, min_lr=floor) == pytest.approx(floor, rel=1e-12)
    assert learning_rate("cosine", lr, 10 * total, total, min_lr=floor) == pytest.approx(floor, rel=1e-12)
    for step in range(total - 1):  # above the floor until the end, and falling
        assert floor < learning_rate("cosine", lr, step + 1, total, min_lr=floor) < learning_rate(
            "cosine", lr, step, total, min_lr=floor)


def test_warmup_closed_form():
    """``warmup_steps`` W: each schedule's rate times min(1, (t + 1)/W), so linear up to step W - 1, then untouched."""
    lr, total, warmup = 2e-3, 1000, 100
    for schedule in ("constant", "cosine", "exponential"):
        for step in (0, 1, 49, 98, 99, 100, 500, 999):
            plain = learning_rate(schedule, lr, step, total)
            assert learning_rate(schedule, lr, step, total, warmup_steps=warmup) == pytest.approx(
                plain * min(1.0, (step + 1) / warmup), rel=1e-12)
    assert learning_rate("constant", lr, 0, total, warmup_steps=warmup) == pytest.approx(lr / warmup, rel=1e-12)
    assert learning_rate("cosine", lr, 99, total, warmup_steps=warmup) == learning_rate("cosine", lr, 99, total)
    rising = [learning_rate("cosine", lr, t, total, warmup_steps=warmup) for t in range(warmup)]
    assert all(a < b for a, b in zip(rising, rising[1:]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps must be at least 1, got 0"),
    (dict(steps=1, batch_size=1000), r"N >= batch_size = 1000"),
    (dict(steps=1, unit="bits"), "unit must be one of"),
])
def test_bad_fit_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(realnvp(2, num_couplings=2, hidden=4), torch.randn(64, 2), **{"batch_size": 32, **kwargs})
