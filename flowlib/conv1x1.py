"""Glow's invertible 1x1 convolution, LU-parameterised (Kingma & Dhariwal 2018, section 3.2).

A learned linear map :math:`W \\in \\mathbb R^{C \\times C}` applied to the
channels of every pixel: the learned generalisation of a channel permutation.
For an image of :math:`h \\times w` pixels, :math:`\\log|\\det J| = h w \\log|\\det W|`
(Glow section 3.2), and with Glow's LU parameterisation
:math:`W = P L (U + \\mathrm{diag}(s))` (``P`` a fixed permutation, ``L``
unit lower triangular, ``U`` strictly upper triangular),

.. math:: \\log|\\det J| = h w \\sum_c \\log|s_c|,

which costs :math:`O(C)` instead of :math:`O(C^3)`. As in Glow, :math:`W`
starts as a random rotation, and its ``P`` stays fixed. flowlib stores
:math:`s = \\mathrm{sign}(s) \\, e^{\\log|s|}` with the sign fixed at
initialisation and :math:`\\log|s|` learned (as Glow's reference code does),
so no :math:`s_c` can cross zero. On vectors ``(B, D)`` it is a learned
invertible linear map (:math:`h w = 1`).

Reference: D. P. Kingma, P. Dhariwal, "Glow: Generative Flow with Invertible
1x1 Convolutions", NeurIPS 2018, arXiv:1807.03039
(https://arxiv.org/abs/1807.03039).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flow import Flow, check_int

__all__ = ["InvertibleConv1x1"]


class InvertibleConv1x1(Flow):
    """:math:`z_{:,h,w} = W x_{:,h,w}`, initialised to a random rotation (``seed``).

    >>> conv = InvertibleConv1x1(4, seed=0)
    >>> x = torch.randn(2, 4, 3, 3)
    >>> z, log_det = conv(x)
    >>> torch.allclose(conv.inverse(z)[0], x, atol=1e-5), log_det.shape
    (True, torch.Size([2]))
    """

    def __init__(self, num_channels: int, seed: int = 0) -> None:
        super().__init__()
        check_int("num_channels", num_channels)
        check_int("seed", seed, least=0)
        self.num_channels = num_channels
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, generator=gen))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(num_channels, num_channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> Tensor:
        """:math:`W = P L (U + \\mathrm{diag}(\\mathrm{sign}(s) e^{\\log|s|}))`."""
        eye = torch.eye(self.num_channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def _mix(self, x: Tensor, w: Tensor) -> Tensor:
        if x.dim() == 2:
            return x @ w.T
        return F.conv2d(x, w[:, :, None, None])

    def _pixels(self, x: Tensor) -> int:
        if x.dim() not in (2, 4) or x.shape[1] != self.num_channels:
            raise ValueError(
                f"InvertibleConv1x1 expects input of shape (B, {self.num_channels}) or "
                f"(B, {self.num_channels}, H, W), got {tuple(x.shape)}"
            )
        return 1 if x.dim() == 2 else x.shape[2] * x.shape[3]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pixels = self._pixels(x)
        return self._mix(x, self.weight()), (pixels * self.log_s.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        pixels = self._pixels(z)
        w_inv = torch.linalg.inv(self.weight())
        return self._mix(z, w_inv), (-pixels * self.log_s.sum()).expand(z.shape[0])
