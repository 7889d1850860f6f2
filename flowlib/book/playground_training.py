"""What the playground's Train button does, without the widget: settings, training with progress, picture, status lines.

`train_playground` fits a small flow to a 2D toy density by maximum likelihood,
minimising the mean negative log-likelihood in nats,

.. math:: \\mathcal L = -\\frac1B \\sum_b \\Big[\\log p_Z(f(x_b)) + \\log\\Big|\\det \\frac{\\partial f}{\\partial x}(x_b)\\Big|\\Big],

with Adam and a cosine learning-rate decay (`flowlib.training.fit.fit`), reporting
its progress through ``fit``'s callback (`progress_reporter`), then scores the test
NLL (`flowlib.training.evaluate.evaluate`) and draws data | learned density | samples
(`draw_playground`, with `flowlib.book.plots.plot_density_and_samples`). What the
widget says is made here too: `training_line` while it trains, `result_line` when
done, `idle_line` between trainings, and `press_seed` decides what a press of Train
does (a press with the settings of the result on display trains nothing; a second
one retrains with the next seed). The widget itself, which wires controls to these
functions, is `flowlib.book.playground.playground`.
"""

from __future__ import annotations

import time
from dataclasses import astuple, dataclass
from typing import Any, Callable

from .analysis import count_parameters
from ..training.fit import evaluate, fit
from ..flow_model import FlowModel
from ..models import toy_model
from .plots import figure_png, plot_density_and_samples
from ..datasets.toy import toy_splits

__all__ = [
    "DEFAULTS", "DEFAULT_LR", "PROGRESS_EVERY", "QUICK_STEPS", "PlaygroundRun", "PlaygroundSettings",
    "draw_playground", "idle_line", "press_seed", "progress_reporter", "result_line", "train_playground",
    "training_line",
]

#: The playground's settings for each model kind (arguments left ``None``),
#: with 10000 training points, batches of 256 and seed 0: 15-25 s of training
#: on one CPU core. Chosen by measuring, on all six toy densities, the test NLL
#: minus the density's true NLL on the same 5000 test points (its log-density
#: by numerical integrals of the generating process; the same numbers as
#: `flowlib.book.baselines.true_nll` for the four it covers), and comparing with a
#: run of about three times the work (16 couplings, 6000 steps). In nats, for two_moons,
#: 8gaussians, checkerboard, pinwheel, 2spirals, rings (the long run in brackets):
#:
#: * RealNVP, 8 couplings of width 64, 4000 steps, lr 3e-3: 0.02, 0.09, 0.20,
#:   0.09, 0.22, 0.61 (0.02, 0.07, 0.09, 0.05, 0.17, 0.50). The earlier
#:   defaults, 6 couplings and 1000 steps: 0.05, 0.17, 0.24, 0.19, 0.47, 0.75.
#: * NICE, 12 couplings of width 64, 3000 steps, lr 1e-3: 0.11, 0.44, 0.42,
#:   0.21, 0.38, 1.01 (0.10, 0.38, 0.40, 0.11, 0.37, 1.01). The earlier
#:   defaults: 0.22, 0.79, 0.57, 0.43, 0.99, 1.01. At lr 3e-3 NICE stays one
#:   wide blob on 8gaussians (1.52).
#:
#: So each kind gets within about 0.1 nats of what it reaches with three times
#: the work; what is left is the model's limit. Neither fits ``rings``; NICE
#: does not move from its starting blob there (1.01 at every setting tried) and
#: fits ``8gaussians`` only roughly: both densities are symmetric under
#: :math:`x_i \to -x_i`, so at NICE's start (identity couplings) the expected
#: gradient of every coupling vanishes (chapter 3 measures it).
#:
#: Chapter 12's kinds (``maf``, ``spline_coupling``, ``spline_ar``; "couplings" counts
#: their layers) have not been measured on the six densities that way. Their defaults
#: are RealNVP's with the width (a multiple of 4, the slider's step) that gives about
#: RealNVP's 35,352 parameters and the steps that take about RealNVP's training time:
#: one training step measured on one CPU core took 3.8 ms (RealNVP), 4.6 (MAF),
#: 13.5 (spline coupling) and 18.8 (spline autoregressive). On the rings, seed 0, one
#: run each: spline_ar 2.880 nats at lr 3e-3 against 3.149 at 1e-3; spline_coupling 2.805.
DEFAULTS: dict[str, dict[str, Any]] = {
    "nice": {"num_couplings": 12, "hidden": 64, "steps": 3000, "lr": 1e-3},
    "realnvp": {"num_couplings": 8, "hidden": 64, "steps": 4000, "lr": 3e-3},
    "maf": {"num_couplings": 8, "hidden": 64, "steps": 3300, "lr": 3e-3},
    "spline_coupling": {"num_couplings": 8, "hidden": 56, "steps": 1100, "lr": 3e-3},
    "spline_ar": {"num_couplings": 8, "hidden": 48, "steps": 800, "lr": 3e-3},
}

#: The default learning rate of each model kind (``DEFAULTS[kind]["lr"]``).
DEFAULT_LR: dict[str, float] = {kind: float(d["lr"]) for kind, d in DEFAULTS.items()}

#: Training steps of `show`'s picture of the playground in quick mode (`flowlib.book.chapter.quick_mode`).
QUICK_STEPS = 60

#: `fit` reports the step and loss to the playground every this many steps: 0.13-0.2 s of the
#: defaults' training on one CPU core (130-190 steps a second), so the progress bar moves
#: several times a second, and still within about 0.5 s on a core three times slower.
PROGRESS_EVERY = 25


@dataclass(frozen=True)
class PlaygroundSettings:
    """What one Train fits: the density, the model kind and the sliders' values (`DEFAULTS`' keys).

    >>> PlaygroundSettings("two_moons", "nice", 12, 64, 3000, 1e-3).describe()
    'two_moons, nice, 12 couplings of width 64, 3000 steps, lr 1e-3'
    """

    density: str
    kind: str
    num_couplings: int
    hidden: int
    steps: int
    lr: float

    def _parts(self) -> tuple[str, ...]:
        return (self.density, self.kind, f"{self.num_couplings} couplings", f"width {self.hidden}",
                f"{self.steps} steps", f"lr {_scientific(self.lr)}")

    def describe(self) -> str:
        """The settings in words, as the status line and the picture's caption give them."""
        density, kind, couplings, width, steps, lr = self._parts()
        return f"{density}, {kind}, {couplings} of {width}, {steps}, {lr}"

    def changes(self, other: PlaygroundSettings) -> list[str]:
        """``other``'s settings that differ from these, in words (``["nice", "40 steps"]``); the density is not listed."""
        return [t for a, b, t in zip(astuple(self)[1:], astuple(other)[1:], other._parts()[1:]) if a != b]


def training_line(settings: PlaygroundSettings, seed: int, step: int = 0, loss: float | None = None,
                  seconds: float = 0.0) -> str:
    """The status line while ``settings`` train with ``seed``: what trains, then the step and the last train loss.

    >>> s = PlaygroundSettings("rings", "nice", 1, 4, 20, 1e-3)
    >>> training_line(s, 0)
    'training rings, nice, 1 couplings of width 4, 20 steps, lr 1e-3, seed 0: starting'
    >>> training_line(s, 0, 10, 2.5, 0.42).split(": ")[1]
    'step 10/20, train loss 2.500 nats, 0.4 s'
    """
    head = f"training {settings.describe()}, seed {seed}"
    if loss is None:
        return f"{head}: starting"
    return f"{head}: step {step}/{settings.steps}, train loss {loss:.3f} nats, {seconds:.1f} s"


def result_line(settings: PlaygroundSettings, seed: int, parameters: int, nll: float, seconds: float | None) -> str:
    """The status line of a finished training: its settings and seed, its size and time, its test NLL (nats).

    Without the time when ``seconds`` is ``None`` (the caption that `show` stores, the same on every run).

    >>> result_line(PlaygroundSettings("rings", "nice", 1, 4, 20, 1e-3), 1, 22, 2.5, 0.31)
    'rings, nice, 1 couplings of width 4, 20 steps, lr 1e-3, seed 1, 22 parameters, trained in 0.3 s: test NLL 2.500 nats'
    """
    took = "" if seconds is None else f", trained in {seconds:.1f} s"
    return f"{settings.describe()}, seed {seed}, {parameters} parameters{took}: test NLL {nll:.3f} nats"


def progress_reporter(settings: PlaygroundSettings, seed: int, report: Callable[[int, str], None],
                      clock: Callable[[], float] = time.perf_counter) -> Callable[[int, float], None]:
    """`fit`'s ``callback(step, loss)`` that calls ``report(step, training_line(...))`` with the seconds since it was made.

    >>> seen = []
    >>> callback = progress_reporter(PlaygroundSettings("rings", "nice", 1, 4, 20, 1e-3), 0, lambda *a: seen.append(a))
    >>> callback(10, 2.5); seen[0][0], "step 10/20, train loss 2.500 nats" in seen[0][1]
    (10, True)
    """
    start = clock()

    def callback(step: int, loss: float) -> None:
        report(step, training_line(settings, seed, step, loss, clock() - start))

    return callback


def press_seed(shown: PlaygroundRun | None, wanted: PlaygroundSettings, armed: bool, seed: int = 0) -> int | None:
    """The seed a press of Train trains ``wanted`` with, or ``None``: it trains nothing and says the result is current.

    ``shown`` is the result on display, ``armed`` whether the last press found it current (and nothing
    changed since), ``seed`` the playground's first seed. The first press trains with ``seed``; a
    changed setting trains with the seed of the result on display (so the two differ only in the
    settings); unchanged settings train nothing, unless ``armed``: then the next seed.
    """
    if shown is None:
        return seed
    if shown.settings != wanted:
        return shown.seed
    return shown.seed + 1 if armed else None


def idle_line(shown: PlaygroundRun | None, wanted: PlaygroundSettings, armed: bool) -> str:
    """The status line between trainings: the result on display and what the next press of Train does.

    ``wanted`` are the controls' settings, ``armed`` as in `press_seed`.
    """
    if shown is None:
        return "press Train"
    if shown.settings == wanted:
        return shown.status if not armed else (
            f"{shown.status}; this result is current for these settings: change a setting, "
            f"or press Train again to retrain with a new seed, seed {shown.seed + 1}")
    changes = shown.settings.changes(wanted)
    with_ = f" with {', '.join(changes)}" if changes else ""
    return f"{shown.status}; press Train to fit {wanted.density}{with_} (seed {shown.seed})"



def draw_playground(model: FlowModel | None, data: Any, title: str | None = None) -> bytes:
    """The playground's picture as PNG bytes: `~flowlib.book.plots.plot_density_and_samples` of ``model`` and ``data``.

    With ``model=None`` only the data panel is filled.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import torch
    >>> draw_playground(None, torch.randn(100, 2))[:4]
    b'\\x89PNG'
    """
    return figure_png(plot_density_and_samples(model, data, title=title))


@dataclass
class PlaygroundRun:
    """One training of the playground: the trained ``model``, its test NLL (nats), the ``status`` line, the
    picture (``png``), its ``settings`` and ``seed``, the ``seconds`` that `fit` took and the model's ``parameters``."""

    model: FlowModel
    nll: float
    status: str
    png: bytes
    settings: PlaygroundSettings
    seed: int = 0
    seconds: float = 0.0
    parameters: int = 0


def train_playground(
    density: str, kind: str, num_couplings: int, hidden: int, steps: int, lr: float,
    n_train: int = 10000, n_test: int = 5000, batch_size: int = 256, seed: int = 0,
    callback: Callable[[int, float], None] | None = None, data_seed: int | None = None,
) -> PlaygroundRun:
    """What the playground's Train button does, without the widget.

    Draws ``n_train`` and ``n_test`` independent points of ``density``
    (`~flowlib.datasets.toy.toy_splits`, seeded with ``data_seed``, by default
    ``seed``), builds `~flowlib.models.toy_model` (seeded with ``seed``), fits it with
    `~flowlib.training.fit.fit` (nats, Adam, cosine decay from ``lr``, gradients
    clipped at 10, batches drawn with ``seed``; ``callback(step, loss)`` every
    `PROGRESS_EVERY` steps and after the last), evaluates the test NLL with
    `~flowlib.training.evaluate.evaluate` and draws `draw_playground`. The status
    line is `result_line`'s.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> run = train_playground("rings", "nice", 1, 4, steps=20, lr=1e-3, n_train=256, n_test=64, batch_size=64)
    >>> run.status.startswith("rings, nice, 1 couplings of width 4, 20 steps, lr 1e-3, seed 0, "), run.png[:4]
    (True, b'\\x89PNG')
    """
    settings = PlaygroundSettings(density, kind, num_couplings, hidden, steps, lr)
    train, test = toy_splits(density, n_train, n_test, seed=seed if data_seed is None else data_seed)
    model = toy_model(kind, num_couplings, hidden, seed=seed)
    fitted = fit(model, train, steps=steps, batch_size=batch_size, lr=lr, clip_grad=10.0, schedule="cosine",
                 unit="nats", seed=seed, callback=callback, callback_every=PROGRESS_EVERY)
    nll = evaluate(model, test).nats
    parameters = count_parameters(model)
    status = result_line(settings, seed, parameters, nll, fitted.seconds)
    png = draw_playground(model, train, title=f"{density}, {kind}")
    return PlaygroundRun(model, nll, status, png, settings, seed, fitted.seconds, parameters)


def _scientific(value: float) -> str:
    """``1e-3`` for 0.001: the slider's readout, without the exponent's leading zero.

    >>> _scientific(0.003), _scientific(0.0001)
    ('3e-3', '1e-4')
    """
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"
