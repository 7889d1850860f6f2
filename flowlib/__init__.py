"""flowlib: the normalizing-flow layers of the book, each checked against autograd.

The layers and models are here, at the top; `flowlib.training`, `flowlib.datasets` and
`flowlib.book` import them, never the other way round (flowlib/README.md).

Convention: ``forward`` maps data to latent and ``inverse`` latent to data;
both return ``(tensor, log_det)`` with ``log_det`` of shape ``(B,)``.
"""

from __future__ import annotations

from .autoregressive import MADE, MaskedAutoregressive, MaskedLinear
from .conv1x1 import InvertibleConv1x1
from .coupling import AdditiveCoupling, AffineCoupling, Coupling
from .dequantization import Dequantize, VariationalDequantize
from .distributions import StandardLogistic, StandardNormal, make_prior
from .flow import Flow, Sequential, check_shape, value_checks
from .jacobian import flow_log_abs_det, jacobian, log_abs_det_jacobian
from .logit import Logit
from .masks import alternating_mask, channel_mask, checkerboard_mask, half_mask
from .flow_model import FlowModel
from .models import maf, nice, nsf, realnvp, realnvp_image, realnvp_image_single_scale, toy_model
from .multiscale import MultiScale
from .nets import MLP, ResidualConvNet
from .normalization import ActNorm, BatchNormFlow
from .permutations import Permutation, RandomPermutation, ReversePermutation
from .reshape import Squeeze
from .scaling import DiagonalScaling
from .splines import SplineAutoregressive, SplineCoupling, rational_quadratic_spline

__all__ = [
    "ActNorm", "AdditiveCoupling", "AffineCoupling", "BatchNormFlow", "Coupling", "Dequantize",
    "DiagonalScaling", "Flow", "FlowModel", "InvertibleConv1x1", "Logit", "MADE", "MLP", "MaskedAutoregressive",
    "MaskedLinear", "MultiScale",
    "Permutation", "RandomPermutation", "ResidualConvNet", "ReversePermutation",
    "Sequential", "SplineAutoregressive", "SplineCoupling", "Squeeze", "StandardLogistic", "StandardNormal", "VariationalDequantize",
    "alternating_mask",
    "channel_mask", "check_shape", "checkerboard_mask",
    "flow_log_abs_det", "half_mask", "jacobian", "log_abs_det_jacobian", "maf", "make_prior", "nice", "nsf",
    "rational_quadratic_spline", "realnvp", "realnvp_image", "realnvp_image_single_scale", "toy_model", "value_checks",
]

__version__ = "0.1.0"

