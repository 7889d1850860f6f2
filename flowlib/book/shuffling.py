"""Chapter 5's experiment: coupling stacks that differ only in how they shuffle between couplings.

A coupling leaves its conditioning half unchanged, so a stack mixes all
coordinates only if something moves coordinates between the halves from one
coupling to the next. `coupling_stack` builds vector affine couplings
(:math:`y_2 = x_2 \\odot e^{s(x_1)} + t(x_1)`) with each scheme of `SCHEMES`
between them, so that `flowlib.book.analysis.mixing_depth` and training runs can
compare the schemes with everything else equal.

References: L. Dinh, D. Krueger, Y. Bengio, "NICE: Non-linear Independent
Components Estimation", ICLR 2015 workshop, arXiv:1410.8516
(https://arxiv.org/abs/1410.8516) (alternating partitions). D. P. Kingma,
P. Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
NeurIPS 2018, arXiv:1807.03039 (https://arxiv.org/abs/1807.03039) (reverse,
shuffle and learned 1x1 convolution).
"""

from __future__ import annotations

import torch

from ..conv1x1 import InvertibleConv1x1
from ..coupling import AffineCoupling
from ..flow import Flow, Sequential
from ..masks import alternating_mask, half_mask
from ..nets import MLP
from ..permutations import RandomPermutation, ReversePermutation

__all__ = ["SCHEMES", "coupling_stack"]

#: The shuffling schemes of chapter 5 (see `coupling_stack`).
SCHEMES: tuple[str, ...] = ("alternating", "half", "half+reverse", "half+random", "half+1x1conv")


def coupling_stack(
    dim: int, scheme: str, num_couplings: int, hidden: int = 64, num_hidden_layers: int = 2,
    zero_init: bool = True, seed: int = 0, conv_init: str = "rotation",
) -> list[Flow]:
    """Affine couplings on vectors, shuffled between couplings according to ``scheme`` (`SCHEMES`).

    * ``alternating``: odd/even coordinates, parity flipped at every coupling (NICE);
    * ``half``: always the first half conditions, no shuffling (the broken case);
    * ``half+reverse``: first half conditions, then the order is reversed;
    * ``half+random``: first half conditions, then a fixed random permutation
      (a new one, seeded ``seed + k``, after coupling ``k``);
    * ``half+1x1conv``: first half conditions, then a learned invertible linear
      map (Glow's 1x1 convolution on a vector) that starts as a random
      rotation (``conv_init="rotation"``, Glow's choice) or as the identity
      (``conv_init="identity"``: no mixing until it is learned).

    Every coupling's net is an `~flowlib.nets.MLP`; ``zero_init=False`` gives
    random weights (for dependency pictures), the default starts at the identity.
    Each entry is one coupling and its shuffle (a `~flowlib.flow.Sequential`),
    so ``k`` entries are ``k`` couplings.

    >>> [[type(f).__name__ for f in block] for block in coupling_stack(4, "half+reverse", 2)]
    [['AffineCoupling', 'ReversePermutation'], ['AffineCoupling', 'ReversePermutation']]
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if conv_init not in ("rotation", "identity"):
        raise ValueError(f"conv_init must be 'rotation' or 'identity', got {conv_init!r}")
    layers: list[Flow] = []
    for k in range(num_couplings):
        mask = alternating_mask(dim, k % 2) if scheme == "alternating" else half_mask(dim)
        n_cond = int(mask.sum())
        net = MLP(n_cond, 2 * (dim - n_cond), hidden=hidden, num_hidden_layers=num_hidden_layers,
                  zero_init=zero_init)
        block: list[Flow] = [AffineCoupling(mask, net)]
        if scheme == "half+reverse":
            block.append(ReversePermutation(dim))
        elif scheme == "half+random":
            block.append(RandomPermutation(dim, seed=seed + k))
        elif scheme == "half+1x1conv":
            conv = InvertibleConv1x1(dim, seed=seed + k)
            if conv_init == "identity":
                _set_identity(conv)
            block.append(conv)
        layers.append(Sequential(*block))
    return layers


@torch.no_grad()
def _set_identity(conv: InvertibleConv1x1) -> None:
    """Set :math:`P = I, L = I, U = 0, s = 1`, so that :math:`W = I`."""
    conv.p.copy_(torch.eye(conv.num_channels))
    conv.sign_s.fill_(1.0)
    conv.lower.zero_()
    conv.upper.zero_()
    conv.log_s.zero_()


# ----------------------------------------------------------------------------- image models
