"""Normalisation layers as flows: batch normalisation and ActNorm.

Both are per-feature (per-channel on images) affine maps
:math:`z = (x - \\mu) / \\sigma \\cdot e^{\\gamma} + \\beta`, so for an input of
``H x W`` pixels

.. math:: \\log|\\det J| = H W \\sum_c \\big(\\gamma_c - \\log \\sigma_c\\big).

* `BatchNormFlow` (RealNVP section 3.7): :math:`\\mu, \\sigma^2` are the batch's
  statistics in training (treated as constants in the log-det, as in the
  paper) and running averages in eval mode; ``inverse`` uses the running
  averages.
* `ActNorm` (Glow section 3.1): :math:`\\mu, \\sigma` are learned parameters,
  initialised from the first batch so that its output has zero mean and unit
  variance per channel (data-dependent initialisation).

Both need a non-empty batch (the statistics of an empty batch are NaN), and
ActNorm's initialisation at least two values per feature (one value has no
spread to divide by); both raise a ValueError otherwise, before any
statistic or parameter changes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .flow import Flow, check_int, check_positive, data_init_enabled

__all__ = ["BatchNormFlow", "ActNorm"]


def _reduce_dims(x: Tensor, num_features: int, name: str) -> tuple[list[int], int]:
    """The dims to reduce over for per-feature statistics, and the pixels per feature.

    Raises a ValueError unless ``x`` is ``(B, F)`` or ``(B, F, H, W)`` with
    ``F = num_features`` and ``B >= 1``.
    """
    if x.dim() not in (2, 4) or x.shape[1] != num_features:
        raise ValueError(
            f"{name} expects input of shape (B, {num_features}) or (B, {num_features}, H, W), "
            f"got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(
            f"{name} expects a batch of at least one example (B >= 1) of shape (B, {num_features}) "
            f"or (B, {num_features}, H, W); got an empty batch of shape {tuple(x.shape)}"
        )
    if x.dim() == 2:
        return [0], 1
    return [0, 2, 3], x.shape[2] * x.shape[3]


def _per_feature(v: Tensor, x: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1) if x.dim() == 4 else v.view(1, -1)


class BatchNormFlow(Flow):
    """Batch normalisation with its log-determinant counted.

    Per feature :math:`c`,
    :math:`z = (x - \\mu_c) / \\sqrt{\\sigma_c^2 + \\epsilon} \\cdot e^{\\gamma_c} + \\beta_c`,
    so :math:`\\log|\\det J| = H W \\sum_c \\big(\\gamma_c - \\tfrac12 \\log(\\sigma_c^2 + \\epsilon)\\big)`
    (:math:`H W = 1` for vectors). In training :math:`\\mu, \\sigma^2` are the
    batch's statistics, treated as constants in the log-det, and update the
    running averages (``momentum``); in eval mode and in ``inverse`` the
    running averages are used. RealNVP section 3.7 uses batch normalisation
    this way, as a layer of the flow whose rescaling enters the Jacobian
    (its appendix E describes a variant with running averages in training).

    Reference: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using
    Real NVP", ICLR 2017, arXiv:1605.08803 (https://arxiv.org/abs/1605.08803);
    batch normalisation itself: S. Ioffe, C. Szegedy, "Batch Normalization:
    Accelerating Deep Network Training by Reducing Internal Covariate Shift",
    ICML 2015, arXiv:1502.03167 (https://arxiv.org/abs/1502.03167).

    >>> bn = BatchNormFlow(2).eval()
    >>> z, log_det = bn(torch.ones(3, 2))
    >>> torch.allclose(bn.inverse(z)[0], torch.ones(3, 2), atol=1e-6)
    True
    """

    def __init__(self, num_features: int, momentum: float = 0.05, eps: float = 1e-4) -> None:
        super().__init__()
        check_int("num_features", num_features)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        check_positive("eps", eps)
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _batch_statistics(self, x: Tensor, dims: list[int]) -> tuple[Tensor, Tensor]:
        """The batch's per-feature mean and biased variance (data parallelism takes the global batch's)."""
        return x.mean(dims), x.var(dims, unbiased=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dims, pixels = _reduce_dims(x, self.num_features, "BatchNormFlow")
        if self.training:
            mean, var = self._batch_statistics(x, dims)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        log_std = 0.5 * torch.log(var + self.eps)
        z = (x - _per_feature(mean, x)) * _per_feature(torch.exp(self.log_gamma - log_std), x)
        z = z + _per_feature(self.beta, x)
        log_det = (pixels * (self.log_gamma - log_std).sum()).expand(x.shape[0])
        return z, log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        _, pixels = _reduce_dims(z, self.num_features, "BatchNormFlow")
        log_std = 0.5 * torch.log(self.running_var + self.eps)
        x = (z - _per_feature(self.beta, z)) * _per_feature(torch.exp(log_std - self.log_gamma), z)
        x = x + _per_feature(self.running_mean, z)
        log_det = (pixels * (log_std - self.log_gamma).sum()).expand(z.shape[0])
        return x, log_det


class ActNorm(Flow):
    """:math:`z = (x + b) \\odot e^{\\log s}` per channel, data-initialised.

    :math:`\\log|\\det J| = H W \\sum_c \\log s_c` (:math:`H W = 1` for
    vectors). It starts as the identity; `~flowlib.flow.initialize_from_data`
    sets ``b`` and ``s`` from a batch so that its output has zero mean and
    unit variance per channel (:math:`b = -\\mu`,
    :math:`s = 1 / (\\sigma + 10^{-6})`), which needs at least two values per
    channel (``B * H * W >= 2``).

    Reference: D. P. Kingma, P. Dhariwal, "Glow: Generative Flow with
    Invertible 1x1 Convolutions", NeurIPS 2018, arXiv:1807.03039
    (https://arxiv.org/abs/1807.03039), section 3.1.

    >>> from flowlib.flow import initialize_from_data
    >>> an, x = ActNorm(2), torch.randn(64, 2) * 3 + 1
    >>> _ = initialize_from_data(an, x)
    >>> z, _ = an(x)
    >>> bool(z.mean(0).abs().max() < 1e-5), bool((z.std(0, unbiased=False) - 1).abs().max() < 1e-3)
    (True, True)
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        check_int("num_features", num_features)
        self.num_features = num_features
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``b = -mean``, ``s = 1 / std`` from a batch (`~flowlib.flow.initialize_from_data` calls it).

        Raises a ValueError, changing nothing, when the batch holds fewer than
        two values per feature (its standard deviation would be 0, and the
        scale :math:`10^6`).
        """
        dims, pixels = _reduce_dims(x, self.num_features, "ActNorm")
        values = x.shape[0] * pixels
        if values < 2:
            raise ValueError(
                f"ActNorm's data-dependent initialisation needs at least 2 values per feature to "
                f"estimate a standard deviation (B * H * W >= 2); got {values} from input of shape "
                f"{tuple(x.shape)}. Initialise from a batch of several examples."
            )
        self.bias.copy_(-x.mean(dims))
        self.log_scale.copy_(-torch.log(x.std(dims, unbiased=False) + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _, pixels = _reduce_dims(x, self.num_features, "ActNorm")
        if data_init_enabled() and not self.initialized:
            self.initialize(x)
        z = (x + _per_feature(self.bias, x)) * _per_feature(torch.exp(self.log_scale), x)
        return z, (pixels * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        _, pixels = _reduce_dims(z, self.num_features, "ActNorm")
        x = z * _per_feature(torch.exp(-self.log_scale), z) - _per_feature(self.bias, z)
        return x, (-pixels * self.log_scale.sum()).expand(z.shape[0])
