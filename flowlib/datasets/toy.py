"""Two-dimensional toy densities for experimenting with flows.

Six standard 2D densities, generated in code from a seed, in any sample size:

=================  ==========================================================
``two_moons``      two interleaving half circles with Gaussian noise
``8gaussians``     mixture of eight isotropic Gaussians on a circle
``checkerboard``   uniform density on the dark squares of a 4x4 board
``pinwheel``       five curved, elongated arms around the origin
``2spirals``       two interleaved Archimedean spirals
``rings``          four concentric noisy circles
=================  ==========================================================

The shapes and scales follow the conventions popularised by the FFJORD toy
experiments, so every density lives roughly in the box ``[-4, 4]^2`` and a
standard normal prior is a reasonable starting point. One deliberate
difference: every sample here is drawn i.i.d. from the density (each point
picks its mixture component, arm or ring at random), so a training set and a
test set are genuinely independent samples of the same distribution.

All randomness comes from a local :class:`torch.Generator`; the global RNG is
never touched. Samples are generated in ``float64`` and then cast, so a given
seed gives the same points (up to rounding) in every dtype.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["TOY_DENSITIES", "sample_toy", "toy_splits"]

TOY_DENSITIES: tuple[str, ...] = (
    "two_moons",
    "8gaussians",
    "checkerboard",
    "pinwheel",
    "2spirals",
    "rings",
)

_F64 = torch.float64


def _randn(n: int, d: int, g: torch.Generator) -> Tensor:
    return torch.randn(n, d, generator=g, dtype=_F64)


def _rand(n: int, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g, dtype=_F64)


def _choice(n: int, k: int, g: torch.Generator) -> Tensor:
    """``n`` component indices drawn uniformly from ``{0, ..., k-1}``."""
    return torch.randint(0, k, (n,), generator=g)


def _two_moons(n: int, g: torch.Generator) -> Tensor:
    # Upper moon: (cos t, sin t); lower moon: (1 - cos t, 0.5 - sin t),
    # t ~ U[0, pi]; then noise 0.1, scale 2 and shift to centre the pair.
    t = math.pi * _rand(n, g)
    lower = _choice(n, 2, g).bool()
    x = torch.where(lower, 1.0 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    pts = torch.stack([x, y], dim=1) + 0.1 * _randn(n, 2, g)
    return 2.0 * pts + torch.tensor([-1.0, -0.2], dtype=_F64)


def _eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    # Centres at radius 4 on the unit directions k*pi/4, std 0.5; the whole
    # picture is then divided by 1.414, giving radius ~2.83 and std ~0.35.
    angle = _choice(n, 8, g).to(_F64) * (math.pi / 4)
    centres = 4.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return (centres + 0.5 * _randn(n, 2, g)) / 1.414


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    # x1 ~ U[-2, 2); x2 in one of the two unit cells of its column that has
    # the right colour; scaled by 2 to cover [-4, 4]^2.
    x1 = 4.0 * _rand(n, g) - 2.0
    x2 = _rand(n, g) - 2.0 * _choice(n, 2, g).to(_F64)
    x2 = x2 + torch.remainder(torch.floor(x1), 2.0)
    return 2.0 * torch.stack([x1, x2], dim=1)


def _pinwheel(n: int, g: torch.Generator) -> Tensor:
    # Each arm: a Gaussian blob at (1, 0) with radial std 0.3 and tangential
    # std 0.1, bent by rotating each point by rate * exp(radial coordinate),
    # then turned to its arm's base angle; scaled by 2.
    arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    f = _randn(n, 2, g) * torch.tensor([radial_std, tangential_std], dtype=_F64)
    f[:, 0] += 1.0
    base = _choice(n, arms, g).to(_F64) * (2 * math.pi / arms)
    angle = base + rate * torch.exp(f[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    x = c * f[:, 0] - s * f[:, 1]
    y = s * f[:, 0] + c * f[:, 1]
    return 2.0 * torch.stack([x, y], dim=1)


def _two_spirals(n: int, g: torch.Generator) -> Tensor:
    # Angle theta = sqrt(u) * 3*pi (1.5 turns, denser towards the outside so
    # arc length is roughly uniform); point (-theta cos theta, theta sin
    # theta) plus U[0, 0.5) jitter, mirrored for the second spiral, scaled by
    # 1/3, plus Gaussian noise of std 0.1.
    theta = torch.sqrt(_rand(n, g)) * (3 * math.pi)
    x = -torch.cos(theta) * theta + 0.5 * _rand(n, g)
    y = torch.sin(theta) * theta + 0.5 * _rand(n, g)
    sign = 1.0 - 2.0 * _choice(n, 2, g).to(_F64)
    pts = sign[:, None] * torch.stack([x, y], dim=1) / 3.0
    return pts + 0.1 * _randn(n, 2, g)


def _rings(n: int, g: torch.Generator) -> Tensor:
    # Four concentric circles of radius 0.75, 1.5, 2.25, 3 (equal weight),
    # uniform angle, isotropic Gaussian noise of std 0.08.
    radius = 0.75 * (_choice(n, 4, g).to(_F64) + 1.0)
    angle = 2 * math.pi * _rand(n, g)
    pts = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return pts + 0.08 * _randn(n, 2, g)


_SAMPLERS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "two_moons": _two_moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "rings": _rings,
}


def _check_name(name: str) -> None:
    if name not in _SAMPLERS:
        valid = ", ".join(repr(k) for k in TOY_DENSITIES)
        raise ValueError(f"unknown toy density {name!r}; valid names are: {valid}")


def _check_n(n: int, what: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n!r}")


def sample_toy(
    name: str,
    n: int,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``n`` i.i.d. points from the 2D toy density ``name``.

    Args:
        name: one of :data:`TOY_DENSITIES`.
        n: number of points, at least 1.
        seed: seed of the local generator; the same seed gives the same
            points. ``None`` draws a fresh non-deterministic seed.
        dtype: floating dtype of the result (sampling is done in float64).

    Returns:
        Tensor of shape ``(n, 2)``, roughly within ``[-4, 4]^2``.

    Raises:
        ValueError: for an unknown name or ``n < 1``.

    Example:
        >>> x = sample_toy("8gaussians", 500, seed=1)
        >>> x.shape, x.dtype
        (torch.Size([500, 2]), torch.float32)
        >>> torch.equal(x, sample_toy("8gaussians", 500, seed=1))
        True
    """
    _check_name(name)
    _check_n(n)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
    g = torch.Generator(device="cpu")
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return _SAMPLERS[name](n, g).to(dtype)


def toy_splits(
    name: str,
    n_train: int,
    n_test: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Independent train and test samples of the toy density ``name``.

    The two sets come from two different generator seeds derived from
    ``seed`` (``2*seed`` and ``2*seed + 1``), so they are independent draws
    and changing ``n_train`` does not change the test set.

    Example:
        >>> train, test = toy_splits("rings", 1000, 200, seed=0)
        >>> train.shape, test.shape
        (torch.Size([1000, 2]), torch.Size([200, 2]))
    """
    _check_name(name)
    _check_n(n_train, "n_train")
    _check_n(n_test, "n_test")
    train = sample_toy(name, n_train, seed=2 * seed, dtype=dtype)
    test = sample_toy(name, n_test, seed=2 * seed + 1, dtype=dtype)
    return train, test
