"""A flow model: a flow ``f`` (data to latent) and a prior, with the density, samples and bits/dim they give.

By the change of variables, for :math:`z = f(x)`,

.. math:: \\log p_X(x) = \\log p_Z(f(x)) + \\log\\left|\\det \\frac{\\partial f}{\\partial x}\\right|,

and sampling runs the flow backwards, :math:`x = f^{-1}(T z)`, :math:`z \\sim p_Z` (:math:`T` the temperature).
The presets the book trains are in `flowlib.models`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .dequantization import Dequantize, VariationalDequantize
from .distributions import Prior, make_prior
from .flow import Flow, Sequential, check_int, check_shape, value_checks_enabled
from .metrics import bits_per_dim
from .multiscale import MultiScale

__all__ = ["FlowModel"]


class FlowModel(nn.Module):
    """A flow ``f`` (data to latent) paired with a prior ``p_Z``.

    ``device`` and ``dtype`` are the model's (they follow ``.to()``, also for
    a flow without parameters). A multi-scale model's stages are reached by
    name: ``model.multiscale.levels[k]`` and ``model.multiscale.final``.

    >>> from flowlib.models import realnvp
    >>> model = realnvp(2, num_couplings=2, hidden=8)
    >>> model.log_prob(torch.randn(5, 2)).shape, model.sample(3).shape, model.dtype
    (torch.Size([5]), torch.Size([3, 2]), torch.float32)
    """

    def __init__(
        self, flow: Flow, prior: Prior | str, event_shape: Sequence[int],
        latent_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.flow = flow
        self.prior = make_prior(prior)
        self.event_shape = tuple(event_shape)
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else self.event_shape
        self.num_dims = math.prod(self.event_shape)
        tensors = itertools.chain(flow.parameters(), flow.buffers())
        ref = next((t for t in tensors if t.is_floating_point()), None)
        like = {} if ref is None else dict(dtype=ref.dtype, device=ref.device)
        # an empty tensor that moves with .to(): the model's device and dtype, even without parameters
        self.register_buffer("_anchor", torch.empty(0, **like), persistent=False)

    @property
    def device(self) -> torch.device:
        """The device the model's tensors live on."""
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type the model computes in."""
        return self._anchor.dtype

    @property
    def multiscale(self) -> MultiScale:
        """The `~flowlib.multiscale.MultiScale` body (``levels``, ``final``, ``split_latent``).

        >>> from flowlib.models import realnvp_image
        >>> realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1).multiscale.latent_shapes
        [(2, 4, 4), (2, 4, 4)]
        """
        found = [m for m in self.flow.modules() if isinstance(m, MultiScale)]
        if not found:
            raise ValueError(f"this model's flow ({type(self.flow).__name__}) has no MultiScale stage")
        return found[0]

    @property
    def takes_levels(self) -> bool:
        """Whether the flow starts with a dequantizer, so that ``log_prob`` takes integer levels (8-bit images).

        >>> from flowlib.models import realnvp, realnvp_image
        >>> realnvp(2).takes_levels, realnvp_image((1, 4, 4), num_scales=1, hidden_channels=2, num_blocks=0).takes_levels
        (False, True)
        """
        first: nn.Module = self.flow
        while isinstance(first, Sequential) and len(first):
            first = first[0]
        return isinstance(first, (Dequantize, VariationalDequantize))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log_det)`` of the flow."""
        return self.flow(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log_det)`` of the inverse flow."""
        return self.flow.inverse(z)

    def log_prob(self, x: Tensor) -> Tensor:
        """:math:`\\log p_X(x)` in nats per example, shape ``(B,)``.

        Integer input (8-bit images) is taken as is by a model that starts
        with a dequantizer (`takes_levels`); floating-point input must have the
        model's dtype and, with value checks on, be finite. A bool tensor (a
        mask, not data) is refused.

        >>> from flowlib.models import realnvp
        >>> realnvp(2, 2, 8).log_prob(torch.zeros(1, 2, dtype=torch.float64))
        Traceback (most recent call last):
        ...
        ValueError: FlowModel.log_prob expects input of dtype torch.float32 (the model's), got torch.float64
        """
        check_shape(x, self.event_shape, "FlowModel.log_prob")
        if x.shape[0] == 0:
            raise ValueError(f"FlowModel.log_prob expects a batch of at least one example, got shape {tuple(x.shape)}")
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"FlowModel.log_prob expects real data (floating point, or integer levels for a model "
                             f"that starts with a dequantizer), got a tensor of dtype {x.dtype}")
        if not x.is_floating_point() and not self.takes_levels:
            raise ValueError(f"FlowModel.log_prob expects input of dtype {self.dtype} (the model's); integer data "
                             f"(levels) is for a model that starts with a dequantizer, got {x.dtype}")
        if x.is_floating_point():
            if x.dtype != self.dtype:
                raise ValueError(f"FlowModel.log_prob expects input of dtype {self.dtype} (the model's), "
                                 f"got {x.dtype}")
            if value_checks_enabled() and x.numel() and not bool(torch.isfinite(x).all()):
                raise ValueError(f"FlowModel.log_prob got {int((~torch.isfinite(x)).sum())} NaN or Inf "
                                 f"values in an input of shape {tuple(x.shape)}")
        z, log_det = self.flow(x)
        return self.prior.log_prob(z) + log_det

    def bits_per_dim(self, x: Tensor) -> Tensor:
        """:math:`-\\log p_X(x) / (D \\ln 2)` per example (`flowlib.metrics.bits_per_dim`)."""
        return bits_per_dim(self.log_prob(x), self.num_dims)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
        return_latent: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` samples :math:`x = f^{-1}(T \\cdot z)`, :math:`z \\sim p_Z` (``T = 0``: the prior's mode).

        >>> from flowlib.models import realnvp
        >>> realnvp(2, 2, 8).sample(2, temperature=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: temperature must be finite and >= 0, got -1.0
        """
        check_int("n", n)
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        z = self.prior.sample((n, *self.latent_shape), temperature, device=self.device,
                              dtype=self.dtype, generator=generator)
        x, _ = self.flow.inverse(z)
        return (x, z) if return_latent else x
