"""Small helpers the chapters share: quick mode, seeding, where figures go, run info.

Set ``FLOWLIB_QUICK=1`` to make every training cell short (CI does); unset,
chapters run their real budget, sized for the device found.
"""

from __future__ import annotations

import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["quick_mode", "seed_everything", "figure_path", "run_info", "Timer", "image_grid"]



def quick_mode() -> bool:
    """True when ``FLOWLIB_QUICK`` is set to a non-empty value other than ``0``."""
    return os.environ.get("FLOWLIB_QUICK", "") not in ("", "0")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_scratch: Path | None = None  # this process's scratch folder for figures, made on first use


def figure_path(name: str) -> Path:
    """Where a chapter saves figure ``name``: ``$FLOWLIB_FIGURES`` when set, else a scratch folder.

    Only the command that rebuilds the book (``python3 run.py rebuild``) sets
    ``$FLOWLIB_FIGURES`` to ``figures/``; the test command sets a temporary
    folder. A reader's run, quick or full, saves into a fresh folder under the
    system's temporary folder, made once per process, so running a chapter
    never changes a file git tracks; the chapter shows each figure inline
    as well (the inline backend), so nothing is lost.

    >>> from unittest import mock
    >>> from flowlib.files import figures_dir
    >>> with mock.patch.dict(os.environ, {"FLOWLIB_FIGURES": ""}):
    ...     path = figure_path("ch01-example.png")
    >>> path.name, path.parent == figures_dir(), path.parent.is_dir()
    ('ch01-example.png', False, True)
    """
    global _scratch
    env = os.environ.get("FLOWLIB_FIGURES")
    if env:
        folder = Path(env)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        if _scratch is None or not _scratch.is_dir():
            _scratch = Path(tempfile.mkdtemp(prefix="flowlib-figures-"))
        folder = _scratch
    return folder / name


def run_info() -> str:
    """One line naming the hardware, the PyTorch version and the mode.

    >>> "torch" in run_info()
    True
    """
    if torch.cuda.is_available():
        hw = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        cpu = platform.processor() or platform.machine()
        hw = f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    mode = "quick (FLOWLIB_QUICK=1)" if quick_mode() else "full"
    return f"{hw}, torch {torch.__version__}, mode: {mode}, run on {time.strftime('%Y-%m-%d %H:%M %Z')}"


class Timer:
    """Context manager measuring wall time in seconds (``.seconds``).

    >>> with Timer() as t:
    ...     pass
    >>> t.seconds >= 0
    True
    """

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 1, levels: int = 256) -> np.ndarray:
    """Tile ``(N, C, H, W)`` (or ``(N, H*W)`` square) images into one ``(rows, cols)`` array in [0, 1].

    >>> image_grid(torch.zeros(6, 1, 2, 2), nrow=3).shape
    (7, 10)
    """
    x = images.detach().float().cpu()
    if x.dim() == 2:
        side = int(round(x.shape[1] ** 0.5))
        if side * side != x.shape[1]:
            raise ValueError(f"cannot make square images of {x.shape[1]} values")
        x = x.reshape(-1, 1, side, side)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"image_grid expects (N, 1, H, W) or (N, H*W) images, got {tuple(images.shape)}")
    x = (x / (levels - 1)).clamp(0, 1)
    n, _, h, w = x.shape
    ncol = min(nrow, n)
    rows = -(-n // ncol)
    grid = np.ones((rows * (h + pad) + pad, ncol * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[i, 0].numpy()
    return grid
