"""Conditioner networks for coupling layers.

A coupling layer's functions (NICE's :math:`m`, RealNVP's :math:`s, t`) can be
any network; they need not be invertible (NICE section 3.2.2, RealNVP
section 3.2). Two are provided:

* `MLP` for vectors: ``in -> hidden (x num_hidden_layers, ReLU) -> out``, the
  "deep rectified networks with linear output units" of NICE (Dinh et al.
  2015, section 5.1; 5 hidden layers of 1000 units for MNIST);
* `ResidualConvNet` for images: a 3x3 conv in, residual blocks, a 3x3 conv out,
  as in RealNVP's s and t networks (Dinh et al. 2017, section 3.7: deep
  residual networks with batch normalization; the paper also uses weight
  normalization, which flowlib leaves out);
* `GlowConvNet` for images: Glow's three convolutions, 3x3, 1x1, 3x3, with
  ReLUs between (Kingma & Dhariwal 2018, section 3.3; Glow also puts ActNorm
  after the first two, which flowlib leaves out).

`MLP` can drop hidden units during training (dropout, Srivastava et al. 2014),
a regulariser for a net that overfits, as NICE's 5 x 1000 nets do on 50,000
digits. It is not a good one there: a coupling adds its net's output to the
data, so the dropped units' noise lands in the density itself. NICE's ``cpu``
preset with ``--dropout 0.2`` was at 4.945 validation bits/dim after 20 epochs,
where the preset is at 4.638 (``results/nice-mnist-cpu-dropout0.2-stopped.json``).
A coupling stays invertible with its exact log-determinant either way: its net
need not be invertible, and in evaluation mode (``model.eval()``, used for
every score and sample) the net is deterministic again (the kept units are
scaled by :math:`1/(1-p)` in training, so none is needed then).

The last layer starts at zero so that every coupling starts as the identity,
which keeps deep flows stable at initialisation (Glow's "zero
initialization", Kingma & Dhariwal 2018, section 3.3). The conv net keeps its
weights and activations in the channels-last memory layout and applies ReLU
and the residual sum in place: the same arithmetic, about 1.3x faster on CPU.

Reference: L. Dinh, D. Krueger, Y. Bengio, "NICE: Non-linear Independent
Components Estimation", ICLR 2015 workshop, arXiv:1410.8516
(https://arxiv.org/abs/1410.8516).

Reference: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using
Real NVP", ICLR 2017, arXiv:1605.08803 (https://arxiv.org/abs/1605.08803).

Reference: D. P. Kingma, P. Dhariwal, "Glow: Generative Flow with Invertible
1x1 Convolutions", NeurIPS 2018, arXiv:1807.03039
(https://arxiv.org/abs/1807.03039).

Reference: N. Srivastava, G. Hinton, A. Krizhevsky, I. Sutskever, R. Salakhutdinov,
"Dropout: A Simple Way to Prevent Neural Networks from Overfitting", JMLR 15 (2014)
1929-1958 (https://jmlr.org/papers/v15/srivastava14a.html).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flow import check_int

__all__ = ["MLP", "ResidualConvNet", "GlowConvNet"]


class MLP(nn.Sequential):
    """A ReLU multilayer perceptron with a zero-initialised output layer.

    ``zero_hidden_bias=True`` starts the hidden layers' biases at zero, as NICE's
    released code does, instead of PyTorch's default, uniform in
    :math:`\\pm 1/\\sqrt{n_{\\text{in}}}`. PyTorch's default weights shrink the
    root mean square of the activations by about :math:`\\sqrt 6` per ReLU layer,
    so deep in a net a unit's pre-activation is mostly its bias, nearly the same
    for every input. In NICE's 5 x 1000 nets 36% of the fifth layer's units
    start dead with the default biases (off for every one of 1000 validation
    digits; 4% with zero biases), 96% after 100 steps of NICE's cpu preset
    (73%), and 86% after 500 (30%); the trained runs of that preset end with
    95 to 96% of the fifth layer dead (87 to 88% with zero biases) and 4.51 test
    bits/dim against 4.29 (``benchmarks/results/dead_units*.md``, ``docs/results.md``).
    A dead unit gets no gradient; only a change in the layers below it can turn
    it on again.

    With ``dropout=p`` each hidden layer's units are zeroed with probability
    ``p`` in training mode (and the rest scaled by :math:`1/(1-p)`, `torch.nn.Dropout`);
    in evaluation mode the net is deterministic.

    >>> import torch
    >>> MLP(3, 4, hidden=8, num_hidden_layers=2)(torch.randn(5, 3)).shape
    torch.Size([5, 4])
    >>> MLP(3, 4, dropout=0.2)[2]
    Dropout(p=0.2, inplace=False)
    >>> MLP(3, 4, zero_hidden_bias=True)[0].bias.abs().max().item()
    0.0
    >>> MLP(3, 4, dropout=1.0)
    Traceback (most recent call last):
    ...
    ValueError: MLP dropout must be a probability in [0, 1), got 1.0
    """

    def __init__(
        self, in_features: int, out_features: int, hidden: int = 256,
        num_hidden_layers: int = 2, zero_init: bool = True, dropout: float = 0.0,
        zero_hidden_bias: bool = False,
    ) -> None:
        for name, value in (("in_features", in_features), ("out_features", out_features), ("hidden", hidden),
                            ("num_hidden_layers", num_hidden_layers)):
            check_int(name, value)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP dropout must be a probability in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_hidden_layers):
            linear = nn.Linear(width, hidden)
            if zero_hidden_bias:
                nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = hidden
        out = nn.Linear(width, out_features)
        if zero_init:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        super().__init__(*layers, out)


class ResidualBlock(nn.Module):
    """``x + conv(relu(bn(conv(relu(bn(x))))))`` (pre-activation residual block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).add_(x)


class ResidualConvNet(nn.Module):
    """Residual convolutional network ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    >>> import torch
    >>> ResidualConvNet(2, 4, hidden_channels=8, num_blocks=1)(torch.randn(3, 2, 6, 6)).shape
    torch.Size([3, 4, 6, 6])
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int = 64,
        num_blocks: int = 4, zero_init: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("hidden_channels", hidden_channels)):
            check_int(name, value)
        check_int("num_blocks", num_blocks, least=0)
        self.inp = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden_channels) for _ in range(num_blocks)])
        self.out_norm = nn.BatchNorm2d(hidden_channels)
        self.out = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.inp(x))  # channels-last weights make the activations channels-last too
        return self.out(F.relu(self.out_norm(h), inplace=True))


class GlowConvNet(nn.Sequential):
    """``conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3`` (Glow's coupling network), last conv zero.

    >>> import torch
    >>> net = GlowConvNet(2, 4, hidden_channels=8)
    >>> out = net(torch.randn(3, 2, 6, 6))
    >>> out.shape, bool((out == 0).all())
    (torch.Size([3, 4, 6, 6]), True)
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 512,
                 zero_init: bool = True) -> None:
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("hidden_channels", hidden_channels)):
            check_int(name, value)
        out = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        if zero_init:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        super().__init__(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, 1), nn.ReLU(inplace=True), out,
        )
        self.to(memory_format=torch.channels_last)
