"""flowlib: the normalizing-flow layers of the book, each checked against autograd.

Convention: ``forward`` maps data to latent and ``inverse`` latent to data;
both return ``(tensor, log_det)`` with ``log_det`` of shape ``(B,)``.
"""

from __future__ import annotations

import torch

from .conv1x1 import InvertibleConv1x1
from .coupling import AdditiveCoupling, AffineCoupling, Coupling
from .dequantization import VariationalDequantize
from .distributions import StandardLogistic, StandardNormal, make_prior
from .flow import Flow, Sequential, check_shape, value_checks
from .jacobian import flow_log_abs_det, jacobian, log_abs_det_jacobian
from .masks import alternating_mask, channel_mask, checkerboard_mask, half_mask
from .models import FlowModel, nice, realnvp, realnvp_image, realnvp_image_single_scale, toy_model
from .multiscale import MultiScale
from .nets import MLP, ResidualConvNet
from .normalization import ActNorm, BatchNormFlow
from .permutations import Permutation, RandomPermutation, ReversePermutation
from .preprocess import Dequantize, Logit
from .reshape import Squeeze
from .scaling import DiagonalScaling
from .shuffling import SCHEMES, coupling_stack

__all__ = [
    "ActNorm", "AdditiveCoupling", "AffineCoupling", "BatchNormFlow", "Coupling", "Dequantize",
    "DiagonalScaling", "Flow", "FlowModel", "InvertibleConv1x1", "Logit", "MLP", "MultiScale",
    "Permutation", "RandomPermutation", "ResidualConvNet", "ReversePermutation", "SCHEMES",
    "Sequential", "Squeeze", "StandardLogistic", "StandardNormal", "VariationalDequantize", "alternating_mask",
    "channel_mask", "check_shape", "checkerboard_mask", "coupling_stack", "device",
    "flow_log_abs_det", "half_mask", "jacobian", "log_abs_det_jacobian", "make_prior", "nice",
    "realnvp", "realnvp_image", "realnvp_image_single_scale", "toy_model", "value_checks",
]

__version__ = "0.1.0"


def device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
