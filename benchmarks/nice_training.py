"""Training throughput of the NICE MNIST model: flowlib vs nflows, normflows, FrEIA.

Architecture (Dinh et al. 2015, section 5.1), built identically in every library:
784 dims; 4 additive couplings on alternating odd/even halves (392 conditioning
coordinates -> 392 shifted ones), each with a ReLU MLP of 5 hidden layers of
1000 units (last layer zero-initialised); a learned diagonal scaling
``z = exp(S) * h``. One training step: ``loss = -mean log p(x)`` on a batch of
256 dequantized MNIST images in [0, 1), ``backward``, ``Adam.step`` (NICE's
hyperparameters for all). By default (``--adam native``) each library runs
as its users get it: flowlib through its own `flowlib.training.fit.train_step` with its
trainer's optimizer (fused Adam) and its preset's precision (bf16 autocast for
the nets on CPUs with native bf16, as the ``cpu`` preset trains; fp32
elsewhere), the peers, which ship no trainer, with torch's default Adam in
fp32. ``--adam fused`` or ``--adam default`` gives every library the same Adam
implementation and fp32: the equal-arithmetic rows.

How each peer expresses it (only their installed packages are used):

* nflows: ``AdditiveCouplingTransform`` (mask by feature index) x 4 and a
  4-line diagonal-scaling ``Transform`` (nflows has no learnable scale-only
  layer), ``Flow`` with ``StandardNormal``.
* normflows: ``AffineCouplingBlock(scale=False, split_mode="checkerboard[_inv]")``
  x 4 (on a vector the checkerboard split is odd/even), ``AffineConstFlow(shift=False)``,
  ``NormalizingFlow`` with a fixed ``DiagGaussian``; trained with ``forward_kld``.
* FrEIA: ``NICECouplingBlock`` x 2 (each is two additive couplings, on the first
  and second half), ``LearnedElementwiseScaling``, in a ``SequenceINN``; the
  input is permuted once to (odd, even) coordinates so that its halves are the
  odd/even partition; standard-normal NLL written out by hand (FrEIA has no priors).

The prior differs: flowlib uses NICE's logistic prior, the peers a standard
normal (none of them ships a logistic one); its cost (two softplus per
coordinate) is negligible next to the 2 x 10^10 matmul FLOPs of a step.

Run: ``.venv-bench/bin/python benchmarks/nice_training.py [--repeats 7 --steps 5]``.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor, nn

import common
from flowlib.book.analysis import count_parameters  # noqa: E402
import flowlib

DIM, HIDDEN, LAYERS, COUPLINGS, BATCH = 784, 1000, 5, 4, 256
ADAM = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-4)  # NICE's Adam ("beta2 = 0.01" = today's 0.99), for every library
LIBS = ("flowlib", "nflows", "normflows", "FrEIA")


def plain_mlp(n_in: int, n_out: int, hidden: int = HIDDEN) -> nn.Sequential:
    """The conditioner every peer gets: Linear-ReLU x 5 (1000 units), zero-init output."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(LAYERS):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    out = nn.Linear(width, n_out)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(*layers, out)


def normal_nll(z: Tensor, log_det: Tensor) -> Tensor:
    """``-mean(log N(z; 0, I) + log_det)``."""
    log_pz = -0.5 * (z * z).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
    return -(log_pz + log_det).mean()


# --- one builder per library: returns (model, loss_fn(x) -> scalar) -------------------

def build_flowlib(hidden: int = HIDDEN):
    model = flowlib.nice(DIM, hidden=hidden)
    return model, lambda x: -model.log_prob(x).mean()


def build_nflows(hidden: int = HIDDEN):
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import AdditiveCouplingTransform, CompositeTransform, Transform

    class Net(nn.Module):  # nflows calls its conditioner as net(x, context)
        def __init__(self, n_in: int, n_out: int) -> None:
            super().__init__()
            self.net = plain_mlp(n_in, n_out, hidden)

        def forward(self, x: Tensor, context=None) -> Tensor:
            return self.net(x)

    class DiagScaling(Transform):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.log_scale = nn.Parameter(torch.zeros(dim))

        def forward(self, x, context=None):
            return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

        def inverse(self, z, context=None):
            return z * torch.exp(-self.log_scale), -self.log_scale.sum().expand(z.shape[0])

    index = torch.arange(DIM)
    # nflows: mask > 0 marks the *transformed* features; coupling k conditions on parity k % 2.
    transforms = [AdditiveCouplingTransform((index % 2 != k % 2).int(), Net) for k in range(COUPLINGS)]
    model = Flow(CompositeTransform([*transforms, DiagScaling(DIM)]), StandardNormal([DIM]))
    return model, lambda x: -model.log_prob(x).mean()


def build_normflows(hidden: int = HIDDEN):
    import normflows as nf

    # normflows lists flows latent -> data and trains through their inverses, so the
    # data -> latent order (coupling 1..4, then scaling) is written reversed.
    # "checkerboard_inv" conditions on the even coordinates, "checkerboard" on the odd.
    couplings = [
        nf.flows.AffineCouplingBlock(plain_mlp(DIM // 2, DIM // 2, hidden), scale=False,
                                     split_mode="checkerboard_inv" if k % 2 == 0 else "checkerboard")
        for k in range(COUPLINGS)
    ]
    flows = [nf.flows.AffineConstFlow((DIM,), scale=True, shift=False), *reversed(couplings)]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(DIM, trainable=False), flows)
    return model, model.forward_kld


def build_freia(hidden: int = HIDDEN):
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    inn = Ff.SequenceINN(DIM)
    for _ in range(COUPLINGS // 2):
        inn.append(Fm.NICECouplingBlock, subnet_constructor=lambda a, b: plain_mlp(a, b, hidden))
    inn.append(Fm.LearnedElementwiseScaling)
    # NICECouplingBlock: y1 = x1 + F(x2), then y2 = x2 + G(y1), on the first / second half.
    # Ordering the input as (odd, even) makes the first coupling condition on the even
    # coordinates, the second on the odd ones: flowlib's alternating partition.
    perm = torch.cat([torch.arange(1, DIM, 2), torch.arange(0, DIM, 2)])

    def loss(x: Tensor) -> Tensor:
        z, log_jac = inn(x.index_select(1, perm))
        return normal_nll(z, log_jac)

    inn.perm = perm
    return inn, loss


BUILDERS = {"flowlib": build_flowlib, "nflows": build_nflows, "normflows": build_normflows, "FrEIA": build_freia}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = {"flowlib": "flowlib", "nflows": "nflows", "normflows": "normflows", "FrEIA": "FrEIA", "zuko": "zuko"}
    return {k: version(v) for k, v in names.items()}


def step_flops(batch: int, hidden: int = HIDDEN) -> int:
    """Matmul FLOPs of one training step, counted from the architecture.

    A Linear layer with an ``n_in x n_out`` weight costs ``2 B n_in n_out`` FLOPs
    forward and twice that backward (weight gradient and input gradient), except
    that the first layer of the first coupling needs no input gradient (its
    input is data): ``3x`` forward for all but that one, ``2x`` for it.
    """
    shapes = [(DIM // 2, hidden)] + [(hidden, hidden)] * (LAYERS - 1) + [(hidden, DIM // 2)]
    per_coupling = sum(2 * batch * a * b for a, b in shapes)
    first = 2 * batch * shapes[0][0] * shapes[0][1]
    return 3 * COUPLINGS * per_coupling - first


def make_batches(n_batches: int, batch: int) -> tuple[list[Tensor], str]:
    images, source = common.load_mnist_images(n_batches * batch)
    g = torch.Generator().manual_seed(0)
    x = (images.flatten(1).float() + torch.rand(images.shape[0], DIM, generator=g)) / 256
    return list(x.split(batch)), source


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.splitlines()[0], repeats=7, steps=4, warmup=2)
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--hidden", type=int, default=HIDDEN, help="MLP width (1000 in the paper)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.warmup, args.batch, args.hidden = 2, 2, 1, 32, 64
    common.setup_threads(args.threads)
    libs = args.libs.split(",") if args.libs else list(LIBS)
    torch.manual_seed(0)

    batches, source = make_batches(4, args.batch)
    models, steps, params = {}, {}, {}
    for name in libs:
        models[name], loss_fn = BUILDERS[name](args.hidden)
        params[name] = count_parameters(models[name])
        steps[name] = common.make_step(models[name], loss_fn, batches, ADAM, args.adam, name)
    with flowlib.value_checks(False):
        peak_before = common.matmul_peak(512 if args.quick else 2048)
        rates = common.interleaved(steps, args.batch, args.repeats, args.steps, args.warmup)
        peak = max(peak_before, common.matmul_peak(512 if args.quick else 2048))
    ref = "flowlib" if "flowlib" in libs else libs[0]
    summary = common.summarize(rates, ref)
    flops = step_flops(args.batch, args.hidden)

    info = common.machine_info()
    print(f"NICE training step, hidden {args.hidden}, batch {args.batch}, Adam{ADAM} ({common.describe_adam(args.adam)}), torch threads {info['threads']}, data: {source}")
    print(f"machine: {info['cpu']}, torch {info['torch']}; versions: {versions()}")
    print(f"matmul FLOPs per step (analytic): {flops / 1e9:.2f} GFLOP; measured fp32 mm peak: {peak:.1f} GFLOP/s")
    print(f"{args.repeats} interleaved rounds x {args.steps} steps, {args.warmup} warmup steps each\n")
    rows = []
    for name in libs:
        s = summary[name]
        gflops = flops * s["median"] / args.batch / 1e9
        s.update(params=params[name], gflops=gflops, peak_fraction=gflops / peak)
        rows.append([
            name, f"{params[name]:,}", f"{s['median']:.1f}", f"{s['min']:.1f} - {s['max']:.1f}",
            f"{gflops:.1f}", f"{100 * gflops / peak:.0f}%", f"{s[f'{ref}_over_this']:.3f}",
        ])
    table = common.format_table(
        ["library", "parameters", "samples/s (median)", "min - max", "GFLOP/s", "of mm peak", f"{ref} / this"], rows)
    print(table)
    if len(set(params.values())) != 1:
        print("\nWARNING: parameter counts differ:", params)
    result = {"benchmark": "nice_training", "machine": info, "versions": versions(), "batch": args.batch, "hidden": args.hidden,
              "adam": {k: list(v) if isinstance(v, tuple) else v for k, v in ADAM.items()}, "adam_impl": args.adam,
              "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup, "data": source,
              "step_gflop": flops / 1e9, "mm_peak_gflops": peak, "libraries": summary}
    if not args.no_save and not args.quick:
        md = (f"NICE MNIST training step (batch {args.batch}, Adam {common.describe_adam(args.adam)}, {info['threads']} threads, "
              f"{info['cpu']}, torch {info['torch']}, {info['time']}); fp32 mm peak {peak:.1f} GFLOP/s; "
              f"{args.repeats} rounds x {args.steps} steps\n\n{table}")
        common.write_results("nice_training", result, md)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
