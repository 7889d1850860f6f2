"""The logit transform, the last step from 8-bit images to the real line (RealNVP, section 4.1).

:math:`p = \\alpha + (1 - 2\\alpha) y`, :math:`z = \\log p - \\log(1 - p)`, so
:math:`\\log|\\det J| = \\sum_d \\big(\\log(1 - 2\\alpha) - \\log p_d - \\log(1 - p_d)\\big)`.
The :math:`\\alpha` keeps the logit away from :math:`\\pm\\infty` at 0 and 1.
This is the symmetric variant of RealNVP's transform (section 4.1 models
:math:`\\mathrm{logit}(\\alpha + (1 - \\alpha) y)`, which maps
:math:`[0, 1]` onto :math:`[\\alpha, 1]`); here :math:`[0, 1]` maps onto
:math:`[\\alpha, 1 - \\alpha]`, so both ends stay finite. It follows a
dequantizer (`flowlib.dequantization`), which puts the data in :math:`[0, 1)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .flow import Flow, check_batched, value_checks_enabled

__all__ = ["Logit"]


class Logit(Flow):
    """:math:`z = \\mathrm{logit}(\\alpha + (1 - 2\\alpha) y)` for :math:`y \\in [0, 1]`.

    With :math:`p = \\alpha + (1 - 2\\alpha) y`,
    :math:`\\log|\\det J| = \\sum_d \\big(\\log(1 - 2\\alpha) - \\log p_d - \\log(1 - p_d)\\big)`.
    This is the symmetric variant of the transform of RealNVP, whose section
    4.1 models :math:`\\mathrm{logit}(\\alpha + (1 - \\alpha) y)` with
    :math:`\\alpha = 0.05` (mapping :math:`[0, 1]` onto :math:`[\\alpha, 1]`);
    here :math:`[0, 1]` maps onto :math:`[\\alpha, 1 - \\alpha]`, so the
    logit stays finite at both ends, and ``alpha=0`` is the plain logit on
    :math:`(0, 1)`.

    Reference: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using
    Real NVP", ICLR 2017, arXiv:1605.08803 (https://arxiv.org/abs/1605.08803).

    >>> z, log_det = Logit(alpha=0.05)(torch.full((1, 3), 0.5))
    >>> z, log_det
    (tensor([[0., 0., 0.]]), tensor([3.8428]))
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_batched(x, "Logit")
        if value_checks_enabled() and x.numel():
            lo, hi = x.min().item(), x.max().item()
            inside = (lo >= 0 and hi <= 1) if self.alpha > 0 else (lo > 0 and hi < 1)
            if not inside:
                interval = "[0, 1]" if self.alpha > 0 else "(0, 1)"
                raise ValueError(
                    f"Logit expects values in {interval} (alpha={self.alpha}); "
                    f"got values in [{lo:g}, {hi:g}]"
                )
        p = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(p) - torch.log1p(-p)
        log_det = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return z, log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        check_batched(z, "Logit")
        p = torch.sigmoid(z)
        x = (p - self.alpha) / (1 - 2 * self.alpha)
        log_det = (-F.softplus(-z) - F.softplus(z) - math.log(1 - 2 * self.alpha)).flatten(1).sum(1)
        return x, log_det
