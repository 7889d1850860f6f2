"""Density quality at equal budget: vector RealNVP on the six 2D toy densities.

flowlib.models.realnvp vs zuko's and normflows' RealNVP of the same size:
8 affine couplings with alternating masks (coordinate 0 conditions first), one
MLP per coupling from the conditioning coordinate to (scale, shift) of the
other, 2 hidden ReLU layers of 128 units, standard normal prior. The same
training data (``flowlib.datasets.toy.toy_splits``), the same mini-batch order, the same
number of Adam steps, learning rate and batch size for every library; the
score is the mean negative log-likelihood (nats) of an independent test set.

How the scale is parametrised differs by library, as each library ships it:
flowlib ``s = a tanh(s~)`` with a learned ``a``; zuko ``exp`` of a soft-clipped
log-scale (``MonotonicAffineTransform``); normflows a plain ``exp(s~)``
(``AffineCouplingBlock``, ``split_mode="channel"/"channel_inv"``, ``MLP([1, 128, 128, 2],
init_zeros=True)``).

Run: ``.venv-bench/bin/python benchmarks/toy_density_quality.py [--steps 2000 --seeds 1]``.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch import Tensor

import common
from flowlib.book.analysis import count_parameters  # noqa: E402
import flowlib
from flowlib.datasets.toy import TOY_DENSITIES, toy_splits
from nice_training import versions

LIBS = ("flowlib", "zuko", "normflows")


def build_flowlib(couplings: int, hidden: int, layers: int):
    model = flowlib.realnvp(2, num_couplings=couplings, hidden=hidden, num_hidden_layers=layers)
    return model, model.log_prob


def build_zuko(couplings: int, hidden: int, layers: int):
    import zuko

    flow = zuko.flows.RealNVP(2, transforms=couplings, hidden_features=(hidden,) * layers)
    return flow, lambda x: flow().log_prob(x)


def build_normflows(couplings: int, hidden: int, layers: int):
    import normflows as nf

    flows = [
        nf.flows.AffineCouplingBlock(nf.nets.MLP([1, *[hidden] * layers, 2], init_zeros=True),
                                     split_mode="channel" if k % 2 == 0 else "channel_inv")
        for k in range(couplings)
    ]
    # normflows lists flows latent -> data: reversed, so that coupling 0 meets the data first.
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows[::-1])
    return model, model.log_prob


BUILDERS = {"flowlib": build_flowlib, "zuko": build_zuko, "normflows": build_normflows}


def train_and_test(name: str, train: Tensor, test: Tensor, args, seed: int) -> tuple[float, float, int]:
    """Train one model; return (test NLL in nats, seconds, parameter count)."""
    torch.manual_seed(seed)
    model, log_prob = BUILDERS[name](args.couplings, args.hidden, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, **common.adam_kwargs(args.adam, name))
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(args.steps):
        idx = torch.randint(0, train.shape[0], (args.batch,), generator=order)
        loss = -log_prob(train[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        nll = -torch.cat([log_prob(x) for x in test.split(10000)]).mean().item()
    return nll, seconds, count_parameters(model)


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.splitlines()[0], repeats=1, steps=2000, warmup=0)
    p.add_argument("--seeds", type=int, default=1, help="training seeds per library and density (mean reported)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--couplings", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--n-train", type=int, default=50000)
    p.add_argument("--n-test", type=int, default=20000)
    p.add_argument("--densities", type=str, default=",".join(TOY_DENSITIES))
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.n_train, args.n_test = 30, 1, 2000, 1000
    common.setup_threads(args.threads)
    libs = args.libs.split(",") if args.libs else list(LIBS)
    densities = args.densities.split(",")

    info = common.machine_info()
    print(f"2D toy densities: RealNVP with {args.couplings} couplings, MLP {args.layers} x {args.hidden} ReLU, "
          f"Adam lr {args.lr}, batch {args.batch}, {args.steps} steps, {args.seeds} seed(s), "
          f"{args.n_train} train / {args.n_test} test points, torch threads {info['threads']}")
    print(f"machine: {info['cpu']}, torch {info['torch']}; versions: {versions()}\n", flush=True)
    nll: dict[str, dict[str, list[float]]] = {d: {n: [] for n in libs} for d in densities}
    secs: dict[str, float] = {n: 0.0 for n in libs}
    params: dict[str, int] = {}
    for d in densities:
        train, test = toy_splits(d, args.n_train, args.n_test, seed=0)
        for seed in range(args.seeds):
            for name in libs:
                value, seconds, params[name] = train_and_test(name, train, test, args, seed)
                nll[d][name].append(value)
                secs[name] += seconds
        print(f"{d:13s}" + "".join(f"  {n} {statistics.mean(nll[d][n]):.3f}" for n in libs), flush=True)

    def cell(values: list[float]) -> str:
        m = statistics.mean(values)
        return f"{m:.3f}" if len(values) == 1 else f"{m:.3f} ± {statistics.stdev(values):.3f}"

    rows = []
    for d in densities:
        best = min(statistics.mean(nll[d][n]) for n in libs)
        rows.append([d, *[cell(nll[d][n]) + (" *" if statistics.mean(nll[d][n]) == best else "") for n in libs]])
    means = {n: statistics.mean(statistics.mean(nll[d][n]) for d in densities) for n in libs}
    rows.append(["mean", *[f"{means[n]:.3f}" for n in libs]])
    rows.append(["parameters", *[f"{params[n]:,}" for n in libs]])
    rows.append(["train seconds", *[f"{secs[n]:.0f}" for n in libs]])
    table = common.format_table(["test NLL (nats), lower is better", *libs], rows)
    print("\n" + table + "\n(* best on that density)")
    result = {"benchmark": "toy_density_quality", "machine": info, "versions": versions(),
              "config": {k: getattr(args, k) for k in ("steps", "seeds", "batch", "lr", "couplings", "hidden",
                                                       "layers", "n_train", "n_test")},
              "test_nll": nll, "mean_nll": means, "params": params, "train_seconds": secs}
    if not args.no_save and not args.quick:
        md = (f"Test NLL (nats) of RealNVP ({args.couplings} couplings, {args.layers} x {args.hidden} MLPs) after "
              f"{args.steps} Adam steps (lr {args.lr}, batch {args.batch}), {args.seeds} seed(s), "
              f"torch {info['torch']}, {info['time']}\n\n{table}\n\n(* best on that density)")
        common.write_results("toy_density_quality", result, md)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
