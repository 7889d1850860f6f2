"""Polyak averaging: the model scored and kept is an exponential moving average of the trained weights.

After step :math:`t` of the optimizer, with weights :math:`\\theta_t`, the average is

.. math:: \\bar\\theta_t = \\frac{\\sum_{s=1}^{t} (1-\\beta)\\,\\beta^{t-s}\\,\\theta_s}{1-\\beta^t},

each step's weights counted with a weight that halves about every :math:`\\ln 2 / (1-\\beta)` steps, the
weights summing to one (the division by :math:`1-\\beta^t` removes the pull towards zero of a
moving average started at zero). It is kept as one running update,

.. math:: \\bar\\theta_t = \\bar\\theta_{t-1} + w_t\\,(\\theta_t - \\bar\\theta_{t-1}),
   \\qquad w_t = \\frac{1-\\beta}{1-\\beta^t},

so :math:`w_1 = 1` (the first average is the first step's weights). Averaging the iterates of a
stochastic optimizer cancels part of their noise (Polyak & Juditsky 1992, "Acceleration of stochastic
approximation by averaging", SIAM J. Control Optim. 30(4)). Glow's released code (openai/glow,
``optim.py``) scores such an average with :math:`\\beta = 1 - 1/(\\text{steps per epoch})`, an average
over about one epoch (its ``polyak_epochs`` = 1); `TrainConfig.average_epochs` is that number of epochs.
The float buffers (batch norm's running statistics) are averaged the same way, the others copied.
Training itself is untouched: the optimizer steps on the trained weights, never on the average.

An update reads and writes every weight once: 5.2 to 6.0 ms for NICE's 19 million float32 weights on the two
cores of an AMD EPYC, 4 to 9% of its training step in three measurements (benchmarks/results/averaging_cost*.md).

>>> import torch
>>> net = torch.nn.Linear(1, 1, bias=False)
>>> average = WeightAverage(net, beta=0.5)
>>> for value in (1.0, 2.0, 3.0):
...     _ = net.weight.data.fill_(value)
...     average.update(net)
>>> round(average.model.weight.item(), 5)  # (0.125 * 1 + 0.25 * 2 + 0.5 * 3) / 0.875
2.42857
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage", "average_beta"]


def average_beta(epochs: float, steps_per_epoch: int) -> float:
    """:math:`\\beta = 1 - 1/(\\text{epochs} \\times \\text{steps per epoch})`: an average over about ``epochs`` epochs.

    >>> average_beta(1, 250)
    0.996
    """
    if epochs * steps_per_epoch <= 1:
        raise ValueError(f"an average needs more than one step: got {epochs} epochs of {steps_per_epoch} steps")
    return 1.0 - 1.0 / (epochs * steps_per_epoch)


class WeightAverage:
    """The exponential moving average of ``model``'s weights (module docstring), in a copy of the model.

    ``model`` here is that copy, in eval mode and without gradients, scored and saved in place of the
    trained model; ``update`` after every optimizer step; ``state_dict``/``load_state_dict`` for checkpoints.
    """

    def __init__(self, model: nn.Module, beta: float) -> None:
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), got {beta!r}")
        self.beta = float(beta)
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights by :math:`w_t = (1-\\beta)/(1-\\beta^t)`."""
        self.updates += 1
        weight = (1.0 - self.beta) / (1.0 - self.beta ** self.updates)
        for averaged, current in zip(self.model.state_dict().values(), model.state_dict().values()):
            if averaged.is_floating_point():
                averaged.lerp_(current, weight)
            else:
                averaged.copy_(current)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates, "beta": self.beta}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if saved["beta"] != self.beta:
            raise ValueError(f"the saved average has beta {saved['beta']}, this one {self.beta}")
        self.model.load_state_dict(saved["model"])
        self.updates = int(saved["updates"])
