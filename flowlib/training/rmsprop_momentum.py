"""RMSProp with momentum, the optimizer of NICE's released code (Dinh et al. 2015; laurent-dinh/nice).

For a parameter :math:`\\theta` with gradient :math:`g`, averaging :math:`\\rho`,
floor :math:`\\epsilon`, momentum :math:`\\mu` and learning rate :math:`\\eta`, one step is

.. math::
   v \\leftarrow \\rho v + (1 - \\rho) g^2, \\qquad
   m \\leftarrow \\mu m - \\eta \\frac{g}{\\max(\\sqrt v, \\epsilon)}, \\qquad
   \\theta \\leftarrow \\theta + m,

with :math:`v` and :math:`m` starting at 0. The floor (not an added
:math:`\\epsilon`, as in `torch.optim.RMSprop`) caps the step of a parameter
whose gradients are tiny at :math:`\\eta |g| / \\epsilon`. Where
:math:`\\sqrt v \\ge \\epsilon` and :math:`\\eta` is constant this is
`torch.optim.RMSprop` with ``eps=0`` (which accumulates :math:`g / \\sqrt v`
and multiplies by :math:`\\eta` afterwards).

The released recipe (``exp/nice_mnist.yaml``, ``RMSPropMomentum``): :math:`\\eta`
starts at :math:`10^{-3}` and is divided by 1.0005 after every update down to
:math:`10^{-4}` (`flowlib.training.fit.learning_rate`, schedule
``"exponential"``), :math:`\\rho = 0.95`, :math:`\\epsilon = 10^{-2}`, and the
momentum is 0 for the first five epochs and 0.5 from the sixth on
(`momentum_ramp`). The released code's loss is in nats per example; the floor
is the only part of the rule that depends on the loss's unit, and
`flowlib.training.fit.make_optimizer` scales it with the loss (``loss_factor``),
so training in bits/dim takes the released steps. The trainer uses it with
``optimizer="rmsprop_momentum"``.

>>> p = torch.nn.Parameter(torch.tensor([1.0]))
>>> opt = RMSPropMomentum([p], lr=0.1)
>>> p.grad = torch.tensor([2.0])
>>> opt.step()
>>> round(p.item(), 6)  # 1 - 0.1 * 2 / sqrt(0.05 * 2**2)
0.552786
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..flow import check_positive

__all__ = ["RMSPropMomentum", "momentum_ramp"]


class RMSPropMomentum(torch.optim.Optimizer):
    """RMSProp with a floored root-mean-square and heavy-ball momentum (the formula above).

    ``averaging`` is :math:`\\rho` in ``[0, 1)``, ``stabilizer`` the floor
    :math:`\\epsilon > 0`, ``momentum`` :math:`\\mu` in ``[0, 1)``. The trainer
    sets ``lr`` and ``momentum`` of each parameter group before every step.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, averaging: float = 0.95,
                 stabilizer: float = 1e-2, momentum: float = 0.0) -> None:
        check_positive("lr", lr)
        check_positive("stabilizer", stabilizer)
        for name, value in (("averaging", averaging), ("momentum", momentum)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        super().__init__(params, dict(lr=lr, averaging=averaging, stabilizer=stabilizer, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            rho, eta, mu, floor = group["averaging"], group["lr"], group["momentum"], group["stabilizer"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["mean_square"] = torch.zeros_like(p)
                    state["velocity"] = torch.zeros_like(p)
                v, m, g = state["mean_square"], state["velocity"], p.grad
                v.mul_(rho).addcmul_(g, g, value=1 - rho)
                m.mul_(mu).addcdiv_(g, v.sqrt().clamp_(min=floor), value=-eta)
                p.add_(m)
        return loss


def momentum_ramp(epoch: int, start: int = 5, saturate: int = 6, final: float = 0.5) -> float:
    """The momentum of epoch ``epoch`` (1-based): 0 up to epoch ``start``, rising linearly to ``final`` at
    ``saturate`` (pylearn2's ``MomentumAdjustor`` as NICE's released code sets it: 0, then 0.5 from epoch 6).

    >>> [momentum_ramp(e) for e in (1, 5, 6, 100)]
    [0.0, 0.0, 0.5, 0.5]
    """
    if saturate <= start:
        return final if epoch >= start else 0.0
    alpha = min(max((epoch - start) / (saturate - start), 0.0), 1.0)
    return alpha * final
