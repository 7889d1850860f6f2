"""The multi-scale architecture of RealNVP (Dinh et al. 2017, section 3.6).

After each scale, half of the channels are *factored out*: they go straight to
the latent code and are not transformed further. With ``L`` levels on a
``(C, H, W)`` input, level ``k`` works on ``(C 2^k, H / 2^k, W / 2^k)``
before its squeeze, so deep layers are cheap, and the latent is

.. math:: z = (z_1, z_2, \\dots, z_L, z_{final}),\\quad
   \\log|\\det J| = \\sum_{levels} \\log|\\det J_k| + \\log|\\det J_{final}|.

Every level must map ``(C, H, W)`` to ``(4C, H/2, W/2)`` (it contains one
`~flowlib.reshape.Squeeze`); the container then keeps the second half of the
channels and factors out the first half. The final flow keeps its input's
shape unless ``final_output_shape`` says otherwise (Glow's last scale starts
with a squeeze). The latent is returned flat,
``(B, C H W)``; `split_latent` cuts it back into the per-scale pieces.
In the paper's notation (RealNVP section 3.6), :math:`h^{(0)} = x`,
:math:`(z^{(i+1)}, h^{(i+1)}) = f^{(i+1)}(h^{(i)})`,
:math:`z^{(L)} = f^{(L)}(h^{(L-1)})`, :math:`z = (z^{(1)}, \\dots, z^{(L)})`.

Reference: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using
Real NVP", ICLR 2017, arXiv:1605.08803 (https://arxiv.org/abs/1605.08803).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .flow import Flow, check_int, check_shape

__all__ = ["MultiScale"]


class MultiScale(Flow):
    """Levels with factor-out, then a final flow; latent flattened to ``(B, D)``.

    >>> from flowlib.reshape import Squeeze
    >>> from flowlib.permutations import ReversePermutation
    >>> ms = MultiScale([Squeeze()], ReversePermutation(2), shape=(1, 4, 4))
    >>> ms.latent_shapes
    [(2, 2, 2), (2, 2, 2)]
    >>> z, log_det = ms(torch.randn(3, 1, 4, 4))
    >>> z.shape
    torch.Size([3, 16])
    """

    def __init__(self, levels: Sequence[Flow], final: Flow, shape: tuple[int, int, int],
                 final_output_shape: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.final = final
        self.input_shape = tuple(shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"shape must be (C, H, W), got {self.input_shape}")
        for size in self.input_shape:
            check_int("shape", size)
        c, h, w = self.input_shape
        self.latent_shapes: list[tuple[int, int, int]] = []
        self.level_shapes: list[tuple[int, int, int]] = []
        for _ in levels:
            if h % 2 or w % 2:
                raise ValueError(f"cannot squeeze a level of shape {(c, h, w)}: H and W must be even")
            c, h, w = 4 * c, h // 2, w // 2
            self.level_shapes.append((c, h, w))
            self.latent_shapes.append((c // 2, h, w))
            c = c - c // 2
        self.final_shape = (c, h, w)
        out = self.final_shape if final_output_shape is None else tuple(final_output_shape)
        if math.prod(out) != math.prod(self.final_shape):
            raise ValueError(f"final_output_shape {out} must hold as many values as the final flow's input "
                             f"{self.final_shape}")
        self.latent_shapes.append(out)
        self.num_dims = math.prod(self.input_shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(x, self.input_shape, "MultiScale")
        total = x.new_zeros(x.shape[0])
        pieces = []
        for level in self.levels:
            x, log_det = level(x)
            total = total + log_det
            half = x.shape[1] // 2
            pieces.append(x[:, :half].flatten(1))
            x = x[:, half:]
        x, log_det = self.final(x)
        pieces.append(x.flatten(1))
        return torch.cat(pieces, dim=1), total + log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(z, (self.num_dims,), "MultiScale.inverse")
        pieces = self.split_latent(z)
        x, total = self.final.inverse(pieces[-1])
        for level, factored in zip(reversed(self.levels), reversed(pieces[:-1])):
            x, log_det = level.inverse(torch.cat([factored, x], dim=1))
            total = total + log_det
        return x, total

    def split_latent(self, z: Tensor) -> list[Tensor]:
        """Cut a flat latent into the per-scale pieces, shaped ``latent_shapes``."""
        sizes = [math.prod(s) for s in self.latent_shapes]
        return [p.reshape(z.shape[0], *s) for p, s in zip(z.split(sizes, dim=1), self.latent_shapes)]

    def join_latent(self, pieces: Sequence[Tensor]) -> Tensor:
        """Inverse of `split_latent`."""
        return torch.cat([p.flatten(1) for p in pieces], dim=1)
