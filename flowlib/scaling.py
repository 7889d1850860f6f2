"""NICE's diagonal scaling layer.

Additive couplings have unit Jacobian determinant, so a stack of them cannot
change volume. NICE (section 3.3) ends with a diagonal scaling
:math:`z = x \\odot \\exp(S)`, :math:`\\log|\\det J| = \\sum_d S_d`, which lets
the model spend volume: large :math:`S_d` marks a direction that matters
little (the prior is wide there in data space).

The paper does not say how :math:`S` starts. With ``data_init=True`` the
first training batch sets :math:`S_d = \log(\sigma_{prior} / \sigma_d)`, so
every dimension starts at the prior's spread (as ActNorm does). Starting at
:math:`S = 0` instead costs thousands of steps on MNIST: a background pixel
needs :math:`S_d \approx 7`, and Adam with NICE's :math:`\beta_2 = 0.01`
moves a parameter by about one learning rate (:math:`10^{-3}`) per step.
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

    def __init__(self, shape: int | tuple[int, ...], data_init: bool = False, prior_std: float = 1.0) -> None:
        super().__init__()
        self.event_shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))
        self.prior_std = prior_std
        self.register_buffer("initialized", torch.tensor(not data_init))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set :math:`S_d = \log(\sigma_{prior} / \sigma_d)` from a batch ``x``."""
        std = x.std(0).clamp_min(1e-6)
        self.log_scale.copy_(torch.log(self.prior_std / std))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(x, self.event_shape, "DiagonalScaling")
        if self.training and not self.initialized and x.shape[0] > 1:
            self.initialize(x)
        log_det = self.log_scale.sum().expand(x.shape[0])
        return x * torch.exp(self.log_scale), log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(z, self.event_shape, "DiagonalScaling")
        log_det = -self.log_scale.sum().expand(z.shape[0])
        return z * torch.exp(-self.log_scale), log_det
