"""The models the book trains: flows and priors assembled into `~flowlib.flow_model.FlowModel` presets.

Presets:

* `nice`: the NICE paper's MNIST model (Dinh et al. 2015, section 5.1):
  4 additive couplings with alternating odd/even partitions, 5 hidden ReLU
  layers of 1000 units each, a diagonal scaling, a logistic prior.
* `realnvp`: a vector RealNVP (affine couplings, alternating masks) for 2D toys.
* `maf`: a vector masked autoregressive flow (Papamakarios et al. 2017),
  affine autoregressive layers whose order is reversed from layer to layer.
* `nsf`: a vector neural spline flow (Durkan et al. 2019), rational-quadratic
  spline couplings (RQ-NSF (C)) or autoregressive layers (RQ-NSF (AR)).
* `toy_model`: any of `TOY_KINDS` sized for the 2D toys, seeded without
  touching the global random state (the playground and the trainer share it).
* `realnvp_image`: RealNVP's multi-scale model (Dinh et al. 2017, section 3.6)
  with dequantization and logit preprocessing, so ``log_prob`` is on 8-bit
  images; `realnvp_image_single_scale` has the same couplings and no factor-out.
* `glow`: Glow's multi-scale model (Kingma & Dhariwal 2018, section 3):
  squeeze, then steps of ActNorm, an invertible 1x1 convolution (or a fixed
  channel permutation, to compare) and an affine coupling, then factor out.

References: L. Dinh, D. Krueger, Y. Bengio, "NICE: Non-linear Independent
Components Estimation", ICLR 2015 workshop, arXiv:1410.8516
(https://arxiv.org/abs/1410.8516). L. Dinh, J. Sohl-Dickstein, S. Bengio,
"Density estimation using Real NVP", ICLR 2017, arXiv:1605.08803
(https://arxiv.org/abs/1605.08803). D. P. Kingma, P. Dhariwal, "Glow:
Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018,
arXiv:1807.03039 (https://arxiv.org/abs/1807.03039). G. Papamakarios,
T. Pavlakou, I. Murray, "Masked Autoregressive Flow for Density Estimation",
NeurIPS 2017, arXiv:1705.07057 (https://arxiv.org/abs/1705.07057).
C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, "Neural Spline Flows",
NeurIPS 2019, arXiv:1906.04032 (https://arxiv.org/abs/1906.04032).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .autoregressive import MaskedAutoregressive
from .coupling import AdditiveCoupling, AffineCoupling
from .distributions import make_prior
from .flow import Flow, Sequential, check_int
from .masks import alternating_mask, channel_mask, checkerboard_mask
from .flow_model import FlowModel
from .multiscale import MultiScale
from .conv1x1 import InvertibleConv1x1
from .dequantization import Dequantize, VariationalDequantize
from .nets import MLP, GlowConvNet, ResidualConvNet
from .normalization import ActNorm
from .permutations import RandomPermutation, ReversePermutation
from .logit import Logit
from .reshape import Squeeze
from .scaling import DiagonalScaling
from .splines import SplineAutoregressive, SplineCoupling

__all__ = [
    "nice", "realnvp", "maf", "nsf", "realnvp_image",
    "realnvp_image_single_scale", "glow", "toy_model", "TOY_KINDS", "TOY_SPLINE_BOUND", "GLOW_PERMUTATIONS",
    "DEQUANTIZATIONS",
]

# ----------------------------------------------------------------------------- vector models


def _check_vector_model(dim: int, num_couplings: int, hidden: int, num_hidden_layers: int) -> None:
    """The sizes of `nice` and `realnvp`: integers, ``dim >= 2`` (a coupling needs both parts), the rest ``>= 1``."""
    check_int("dim", dim, least=2)
    for name, value in (("num_couplings", num_couplings), ("hidden", hidden), ("num_hidden_layers", num_hidden_layers)):
        check_int(name, value)


def nice(
    dim: int, num_couplings: int = 4, hidden: int = 1000, num_hidden_layers: int = 5,
    prior: str = "logistic", dequantize: bool = False, dropout: float = 0.0, zero_hidden_bias: bool = False,
) -> FlowModel:
    """NICE: additive couplings on alternating odd/even halves, then diagonal scaling.

    :math:`h^{(k)}_{I_2} = h^{(k-1)}_{I_2} + m_k(h^{(k-1)}_{I_1})` with the roles
    of odd and even coordinates swapped at every layer; :math:`z = e^S \\odot h^{(K)}`.
    With ``dequantize=True`` the model takes 8-bit data and scales it to [0, 1)
    with uniform noise (the paper's preprocessing), counting that log-det.
    ``dropout`` is the coupling nets' dropout rate in training (`flowlib.nets.MLP`;
    the paper has none). ``zero_hidden_bias=True`` starts the nets' hidden biases at
    zero, as NICE's released code does and the trainer's NICE presets do, instead of
    PyTorch's default (`flowlib.nets.MLP` says why it matters for these deep nets).

    >>> model = nice(784)
    >>> sum(p.numel() for p in model.parameters())
    19158352
    """
    _check_vector_model(dim, num_couplings, hidden, num_hidden_layers)
    layers: list[Flow] = [Dequantize()] if dequantize else []
    for k in range(num_couplings):
        mask = alternating_mask(dim, parity=k % 2)
        n_cond = int(mask.sum())
        net = MLP(n_cond, dim - n_cond, hidden=hidden, num_hidden_layers=num_hidden_layers, dropout=dropout,
                  zero_hidden_bias=zero_hidden_bias)
        layers.append(AdditiveCoupling(mask, net))
    prior_dist = make_prior(prior)
    layers.append(DiagonalScaling(dim, init_std=prior_dist.std))
    return FlowModel(Sequential(*layers), prior_dist, (dim,))


def realnvp(
    dim: int = 2, num_couplings: int = 8, hidden: int = 128, num_hidden_layers: int = 2,
    prior: str = "normal",
) -> FlowModel:
    """A vector RealNVP: affine couplings on alternating masks (defaults for 2D toys).

    >>> realnvp(2).sample(4).shape
    torch.Size([4, 2])
    """
    _check_vector_model(dim, num_couplings, hidden, num_hidden_layers)
    layers: list[Flow] = []
    for k in range(num_couplings):
        mask = alternating_mask(dim, parity=k % 2)
        n_cond = int(mask.sum())
        net = MLP(n_cond, 2 * (dim - n_cond), hidden=hidden, num_hidden_layers=num_hidden_layers)
        layers.append(AffineCoupling(mask, net))
    return FlowModel(Sequential(*layers), prior, (dim,))


def _autoregressive_order(dim: int, k: int) -> list[int]:
    """Layer ``k``'s order: ``0, ..., D-1`` for even ``k``, reversed for odd (MAF section 3.1's alternation)."""
    order = list(range(dim))
    return order if k % 2 == 0 else order[::-1]


def maf(
    dim: int = 2, num_layers: int = 8, hidden: int = 64, num_hidden_layers: int = 2, prior: str = "normal",
) -> FlowModel:
    """A vector MAF: `~flowlib.autoregressive.MaskedAutoregressive` layers, the order reversed at every layer.

    Layer ``k`` reads its dimensions in the order ``0, ..., D-1`` (even ``k``) or
    ``D-1, ..., 0`` (odd ``k``), so that each dimension is conditioned on every
    other within two layers, as `realnvp`'s alternating masks do. The density
    (``forward``) takes one pass of each MADE, sampling ``D`` passes.

    >>> maf(3, 2, 8).log_prob(torch.zeros(4, 3)).shape
    torch.Size([4])
    """
    _check_vector_model(dim, num_layers, hidden, num_hidden_layers)
    layers = [MaskedAutoregressive(dim, hidden, num_hidden_layers, order=_autoregressive_order(dim, k))
              for k in range(num_layers)]
    return FlowModel(Sequential(*layers), prior, (dim,))


def nsf(
    dim: int = 2, num_layers: int = 8, hidden: int = 64, num_hidden_layers: int = 2, num_bins: int = 8,
    bound: float = 3.0, autoregressive: bool = False, prior: str = "normal",
) -> FlowModel:
    """A vector neural spline flow: RQ spline couplings on alternating masks, or RQ spline autoregressive layers.

    ``autoregressive=False``: `~flowlib.splines.SplineCoupling` layers on the
    alternating masks of `realnvp`, each conditioner an `~flowlib.nets.MLP`
    from the conditioning part to :math:`3K - 1` numbers per transformed
    coordinate (RQ-NSF (C)). ``autoregressive=True``:
    `~flowlib.splines.SplineAutoregressive` layers (MAF direction) with the
    order reversed at every layer, as in `maf` (RQ-NSF (AR)). ``bound`` is the
    spline's :math:`B`: each layer is the identity outside :math:`[-B, B]`.

    >>> nsf(2, 2, 8).log_prob(torch.zeros(4, 2)).shape, nsf(2, 2, 8, autoregressive=True).sample(3).shape
    (torch.Size([4]), torch.Size([3, 2]))
    """
    _check_vector_model(dim, num_layers, hidden, num_hidden_layers)
    layers: list[Flow] = []
    for k in range(num_layers):
        if autoregressive:
            layers.append(SplineAutoregressive(dim, hidden, num_hidden_layers, order=_autoregressive_order(dim, k),
                                               num_bins=num_bins, bound=bound))
        else:
            mask = alternating_mask(dim, parity=k % 2)
            n_cond = int(mask.sum())
            net = MLP(n_cond, (dim - n_cond) * (3 * num_bins - 1), hidden=hidden, num_hidden_layers=num_hidden_layers)
            layers.append(SplineCoupling(mask, net, num_bins=num_bins, bound=bound))
    return FlowModel(Sequential(*layers), prior, (dim,))


#: The model kinds `toy_model` builds for the 2D toys.
TOY_KINDS = ("nice", "realnvp", "maf", "spline_coupling", "spline_ar")

#: The spline flows' :math:`B` on the toys: every toy density lies within about
#: :math:`\pm 4.5` (the checkerboard fills :math:`[-4, 4]^2`), so :math:`B = 5` puts
#: all the data inside the splines' interval, not in their identity tails.
TOY_SPLINE_BOUND = 5.0


def toy_model(
    kind: str = "realnvp", num_couplings: int = 8, hidden: int = 64, num_hidden_layers: int = 2,
    prior: str | None = None, seed: int = 0, num_bins: int = 8,
) -> FlowModel:
    """A 2D flow for the toy densities; its weights depend on ``seed`` only.

    * ``"nice"``: `nice` (additive couplings on alternating 1-D halves,
      :math:`h_2 = h_2 + m(h_1)`, then a diagonal scaling); logistic prior by default.
    * ``"realnvp"``: `realnvp` (:math:`h_2 = h_2 e^{s(h_1)} + t(h_1)`); normal prior by default.
    * ``"maf"``: `maf`, ``num_couplings`` affine autoregressive layers; normal prior by default.
    * ``"spline_coupling"``, ``"spline_ar"``: `nsf` with ``num_couplings`` spline couplings or
      spline autoregressive layers of ``num_bins`` bins on :math:`[-B, B]`,
      :math:`B =` `TOY_SPLINE_BOUND`; normal prior by default.

    ``num_couplings`` counts the layers of every kind, ``hidden`` and ``num_hidden_layers``
    size each layer's network (an MLP, or a MADE for the autoregressive kinds). At the
    same sizes the kinds differ in parameters (a spline needs :math:`3K - 1` outputs per
    coordinate, an affine map 2); `flowlib.book.analysis.width_for_params` picks the
    ``hidden`` that gives a kind the parameter count of another.

    The weights are drawn inside ``torch.random.fork_rng``, so the global
    random state is the same before and after.

    >>> from flowlib.book.analysis import count_parameters
    >>> count_parameters(toy_model("nice", 4, 16)), count_parameters(toy_model("realnvp", 4, 16))
    (1286, 1356)
    >>> [count_parameters(toy_model(k, 4, 16)) for k in ("maf", "spline_coupling", "spline_ar")]
    [1560, 2780, 4408]
    """
    if kind not in TOY_KINDS:
        raise ValueError(f"kind must be one of {TOY_KINDS}, got {kind!r}")
    check_int("seed", seed, least=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "nice":
            return nice(2, num_couplings, hidden, num_hidden_layers, prior=prior or "logistic")
        if kind == "realnvp":
            return realnvp(2, num_couplings, hidden, num_hidden_layers, prior=prior or "normal")
        if kind == "maf":
            return maf(2, num_couplings, hidden, num_hidden_layers, prior=prior or "normal")
        return nsf(2, num_couplings, hidden, num_hidden_layers, num_bins=num_bins, bound=TOY_SPLINE_BOUND,
                   autoregressive=kind == "spline_ar", prior=prior or "normal")


def _checkerboard_coupling(shape: tuple[int, int, int], parity: int, hidden: int, blocks: int) -> AffineCoupling:
    c, h, w = shape
    net = ResidualConvNet(c, 2 * c, hidden_channels=hidden, num_blocks=blocks)
    return AffineCoupling(checkerboard_mask(c, h, w, parity), net)


def _channel_coupling(shape: tuple[int, int, int], parity: int, hidden: int, blocks: int) -> AffineCoupling:
    c, h, w = shape
    mask = channel_mask(c, h, w, parity)
    n_cond = int(mask[:, 0, 0].sum())
    net = ResidualConvNet(n_cond, 2 * (c - n_cond), hidden_channels=hidden, num_blocks=blocks)
    return AffineCoupling(mask, net)


def _check_image_shape(shape: Sequence[int], num_scales: int) -> tuple[int, int, int]:
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (C, H, W), got {shape}")
    for size in shape:
        check_int("shape", size)
    check_int("num_scales", num_scales)
    factor = 2 ** (num_scales - 1)
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(f"{num_scales} scales need H and W divisible by {factor}, got H={shape[1]}, W={shape[2]}")
    return shape  # type: ignore[return-value]


#: How the image models turn 8-bit levels into a continuous variable (`_preprocessed`).
DEQUANTIZATIONS = ("uniform", "variational")


def _check_dequantization(dequantization: str, preprocess: bool) -> None:
    if dequantization not in DEQUANTIZATIONS:
        raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, got {dequantization!r}")
    if not preprocess and dequantization != "uniform":
        raise ValueError(f"dequantization={dequantization!r} needs preprocess=True (a model of 8-bit images); "
                         "got preprocess=False")


def _preprocessed(body: Flow, shape: tuple[int, int, int], dequantization: str, alpha: float,
                  preprocess: bool) -> Flow:
    """``body`` behind a dequantizer and `Logit` (``preprocess``), or alone.

    ``"uniform"`` is `~flowlib.dequantization.Dequantize` (Theis et al. 2016),
    ``"variational"`` is `~flowlib.dequantization.VariationalDequantize` with
    its default size (Ho et al. 2019, section 3.1) and a logistic base, so
    that its untrained noise is exactly uniform: the variational model starts
    as the uniform one, and training can only move :math:`q` away from it
    where that tightens the bound (Flow++'s normal base starts about 0.2 nats
    per dimension below). The dequantizer is built after the body, so a
    seeded body starts from the same weights with either. The callers check
    ``dequantization`` before they build the body (`_check_dequantization`).
    """
    if not preprocess:
        return body
    dequantize = Dequantize() if dequantization == "uniform" else VariationalDequantize(shape[0], base="logistic")
    return Sequential(dequantize, Logit(alpha), body)


def realnvp_image(
    shape: tuple[int, int, int] = (1, 28, 28), num_scales: int = 3, hidden_channels: int = 64,
    num_blocks: int = 4, alpha: float = 0.05, prior: str = "normal", preprocess: bool = True,
    dequantization: str = "uniform",
) -> FlowModel:
    """Multi-scale RealNVP on ``(C, H, W)`` images.

    Each of the first ``num_scales - 1`` scales: 3 checkerboard couplings,
    squeeze, 3 channel couplings, factor out half the channels. Last scale:
    4 checkerboard couplings. s and t come from one residual conv net per
    coupling (``num_blocks`` blocks of ``hidden_channels``). With
    ``preprocess`` (default) the flow starts with `Dequantize` and `Logit`, so
    ``log_prob`` takes 8-bit images and returns the discrete-data bound in nats.
    ``dequantization`` picks the noise: ``"uniform"`` (`Dequantize`, the
    default) or ``"variational"`` (`~flowlib.dequantization.VariationalDequantize`,
    a learned :math:`q(u \\mid x)`, Flow++ section 3.1; only with ``preprocess``).
    The scales are ``model.multiscale.levels`` and ``model.multiscale.final``.

    >>> model = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=8, num_blocks=1)
    >>> model.log_prob(torch.randint(0, 256, (2, 1, 8, 8))).shape, len(model.multiscale.levels)
    (torch.Size([2]), 1)
    """
    shape = _check_image_shape(shape, num_scales)
    check_int("hidden_channels", hidden_channels)
    check_int("num_blocks", num_blocks, least=0)
    _check_dequantization(dequantization, preprocess)
    c, h, w = shape
    levels: list[Flow] = []
    for _ in range(num_scales - 1):
        before = [_checkerboard_coupling((c, h, w), k % 2, hidden_channels, num_blocks) for k in range(3)]
        c, h, w = 4 * c, h // 2, w // 2
        after = [_channel_coupling((c, h, w), k % 2, hidden_channels, num_blocks) for k in range(3)]
        levels.append(Sequential(*before, Squeeze(), *after))
        c = c - c // 2
    final = Sequential(*[_checkerboard_coupling((c, h, w), k % 2, hidden_channels, num_blocks) for k in range(4)])
    flow = _preprocessed(MultiScale(levels, final, shape), shape, dequantization, alpha, preprocess)
    return FlowModel(flow, prior, shape, latent_shape=(math.prod(shape),))


def realnvp_image_single_scale(
    shape: tuple[int, int, int] = (1, 28, 28), num_scales: int = 3, hidden_channels: int = 64,
    num_blocks: int = 4, alpha: float = 0.05, prior: str = "normal",
) -> FlowModel:
    """The couplings of `realnvp_image`, without factoring out (chapter 7's baseline).

    Same number of couplings and squeezes, in the same order, but every layer
    keeps all :math:`C H W` variables, so each later scale works on twice the
    channels of the multi-scale model. The latent has shape
    :math:`(C\\,4^{L-1}, H / 2^{L-1}, W / 2^{L-1})`.

    >>> m = realnvp_image_single_scale((1, 8, 8), num_scales=2, hidden_channels=8, num_blocks=1)
    >>> m.latent_shape, m.log_prob(torch.randint(0, 256, (2, 1, 8, 8))).shape
    ((4, 4, 4), torch.Size([2]))
    """
    c, h, w = _check_image_shape(shape, num_scales)
    check_int("hidden_channels", hidden_channels)
    check_int("num_blocks", num_blocks, least=0)
    layers: list[Flow] = [Dequantize(), Logit(alpha)]
    for _ in range(num_scales - 1):
        layers += [_checkerboard_coupling((c, h, w), k % 2, hidden_channels, num_blocks) for k in range(3)]
        layers.append(Squeeze())
        c, h, w = 4 * c, h // 2, w // 2
        layers += [_channel_coupling((c, h, w), k % 2, hidden_channels, num_blocks) for k in range(3)]
    layers += [_checkerboard_coupling((c, h, w), k % 2, hidden_channels, num_blocks) for k in range(4)]
    return FlowModel(Sequential(*layers), prior, shape, latent_shape=(c, h, w))


#: How `glow` mixes the channels between couplings.
GLOW_PERMUTATIONS = ("conv1x1", "reverse", "shuffle")


def _glow_step(c: int, h: int, w: int, hidden: int, permutation: str, seed: int) -> Sequential:
    """ActNorm, channel mixing, affine coupling (Glow's "step of flow", section 3)."""
    mask = channel_mask(c, h, w, 0)
    n_cond = int(mask[:, 0, 0].sum())
    mix = {"conv1x1": lambda: InvertibleConv1x1(c, seed=seed), "reverse": lambda: ReversePermutation(c),
           "shuffle": lambda: RandomPermutation(c, seed=seed)}[permutation]()
    return Sequential(ActNorm(c), mix, AffineCoupling(mask, GlowConvNet(n_cond, 2 * (c - n_cond), hidden)))


def glow(
    shape: tuple[int, int, int] = (1, 28, 28), num_scales: int = 2, steps_per_scale: int = 8,
    hidden_channels: int = 128, permutation: str = "conv1x1", alpha: float = 0.05, prior: str = "normal",
    preprocess: bool = True, dequantization: str = "uniform",
) -> FlowModel:
    """Glow on ``(C, H, W)`` images (Kingma & Dhariwal 2018, section 3 and figure 2).

    Each of the ``num_scales`` scales squeezes, then applies
    ``steps_per_scale`` steps of flow,

    .. math:: x \\to \\mathrm{ActNorm} \\to W x \\;(1\\times1\\ \\text{conv}) \\to
       \\text{affine coupling on the channel halves},

    and every scale but the last factors out half of its channels
    (`~flowlib.multiscale.MultiScale`; Glow also learns a conditional prior
    for the factored-out half, flowlib keeps RealNVP's fixed prior). Unlike RealNVP's fixed checkerboard
    and channel masks, every coupling splits the channels the same way; the
    learned :math:`W` (log-det :math:`H W \\log|\\det W|`) decides what the
    halves contain. ``permutation`` replaces it by Glow's baselines: a
    fixed ``"reverse"`` of the channels or a fixed random ``"shuffle"``
    (section 5.1). With ``preprocess`` the flow starts with `Dequantize` and
    `Logit`, so ``log_prob`` takes 8-bit images; ``dequantization="variational"``
    puts `~flowlib.dequantization.VariationalDequantize` in place of `Dequantize`
    (Flow++'s learned noise, Ho et al. 2019, section 3.1). ActNorm starts
    from the first batch (`~flowlib.flow.initialize_from_data`).

    >>> model = glow((1, 8, 8), num_scales=2, steps_per_scale=2, hidden_channels=8)
    >>> model.log_prob(torch.randint(0, 256, (2, 1, 8, 8))).shape, model.multiscale.latent_shapes
    (torch.Size([2]), [(2, 4, 4), (8, 2, 2)])
    """
    if permutation not in GLOW_PERMUTATIONS:
        raise ValueError(f"permutation must be one of {GLOW_PERMUTATIONS}, got {permutation!r}")
    check_int("num_scales", num_scales)
    check_int("steps_per_scale", steps_per_scale)
    check_int("hidden_channels", hidden_channels)
    shape = _check_image_shape(shape, num_scales + 1)
    _check_dequantization(dequantization, preprocess)
    c, h, w = shape
    scales: list[Flow] = []
    for k in range(num_scales):
        c, h, w = 4 * c, h // 2, w // 2
        steps = [_glow_step(c, h, w, hidden_channels, permutation, seed=k * steps_per_scale + i)
                 for i in range(steps_per_scale)]
        scales.append(Sequential(Squeeze(), *steps))
        if k < num_scales - 1:
            c = c - c // 2
    body = MultiScale(scales[:-1], scales[-1], shape, final_output_shape=(c, h, w))
    flow = _preprocessed(body, shape, dequantization, alpha, preprocess)
    return FlowModel(flow, prior, shape, latent_shape=(math.prod(shape),))
