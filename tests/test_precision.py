"""bf16 autocast: the nets run in bfloat16, the flow stays invertible and its log-det exact."""

from __future__ import annotations

import pytest
import torch

from flowlib import Flow, nice, realnvp_image
from flowlib.training.fit import train_step, make_optimizer
from flowlib.training.precision import autocast, resolve_precision

from conftest import assert_close_to_roundoff, roundoff, slogdet_bound


def models():
    torch.manual_seed(0)
    vec = nice(16, num_couplings=4, hidden=32, num_hidden_layers=2)
    img = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=8, num_blocks=1, preprocess=False)
    with torch.no_grad():  # move the zero-initialised output layers off zero, so the nets matter
        for p in list(vec.parameters()) + list(img.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    return {"nice": (vec.eval(), torch.rand(6, 16)), "realnvp": (img.eval(), torch.randn(6, 1, 8, 8))}


@pytest.mark.parametrize("name", ["nice", "realnvp"])
def test_nets_run_in_bf16_while_log_dets_stay_fp32(name):
    model, x = models()[name]
    seen = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
             for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with autocast("bf16", "cpu"):
        z, log_det = model(x)
        log_p = model.log_prob(x)
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert z.dtype == log_det.dtype == log_p.dtype == torch.float32


def layer_by_layer_log_det(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd's log|det J| of every elementary layer at the input it sees in ``model.flow(x)``, summed (chain rule).

    Each layer's Jacobian is taken on the whole batch, so its nets see the same inputs as in the forward pass
    and round the same way; their bf16 backward passes then only touch the block of a coupling's Jacobian
    that its determinant does not depend on (the conditioning half's effect on the transformed half), and
    what is left is the fp32 rounding of slogdet: `slogdet_bound` with u = 2**-24. Returns the log-dets and
    that bound.
    """
    leaves = [m for m in model.flow.modules()
              if isinstance(m, Flow) and not any(isinstance(c, Flow) for c in list(m.modules())[1:])]
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0]))) for m in leaves]
    try:
        model.flow(x)
    finally:
        for h in hooks:
            h.remove()
    total, bound = torch.zeros(x.shape[0], dtype=torch.float64), torch.zeros(x.shape[0], dtype=torch.float64)
    for layer, h in seen:
        jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0].flatten(1), h, vectorize=True).flatten(3)
        jac = torch.stack([jac[i, :, i] for i in range(h.shape[0])])
        total += torch.linalg.slogdet(jac)[1].double()
        bound += slogdet_bound(jac, 0, u=2.0**-24)
    return total, bound


@pytest.mark.parametrize("name", ["nice", "realnvp"])
def test_bf16_flow_is_invertible_and_its_log_det_matches_autograd(name):
    model, x = models()[name]
    with autocast("bf16", "cpu"):
        z, log_det = model(x)
        x_back, inv_log_det = model.inverse(z)
        reference, reference_bound = layer_by_layer_log_det(model, x)
        # Tolerances (`roundoff` under the same autocast, autocast_sites=False): the inverse recomputes the
        # same bf16 net outputs from the same conditioning half, and the reference reruns the same forward
        # pass, so the nets' bf16 roundings are common to both sides and what is left is the fp32 rounding
        # outside the nets, as in fp32 (a bf16-rounded shift would miss by ~1e-3). This holds unless an fp32
        # perturbation moves a net's operand across a bf16 rounding boundary (~2**-16 per value).
        values = roundoff(lambda m, v: m.inverse(m(v)[0])[0], model, x, autocast_sites=False)
        dets = roundoff(lambda m, v: (lambda z, ld: m.inverse(z)[1] + ld)(*m(v)), model, x, autocast_sites=False)
        analytic = roundoff(lambda m, v: m(v)[1], model, x, autocast_sites=False)
    assert_close_to_roundoff(x_back, x, values.bound, "inverse(forward(x))")
    assert_close_to_roundoff(inv_log_det + log_det, torch.zeros_like(log_det), dets.bound, "log-det sum")
    assert_close_to_roundoff(log_det, reference, analytic.bound + reference_bound, "log-det against autograd")
    # And it is a different function from the fp32 one (the nets really ran in bf16).
    z32, _ = model(x)
    assert not torch.equal(z, z32)


@pytest.mark.parametrize("name", ["nice", "realnvp"])
def test_bf16_round_trip_check_catches_an_inverse_with_other_net_outputs(name):
    """Guards the tolerance: an inverse whose nets compute in fp32 (shifts off by bf16 rounding) fails it."""
    model, x = models()[name]
    with autocast("bf16", "cpu"):
        z, _ = model(x)
        bound = roundoff(lambda m, v: m.inverse(m(v)[0])[0], model, x, autocast_sites=False).bound
    x_back, _ = model.inverse(z)  # outside autocast
    with pytest.raises(AssertionError, match="beyond their roundoff bound"):
        assert_close_to_roundoff(x_back, x, bound, "inverse(forward(x))")


def test_train_step_under_bf16_gives_fp32_gradients():
    model, x = models()["nice"]
    model.train()
    opt = make_optimizer(model)
    loss = train_step(model, opt, x, unit="nats", precision="bf16")
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_resolve_precision():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")
