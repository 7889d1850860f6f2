"""Squeeze: trade spatial size for channels (RealNVP, Dinh et al. 2017, section 3.6).

Each 2x2 block of pixels becomes 4 channels of one pixel,
:math:`(C, H, W) \\to (4C, H/2, W/2)` (the paper's :math:`s \\times s \\times c
\\to s/2 \\times s/2 \\times 4c`). It only moves numbers around, so it is
a permutation: exactly invertible with :math:`\\log|\\det J| = 0`. Channel
``4c + 2i + j`` of the output holds pixel ``(2h + i, 2w + j)`` of channel ``c``
(Figure 3 of the paper draws a 4x4x1 tensor squeezed into 2x2x4).

Reference: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using
Real NVP", ICLR 2017, arXiv:1605.08803 (https://arxiv.org/abs/1605.08803).
"""

from __future__ import annotations

from torch import Tensor

from .flow import Flow

__all__ = ["Squeeze", "squeeze", "unsqueeze"]


def squeeze(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)``.

    >>> import torch
    >>> squeeze(torch.arange(4.).reshape(1, 1, 2, 2)).flatten()
    tensor([0., 1., 2., 3.])
    """
    if x.dim() != 4:
        raise ValueError(f"squeeze expects input of shape (B, C, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs even height and width, got H={h}, W={w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(z: Tensor) -> Tensor:
    """``(B, 4C, H, W) -> (B, C, 2H, 2W)``, the exact inverse of `squeeze`."""
    if z.dim() != 4:
        raise ValueError(f"unsqueeze expects input of shape (B, C, H, W), got {tuple(z.shape)}")
    b, c, h, w = z.shape
    if c % 4:
        raise ValueError(f"unsqueeze needs a channel count divisible by 4, got C={c}")
    z = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c // 4, 2 * h, 2 * w)


class Squeeze(Flow):
    """The squeeze as a flow (``log_det = 0``).

    >>> import torch
    >>> z, log_det = Squeeze()(torch.zeros(2, 1, 28, 28))
    >>> tuple(z.shape), log_det
    ((2, 4, 14, 14), tensor([0., 0.]))
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return squeeze(x), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return unsqueeze(z), z.new_zeros(z.shape[0])
