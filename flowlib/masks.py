"""Binary masks that split the input of a coupling layer.

A mask :math:`b` has the shape of one example; ``True`` marks the
*conditioning* part :math:`x_1` (passed through unchanged, fed to the net) and
``False`` the part :math:`x_2` that is transformed. The RealNVP paper
(Dinh et al. 2017, section 3.4) writes a coupling as
:math:`y = b \\odot x + (1-b) \\odot (x \\odot \\exp(s(b \\odot x)) + t(b \\odot x))`.

* `alternating_mask` (NICE, Dinh et al. 2015, section 5.1): odd/even
  coordinates of a vector;
* `half_mask`: first half / second half of a vector (RealNVP's
  :math:`x_{1:d}, x_{d+1:D}` of section 3.2 with :math:`d = \\lfloor D/2 \\rfloor`);
* `checkerboard_mask` (RealNVP section 3.4): pixels where :math:`(i + j)` is
  even, on ``(C, H, W)`` (RealNVP's own mask, which conditions on the odd
  pixels, is parity 1; the two alternate in every stack);
* `channel_mask` (RealNVP section 3.4): first half / second half of the
  channels, on ``(C, H, W)``.

``parity`` flips which part conditions, so alternating parities in a stack
lets every coordinate be transformed (NICE section 3.2.3: at least three
couplings are needed for every dimension to influence every other).

Reference: L. Dinh, D. Krueger, Y. Bengio, "NICE: Non-linear Independent
Components Estimation", ICLR 2015 workshop, arXiv:1410.8516
(https://arxiv.org/abs/1410.8516).

Reference: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using
Real NVP", ICLR 2017, arXiv:1605.08803 (https://arxiv.org/abs/1605.08803).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .flow import check_int

__all__ = ["alternating_mask", "half_mask", "checkerboard_mask", "channel_mask", "is_channelwise"]


def _check_parity(parity: int) -> None:
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")


def alternating_mask(dim: int, parity: int = 0) -> Tensor:
    """Even coordinates condition (``parity=0``) or odd ones do (``parity=1``).

    >>> alternating_mask(5)
    tensor([ True, False,  True, False,  True])
    """
    _check_parity(parity)
    check_int("dim", dim, least=2)  # a coupling needs both parts
    return (torch.arange(dim) % 2) == parity


def half_mask(dim: int, parity: int = 0) -> Tensor:
    """First ``dim // 2`` coordinates condition (``parity=0``), or the rest do.

    >>> half_mask(4, parity=1)
    tensor([False, False,  True,  True])
    """
    _check_parity(parity)
    check_int("dim", dim, least=2)  # a coupling needs both parts
    first = torch.arange(dim) < dim // 2
    return first if parity == 0 else ~first


def checkerboard_mask(channels: int, height: int, width: int, parity: int = 0) -> Tensor:
    """Checkerboard over pixels, the same in every channel: shape ``(C, H, W)``.

    >>> checkerboard_mask(1, 2, 3)[0]
    tensor([[ True, False,  True],
            [False,  True, False]])
    """
    _check_parity(parity)
    for name, value in (("channels", channels), ("height", height), ("width", width)):
        check_int(name, value)
    if height * width < 2:
        raise ValueError(f"checkerboard needs at least 2 pixels, got {(channels, height, width)}")
    ij = torch.arange(height)[:, None] + torch.arange(width)[None, :]
    board = (ij % 2) == parity
    return board.expand(channels, height, width).clone()


def channel_mask(channels: int, height: int, width: int, parity: int = 0) -> Tensor:
    """First half of the channels condition (``parity=0``), or the second half do.

    >>> channel_mask(4, 1, 1, parity=0).flatten()
    tensor([ True,  True, False, False])
    """
    _check_parity(parity)
    check_int("channels", channels)
    if channels < 2:  # a channel mask needs both parts
        raise ValueError(f"a channel mask needs at least 2 channels, got {channels}")
    check_int("height", height)
    check_int("width", width)
    first = torch.arange(channels) < channels // 2
    first = first if parity == 0 else ~first
    return first[:, None, None].expand(channels, height, width).clone()


def is_channelwise(mask: Tensor) -> bool:
    """True when the mask splits along dim 0 only (vectors, or whole channels).

    Such a split can be done by indexing, so the net sees only the
    conditioning part; other masks (checkerboard) are applied by multiplication.
    """
    if mask.dim() == 1:
        return True
    flat = mask.flatten(1)
    return bool((flat == flat[:, :1]).all())
