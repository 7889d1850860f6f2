"""Units of log-likelihood: nats per example and bits per dimension.

For ``D``-dimensional 8-bit data, bits per dimension is

.. math:: \\mathrm{bpd} = \\frac{-\\log P(x)}{D \\ln 2}.

A density model of dequantized data, :math:`y = (x + u) / 256` with
:math:`u \\sim U[0, 1)^D`, gives the bound
:math:`\\log P(x) \\ge \\mathbb E_u[\\log p(y)] - D \\ln 256` (Theis et al. 2016).
Papers on [0, 1]-scaled data (NICE) report the continuous log-density
:math:`\\log p(y)` in nats; since the scaling has
:math:`\\log|\\det| = -D \\ln 256`,

.. math:: \\mathrm{bpd} = 8 - \\frac{\\log p(y)}{D \\ln 2}.

NICE's MNIST number, 1980.50 nats, is the "Log-likelihood" row of its
table of architecture and results (section 5.1); the paper's comparison with
other models covers TFD and CIFAR-10 only, since for MNIST it finds no fair
comparison. It is a log-density of data dequantized with uniform noise
of 1/256 and rescaled to :math:`[0, 1]^D` (NICE section 5.1), not bits/dim:
:math:`8 - 1980.50 / (784 \\ln 2) = 4.36` bits/dim, the figure later papers
quote for NICE on MNIST. (Whether the rescaling divides by 256 or 255 moves
this by at most :math:`\\log_2(256/255) = 0.006` bits/dim.) NICE's CIFAR-10
data is rescaled to :math:`[-1, 1]^D` with noise of 1/128, a bin of width
1/128, so there the constant is :math:`\\log_2 128 = 7` (``num_levels=128``):
5371.78 nats give 4.48 bits/dim.

Reference: L. Dinh, D. Krueger, Y. Bengio, "NICE: Non-linear Independent
Components Estimation", ICLR 2015 workshop, arXiv:1410.8516
(https://arxiv.org/abs/1410.8516).

Reference: L. Theis, A. van den Oord, M. Bethge, "A note on the evaluation of
generative models", ICLR 2016, arXiv:1511.01844
(https://arxiv.org/abs/1511.01844).
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

    ``num_levels`` is the number of dequantization bins per unit length
    (256 for 8-bit data on [0, 1]; 128 for 8-bit data on [-1, 1]).

    >>> round(unit_interval_nats_to_bits_per_dim(1980.50, 784), 3)   # NICE, MNIST (section 5.1)
    4.356
    >>> round(unit_interval_nats_to_bits_per_dim(5371.78, 3072, num_levels=128), 3)   # NICE, CIFAR-10
    4.477
    """
    return math.log2(num_levels) - log_likelihood / (num_dims * math.log(2))


def bits_per_dim_to_unit_interval_nats(bpd: float, num_dims: int, num_levels: int = 256) -> float:
    """Inverse of `unit_interval_nats_to_bits_per_dim`.

    >>> round(bits_per_dim_to_unit_interval_nats(4.356, 784), 0)
    1980.0
    """
    return (math.log2(num_levels) - bpd) * num_dims * math.log(2)
