"""Fixed permutations of features (vectors) or channels (images).

A permutation :math:`z = P x` has :math:`|\\det P| = 1`, so ``log_det = 0``.
Between couplings it changes which coordinates condition which. On images
only *channels* are permuted: shuffling pixels would scatter neighbours and
destroy the spatial structure the convolutional nets rely on.

Glow (Kingma & Dhariwal 2018, section 3.2) describes NICE's and RealNVP's
alternation as the equivalent of a permutation that reverses the order of
the channels (`ReversePermutation`), and compares it, in section 5.1, with a
fixed random shuffle (`RandomPermutation`) and with its learned invertible
1x1 convolution (`~flowlib.conv1x1.InvertibleConv1x1`).

Reference: D. P. Kingma, P. Dhariwal, "Glow: Generative Flow with Invertible
1x1 Convolutions", NeurIPS 2018, arXiv:1807.03039
(https://arxiv.org/abs/1807.03039).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .flow import Flow, check_int

__all__ = ["Permutation", "ReversePermutation", "RandomPermutation"]


class Permutation(Flow):
    """Permute dimension 1 (features of ``(B, D)``, channels of ``(B, C, H, W)``).

    ``z[:, i] = x[:, perm[i]]``. The permutation is a buffer, saved with the model.

    >>> Permutation(torch.tensor([2, 0, 1]))(torch.tensor([[10., 20., 30.]]))
    (tensor([[30., 10., 20.]]), tensor([0.]))
    """

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        n = perm.numel()
        if perm.dim() != 1 or not torch.equal(torch.sort(perm).values, torch.arange(n)):
            raise ValueError(f"perm must be a permutation of 0..{n - 1}, got {perm.tolist()}")
        self.num_features = n
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _check(self, x: Tensor) -> None:
        if x.dim() not in (2, 4) or x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (B, {self.num_features}) or "
                f"(B, {self.num_features}, H, W), got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        return x.index_select(1, self.perm), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self._check(z)
        return z.index_select(1, self.inv_perm), z.new_zeros(z.shape[0])


class ReversePermutation(Permutation):
    """Reverse the order: ``z[:, i] = x[:, D - 1 - i]``.

    >>> ReversePermutation(3)(torch.tensor([[1., 2., 3.]]))[0]
    tensor([[3., 2., 1.]])
    """

    def __init__(self, num_features: int) -> None:
        check_int("num_features", num_features)
        super().__init__(torch.arange(num_features - 1, -1, -1))


class RandomPermutation(Permutation):
    """A fixed random permutation drawn from ``seed`` (saved in the state dict).

    >>> RandomPermutation(5, seed=0).perm.sort().values
    tensor([0, 1, 2, 3, 4])
    """

    def __init__(self, num_features: int, seed: int = 0) -> None:
        check_int("num_features", num_features)
        check_int("seed", seed, least=0)
        gen = torch.Generator().manual_seed(seed)
        super().__init__(torch.randperm(num_features, generator=gen))
