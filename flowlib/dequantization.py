"""Dequantization: 8-bit levels to a continuous variable, uniform or learned noise in each cell (Flow++, 3.1).

Both dequantizers live here, uniform (`Dequantize`) and variational (`VariationalDequantize`): they are one
bound, of which uniform noise is the special case :math:`q \\equiv 1`, and share its checks, so this module
is longer than flowlib's others (about 300 lines) on purpose.

Uniform dequantization (`Dequantize`) adds
:math:`u \\sim U[0, 1)^D` to the 8-bit image :math:`x` and models
:math:`y = (x + u) / 256`; the log-likelihood it reports is the bound
:math:`\\log P(x) \\ge \\mathbb E_u[\\log p(y)] - D \\log 256`. The model must
then spread its density evenly over each cell
:math:`[x, x + 1)^D / 256`, which a smooth flow does poorly. Variational
dequantization draws the noise from a learned density :math:`q(u \\mid x)` on
:math:`[0, 1)^D` instead, and the same argument (Jensen's inequality,
:math:`P(x) = \\mathbb E_{q}[p_{\\text{model}}(x + u) / q(u \\mid x)]`) gives

.. math:: \\log P(x) \\ge \\mathbb E_{u \\sim q(\\cdot \\mid x)}
   \\big[\\log p_{\\text{model}}(x + u) - \\log q(u \\mid x)\\big],

with :math:`p_{\\text{model}}(x + u) = p(y) / 256^D`. The bound is tight
when :math:`q(u \\mid x) \\propto p_{\\text{model}}(x + u)`; uniform
:math:`q \\equiv 1` recovers `Dequantize`'s bound.

:math:`q` is itself a flow, conditioned on :math:`x`:
:math:`\\varepsilon \\sim \\mathcal N(0, I)`, :math:`h = g(\\varepsilon; x)`
(affine couplings with checkerboard masks of alternating parity, whose nets
see the masked :math:`\\varepsilon` and :math:`x` scaled to :math:`[-1, 1]`),
:math:`u = \\sigma(h)`, so that

.. math:: \\log q(u \\mid x) = \\log \\mathcal N(\\varepsilon; 0, I)
   - \\log\\Big|\\det \\frac{\\partial h}{\\partial \\varepsilon}\\Big|
   - \\sum_d \\log \\sigma'(h_d),
   \\qquad \\log \\sigma'(h) = -\\mathrm{softplus}(h) - \\mathrm{softplus}(-h).

As a `~flowlib.flow.Flow` layer the log-det of ``forward`` is
:math:`-D \\log 256 - \\log q(u \\mid x)`, so a model's ``log_prob`` is one
sample of the bound above and training maximises it jointly in the model and
in :math:`q`. Importance weighting with several samples
(`flowlib.training.evaluate.evaluate` with ``samples=K``) tightens it towards
:math:`\\log P(x)`.

Reference: J. Ho, X. Chen, A. Srinivas, Y. Duan, P. Abbeel, "Flow++:
Improving Flow-Based Generative Models with Variational Dequantization and
Architecture Design", ICML 2019, arXiv:1902.00275
(https://arxiv.org/abs/1902.00275), section 3.1. Flow++ builds :math:`q`
from its own logistic-mixture couplings with attention; flowlib reuses its
affine couplings and residual conv nets.

>>> layer = VariationalDequantize(channels=1)
>>> x = torch.tensor([[[[0, 255], [7, 128]]]], dtype=torch.uint8)
>>> y, log_det = layer(x)
>>> bool(((y >= 0) & (y < 1)).all()), torch.equal(layer.inverse(y)[0], x.float())
(True, True)

The conditioner nets start at zero, so :math:`h = \\varepsilon`: at
:math:`u = 1/2` each of the 4 dimensions has
:math:`\\log q = \\log \\mathcal N(0) - \\log \\sigma'(0) = -\\tfrac12 \\log 2\\pi + \\log 4`:

>>> round(layer.log_q(torch.full((1, 1, 2, 2), 0.5), x).item(), 4), round(4 * (math.log(4) - 0.5 * math.log(2 * math.pi)), 4)
(1.8694, 1.8694)
"""

from __future__ import annotations

import functools
import math
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flow import Flow, check_batched, check_int, check_shape, value_checks_enabled
from .masks import checkerboard_mask
from .nets import ResidualConvNet

__all__ = ["Dequantize", "VariationalDequantize", "ConditionalAffineCoupling", "BASES", "check_levels",
           "check_num_levels", "to_cell"]


def check_num_levels(num_levels: int) -> None:
    """Raise a `ValueError` unless ``num_levels`` is :math:`2^b`, the levels of ``b``-bit data (``b >= 1``).

    A power of two keeps :math:`x / L` and :math:`(x + 1) / L` exact in
    floating point, so every level's cell is exact and :math:`\\lfloor L y \\rfloor`
    gives the level back (`to_cell`).

    >>> check_num_levels(100)
    Traceback (most recent call last):
    ...
    ValueError: num_levels must be a power of two >= 2 (the 2**bits levels of bits-bit data), got 100
    """
    if (isinstance(num_levels, bool) or not isinstance(num_levels, Integral) or num_levels < 2
            or num_levels & (num_levels - 1)):
        raise ValueError(f"num_levels must be a power of two >= 2 (the 2**bits levels of bits-bit data), "
                         f"got {num_levels!r}")


def to_cell(x: Tensor, u: Tensor, num_levels: int) -> Tensor:
    """:math:`y = (x + u) / L` for levels :math:`x` and noise :math:`u \\in [0, 1]`, inside the cell of :math:`x`.

    In floating point :math:`x + u` rounds up to :math:`x + 1` when
    :math:`1 - u` is below half the spacing of the dtype at :math:`x + 1`
    (:math:`u > 1 - 2^{-17}` at :math:`x = 200` in float32), and a sigmoid
    rounds to 1 (:math:`h > 16.6` in float32). So :math:`y` is clamped to
    :math:`[x / L, \\mathrm{nextafter}((x + 1) / L, 0)]`: in the working dtype
    :math:`x / L \\le y < (x + 1) / L` for every :math:`u`, hence
    :math:`0 \\le y < 1` and :math:`\\lfloor L y \\rfloor = x` (:math:`L` a
    power of two, `check_num_levels`).

    >>> x, u = torch.tensor([[200.0, 255.0]]), torch.tensor([[1 - 2.0**-24, 1 - 2.0**-24]])  # largest float32 < 1
    >>> torch.floor((x + u) / 256 * 256), torch.floor(to_cell(x, u, 256) * 256)
    (tensor([[201., 256.]]), tensor([[200., 255.]]))
    """
    top = torch.nextafter((x + 1) / num_levels, torch.zeros_like(x))
    return torch.minimum(torch.maximum((x + u) / num_levels, x / num_levels), top)


def check_levels(x: Tensor, num_levels: int, name: str) -> None:
    """Raise a `ValueError` unless ``x`` holds integer levels in ``[0, num_levels - 1]``.

    The values are read only when value checks run; a bool tensor (a mask,
    not levels) is refused always.

    >>> check_levels(torch.tensor([[0.5]]), 256, "Dequantize")
    Traceback (most recent call last):
    ...
    ValueError: Dequantize expects integer levels in [0, 255], got non-integer values (is the data already scaled to [0, 1]?)
    """
    if x.dtype == torch.bool:
        raise ValueError(f"{name} expects integer levels in [0, {num_levels - 1}] (uint8, int or float), "
                         "got a bool tensor")
    if not value_checks_enabled():
        return
    top = num_levels - 1
    if x.numel() and (x.min() < 0 or x.max() > top):
        raise ValueError(
            f"{name} expects {math.log2(num_levels):g}-bit data, integers in "
            f"[0, {top}]; got values in [{x.min().item():g}, {x.max().item():g}]"
        )
    if x.is_floating_point() and not torch.equal(x, torch.floor(x)):
        raise ValueError(
            f"{name} expects integer levels in [0, {top}], got "
            "non-integer values (is the data already scaled to [0, 1]?)"
        )


class Dequantize(Flow):
    """Uniform dequantization of ``num_levels``-level data to ``[0, 1)``.

    :math:`y = (x + u) / L` with :math:`u \\sim U[0, 1)^D` and :math:`L` =
    ``num_levels`` (a power of two), so :math:`\\log|\\det J| = -D \\log L` for every example,
    and :math:`\\log P(x) \\ge \\mathbb E_u[\\log p(y)] - D \\log L`.
    Every :math:`y` lies in its level's cell :math:`[x, x + 1) / L`, in the
    working dtype too (`to_cell`), so :math:`0 \\le y < 1`.

    ``forward`` takes integer-valued data (uint8, int or float) in
    ``[0, num_levels - 1]`` with a batch dimension and at least one example;
    ``inverse`` rounds back down to the levels. The output has the dtype of
    the model the layer sits in (it follows ``.to(torch.float64)``,
    ``.double()``, ...), whatever the dtype of the data, so a float64 model
    takes uint8 images directly.

    Reference: L. Theis, A. van den Oord, M. Bethge, "A note on the evaluation
    of generative models", ICLR 2016, arXiv:1511.01844
    (https://arxiv.org/abs/1511.01844).

    >>> y, log_det = Dequantize()(torch.tensor([[0, 255]], dtype=torch.uint8))
    >>> bool(((y >= 0) & (y < 1)).all()), round(log_det.item(), 4)
    (True, -11.0904)
    """

    def __init__(self, num_levels: int = 256) -> None:
        super().__init__()
        check_num_levels(num_levels)
        self.num_levels = num_levels
        # Zero-size and not saved: it only carries the model's dtype (and device) through .to().
        self.register_buffer("dtype_anchor", torch.empty(0), persistent=False)

    def _log_det(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """:math:`-D \\log L` for each of the ``B`` examples of ``x``."""
        dims = x.shape[1:].numel()
        return torch.full((x.shape[0],), -dims * math.log(self.num_levels), dtype=dtype, device=x.device)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_batched(x, "Dequantize", nonempty=True)
        check_levels(x, self.num_levels, "Dequantize")
        x = x.to(self.dtype_anchor.dtype)
        return to_cell(x, torch.rand_like(x), self.num_levels), self._log_det(x, x.dtype)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        check_batched(z, "Dequantize", nonempty=True)
        x = torch.floor(z * self.num_levels).clamp(0, self.num_levels - 1)
        return x, -self._log_det(z, x.dtype)


#: The base densities of the noise flow: Flow++'s standard normal, or the standard logistic.
BASES = ("normal", "logistic")

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _log_normal(eps: Tensor) -> Tensor:
    """:math:`\\log \\mathcal N(\\varepsilon; 0, I)` summed over each example: shape ``(B,)``."""
    return -(0.5 * eps.square() + _HALF_LOG_2PI).flatten(1).sum(1)


def _log_sigmoid_derivative(h: Tensor) -> Tensor:
    """:math:`\\sum_d \\log \\sigma'(h_d) = -\\sum_d (\\mathrm{softplus}(h_d) + \\mathrm{softplus}(-h_d))`, shape ``(B,)``."""
    return -(F.softplus(h) + F.softplus(-h)).flatten(1).sum(1)



@functools.lru_cache(maxsize=16)
def _checkerboard_on(channels: int, height: int, width: int, parity: int, device: torch.device,
                     dtype: torch.dtype) -> Tensor:
    """`checkerboard_mask` as 0/1 in ``dtype`` on ``device``, made once per shape (no copy to the GPU per step)."""
    return checkerboard_mask(channels, height, width, parity).to(device=device, dtype=dtype)

class ConditionalAffineCoupling(nn.Module):
    """An affine checkerboard coupling whose net also sees a context :math:`c`.

    With the checkerboard :math:`b` of ``parity`` (`~flowlib.masks.checkerboard_mask`,
    ``True`` conditions) and :math:`(\\tilde s, t) = \\mathrm{net}([b \\odot \\varepsilon, c])`,

    .. math:: h = \\varepsilon \\odot e^{(1-b) \\odot s} + (1-b) \\odot t,
       \\qquad s = a \\tanh(\\tilde s),
       \\qquad \\log\\Big|\\det \\frac{\\partial h}{\\partial \\varepsilon}\\Big| = \\sum (1-b) \\odot s,

    RealNVP's masked coupling (`~flowlib.coupling.AffineCoupling`, section
    3.4) with the context concatenated to the net's input: :math:`c` is held
    fixed, so the Jacobian in :math:`\\varepsilon` keeps its triangular form.
    The mask is built for the input's height and width on every call, so one
    layer takes images of any size with at least 2 pixels. ``forward`` and
    ``inverse`` take the context as a second argument, which is why this is a
    module and not a `~flowlib.flow.Flow`.

    Reference: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation
    using Real NVP", ICLR 2017, arXiv:1605.08803 (https://arxiv.org/abs/1605.08803).

    >>> layer = ConditionalAffineCoupling(2, context_channels=2, parity=1, hidden_channels=4)
    >>> eps, c = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    >>> h, log_det = layer(eps, c)
    >>> torch.equal(h, eps), log_det   # zero-initialised net: the identity
    (True, tensor([0., 0., 0.], grad_fn=<SumBackward1>))
    """

    def __init__(self, channels: int, context_channels: int, parity: int, hidden_channels: int = 16,
                 num_blocks: int = 1) -> None:
        super().__init__()
        if channels < 1 or context_channels < 0:
            raise ValueError(f"channels must be >= 1 and context_channels >= 0, got {channels} and {context_channels}")
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        self.channels, self.context_channels, self.parity = channels, context_channels, parity
        self.net = ResidualConvNet(channels + context_channels, 2 * channels, hidden_channels=hidden_channels,
                                   num_blocks=num_blocks)
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def _keep(self, eps: Tensor) -> Tensor:
        """The checkerboard :math:`b` for ``eps``'s height and width, as 0/1 in its dtype."""
        _, c, h, w = eps.shape
        return _checkerboard_on(c, h, w, self.parity, eps.device, eps.dtype)

    def scale_and_shift(self, eps: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(1-b) \\odot s` and :math:`(1-b) \\odot t` from :math:`[b \\odot \\varepsilon, c]`."""
        check_shape(eps, (self.channels, None, None), type(self).__name__)
        if context.shape != (eps.shape[0], self.context_channels, *eps.shape[2:]):
            raise ValueError(f"{type(self).__name__} expects a context of shape "
                             f"{(eps.shape[0], self.context_channels, *eps.shape[2:])}, got {tuple(context.shape)}")
        keep = self._keep(eps)
        raw_s, t = self.net(torch.cat([eps * keep, context.to(eps.dtype)], dim=1)).chunk(2, dim=1)
        s = self.scale * torch.tanh(raw_s)
        return s * (1 - keep), t * (1 - keep)

    def forward(self, eps: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(h, \\log|\\det \\partial h / \\partial \\varepsilon|)`."""
        s, t = self.scale_and_shift(eps, context)
        return eps * torch.exp(s) + t, s.flatten(1).sum(1)

    def inverse(self, h: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(\\varepsilon, \\log|\\det \\partial \\varepsilon / \\partial h|)`; the net sees :math:`b \\odot h = b \\odot \\varepsilon`."""
        s, t = self.scale_and_shift(h, context)
        return (h - t) * torch.exp(-s), -s.flatten(1).sum(1)


class VariationalDequantize(Flow):
    """Dequantization with learned noise :math:`u \\sim q(u \\mid x)`, a drop-in for `Dequantize`.

    ``forward(x)`` takes integer images ``(B, channels, H, W)`` (uint8, int or
    float) with levels in ``[0, num_levels - 1]`` and at least 2 pixels, draws
    :math:`\\varepsilon \\sim \\mathcal N(0, I)` (``base="normal"``), maps it through
    ``num_couplings`` `ConditionalAffineCoupling` layers (checkerboards of
    alternating parity, nets of ``num_blocks`` residual blocks of
    ``hidden_channels`` that see :math:`x` scaled to :math:`[-1, 1]`), sets
    :math:`u = \\sigma(h)` and returns :math:`y = (x + u) / L`
    (:math:`L` = ``num_levels``, a power of two; :math:`y` kept inside the
    cell :math:`[x, x + 1) / L` in the working dtype, `to_cell`) with

    .. math:: \\log|\\det J| = -D \\log L - \\log q(u \\mid x).

    ``inverse(y)`` rounds down to the levels, :math:`x = \\lfloor L y \\rfloor`
    (clamped to ``[0, L - 1]``), recovers :math:`u = L y - x`, inverts the
    couplings for :math:`\\varepsilon` and returns :math:`D \\log L + \\log q(u \\mid x)`,
    minus the forward's at matching points. :math:`y` carries :math:`u` only
    to :math:`r` = :math:`L` times the spacing of the dtype just below
    :math:`(x + 1) / L` (in float32 :math:`2^{-24}` at level 0, :math:`2^{-16}`
    at levels 128 to 255), so :math:`u` is clamped into :math:`[r, 1 - r]`:
    a :math:`y` on or beyond the edge of its cell (a sample of the model, or
    a forward :math:`u` closer to the edge than :math:`r`) gets the log-det of
    the nearest point the dtype resolves inside the cell. Near the edges
    :math:`\\log q` has slope about :math:`c / \\min(u, 1 - u)` (:math:`c \\ne 0` once
    the couplings scale the tails), so an error :math:`\\delta` in the
    :math:`u` a latent carries moves the inverse's log-det by about
    :math:`c \\delta / \\min(u, 1 - u)`: in float32, where a model's round trip
    moves :math:`u` by a few :math:`10^{-5}`, the inverse's log-det of a
    pixel within :math:`10^{-4}` of its cell's edge is only a rough value,
    and a pixel that close can even come back one level off. ``forward``,
    which training and evaluation use, matches its float64 computation.

    The nets' last layers start at zero, so at initialisation :math:`h = \\varepsilon`
    and :math:`q` is the logit-normal density (narrower than the uniform: its
    entropy is about 0.2 nats per dimension below the uniform's 0). With
    affine couplings :math:`h` keeps Gaussian tails, so no :math:`q` of this
    family is exactly uniform, and the importance weights
    :math:`p/q` of `flowlib.training.evaluate.evaluate` have an infinite second moment
    (reached only by very rare draws far in the tails). ``base="logistic"``
    draws :math:`\\varepsilon` from the standard logistic instead
    (:math:`\\log p(\\varepsilon) = \\sum_d \\log\\sigma'(\\varepsilon_d)`):
    then :math:`\\sigma(\\varepsilon) \\sim U(0, 1)`, the untrained layer *is*
    `Dequantize`, and the tails match. ``"normal"`` is Flow++'s choice. The layer follows the model's dtype (``.double()``) and
    runs under `~flowlib.flow.initialize_from_data`; with the nets in train
    mode their batch normalisation uses the batch's statistics, as every
    coupling of `realnvp_image` does, and ``log_q`` is a per-example density
    in eval mode.

    Reference: J. Ho, X. Chen, A. Srinivas, Y. Duan, P. Abbeel, "Flow++:
    Improving Flow-Based Generative Models with Variational Dequantization
    and Architecture Design", ICML 2019, arXiv:1902.00275
    (https://arxiv.org/abs/1902.00275), section 3.1.

    >>> layer = VariationalDequantize(channels=3, hidden_channels=8, num_couplings=2)
    >>> x = torch.randint(0, 256, (5, 3, 4, 4))
    >>> y, log_det = layer(x)
    >>> y.shape, log_det.shape, torch.equal(layer.inverse(y)[0], x.float())
    (torch.Size([5, 3, 4, 4]), torch.Size([5]), True)
    """

    def __init__(self, channels: int, hidden_channels: int = 16, num_couplings: int = 4, num_blocks: int = 1,
                 num_levels: int = 256, base: str = "normal") -> None:
        super().__init__()
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        self.base = base
        for name, value, least in (("channels", channels, 1), ("hidden_channels", hidden_channels, 1),
                                   ("num_couplings", num_couplings, 1), ("num_blocks", num_blocks, 0)):
            check_int(name, value, least)
        check_num_levels(num_levels)
        self.channels, self.num_levels = channels, num_levels
        self.couplings = nn.ModuleList(
            ConditionalAffineCoupling(channels, channels, k % 2, hidden_channels, num_blocks)
            for k in range(num_couplings)
        )

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the layer computes in (its parameters')."""
        return self.couplings[0].scale.dtype

    def context(self, x: Tensor) -> Tensor:
        """What the nets see of :math:`x`: the levels scaled to :math:`[-1, 1]`, :math:`2x/(L-1) - 1`."""
        return x * (2.0 / (self.num_levels - 1)) - 1.0

    def noise_to_logit(self, eps: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`h = g(\\varepsilon; x)` and :math:`\\log|\\det \\partial h / \\partial \\varepsilon|`."""
        context = self.context(x.to(eps.dtype))
        log_det = eps.new_zeros(eps.shape[0])
        for coupling in self.couplings:
            eps, ld = coupling(eps, context)
            log_det = log_det + ld
        return eps, log_det

    def logit_to_noise(self, h: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`\\varepsilon = g^{-1}(h; x)` and :math:`\\log|\\det \\partial \\varepsilon / \\partial h|`."""
        context = self.context(x.to(h.dtype))
        log_det = h.new_zeros(h.shape[0])
        for coupling in reversed(self.couplings):
            h, ld = coupling.inverse(h, context)
            log_det = log_det + ld
        return h, log_det

    def _log_base(self, eps: Tensor) -> Tensor:
        """:math:`\\log p_\\varepsilon(\\varepsilon)` summed over each example: normal or logistic."""
        return _log_normal(eps) if self.base == "normal" else _log_sigmoid_derivative(eps)

    def _sample_base(self, like: Tensor) -> Tensor:
        if self.base == "normal":
            return torch.randn_like(like)
        # rand draws v from the grid {0, step, ..., 1 - step} (step = eps / 2: 2^-24 in float32); moving 0 to
        # step makes the draws symmetric, eps within +-logit(1 - step) (+-16.6 in float32), not down to -87.
        step = torch.finfo(like.dtype).eps / 2
        v = torch.rand_like(like).clamp(step, 1 - step)
        return torch.log(v) - torch.log1p(-v)  # the logistic quantile of a uniform draw

    def log_q(self, u: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log q(u \\mid x)` for ``u`` in :math:`(0, 1)^D` (shape ``(B,)``), by inverting the flow.

        :math:`h = \\mathrm{logit}(u)`, :math:`\\varepsilon = g^{-1}(h; x)`, and
        :math:`\\log q = \\log \\mathcal N(\\varepsilon) + \\log|\\det \\partial\\varepsilon/\\partial h| - \\sum_d \\log\\sigma'(h_d)`.
        """
        h = torch.log(u) - torch.log1p(-u)
        eps, log_det = self.logit_to_noise(h, x)
        return self._log_base(eps) + log_det - _log_sigmoid_derivative(h)

    def _check_levels(self, x: Tensor) -> None:
        check_batched(x, "VariationalDequantize", nonempty=True)
        check_shape(x, (self.channels, None, None), "VariationalDequantize")
        if x.shape[2] * x.shape[3] < 2:
            raise ValueError(f"VariationalDequantize expects images of at least 2 pixels (its couplings use a "
                             f"checkerboard), got shape {tuple(x.shape)}")
        check_levels(x, self.num_levels, "VariationalDequantize")

    def _uniform_log_det(self, x: Tensor) -> float:
        return x.shape[1:].numel() * math.log(self.num_levels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_levels(x)
        x = x.to(self.dtype)
        eps = self._sample_base(x)
        h, log_det_g = self.noise_to_logit(eps, x)
        log_q = self._log_base(eps) - log_det_g - _log_sigmoid_derivative(h)
        return to_cell(x, torch.sigmoid(h), self.num_levels), -self._uniform_log_det(x) - log_q

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        check_batched(z, "VariationalDequantize", nonempty=True)
        check_shape(z, (self.channels, None, None), "VariationalDequantize.inverse")
        scaled = z * self.num_levels
        x = torch.floor(scaled).clamp(0, self.num_levels - 1)
        top = (x + 1) / self.num_levels
        r = (top - torch.nextafter(top, torch.zeros_like(top))) * self.num_levels  # u's resolution in the cell
        u = torch.minimum(torch.maximum(scaled - x, r), 1 - r)
        return x, self._uniform_log_det(z) + self.log_q(u, x)
