"""Models (a flow plus a prior) and the presets the book trains.

By the change of variables, for :math:`z = f(x)`,

.. math:: \\log p_X(x) = \\log p_Z(f(x)) + \\log\\left|\\det \\frac{\\partial f}{\\partial x}\\right|,

and sampling runs the flow backwards, :math:`x = f^{-1}(z)`, :math:`z \\sim p_Z`.

Presets:

* `nice`: the NICE paper's MNIST model (Dinh et al. 2014, section 5.1):
  4 additive couplings with alternating odd/even partitions, 5 hidden ReLU
  layers of 1000 units each, a diagonal scaling, a logistic prior.
* `realnvp`: a vector RealNVP (affine couplings, alternating masks) for 2D toys.
* `realnvp_image`: RealNVP's multi-scale model (Dinh et al. 2016, section 3.6)
  with dequantization and logit preprocessing, so ``log_prob`` is on 8-bit images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .coupling import AdditiveCoupling, AffineCoupling
from .distributions import Prior, make_prior
from .flow import Flow, Sequential
from .masks import alternating_mask, channel_mask, checkerboard_mask
from .multiscale import MultiScale
from .nets import MLP, ResidualConvNet
from .preprocess import Dequantize, Logit
from .reshape import Squeeze
from .scaling import DiagonalScaling

__all__ = ["FlowModel", "nice", "realnvp", "realnvp_image"]


class FlowModel(nn.Module):
    """A flow ``f`` (data to latent) paired with a prior ``p_Z``.

    >>> model = realnvp(2, num_couplings=2, hidden=8)
    >>> model.log_prob(torch.randn(5, 2)).shape
    torch.Size([5])
    >>> model.sample(3).shape
    torch.Size([3, 2])
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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log_det)`` of the flow."""
        return self.flow(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log_det)`` of the inverse flow."""
        return self.flow.inverse(z)

    def log_prob(self, x: Tensor) -> Tensor:
        """:math:`\\log p_X(x)` in nats per example, shape ``(B,)``."""
        z, log_det = self.flow(x)
        return self.prior.log_prob(z) + log_det

    def bits_per_dim(self, x: Tensor) -> Tensor:
        """:math:`-\\log p_X(x) / (D \\ln 2)` per example."""
        return -self.log_prob(x) / (self.num_dims * math.log(2))

    def _param(self) -> Tensor:
        return next(self.parameters())

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
        return_latent: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` samples :math:`x = f^{-1}(T \\cdot z)`, :math:`z \\sim p_Z`."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        ref = self._param()
        z = self.prior.sample((n, *self.latent_shape), temperature, device=ref.device,
                              dtype=ref.dtype, generator=generator)
        x, _ = self.flow.inverse(z)
        return (x, z) if return_latent else x


def nice(
    dim: int, num_couplings: int = 4, hidden: int = 1000, num_hidden_layers: int = 5,
    prior: str = "logistic", dequantize: bool = False,
) -> FlowModel:
    """NICE: additive couplings on alternating odd/even halves, then diagonal scaling.

    :math:`h^{(k)}_{I_2} = h^{(k-1)}_{I_2} + m_k(h^{(k-1)}_{I_1})` with the roles
    of odd and even coordinates swapped at every layer; :math:`z = e^S \\odot h^{(K)}`.
    With ``dequantize=True`` the model takes 8-bit data and scales it to [0, 1)
    with uniform noise (the paper's preprocessing), counting that log-det.

    >>> model = nice(784)
    >>> sum(p.numel() for p in model.parameters())
    19158352
    """
    if dim < 2:
        raise ValueError(f"NICE needs dim >= 2, got {dim}")
    if num_couplings < 1:
        raise ValueError(f"num_couplings must be at least 1, got {num_couplings}")
    layers: list[Flow] = [Dequantize()] if dequantize else []
    for k in range(num_couplings):
        mask = alternating_mask(dim, parity=k % 2)
        n_cond = int(mask.sum())
        net = MLP(n_cond, dim - n_cond, hidden=hidden, num_hidden_layers=num_hidden_layers)
        layers.append(AdditiveCoupling(mask, net))
    prior_dist = make_prior(prior)
    layers.append(DiagonalScaling(dim, init_std=prior_dist.std))
    return FlowModel(Sequential(*layers), prior_dist, (dim,))


def realnvp(
    dim: int = 2, num_couplings: int = 8, hidden: int = 128, num_hidden_layers: int = 2,
    prior: str = "normal",
) -> FlowModel:
    """A vector RealNVP: affine couplings on alternating masks (defaults for 2D toys).

    >>> realnvp(2).sample(4).shape
    torch.Size([4, 2])
    """
    if dim < 2:
        raise ValueError(f"RealNVP needs dim >= 2, got {dim}")
    layers: list[Flow] = []
    for k in range(num_couplings):
        mask = alternating_mask(dim, parity=k % 2)
        n_cond = int(mask.sum())
        net = MLP(n_cond, 2 * (dim - n_cond), hidden=hidden, num_hidden_layers=num_hidden_layers)
        layers.append(AffineCoupling(mask, net))
    return FlowModel(Sequential(*layers), prior, (dim,))


def _checkerboard_coupling(shape: tuple[int, int, int], parity: int, hidden: int, blocks: int) -> AffineCoupling:
    c, h, w = shape
    net = ResidualConvNet(c, 2 * c, hidden_channels=hidden, num_blocks=blocks)
    return AffineCoupling(checkerboard_mask(c, h, w, parity), net)


def _channel_coupling(shape: tuple[int, int, int], parity: int, hidden: int, blocks: int) -> AffineCoupling:
    c, h, w = shape
    mask = channel_mask(c, h, w, parity)
    n_cond = int(mask[:, 0, 0].sum())
    net = ResidualConvNet(n_cond, 2 * (c - n_cond), hidden_channels=hidden, num_blocks=blocks)
    return AffineCoupling(mask, net)


def realnvp_image(
    shape: tuple[int, int, int] = (1, 28, 28), num_scales: int = 3, hidden_channels: int = 64,
    num_blocks: int = 4, alpha: float = 0.05, prior: str = "normal", preprocess: bool = True,
) -> FlowModel:
    """Multi-scale RealNVP on ``(C, H, W)`` images.

    Each of the first ``num_scales - 1`` scales: 3 checkerboard couplings,
    squeeze, 3 channel couplings, factor out half the channels. Last scale:
    4 checkerboard couplings. s and t come from one residual conv net per
    coupling (``num_blocks`` blocks of ``hidden_channels``). With
    ``preprocess`` (default) the flow starts with `Dequantize` and `Logit`, so
    ``log_prob`` takes 8-bit images and returns the discrete-data bound in nats.

    >>> model = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=8, num_blocks=1)
    >>> model.log_prob(torch.randint(0, 256, (2, 1, 8, 8))).shape
    torch.Size([2])
    """
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (C, H, W), got {shape}")
    if num_scales < 1:
        raise ValueError(f"num_scales must be at least 1, got {num_scales}")
    c, h, w = shape
    factor = 2 ** (num_scales - 1)
    if h % factor or w % factor:
        raise ValueError(f"{num_scales} scales need H and W divisible by {factor}, got H={h}, W={w}")
    levels: list[Flow] = []
    for _ in range(num_scales - 1):
        before = [_checkerboard_coupling((c, h, w), k % 2, hidden_channels, num_blocks) for k in range(3)]
        c, h, w = 4 * c, h // 2, w // 2
        after = [_channel_coupling((c, h, w), k % 2, hidden_channels, num_blocks) for k in range(3)]
        levels.append(Sequential(*before, Squeeze(), *after))
        c = c - c // 2
    final = Sequential(*[_checkerboard_coupling((c, h, w), k % 2, hidden_channels, num_blocks) for k in range(4)])
    body = MultiScale(levels, final, shape)
    flow = Sequential(Dequantize(), Logit(alpha), body) if preprocess else body
    return FlowModel(flow, prior, shape, latent_shape=(math.prod(shape),))
