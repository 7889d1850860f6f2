"""Units of log-likelihood: nats per example and bits per dimension.

For ``D``-dimensional 8-bit data, bits per dimension is

.. math:: \\mathrm{bpd} = \\frac{-\\log P(x)}{D \\ln 2}.

Papers on [0, 1]-scaled data (NICE) report the continuous log-density
:math:`\\log p(y)` of :math:`y = x / 256`; since the scaling has
:math:`\\log|\\det| = -D \\ln 256`,

.. math:: \\mathrm{bpd} = 8 - \\frac{\\log p(y)}{D \\ln 2}.

NICE's MNIST 1980.50 nats gives :math:`8 - 1980.50 / (784 \\ln 2) = 4.36` bits/dim.
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["bits_per_dim", "unit_interval_nats_to_bits_per_dim", "bits_per_dim_to_unit_interval_nats"]


def bits_per_dim(log_prob: Tensor | float, num_dims: int) -> Tensor | float:
    """Bits per dimension from a log-likelihood in nats (per example).

    >>> round(bits_per_dim(-784 * math.log(2), 784), 6)
    1.0
    """
    return -log_prob / (num_dims * math.log(2))


def unit_interval_nats_to_bits_per_dim(log_likelihood: float, num_dims: int, num_levels: int = 256) -> float:
    """Convert a log-density on [0, 1]-scaled data (nats) to discrete bits per dimension.

    >>> round(unit_interval_nats_to_bits_per_dim(1980.50, 784), 3)
    4.356
    """
    return math.log2(num_levels) - log_likelihood / (num_dims * math.log(2))


def bits_per_dim_to_unit_interval_nats(bpd: float, num_dims: int, num_levels: int = 256) -> float:
    """Inverse of `unit_interval_nats_to_bits_per_dim`.

    >>> round(bits_per_dim_to_unit_interval_nats(4.356, 784), 0)
    1980.0
    """
    return (math.log2(num_levels) - bpd) * num_dims * math.log(2)
