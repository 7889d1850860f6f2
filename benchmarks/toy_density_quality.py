"""Density quality at equal budget: flows on the six 2D toy densities, flowlib against zuko, normflows and nflows.

Four families of 8 layers on 2D data, standard normal prior, each layer's network with 2 hidden ReLU layers:

* ``realnvp``: affine couplings with alternating masks (coordinate 0 conditions first), one MLP per coupling
  from the conditioning coordinate to (scale, shift) of the other, 128 hidden units: flowlib.models.realnvp,
  zuko's ``RealNVP`` and normflows' ``AffineCouplingBlock`` of the same size.
* ``maf``: affine autoregressive layers, the order reversed from layer to layer: flowlib's
  ``toy_model("maf")`` (`flowlib.autoregressive.MaskedAutoregressive`) and zuko's ``MAF`` (``randperm=False``).
* ``nsf-ar``: rational-quadratic spline autoregressive layers (Durkan et al. 2019, RQ-NSF (AR)), 8 bins on
  [-5, 5] with linear (identity) tails, the order reversed from layer to layer: flowlib's
  ``toy_model("spline_ar")`` (`flowlib.splines.SplineAutoregressive`), zuko's ``NSF`` (its splines are on
  [-5, 5]) and nflows' ``MaskedPiecewiseRationalQuadraticAutoregressiveTransform`` (``tails="linear"``,
  ``tail_bound=5``, a feed-forward MADE of 2 hidden layers: ``num_blocks=1``, no residual blocks) with a
  ``ReversePermutation`` between layers.
* ``nsf-c``: rational-quadratic spline couplings (RQ-NSF (C)) on alternating masks, 8 bins on [-5, 5]:
  flowlib's ``toy_model("spline_coupling")`` (`flowlib.splines.SplineCoupling`) and nflows'
  ``PiecewiseRationalQuadraticCouplingTransform`` (``tails="linear"``, ``tail_bound=5``, an
  ``nflows.nn.nets.MLP`` of 2 hidden layers). zuko's coupling form, ``NSF(..., passes=2)``, is left out:
  it splits the features into two autoregressive groups, the first transformed by a spline with learned
  constant parameters, so in 2D it is exactly its ``nsf-ar`` model (the same numbers, measured).

**Equal parameters.** The RealNVPs are built at ``--hidden`` (their counts agree to a few units). Every
other model gets the hidden width whose parameter count is closest to flowlib's RealNVP's
(`flowlib.book.analysis.width_for_params`, searched per model); the table prints each count. Masked
weights of a MADE are counted as parameters, as every library stores them.

**Equal steps.** The same training data (``flowlib.datasets.toy.toy_splits``), the same mini-batch order,
the same number of Adam steps, learning rate and batch size for every model; the score is the mean negative
log-likelihood (nats) of an independent test set, mean and standard deviation over ``--seeds`` seeds.
Training seconds are printed too: equal steps is not equal time.

How the affine scale is parametrised differs by library, as each library ships it:
flowlib ``s = a tanh(s~)`` with a learned ``a``; zuko ``exp`` of a soft-clipped
log-scale (``MonotonicAffineTransform``); normflows a plain ``exp(s~)``
(``AffineCouplingBlock``, ``split_mode="channel"/"channel_inv"``, ``MLP([1, 128, 128, 2],
init_zeros=True)``). The spline minima (bin width, height, derivative) are 1e-3 in flowlib and nflows;
zuko bounds the spline's slope below by 1e-3.

Run: ``.venv-bench/bin/python benchmarks/toy_density_quality.py [--steps 2000 --seeds 3 --families nsf-ar,nsf-c]``;
the results go to ``results/toy_density_quality-FAMILIES.{json,md}`` (``-realnvp``,
``-maf_nsf-ar_nsf-c``, ...; ``-maf_nsf-ar_nsf-c-flowlib_zuko`` when ``--libs`` leaves out some of their
libraries), written only when every density has been run.

**Nothing is lost on interruption.** Each trained model's score is kept, as it lands, in
``runs/benchmarks/<results name>.partial.json`` (ignored by git), keyed by everything that decides the
numbers (settings, models and widths, CPU, threads, library versions). A later run with the same key takes
the scores it finds there and trains only the rest, so a sweep can be run in pieces, one density at a time
(``--densities``) or across sessions; ``--restart`` ignores the file. It is deleted once the results are
written.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import common
from flowlib.book.analysis import count_parameters, width_for_params  # noqa: E402
from flowlib.book.baselines import TRUE_DENSITIES, true_nll
import flowlib
from flowlib.datasets.toy import TOY_DENSITIES, toy_splits
from flowlib.files import runs_dir
from flowlib.models import TOY_SPLINE_BOUND, toy_model
from nice_training import versions

LIBS = ("flowlib", "zuko", "normflows", "nflows")
FAMILIES = ("realnvp", "maf", "nsf-ar", "nsf-c")
BINS = 8

# A builder takes (layers, hidden, hidden_layers) and returns (module, log_prob).
Builder = Callable[[int, int, int], tuple[torch.nn.Module, Callable[[Tensor], Tensor]]]


def build_flowlib(layers: int, hidden: int, hidden_layers: int):
    model = flowlib.realnvp(2, num_couplings=layers, hidden=hidden, num_hidden_layers=hidden_layers)
    return model, model.log_prob


def build_zuko(layers: int, hidden: int, hidden_layers: int):
    import zuko

    flow = zuko.flows.RealNVP(2, transforms=layers, hidden_features=(hidden,) * hidden_layers)
    return flow, lambda x: flow().log_prob(x)


def build_normflows(layers: int, hidden: int, hidden_layers: int):
    import normflows as nf

    flows = [
        nf.flows.AffineCouplingBlock(nf.nets.MLP([1, *[hidden] * hidden_layers, 2], init_zeros=True),
                                     split_mode="channel" if k % 2 == 0 else "channel_inv")
        for k in range(layers)
    ]
    # normflows lists flows latent -> data: reversed, so that coupling 0 meets the data first.
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows[::-1])
    return model, model.log_prob


def build_flowlib_kind(kind: str) -> Builder:
    def build(layers: int, hidden: int, hidden_layers: int):
        model = toy_model(kind, num_couplings=layers, hidden=hidden, num_hidden_layers=hidden_layers, num_bins=BINS)
        return model, model.log_prob
    return build


def build_zuko_maf(layers: int, hidden: int, hidden_layers: int):
    import zuko

    flow = zuko.flows.MAF(2, transforms=layers, randperm=False, hidden_features=(hidden,) * hidden_layers)
    return flow, lambda x: flow().log_prob(x)


def build_zuko_nsf(layers: int, hidden: int, hidden_layers: int):
    import zuko

    flow = zuko.flows.NSF(2, bins=BINS, transforms=layers, randperm=False, hidden_features=(hidden,) * hidden_layers)
    return flow, lambda x: flow().log_prob(x)


def _nflows_model(transforms: list) -> tuple[torch.nn.Module, Callable[[Tensor], Tensor]]:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.base import CompositeTransform

    model = Flow(CompositeTransform(transforms), StandardNormal([2]))
    return model, model.log_prob


def build_nflows_nsf_ar(layers: int, hidden: int, hidden_layers: int):
    from nflows.transforms.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressiveTransform
    from nflows.transforms.permutations import ReversePermutation

    transforms = []
    for k in range(layers):
        if k:
            transforms.append(ReversePermutation(2))
        transforms.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            2, hidden, num_bins=BINS, tails="linear", tail_bound=TOY_SPLINE_BOUND,
            num_blocks=hidden_layers - 1, use_residual_blocks=False))
    return _nflows_model(transforms)


def build_nflows_nsf_c(layers: int, hidden: int, hidden_layers: int):
    from nflows.nn.nets import MLP
    from nflows.transforms.coupling import PiecewiseRationalQuadraticCouplingTransform

    class Net(torch.nn.Module):  # nflows' MLP; the coupling also passes a context, which this flow has none of
        def __init__(self, in_features: int, out_features: int) -> None:
            super().__init__()
            self.mlp = MLP((in_features,), (out_features,), hidden_sizes=[hidden] * hidden_layers)

        def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
            return self.mlp(x)

    net = Net

    # nflows transforms the features whose mask is > 0: coupling 0 transforms coordinate 1 given coordinate 0.
    transforms = [PiecewiseRationalQuadraticCouplingTransform(
        torch.tensor([0, 1]) if k % 2 == 0 else torch.tensor([1, 0]), net, num_bins=BINS, tails="linear",
        tail_bound=TOY_SPLINE_BOUND) for k in range(layers)]
    return _nflows_model(transforms)


#: Every model: name -> (family, library, builder, whether its width is matched to flowlib's RealNVP).
MODELS: dict[str, tuple[str, str, Builder, bool]] = {
    "flowlib realnvp": ("realnvp", "flowlib", build_flowlib, False),
    "zuko realnvp": ("realnvp", "zuko", build_zuko, False),
    "normflows realnvp": ("realnvp", "normflows", build_normflows, False),
    "flowlib maf": ("maf", "flowlib", build_flowlib_kind("maf"), True),
    "zuko maf": ("maf", "zuko", build_zuko_maf, True),
    "flowlib nsf-ar": ("nsf-ar", "flowlib", build_flowlib_kind("spline_ar"), True),
    "zuko nsf-ar": ("nsf-ar", "zuko", build_zuko_nsf, True),
    "nflows nsf-ar": ("nsf-ar", "nflows", build_nflows_nsf_ar, True),
    "flowlib nsf-c": ("nsf-c", "flowlib", build_flowlib_kind("spline_coupling"), True),
    "nflows nsf-c": ("nsf-c", "nflows", build_nflows_nsf_c, True),
}


def widths(names: list[str], args: Any) -> tuple[dict[str, int], int]:
    """Each model's hidden width: ``--hidden`` for the RealNVPs, else the width matching flowlib RealNVP's count."""
    target = count_parameters(build_flowlib(args.couplings, args.hidden, args.layers)[0])
    out = {}
    for name in names:
        build, matched = MODELS[name][2], MODELS[name][3]
        out[name] = (width_for_params(lambda h: build(args.couplings, h, args.layers)[0], target, low=4,
                                      high=4 * args.hidden) if matched else args.hidden)
    return out, target


def train_and_test(name: str, hidden: int, train: Tensor, test: Tensor, args, seed: int) -> tuple[float, float, int]:
    """Train one model; return (test NLL in nats, seconds, parameter count)."""
    torch.manual_seed(seed)
    _, library, build, _ = MODELS[name]
    model, log_prob = build(args.couplings, hidden, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, **common.adam_kwargs(args.adam, library))
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
    p.add_argument("--seeds", type=int, default=1, help="training seeds per model and density (mean reported)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--couplings", type=int, default=8, help="layers of every model (couplings or autoregressive)")
    p.add_argument("--hidden", type=int, default=128, help="the RealNVPs' width; the others match its parameters")
    p.add_argument("--layers", type=int, default=2, help="hidden layers of every network")
    p.add_argument("--n-train", type=int, default=50000)
    p.add_argument("--n-test", type=int, default=20000)
    p.add_argument("--densities", type=str, default=",".join(TOY_DENSITIES))
    p.add_argument("--families", type=str, default=",".join(FAMILIES), help=f"comma-separated subset of {FAMILIES}")
    p.add_argument("--restart", action="store_true", help="train every model again, ignoring kept scores")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.n_train, args.n_test = 30, 1, 2000, 1000
    common.setup_threads(args.threads)
    libs = args.libs.split(",") if args.libs else list(LIBS)
    families = args.families.split(",")
    names = [n for n, (family, library, _, _) in MODELS.items() if family in families and library in libs]
    densities = args.densities.split(",")

    info = common.machine_info()
    hidden, target = widths(names, args)
    print(f"2D toy densities: {args.couplings} layers, MLP/MADE {args.layers} hidden layers, splines {BINS} bins on "
          f"[-{TOY_SPLINE_BOUND:g}, {TOY_SPLINE_BOUND:g}], Adam lr {args.lr}, batch {args.batch}, {args.steps} steps, "
          f"{args.seeds} seed(s), {args.n_train} train / {args.n_test} test points, torch threads {info['threads']}; "
          f"widths matched to flowlib RealNVP's {target:,} parameters: "
          + ", ".join(f"{n} {hidden[n]}" for n in names))
    print(f"machine: {info['cpu']}, torch {info['torch']}; versions: {versions()}\n", flush=True)
    # one results file per set of families, and of libraries when not all of theirs ran, so that no run
    # overwrites another's table
    every_lib = all(n in names for n, (family, _, _, _) in MODELS.items() if family in families)
    results_name = "toy_density_quality-" + "_".join(f for f in FAMILIES if f in families)
    if not every_lib:
        results_name += "-" + "_".join(lib for lib in LIBS if lib in libs)
    keep = not args.quick and not args.no_save
    key = {k: getattr(args, k) for k in ("steps", "batch", "lr", "couplings", "hidden", "layers", "n_train",
                                         "n_test")} | {"bins": BINS, "hidden_widths": hidden,
                                                       "cpu": info["cpu"], "threads": info["threads"],
                                                       "torch": info["torch"], "versions": versions()}
    partial = runs_dir() / "benchmarks" / f"{results_name}.partial.json"
    kept = load_kept(partial, key) if keep and not args.restart else {}
    if kept:
        print(f"taking {len(kept)} kept scores from {partial}", flush=True)
    nll: dict[str, dict[str, list[float]]] = {d: {n: [] for n in names} for d in densities}
    secs: dict[str, float] = {n: 0.0 for n in names}
    params: dict[str, int] = {}
    for d in densities:
        train, test = toy_splits(d, args.n_train, args.n_test, seed=0)
        for seed in range(args.seeds):
            for name in names:
                run = f"{d}/{seed}/{name}"
                if run not in kept:
                    kept[run] = train_and_test(name, hidden[name], train, test, args, seed)
                    if keep:
                        save_kept(partial, key, kept)
                value, seconds, params[name] = kept[run]
                nll[d][name].append(value)
                secs[name] += seconds
        print(f"{d:13s}" + "".join(f"  {n} {statistics.mean(nll[d][n]):.3f}" for n in names), flush=True)

    def cell(values: list[float]) -> str:
        m = statistics.mean(values)
        return f"{m:.3f}" if len(values) == 1 else f"{m:.3f} ± {statistics.stdev(values):.3f}"

    # the true density's NLL on the same test points (the floor no model beats on average), where it is known
    floor = {d: true_nll(d, toy_splits(d, args.n_train, args.n_test, seed=0)[1]) for d in densities
             if d in TRUE_DENSITIES}
    rows = []
    for d in densities:
        best = min(statistics.mean(nll[d][n]) for n in names)
        rows.append([d, *[cell(nll[d][n]) + (" *" if statistics.mean(nll[d][n]) == best else "") for n in names],
                     f"{floor[d]:.3f}" if d in floor else "-"])
    means = {n: statistics.mean(statistics.mean(nll[d][n]) for d in densities) for n in names}
    rows.append(["mean", *[f"{means[n]:.3f}" for n in names], ""])
    rows.append(["hidden width", *[str(hidden[n]) for n in names], ""])
    rows.append(["parameters", *[f"{params[n]:,}" for n in names], ""])
    rows.append(["train seconds", *[f"{secs[n]:.0f}" for n in names], ""])
    table = common.format_table(["test NLL (nats), lower is better", *names, "true density"], rows)
    print("\n" + table + "\n(* best on that density, over all models)")
    result = {"benchmark": "toy_density_quality", "machine": info, "versions": versions(),
              "config": {k: getattr(args, k) for k in ("steps", "seeds", "batch", "lr", "couplings", "hidden",
                                                       "layers", "n_train", "n_test")} | {"bins": BINS},
              "models": names, "hidden": hidden, "test_nll": nll, "mean_nll": means, "true_nll": floor,
              "params": params,
              "train_seconds": secs}
    if set(densities) != set(TOY_DENSITIES) and keep:
        print(f"not saved: a results file holds every density (the scores are kept in {partial})")
    if set(densities) == set(TOY_DENSITIES) and not args.no_save and not args.quick:
        md = (f"Test NLL (nats) of {args.couplings}-layer flows ({args.layers} hidden layers per network; RealNVP "
              f"{args.hidden} wide, every other model at the width matching its {target:,} parameters; splines "
              f"{BINS} bins) after {args.steps} Adam steps (lr {args.lr}, batch {args.batch}), {args.seeds} seed(s), "
              f"torch {info['torch']}, {info['time']}\n\n{table}\n\n(* best on that density, over all models)\n\n"
              f"Command: `.venv-bench/bin/python benchmarks/toy_density_quality.py {' '.join(argv or [])}`")
        common.write_results(results_name, result, md)
        partial.unlink(missing_ok=True)
    return result


def load_kept(path, key: dict) -> dict[str, tuple[float, float, int]]:
    """The scores kept in ``path`` by an earlier run with the same ``key``: ``"density/seed/model"`` to
    (test NLL, seconds, parameters); none when the file is missing or its key differs."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("key") != json.loads(json.dumps(key)):
        print(f"not taking the scores in {path}: they were made with other settings (it will be overwritten)")
        return {}
    return {run: tuple(v) for run, v in data["runs"].items()}


def save_kept(path, key: dict, kept: dict) -> None:
    """Write the scores so far, atomically (a run interrupted while writing keeps the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "runs": kept}, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main(sys.argv[1:])
