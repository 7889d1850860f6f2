"""Coupling layers: NICE's additive coupling and RealNVP's affine coupling.

Split the input by a mask into a conditioning part :math:`x_1` and a
transformed part :math:`x_2`:

* additive (NICE, Dinh et al. 2015, section 3.2.2):
  :math:`y_1 = x_1,\\; y_2 = x_2 + m(x_1)`, so :math:`\\log|\\det J| = 0`;
* affine (RealNVP, Dinh et al. 2017, section 3.2):
  :math:`y_1 = x_1,\\; y_2 = x_2 \\odot \\exp(s(x_1)) + t(x_1)`, so
  :math:`\\log|\\det J| = \\sum_j s(x_1)_j`.

The Jacobian is block triangular, :math:`\\begin{pmatrix} I & 0 \\\\ \\partial y_2/\\partial x_1 & \\mathrm{diag}(e^{s}) \\end{pmatrix}`
(NICE section 3.2.1, RealNVP section 3.2), and the inverse needs no inverse
of :math:`m, s, t` (RealNVP section 3.3):
:math:`x_2 = (y_2 - t(y_1)) \\odot \\exp(-s(y_1))`.

Vector masks and channel masks are applied by *indexing*: the net sees only
:math:`x_1` (no work spent on zeros). Checkerboard masks are applied by
*multiplication*, as in the RealNVP paper (section 3.4,
:math:`y = b \\odot x + (1 - b) \\odot (x \\odot \\exp(s(b \\odot x)) + t(b \\odot x))`):
the net sees :math:`b \\odot x` and its output is masked with :math:`1 - b`.

The raw scale is squashed, :math:`s = a \\tanh(\\tilde s)` with a learned
per-dimension :math:`a` (initialised to 1), so :math:`|s|` stays bounded and
``exp(s)`` cannot overflow early in training. The squashing is an
implementation choice: :math:`s` is still a function of :math:`x_1` alone, so
the Jacobian keeps its form and the log-determinant is still :math:`\\sum_j s_j`.

Reference: L. Dinh, D. Krueger, Y. Bengio, "NICE: Non-linear Independent
Components Estimation", ICLR 2015 workshop, arXiv:1410.8516
(https://arxiv.org/abs/1410.8516).

Reference: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using
Real NVP", ICLR 2017, arXiv:1605.08803 (https://arxiv.org/abs/1605.08803).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .flow import Flow, check_shape
from .masks import is_channelwise

__all__ = ["Coupling", "AdditiveCoupling", "AffineCoupling"]


class Coupling(Flow):
    """Shared mask bookkeeping for coupling layers.

    ``mask`` has the shape of one example (``(D,)`` or ``(C, H, W)``);
    ``True`` marks the conditioning part.
    """

    def __init__(self, mask: Tensor, net: nn.Module) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() not in (1, 3):
            raise ValueError(f"mask must have shape (D,) or (C, H, W), got {tuple(mask.shape)}")
        if mask.all() or not mask.any():
            raise ValueError("mask must have both conditioning (True) and transformed (False) entries")
        self.event_shape = tuple(mask.shape)
        self.net = net
        self.by_index = is_channelwise(mask)
        self.register_buffer("mask", mask, persistent=False)
        if self.by_index:
            split = mask if mask.dim() == 1 else mask[:, 0, 0]
            cond = torch.nonzero(split).flatten()
            trans = torch.nonzero(~split).flatten()
            order = torch.cat([cond, trans])
            self.n_cond = len(cond)
            self.identity_order = bool((order == torch.arange(len(order))).all())
            self.register_buffer("cond_idx", cond, persistent=False)
            self.register_buffer("trans_idx", trans, persistent=False)
            self.register_buffer("merge_idx", torch.argsort(order), persistent=False)
        else:
            self.register_buffer("keep", mask.to(torch.get_default_dtype()), persistent=False)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(x1, x2)``: the conditioning part and the transformed part."""
        check_shape(x, self.event_shape, type(self).__name__)
        if not self.by_index:
            return x * self.keep.to(x.dtype), x
        if self.identity_order:
            return x[:, : self.n_cond], x[:, self.n_cond :]
        return x.index_select(1, self.cond_idx), x.index_select(1, self.trans_idx)

    def merge(self, x1: Tensor, y2: Tensor) -> Tensor:
        """Inverse of `split` (for masked layers ``y2`` is already the full tensor)."""
        if not self.by_index:
            return y2
        y = torch.cat([x1, y2], dim=1)
        return y if self.identity_order else y.index_select(1, self.merge_idx)

    def transformed(self, h: Tensor) -> Tensor:
        """Zero the conditioning entries of a masked net output (no-op for indexing)."""
        return h if self.by_index else h * (1 - self.keep.to(h.dtype))


class AdditiveCoupling(Coupling):
    """NICE: :math:`y_1 = x_1,\\; y_2 = x_2 + m(x_1)`; volume preserving (NICE section 3.2.2).

    ``net`` maps the conditioning part to a shift of the transformed part's shape.

    >>> from flowlib.masks import alternating_mask
    >>> from flowlib.nets import MLP
    >>> layer = AdditiveCoupling(alternating_mask(4), MLP(2, 2, hidden=8))
    >>> x = torch.randn(3, 4)
    >>> z, log_det = layer(x)
    >>> torch.allclose(layer.inverse(z)[0], x), log_det
    (True, tensor([0., 0., 0.]))
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = self.split(x)
        y2 = x2 + self.transformed(self.net(x1))
        return self.merge(x1, y2), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z1, z2 = self.split(z)
        x2 = z2 - self.transformed(self.net(z1))
        return self.merge(z1, x2), z.new_zeros(z.shape[0])


class AffineCoupling(Coupling):
    """RealNVP: :math:`y_2 = x_2 \\odot e^{s(x_1)} + t(x_1)`, :math:`\\log|\\det J| = \\sum s`.

    The affine coupling of RealNVP section 3.2. ``net`` returns ``2 x`` the
    transformed part's channels (features): the first half is the raw scale
    :math:`\\tilde s`, the second the shift :math:`t`.

    >>> from flowlib.masks import half_mask
    >>> from flowlib.nets import MLP
    >>> layer = AffineCoupling(half_mask(4), MLP(2, 4, hidden=8, zero_init=False))
    >>> x = torch.randn(3, 4)
    >>> z, log_det = layer(x)
    >>> x_back, inv_log_det = layer.inverse(z)
    >>> torch.allclose(x_back, x, atol=1e-6), torch.allclose(inv_log_det, -log_det)
    (True, True)
    """

    def __init__(self, mask: Tensor, net: nn.Module) -> None:
        super().__init__(mask, net)
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() == 1:
            scale_shape: tuple[int, ...] = (int((~mask).sum()),)
        elif self.by_index:
            scale_shape = (int((~mask[:, 0, 0]).sum()), 1, 1)
        else:
            scale_shape = (mask.shape[0], 1, 1)
        self.scale = nn.Parameter(torch.ones(scale_shape))

    def scale_and_shift(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`s = a \\tanh(\\tilde s)` and :math:`t`, zero on conditioning entries."""
        raw_s, t = self.net(x1).chunk(2, dim=1)
        s = self.scale * torch.tanh(raw_s)
        return self.transformed(s), self.transformed(t)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = self.split(x)
        s, t = self.scale_and_shift(x1)
        y2 = x2 * torch.exp(s) + t
        return self.merge(x1, y2), s.flatten(1).sum(1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z1, z2 = self.split(z)
        s, t = self.scale_and_shift(z1)
        x2 = (z2 - t) * torch.exp(-s)
        return self.merge(z1, x2), -s.flatten(1).sum(1)
