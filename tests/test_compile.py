"""``compile=True``: the training step through ``torch.compile`` gives the eager step's loss and update.

The reference is the eager step on a copy with the same parameters. Compilation may fuse and reorder
element-wise arithmetic, so the two agree to rounding, not bit for bit: the bound is float32's unit roundoff
u = 2**-24 times the number of rounding sites along the longest path (every input of every Linear layer's
dot products, plus the D terms of the log-det and prior sums, plus a handful of element-wise operations per
coordinate), times the size of the quantity compared. Compiling takes tens of seconds, so this is a slow test.
"""

from __future__ import annotations

import copy

import pytest
import torch

from flowlib.models import nice
from flowlib.training.config import make_config
from flowlib.training.fit import make_optimizer, train_step

U = 2.0**-24


def _rounding_sites(model: torch.nn.Module, dim: int) -> int:
    fan_in = sum(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    return fan_in + 2 * dim + 16


@pytest.mark.slow
def test_compiled_step_matches_eager_step():
    torch.manual_seed(0)
    dim = 16
    eager = nice(dim, num_couplings=2, hidden=32, num_hidden_layers=2, prior="normal")
    with torch.no_grad():
        for p in eager.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the nets start at zero: make every coupling do something
    compiled = copy.deepcopy(eager)
    x = torch.randn(64, dim)
    opt_e, opt_c = make_optimizer(eager, lr=1e-3), make_optimizer(compiled, lr=1e-3)
    loss_e = train_step(eager, opt_e, x, unit="nats")
    loss_c = train_step(compiled, opt_c, x, unit="nats", compile=True)
    n = _rounding_sites(eager, dim)
    assert abs(loss_c - loss_e) <= n * U * loss_e.abs().clamp_min(1), (loss_c, loss_e)
    # Adam's first step moves each parameter by lr * g / (|g| + eps) (bias-corrected), i.e. by lr * sign(g) where
    # |g| >> eps: gradients that agree to rounding give the same move, except where |g| itself is at rounding
    # level, where the move is below lr * |g| / eps. So the parameters agree to a small fraction of lr:
    lr = 1e-3
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=lr / 100, msg=name)
    # ... and the next step reuses the compiled code (no recompilation) and still agrees.
    x2 = torch.randn(64, dim)
    loss_e2 = train_step(eager, opt_e, x2, unit="nats")
    loss_c2 = train_step(compiled, opt_c, x2, unit="nats", compile=True)
    assert abs(loss_c2 - loss_e2) <= n * U * loss_e2.abs().clamp_min(1) + 1e-5


def test_compile_is_a_checked_config_field_named_in_the_run_folder():
    assert make_config("nice", "quick", compile=True).out_dir.endswith("-compile")
    with pytest.raises(ValueError, match="compile must be True or False"):
        make_config("nice", "quick", compile="yes")
