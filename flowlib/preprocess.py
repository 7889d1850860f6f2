"""Preprocessing as flows: dequantization and the logit transform.

Images are discrete (256 levels); a density on them must be honest about it.

* `Dequantize` (uniform dequantization, Theis et al. 2016): for
  :math:`x \\in \\{0, \\dots, 255\\}^D`, :math:`y = (x + u) / 256` with
  :math:`u \\sim U[0, 1)^D`, so :math:`y \\in [0, 1)^D` and
  :math:`\\log|\\det J| = -D \\log 256`. Then
  :math:`\\log P(x) \\ge \\mathbb E_u[\\log p(y)] - D \\log 256`: a model's
  ``log_prob`` including this layer lower-bounds the discrete log-likelihood.
* `Logit`: :math:`p = \\alpha + (1 - 2\\alpha) y`,
  :math:`z = \\log p - \\log(1 - p)`, so
  :math:`\\log|\\det J| = \\sum_d \\big(\\log(1 - 2\\alpha) - \\log p_d - \\log(1 - p_d)\\big)`.
  The :math:`\\alpha` keeps the logit away from :math:`\\pm\\infty` at 0 and 1.
  This is the symmetric variant of RealNVP's transform (section 4.1 models
  :math:`\\mathrm{logit}(\\alpha + (1 - \\alpha) y)`, which maps
  :math:`[0, 1]` onto :math:`[\\alpha, 1]`); here :math:`[0, 1]` maps onto
  :math:`[\\alpha, 1 - \\alpha]`, so both ends stay finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .flow import Flow, value_checks_enabled

__all__ = ["Dequantize", "Logit", "check_levels"]


def check_levels(x: Tensor, num_levels: int, name: str) -> None:
    """Raise a `ValueError` unless ``x`` holds integer levels in ``[0, num_levels - 1]`` (when value checks run).

    >>> check_levels(torch.tensor([[0.5]]), 256, "Dequantize")
    Traceback (most recent call last):
    ...
    ValueError: Dequantize expects integer levels in [0, 255], got non-integer values (is the data already scaled to [0, 1]?)
    """
    if not value_checks_enabled():
        return
    top = num_levels - 1
    if x.numel() and (x.min() < 0 or x.max() > top):
        raise ValueError(
            f"{name} expects {math.log2(num_levels):g}-bit data, integers in "
            f"[0, {top}]; got values in [{x.min().item():g}, {x.max().item():g}]"
        )
    if x.is_floating_point() and not torch.equal(x, torch.floor(x)):
        raise ValueError(
            f"{name} expects integer levels in [0, {top}], got "
            "non-integer values (is the data already scaled to [0, 1]?)"
        )


class Dequantize(Flow):
    """Uniform dequantization of ``num_levels``-level data to ``[0, 1)``.

    :math:`y = (x + u) / L` with :math:`u \\sim U[0, 1)^D` and :math:`L` =
    ``num_levels``, so :math:`\\log|\\det J| = -D \\log L` for every example,
    and :math:`\\log P(x) \\ge \\mathbb E_u[\\log p(y)] - D \\log L`.

    ``forward`` takes integer-valued data (uint8, int or float) in
    ``[0, num_levels - 1]`` with a batch dimension and at least one example;
    ``inverse`` rounds back down to the levels. The output has the dtype of
    the model the layer sits in (it follows ``.to(torch.float64)``,
    ``.double()``, ...), whatever the dtype of the data, so a float64 model
    takes uint8 images directly.

    Reference: L. Theis, A. van den Oord, M. Bethge, "A note on the evaluation
    of generative models", ICLR 2016, arXiv:1511.01844
    (https://arxiv.org/abs/1511.01844).

    >>> y, log_det = Dequantize()(torch.tensor([[0, 255]], dtype=torch.uint8))
    >>> bool(((y >= 0) & (y < 1)).all()), round(log_det.item(), 4)
    (True, -11.0904)
    """

    def __init__(self, num_levels: int = 256) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"num_levels must be at least 2, got {num_levels}")
        self.num_levels = num_levels
        # Zero-size and not saved: it only carries the model's dtype (and device) through .to().
        self.register_buffer("dtype_anchor", torch.empty(0), persistent=False)

    def _log_det(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """:math:`-D \\log L` for each of the ``B`` examples of ``x``."""
        dims = x.shape[1:].numel()
        return torch.full((x.shape[0],), -dims * math.log(self.num_levels), dtype=dtype, device=x.device)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_batched(x, "Dequantize", nonempty=True)
        check_levels(x, self.num_levels, "Dequantize")
        x = x.to(self.dtype_anchor.dtype)
        u = torch.rand_like(x)
        return (x + u) / self.num_levels, self._log_det(x, x.dtype)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        _check_batched(z, "Dequantize", nonempty=True)
        x = torch.floor(z * self.num_levels).clamp(0, self.num_levels - 1)
        return x, -self._log_det(z, x.dtype)


def _check_batched(x: Tensor, name: str, nonempty: bool = False) -> None:
    """Raise a ValueError unless ``x`` is ``(B, *event_shape)`` (with ``B >= 1`` if ``nonempty``)."""
    if x.dim() < 2:
        raise ValueError(f"{name} expects input of shape (B, *event_shape), got {tuple(x.shape)}")
    if nonempty and x.shape[0] == 0:
        raise ValueError(
            f"{name} expects a batch of at least one example, shape (B, *event_shape) with B >= 1; "
            f"got an empty batch of shape {tuple(x.shape)}"
        )


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
        _check_batched(x, "Logit")
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
        _check_batched(z, "Logit")
        p = torch.sigmoid(z)
        x = (p - self.alpha) / (1 - 2 * self.alpha)
        log_det = (-F.softplus(-z) - F.softplus(z) - math.log(1 - 2 * self.alpha)).flatten(1).sum(1)
        return x, log_det
