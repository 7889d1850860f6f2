"""bf16 autocast: the nets run in bfloat16, the flow stays invertible and its log-det exact."""

from __future__ import annotations

import pytest
import torch

from flowlib import nice, realnvp_image
from flowlib.training.fit import train_step, make_optimizer
from flowlib.training.precision import autocast, resolve_precision


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


@pytest.mark.parametrize("name", ["nice", "realnvp"])
def test_bf16_flow_is_invertible_and_its_log_det_matches_autograd(name):
    model, x = models()[name]
    with autocast("bf16", "cpu"):
        z, log_det = model(x)
        x_back, inv_log_det = model.inverse(z)
        reference = torch.stack([  # autograd of the same (bf16-net) function, one example at a time
            torch.linalg.slogdet(torch.autograd.functional.jacobian(
                lambda v: model.flow(v.unsqueeze(0))[0].flatten(), x[i]).reshape(x[i].numel(), -1))[1]
            for i in range(x.shape[0])])
    # The inverse recomputes the same bf16 net outputs from the same conditioning half, so it undoes
    # the forward up to fp32 rounding, as in fp32; a bf16-rounded shift would miss by ~1e-3.
    torch.testing.assert_close(x_back, x, rtol=0, atol=2e-5)
    torch.testing.assert_close(inv_log_det, -log_det, rtol=0, atol=1e-4)
    torch.testing.assert_close(log_det, reference, rtol=1e-4, atol=1e-3)
    # And it is a different function from the fp32 one (the nets really ran in bf16).
    z32, _ = model(x)
    assert not torch.equal(z, z32)


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
