"""Shared helpers of the benchmark scripts: timing, matmul peak, tables, results.

Timing protocol (used by every throughput script):

* every library gets the same warmup steps first;
* then ``repeats`` rounds; in each round every library runs ``steps`` steps
  back to back, and the order of the libraries rotates from round to round
  (round-robin), so slow drifts of the machine hit every library alike;
* a library's throughput is the median over rounds of ``samples / seconds``,
  and the spread is the min and max over rounds;
* a ratio "A vs B" is the median over rounds of the per-round ratio, which
  cancels load that changes between rounds but not within one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = [
    "RESULTS", "ADAM_IMPLS", "adam_kwargs", "make_step", "describe_adam", "base_parser", "setup_threads", "matmul_peak", "interleaved", "summarize",
    "format_table", "write_results", "machine_info", "load_mnist_images", "QUARTERS", "preset_step",
    "train_and_score", "with_preset_model_kwargs",
]

RESULTS = Path(__file__).resolve().parent / "results"
# torch.optim.Adam implementations (same algorithm and hyperparameters); on CPU torch's
# default is the per-parameter loop, "fused" is one kernel per parameter group.
ADAM_IMPLS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def adam_kwargs(impl: str, library: str) -> dict:
    """The Adam implementation a library's step uses.

    ``native`` is each library as its users train it: flowlib with its
    trainer's optimizer (`flowlib.training.fit.make_optimizer`, fused Adam), the
    peers (which ship no trainer) with torch's default. Any other choice is
    the same implementation for every library.
    """
    if impl == "native":
        return ADAM_IMPLS["fused"] if library == "flowlib" else ADAM_IMPLS["default"]
    return ADAM_IMPLS[impl]


def base_parser(description: str, repeats: int, steps: int, warmup: int, adam: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=repeats, help="timed rounds (round-robin over libraries)")
    p.add_argument("--steps", type=int, default=steps, help="steps per library per round")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps per library first")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny repeats/steps)")
    p.add_argument("--libs", type=str, default=None, help="comma-separated subset of libraries")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    if adam:
        p.add_argument("--adam", choices=sorted(ADAM_IMPLS) + ["native"], default="native",
                       help="torch.optim.Adam implementation: 'native' (default) is flowlib's trainer (fused) "
                            "against the peers' torch default; any other is the same for every library")
    return p


def setup_threads(n: int) -> None:
    """Intra-op threads for every library alike (the benchmarks state the number)."""
    torch.set_num_threads(n)


def cpu_model() -> str:
    """The processor's name as the kernel reports it (``model name`` in /proc/cpuinfo), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    return {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 ``torch.mm`` rate on ``n x n`` matrices, in GFLOP/s (``2 n^3`` per product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def interleaved(
    steps_fns: dict[str, Callable[[], None]], batch: int, repeats: int, steps: int, warmup: int,
) -> dict[str, list[float]]:
    """Samples/s of each library in every round (see the module docstring)."""
    names = list(steps_fns)
    for name in names:
        for _ in range(warmup):
            steps_fns[name]()
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn = steps_fns[name]
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            rates[name].append(batch * steps / (time.perf_counter() - t))
    return rates


def summarize(rates: dict[str, list[float]], reference: str) -> dict[str, dict]:
    """Median, min, max samples/s and the median per-round ratio ``reference / library``."""
    out = {}
    for name, r in rates.items():
        ratios = [a / b for a, b in zip(rates[reference], r)]
        out[name] = {
            "median": statistics.median(r), "min": min(r), "max": max(r), "rounds": r,
            f"{reference}_over_this": statistics.median(ratios),
        }
    return out


def format_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def write_results(name: str, data: dict, markdown: str) -> None:
    if data.get("adam_impl", "native") != "native":
        name = f"{name}-adam-{data['adam_impl']}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    print(f"\nwrote {RESULTS / (name + '.json')} and .md")


def load_mnist_images(n: int) -> tuple[torch.Tensor, str]:
    """``n`` MNIST training images (uint8, ``(n, 1, 28, 28)``), or random ones if MNIST is absent."""
    try:
        from flowlib.datasets.mnist import load_mnist

        images, _ = load_mnist("train", download=False)
        return images[:n], "MNIST train"
    except (FileNotFoundError, ValueError, OSError):
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), "random uint8 (MNIST not found)"


def make_step(model: torch.nn.Module, loss_fn, batches: list, adam: dict, impl: str, library: str,
              native_precision: str = "auto"):
    """One training step cycling through ``batches``.

    flowlib steps through its own `flowlib.training.fit.train_step` (the step its
    trainer and chapters use); with ``impl="native"`` that is its fastest
    setting as its users get it (fused Adam and the precision of its preset,
    ``native_precision``: ``"auto"`` is bf16 autocast for the nets where the
    hardware has it), otherwise the same
    Adam implementation as the peers and fp32. The peers ship no trainer:
    ``loss_fn(x).backward()`` and a torch Adam step.
    """
    if library == "flowlib":
        from flowlib.training.fit import make_optimizer, train_step

        if impl == "native":
            opt, precision = make_optimizer(model, **adam), native_precision
        else:
            opt, precision = torch.optim.Adam(model.parameters(), **adam, **ADAM_IMPLS[impl]), "fp32"
    else:
        opt = torch.optim.Adam(model.parameters(), **adam, **adam_kwargs(impl, library))
    state = {"i": 0}

    def step() -> None:
        x = batches[state["i"] % len(batches)]
        state["i"] += 1
        if library == "flowlib":
            train_step(model, opt, x, unit="nats", precision=precision)
            return
        opt.zero_grad(set_to_none=True)
        loss_fn(x).backward()
        opt.step()

    return step


def describe_adam(impl: str) -> str:
    """A phrase for the table headers: which Adam implementation each library used."""
    if impl == "native":
        return ("native: flowlib's train_step as its trainer runs it (fused Adam, its preset's precision), "
                "the peers torch's default Adam in fp32")
    return f"{impl} implementation for every library"


#: Where a short training budget is scored: a quarter, half, three quarters and all of it.
QUARTERS = (0.25, 0.5, 0.75, 1.0)


def preset_step(config, batches: list, precision: str) -> Callable[[], None]:
    """One training step of a fresh model built from ``config`` (a `TrainConfig`), cycling through ``batches``.

    Seeded with 0 and started from ``batches[0]``, so every configuration timed against another starts alike;
    the step is `flowlib.training.fit.train_step` with the config's optimizer and clipping, in ``precision``.
    """
    from flowlib.flow import initialize_from_data
    from flowlib.training.config import build_model
    from flowlib.training.fit import train_step
    from flowlib.training.train import make_optimizer

    torch.manual_seed(0)
    net = build_model(config)
    net.train()
    initialize_from_data(net, batches[0])
    opt = make_optimizer(net, config.lr, config.betas, config.eps, config.weight_decay)
    state = {"i": 0}

    def step() -> None:
        train_step(net, opt, batches[state["i"] % len(batches)], clip_grad=config.clip_grad, precision=precision)
        state["i"] += 1

    return step


def train_and_score(config, steps: int, train: torch.Tensor, valid: torch.Tensor, precision: str) -> dict:
    """Train a fresh model of ``config`` for ``steps`` steps with `flowlib.training.fit.fit` and score it.

    The config's batch, Adam settings, clipping and schedule (a cosine runs to 0 over these ``steps``), seeded
    with ``config.seed``; validation bits/dim on ``valid`` in fp32 (the same function whatever the training
    precision) at each of `QUARTERS` of the steps, and once more at the end in the training ``precision``.
    """
    import math

    from flowlib.training.config import build_model
    from flowlib.training.evaluate import evaluate
    from flowlib.training.fit import fit

    torch.manual_seed(config.seed)
    net = build_model(config)
    marks = sorted({max(1, round(q * steps)) for q in QUARTERS})
    curve: list[tuple[int, float]] = []
    eval_batch = config.eval_batch_size or 1000

    def score(step: int, _loss: float) -> None:
        if step in marks:
            curve.append((step, evaluate(net, valid, batch_size=eval_batch).bpd))
            net.train()

    start = time.perf_counter()
    fit(net, train, steps=steps, batch_size=config.batch_size, lr=config.lr, betas=config.betas,
        eps=config.eps, weight_decay=config.weight_decay, clip_grad=config.clip_grad, schedule=config.schedule,
        seed=config.seed, precision=precision, callback=score, callback_every=math.gcd(*marks))
    own = evaluate(net, valid, batch_size=eval_batch, precision=precision).bpd
    return {"steps": steps, "batch_size": config.batch_size, "schedule": config.schedule,
            "valid_steps": [s for s, _ in curve], "valid_bpd_fp32": [v for _, v in curve],
            "valid_bpd_own_precision": own, "seconds": time.perf_counter() - start}


def with_preset_model_kwargs(model: str, preset: str, overrides: dict) -> dict:
    """``overrides`` of `TrainConfig` fields, with ``model_kwargs`` merged into the preset's instead of replacing them.

    A candidate that sets one model argument (NICE's ``dropout``) keeps the preset's others (its
    ``zero_hidden_bias``); `make_config` itself replaces the whole dict.

    >>> with_preset_model_kwargs("nice", "cpu", {"model_kwargs": {"dropout": 0.2}, "lr": 0.002})["model_kwargs"]
    {'zero_hidden_bias': True, 'dropout': 0.2}
    """
    from flowlib.training.config import make_config

    if "model_kwargs" not in overrides:
        return dict(overrides)
    return {**overrides, "model_kwargs": {**make_config(model, preset).model_kwargs, **overrides["model_kwargs"]}}
