"""Sampling throughput (samples/s) of both MNIST models: flowlib vs the peers that can sample.

* NICE (784 dims, 4 additive couplings, 5 x 1000 MLPs, diagonal scaling), built as
  in ``nice_training.py``: flowlib ``model.sample(n)``, nflows ``Flow.sample(n)``,
  normflows ``NormalizingFlow.sample(n)`` (it also returns log q), FrEIA
  ``inn(z, rev=True)`` on a standard-normal ``z`` (plus the inverse input permutation).
* Multi-scale RealNVP, built as in ``realnvp_image_training.py``: flowlib
  ``model.sample(n)`` (ends with the inverse dequantization to 8-bit levels) and
  normflows ``MultiscaleFlow.sample(n)`` (ends with the inverse logit).

Models are in eval mode (BatchNorm uses running statistics) under ``torch.no_grad``;
the timing protocol is the interleaved one of ``common.py``.

Run: ``.venv-bench/bin/python benchmarks/sampling.py [--repeats 7 --steps 3]``.
"""

from __future__ import annotations

import sys

import torch

import common
from flowlib.book.analysis import count_parameters  # noqa: E402
import flowlib
import nice_training as nice
import realnvp_image_training as rnvp
from nice_training import versions


def nice_samplers(n: int, hidden: int) -> tuple[dict, dict]:
    samplers, params = {}, {}
    for name in nice.LIBS:
        model, _ = nice.BUILDERS[name](hidden)
        model.eval()
        params[name] = count_parameters(model)
        if name == "flowlib":
            samplers[name] = lambda m=model: m.sample(n)
        elif name == "nflows":
            samplers[name] = lambda m=model: m.sample(n)
        elif name == "normflows":
            samplers[name] = lambda m=model: m.sample(n)[0]
        else:
            inv = torch.argsort(model.perm)
            samplers[name] = lambda m=model, inv=inv: m(torch.randn(n, nice.DIM), rev=True)[0].index_select(1, inv)
    return samplers, params


def rnvp_samplers(n: int, hidden: int, blocks: int, scales: int) -> tuple[dict, dict]:
    samplers, params = {}, {}
    for name in rnvp.LIBS:
        model, _ = rnvp.BUILDERS[name]((1, 28, 28), scales, hidden, blocks)
        model.eval()
        params[name] = count_parameters(model)
        samplers[name] = (lambda m=model: m.sample(n)) if name == "flowlib" else (lambda m=model: m.sample(n)[0])
    return samplers, params


def run(title: str, samplers: dict, params: dict, n: int, args) -> tuple[dict, str]:
    with torch.no_grad(), flowlib.value_checks(False):
        rates = common.interleaved(samplers, n, args.repeats, args.steps, args.warmup)
    summary = common.summarize(rates, "flowlib")
    rows = [[name, f"{params[name]:,}", f"{s['median']:.1f}", f"{s['min']:.1f} - {s['max']:.1f}",
             f"{s['flowlib_over_this']:.3f}"] for name, s in summary.items()]
    table = common.format_table(["library", "parameters", "samples/s (median)", "min - max", "flowlib / this"], rows)
    print(f"{title}\n\n{table}\n", flush=True)
    return summary, f"{title}\n\n{table}"


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.splitlines()[0], repeats=7, steps=3, warmup=1, adam=False)
    p.add_argument("--nice-batch", type=int, default=256)
    p.add_argument("--nice-hidden", type=int, default=nice.HIDDEN)
    p.add_argument("--rnvp-batch", type=int, default=32)
    p.add_argument("--rnvp-hidden", type=int, default=32)
    p.add_argument("--rnvp-blocks", type=int, default=2)
    p.add_argument("--rnvp-scales", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.nice_batch, args.nice_hidden = 2, 1, 32, 64
        args.rnvp_batch, args.rnvp_hidden, args.rnvp_blocks = 8, 8, 1
    common.setup_threads(args.threads)
    torch.manual_seed(0)
    info = common.machine_info()
    print(f"sampling, fp32, torch threads {info['threads']}, {info['cpu']}, torch {info['torch']}; "
          f"versions: {versions()}; {args.repeats} rounds x {args.steps} calls\n", flush=True)
    nice_summary, nice_md = run(
        f"NICE (hidden {args.nice_hidden}), {args.nice_batch} samples per call",
        *nice_samplers(args.nice_batch, args.nice_hidden), args.nice_batch, args)
    rnvp_summary, rnvp_md = run(
        f"RealNVP multi-scale (scales {args.rnvp_scales}, hidden {args.rnvp_hidden}, blocks {args.rnvp_blocks}), "
        f"{args.rnvp_batch} samples per call",
        *rnvp_samplers(args.rnvp_batch, args.rnvp_hidden, args.rnvp_blocks, args.rnvp_scales), args.rnvp_batch, args)
    result = {"benchmark": "sampling", "machine": info, "versions": versions(), "repeats": args.repeats,
              "steps": args.steps, "nice": nice_summary, "realnvp_image": rnvp_summary}
    if not args.no_save and not args.quick:
        md = f"Sampling throughput ({info['threads']} threads, {info['cpu']}, torch {info['torch']}, {info['time']})"
        common.write_results("sampling", result, f"{md}\n\n{nice_md}\n\n{rnvp_md}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
