"""NICE's diagonal scaling layer.

Additive couplings have unit Jacobian determinant, so a stack of them cannot
change volume. NICE (section 3.3) ends with a diagonal scaling
:math:`z = x \\odot \\exp(S)`, :math:`\\log|\\det J| = \\sum_d S_d`, which lets
the model spend volume: large :math:`S_d` marks a direction that matters
little (the prior is wide there in data space).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .flow import Flow, check_shape

__all__ = ["DiagonalScaling"]


class DiagonalScaling(Flow):
    """:math:`z = x \\odot e^{S}`, one learned :math:`S_d` per dimension.

    ``shape`` is one example's shape: an int for vectors or ``(C, H, W)``.

    >>> layer = DiagonalScaling(2)
    >>> with torch.no_grad():
    ...     _ = layer.log_scale.fill_(1.0)
    >>> z, log_det = layer(torch.ones(1, 2))
    >>> z.detach(), log_det.detach()
    (tensor([[2.7183, 2.7183]]), tensor([2.]))
    """

    def __init__(self, shape: int | tuple[int, ...]) -> None:
        super().__init__()
        self.event_shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(x, self.event_shape, "DiagonalScaling")
        log_det = self.log_scale.sum().expand(x.shape[0])
        return x * torch.exp(self.log_scale), log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(z, self.event_shape, "DiagonalScaling")
        log_det = -self.log_scale.sum().expand(z.shape[0])
        return z * torch.exp(-self.log_scale), log_det
