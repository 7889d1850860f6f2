"""The `Flow` base class and sequential composition.

A flow is an invertible map :math:`f` from data :math:`x` to latent :math:`z`.
Every flow in `flowlib` follows one convention:

* ``forward(x) -> (z, log_det)`` with ``log_det = log |det df/dx|`` (shape ``(B,)``),
* ``inverse(z) -> (x, log_det)`` with ``log_det = log |det df^{-1}/dz|``,

so that, at matching points, ``inverse``'s log_det is minus ``forward``'s.
Composition adds log-determinants (the chain rule):

.. math:: \\log |\\det J_{f_K \\circ \\dots \\circ f_1}(x)| = \\sum_k \\log |\\det J_{f_k}(h_{k-1})|.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from abc import ABCMeta, abstractmethod
from contextlib import contextmanager
from numbers import Integral, Real

import torch
from torch import Tensor, nn

__all__ = [
    "Flow", "Sequential", "check_shape", "check_int", "check_positive", "value_checks", "value_checks_enabled",
    "initialize_from_data", "data_init_enabled",
]

_VALUE_CHECKS = True
_DATA_INIT = False


def value_checks_enabled() -> bool:
    """Whether layers check input *values* (ranges); shape checks always run."""
    return _VALUE_CHECKS


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turn value checks (which read tensor values, a host sync on GPU) on or off.

    Training loops validate the first batch and then run without them.

    >>> with value_checks(False):
    ...     value_checks_enabled()
    False
    """
    global _VALUE_CHECKS
    previous, _VALUE_CHECKS = _VALUE_CHECKS, enabled
    try:
        yield
    finally:
        _VALUE_CHECKS = previous


def data_init_enabled() -> bool:
    """Whether the current forward pass is `initialize_from_data`'s (layers then set themselves from their input)."""
    return _DATA_INIT


@torch.no_grad()
def initialize_from_data(model: nn.Module, x: Tensor) -> list[str]:
    """Data-dependent initialisation: the one way a layer starts from the data.

    Runs one forward pass of ``model`` on the batch ``x`` during which every
    layer that can start from the data (those with an ``initialize(x)``
    method and an ``initialized`` buffer: `~flowlib.normalization.ActNorm`,
    `~flowlib.scaling.DiagonalScaling`) sets its parameters from the input
    it receives, in order, so later layers see the output of already
    initialised ones. A layer whose ``initialized`` flag is already set is
    left alone; the flag is saved in the ``state_dict``, so a resumed run or
    a second call changes nothing. Returns the names of the layers it set.
    The trainer and `~flowlib.training.fit.fit` call it once on the first batch,
    before any step.

    >>> from flowlib.normalization import ActNorm
    >>> layer, x = ActNorm(2), torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    >>> initialize_from_data(layer, x), initialize_from_data(layer, 5 * x)
    ([''], [])
    >>> layer(x)[0]   # zero mean, unit spread per feature; the second call changed nothing
    tensor([[-1.0000, -1.0000],
            [ 1.0000,  1.0000]], grad_fn=<MulBackward0>)
    """
    global _DATA_INIT
    pending = [name for name, m in model.named_modules()
               if hasattr(m, "initialize") and "initialized" in dict(m.named_buffers(recurse=False))
               and not bool(m.initialized)]
    if not pending:
        return []
    was_training, previous = model.training, _DATA_INIT
    model.train()
    _DATA_INIT = True
    try:
        model(x)
    finally:
        _DATA_INIT = previous
        model.train(was_training)
    return pending


def check_shape(x: Tensor, event_shape: Sequence[int | None], name: str) -> None:
    """Raise a `ValueError` unless ``x`` has shape ``(B, *event_shape)``.

    ``None`` in ``event_shape`` matches any size.

    >>> check_shape(torch.zeros(2, 3), (4,), "Layer")
    Traceback (most recent call last):
    ...
    ValueError: Layer expects input of shape (B, 4), got (2, 3)
    """
    expected = tuple(event_shape)
    ok = x.dim() == len(expected) + 1 and all(
        e is None or e == s for e, s in zip(expected, x.shape[1:])
    )
    if not ok:
        want = ", ".join(["B"] + ["*" if e is None else str(e) for e in expected])
        raise ValueError(f"{name} expects input of shape ({want}), got {tuple(x.shape)}")


def check_int(name: str, value: object, least: int = 1) -> None:
    """Raise a `ValueError` unless ``value`` is an integer (Python or NumPy, not a bool) ``>= least``.

    Sizes and counts (``hidden``, ``num_couplings``, ``num_levels``...) go
    through it where they enter, so ``2.5`` or ``True`` fails there and not
    deep inside torch.

    >>> check_int("hidden", 2.5)
    Traceback (most recent call last):
    ...
    ValueError: hidden must be an integer >= 1, got 2.5
    >>> check_int("num_blocks", -1, least=0)
    Traceback (most recent call last):
    ...
    ValueError: num_blocks must be at least 0, got -1
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value!r}")


def check_positive(name: str, value: object) -> None:
    """Raise a `ValueError` unless ``value`` is a finite real number ``> 0`` (not a bool).

    >>> check_positive("min_std", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: min_std must be a positive finite number, got nan
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_batched(x: Tensor, name: str) -> None:
    if x.dim() == 0:
        raise ValueError(f"{name} expects a batch of shape (B, ...), got a 0-d tensor")


def check_batched(x: Tensor, name: str, nonempty: bool = False) -> None:
    """Raise a ValueError unless ``x`` is ``(B, *event_shape)`` (with ``B >= 1`` if ``nonempty``)."""
    if x.dim() < 2:
        raise ValueError(f"{name} expects input of shape (B, *event_shape), got {tuple(x.shape)}")
    if nonempty and x.shape[0] == 0:
        raise ValueError(
            f"{name} expects a batch of at least one example, shape (B, *event_shape) with B >= 1; "
            f"got an empty batch of shape {tuple(x.shape)}"
        )


class Flow(nn.Module, metaclass=ABCMeta):
    """Base class: an invertible map with a tractable log-determinant.

    Subclasses implement :meth:`forward` (data to latent) and :meth:`inverse`
    (latent to data); both return ``(output, log_det)`` with ``log_det`` of
    shape ``(B,)``.
    """

    @abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent: ``(z, log |det dz/dx|)``."""

    @abstractmethod
    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent to data: ``(x, log |det dx/dz|)``."""


class Sequential(Flow):
    """Composition :math:`f = f_K \\circ \\dots \\circ f_1`; log-dets add up.

    >>> from flowlib.scaling import DiagonalScaling
    >>> f = Sequential(DiagonalScaling(3), DiagonalScaling(3))
    >>> z, log_det = f(torch.randn(5, 3))
    >>> z.shape, log_det.shape
    (torch.Size([5, 3]), torch.Size([5]))

    An integer index gives one layer, a slice a `Sequential` of those layers
    (the same modules, not copies):

    >>> type(f[0]).__name__, type(f[1:]).__name__, len(f[1:]), f[1:][0] is f[1]
    ('DiagonalScaling', 'Sequential', 1, True)
    """

    def __init__(self, *flows: Flow) -> None:
        super().__init__()
        if len(flows) == 1 and isinstance(flows[0], (list, tuple)):
            flows = tuple(flows[0])
        for f in flows:
            if not isinstance(f, Flow):
                raise TypeError(f"Sequential takes Flow layers, got {type(f).__name__}")
        self.flows = nn.ModuleList(flows)

    def __len__(self) -> int:
        return len(self.flows)

    def __getitem__(self, i: int | slice) -> Flow:
        """Layer ``i``; a slice gives a `Sequential` of the selected layers."""
        if isinstance(i, slice):
            return Sequential(*self.flows[i])
        return self.flows[i]

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_batched(x, "Sequential")
        total = x.new_zeros(x.shape[0])
        for f in self.flows:
            x, log_det = f(x)
            total = total + log_det
        return x, total

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        _check_batched(z, "Sequential")
        total = z.new_zeros(z.shape[0])
        for f in reversed(self.flows):
            z, log_det = f.inverse(z)
            total = total + log_det
        return z, total

    def trajectory(self, x: Tensor) -> list[Tensor]:
        """The input followed by the output of every layer (for pictures)."""
        out = [x]
        for f in self.flows:
            x, _ = f(x)
            out.append(x)
        return out
