"""Per-example Jacobians by automatic differentiation (``torch.func``).

For a flow :math:`f` applied example by example, the Jacobian of example
:math:`b` is :math:`J_b = \\partial f(x_b) / \\partial x_b`, a
:math:`D_{out} \\times D_{in}` matrix (inputs and outputs flattened), and

.. math:: \\log |\\det J_b| = \\texttt{slogdet}(J_b)[1].

This is the reference every layer's analytic ``log_det`` is tested against.
It costs :math:`O(D^3)` per example, so use it on small inputs.

Reference: PyTorch documentation, "torch.func API Reference" (``vmap``,
``jacrev``), https://docs.pytorch.org/docs/stable/func.api.html.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from .flow import value_checks

__all__ = ["jacobian", "log_abs_det_jacobian", "flow_log_abs_det"]


def jacobian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-example Jacobians of a batched map ``fn`` at ``x``: shape ``(B, D_out, D_in)``.

    ``fn`` takes a batch ``(B, *shape)`` and returns a batch ``(B, *shape_out)``;
    it is called on single examples (batch of one) under ``vmap``, so it must
    treat examples independently (flows in eval mode do). Value checks
    (`flowlib.flow.value_checks`) are off while it runs: they read tensor
    values, which ``vmap`` cannot do, and a Jacobian does not need them.

    >>> A = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    >>> jacobian(lambda x: x @ A.T, torch.ones(4, 2))[0]
    tensor([[2., 1.],
            [0., 3.]])
    """

    def single(xi: Tensor) -> Tensor:
        return fn(xi.unsqueeze(0)).reshape(-1)

    with value_checks(False):
        jac = vmap(jacrev(single), randomness="same")(x)
    return jac.reshape(x.shape[0], -1, x[0].numel())


def log_abs_det_jacobian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``log |det J_b|`` for every example ``b`` (shape ``(B,)``), by autograd.

    >>> x = torch.randn(3, 2)
    >>> log_abs_det_jacobian(lambda x: 2 * x, x)
    tensor([1.3863, 1.3863, 1.3863])
    """
    jac = jacobian(fn, x)
    if jac.shape[1] != jac.shape[2]:
        raise ValueError(f"log-det needs a square Jacobian, got {tuple(jac.shape[1:])}")
    return torch.linalg.slogdet(jac)[1]


def flow_log_abs_det(flow: torch.nn.Module, x: Tensor, inverse: bool = False) -> Tensor:
    """Autograd log |det| of a flow's ``forward`` (or ``inverse``) at ``x``."""
    direction = flow.inverse if inverse else flow.forward
    return log_abs_det_jacobian(lambda v: direction(v)[0], x)
