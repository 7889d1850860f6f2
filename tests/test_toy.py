"""Tests of flowlib.datasets.toy: the 2D toy densities."""

from __future__ import annotations

import math

import pytest
import torch

from flowlib.datasets.toy import TOY_DENSITIES, sample_toy, toy_splits


def test_names():
    assert TOY_DENSITIES == ("two_moons", "8gaussians", "checkerboard", "pinwheel", "2spirals", "rings")


@pytest.mark.parametrize("name", TOY_DENSITIES)
def test_shape_dtype_finite_range(name):
    x = sample_toy(name, 2000, seed=0)
    assert x.shape == (2000, 2)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()
    # Roughly standardised: almost all mass in [-4, 4]^2, nothing far out.
    assert x.abs().max() < 5.0
    assert (x.abs() <= 4.0).all(dim=1).float().mean() > 0.99
    assert x.abs().mean(0).min() > 0.3  # not collapsed to the origin


@pytest.mark.parametrize("name", TOY_DENSITIES)
def test_seed_determinism(name):
    a = sample_toy(name, 500, seed=3)
    b = sample_toy(name, 500, seed=3)
    c = sample_toy(name, 500, seed=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", TOY_DENSITIES)
def test_dtype_float64_matches_float32(name):
    a = sample_toy(name, 300, seed=1, dtype=torch.float64)
    b = sample_toy(name, 300, seed=1)
    assert a.dtype == torch.float64
    torch.testing.assert_close(a.float(), b)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_any_size(n):
    for name in TOY_DENSITIES:
        assert sample_toy(name, n, seed=0).shape == (n, 2)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample_toy("pinwheel", 100, seed=0)
    sample_toy("rings", 100, seed=None)
    assert torch.equal(torch.rand(3), expected)


def test_seed_none_differs():
    assert not torch.equal(sample_toy("8gaussians", 100, seed=None), sample_toy("8gaussians", 100, seed=None))


def test_splits_independent_and_deterministic():
    tr, te = toy_splits("2spirals", 400, 100, seed=5)
    assert tr.shape == (400, 2) and te.shape == (100, 2)
    tr2, te2 = toy_splits("2spirals", 400, 100, seed=5)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)
    assert not torch.allclose(tr[:100], te)
    # The test set does not depend on the size of the training set.
    _, te3 = toy_splits("2spirals", 50, 100, seed=5)
    assert torch.equal(te, te3)


def test_8gaussians_geometry():
    x = sample_toy("8gaussians", 4000, seed=0).double()
    r = x.norm(dim=1)
    assert abs(r.mean().item() - 4 / 1.414) < 0.1
    # Eight occupied directions.
    k = torch.round(torch.atan2(x[:, 1], x[:, 0]) / (math.pi / 4)).remainder(8)
    assert torch.bincount(k.long(), minlength=8).min() > 350


def test_checkerboard_support():
    x = sample_toy("checkerboard", 4000, seed=0)
    assert (x.abs() <= 4.0).all()
    cell = torch.floor(x / 2).long()
    # Only one colour of the 4x4 board is occupied.
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all() or ((cell[:, 0] + cell[:, 1]) % 2 == 1).all()


def test_rings_radii():
    r = sample_toy("rings", 4000, seed=0).norm(dim=1)
    nearest = torch.round(r / 0.75).clamp(1, 4)
    assert (r - 0.75 * nearest).abs().max() < 0.375
    assert torch.bincount(nearest.long(), minlength=5)[1:].min() > 800


@pytest.mark.parametrize("bad", ["moons", "", "8Gaussians", "spirals"])
def test_unknown_name(bad):
    with pytest.raises(ValueError, match="unknown toy density") as e:
        sample_toy(bad, 10)
    for name in TOY_DENSITIES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="valid names"):
        toy_splits(bad, 10, 10)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_size(n):
    with pytest.raises(ValueError, match="positive integer"):
        sample_toy("rings", n)


def test_bad_split_sizes():
    with pytest.raises(ValueError, match="n_train"):
        toy_splits("rings", 0, 10)
    with pytest.raises(ValueError, match="n_test"):
        toy_splits("rings", 10, 0)


def test_bad_dtype():
    with pytest.raises(ValueError, match="floating"):
        sample_toy("rings", 10, dtype=torch.int64)
