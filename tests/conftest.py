"""Shared fixtures for the flowlib tests.

* every test starts from the same random state (``torch.manual_seed(0)``);
* ``float64`` switches the default dtype to float64 for one test;
* ``perturb`` makes a flow's parameters non-trivial (the conditioner nets are
  zero-initialised, so untouched couplings would be the identity);
* ``assert_log_det`` compares a flow's analytic log-det with autograd.

With ``FLOWLIB_CHECK_TREE=1`` (``python3 run.py test`` sets it) the session
fails when the tests changed any file git tracks or left a new untracked one:
quick and test runs must never write over the stored chapters or figures.

The tests use tiny tensors, where a thread pool costs more than it saves (and
oversubscribes a shared CI machine), so torch runs on one thread here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from flowlib.jacobian import flow_log_abs_det

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


def _tree_state() -> tuple[str, str] | None:
    """``(git status, hash of the diff against HEAD)`` of the work tree, or None outside a git checkout."""
    try:
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout
        diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return status, hashlib.sha256(diff).hexdigest()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._flowlib_tree = _tree_state() if os.environ.get("FLOWLIB_CHECK_TREE") == "1" else None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_flowlib_tree", None)
    if before is None:
        return
    after = _tree_state()
    if after != before:
        changed = sorted(set(after[0].splitlines()) ^ set(before[0].splitlines())) if after else []
        print(f"\nFAILED: the test run changed the work tree (tracked or new files): {changed or 'file contents'}")
        session.exitstatus = 1

# Tolerances of the autograd checks: tight in float64, loose (relative) in float32.
TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-8), torch.float32: dict(rtol=1e-3, atol=1e-3)}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def float64():
    """Default dtype float64 for the duration of one test."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(previous)


def _perturb(module: nn.Module, scale: float = 0.3, seed: int = 1) -> nn.Module:
    """Add ``scale * N(0, 1)`` noise to every parameter of ``module`` (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p))
    return module


def _assert_log_det(flow: nn.Module, x: Tensor, log_det: Tensor, inverse: bool = False) -> Tensor:
    """Assert ``log_det`` (of ``flow``'s forward or inverse at ``x``) equals autograd's."""
    reference = flow_log_abs_det(flow, x, inverse=inverse)
    assert log_det.shape == (x.shape[0],)
    assert torch.isfinite(reference).all()
    torch.testing.assert_close(log_det, reference, **TOLERANCES[x.dtype])
    return reference


@pytest.fixture
def perturb() -> Callable[..., nn.Module]:
    return _perturb


@pytest.fixture
def assert_log_det() -> Callable[..., Tensor]:
    return _assert_log_det
