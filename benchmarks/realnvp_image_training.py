"""Training throughput of multi-scale RealNVP on 28x28 images: flowlib vs normflows.

Architecture (RealNVP, Dinh et al. 2017, section 3.6), the same in both libraries,
for ``--scales 3`` on (1, 28, 28):

* preprocessing: uniform dequantization ``(x + u) / 256`` and
  ``logit(alpha + (1 - 2 alpha) y)``, alpha = 0.05, log-dets counted;
* scale 1: 3 affine couplings with checkerboard masks (alternating) on (1, 28, 28),
  squeeze to (4, 14, 14), 3 affine couplings with channel masks (alternating),
  factor out half the channels;
* scale 2: the same on (2, 14, 14) -> (8, 7, 7), factor out half;
* final: 4 checkerboard couplings on (4, 7, 7);
* every coupling: ONE residual conv net for s and t (3x3 conv in, ``num_blocks``
  pre-activation blocks BN-ReLU-conv3x3-BN-ReLU-conv3x3, BN-ReLU, 3x3 conv out
  to 2x the transformed channels, zero-initialised), ``s = a * tanh(s~)`` with a
  learned per-channel ``a``; checkerboard couplings feed the net ``b * x`` at full
  resolution, channel couplings feed it the conditioning half of the channels;
* standard normal prior on every factored-out piece.

normflows pieces: ``MaskedAffineFlow`` (checkerboard), ``AffineCouplingBlock(
split_mode="channel"/"channel_inv")`` (channel), ``Squeeze``, ``Merge`` and
``MultiscaleFlow`` (factor-out), ``transforms.Logit``, fixed ``DiagGaussian`` priors.
The conditioner is a plain-PyTorch twin of flowlib's ``ResidualConvNet`` (normflows'
own ``ConvResidualNet`` uses 1x1 in/out convs, a different net). Because
``MaskedAffineFlow`` asks for separate s and t modules, both are views of one
shared net that is evaluated once per coupling (s is asked first, t reuses it),
and ``a * tanh`` is applied there, so the two models have the same parameters,
the same convolutions and the same function class. Dequantization noise is added
in the training step for normflows (flowlib has it as a layer).

Default config (printed): 3 scales, hidden_channels 32, num_blocks 2, batch 32, so a
step takes about half a second on 2 cores.

Run: ``.venv-bench/bin/python benchmarks/realnvp_image_training.py [--repeats 7 --steps 3]``.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor, nn

import common
from flowlib.book.analysis import count_parameters  # noqa: E402
import flowlib
from flowlib.masks import checkerboard_mask
from nice_training import versions

ADAM = dict(lr=1e-3)
ALPHA = 0.05
LIBS = ("flowlib", "normflows")


class TwinResidualConvNet(nn.Module):
    """Layer-for-layer the same net as ``flowlib.nets.ResidualConvNet``, in plain PyTorch."""

    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*[
            _Residual(nn.Sequential(
                nn.BatchNorm2d(hidden), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1),
            )) for _ in range(blocks)
        ])
        self.out_norm = nn.BatchNorm2d(hidden)
        self.out = nn.Conv2d(hidden, c_out, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.inp(x))
        return self.out(torch.relu(self.out_norm(h)))


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SharedST(nn.Module):
    """One net for s and t: ``s = a * tanh(s~)``, evaluated once per call of `scale`."""

    def __init__(self, net: nn.Module, channels: int) -> None:
        super().__init__()
        self.net = net
        self.a = nn.Parameter(torch.ones(channels, 1, 1))
        self._t: Tensor | None = None

    def scale(self, x: Tensor) -> Tensor:
        raw_s, self._t = self.net(x).chunk(2, dim=1)
        return self.a * torch.tanh(raw_s)

    def shift(self, x: Tensor) -> Tensor:
        t, self._t = self._t, None
        return t


class _Half(nn.Module):
    def __init__(self, st: SharedST, which: str) -> None:
        super().__init__()
        self.st, self.which = st, which

    def forward(self, x: Tensor) -> Tensor:
        return self.st.scale(x) if self.which == "s" else self.st.shift(x)


class InterleavedST(nn.Module):
    """``param_map`` for normflows' AffineCoupling: channels (shift_0, scale_0, shift_1, ...)."""

    def __init__(self, net: nn.Module, channels: int) -> None:
        super().__init__()
        self.net = net
        self.a = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        raw_s, t = self.net(x).chunk(2, dim=1)
        return torch.stack([t, self.a * torch.tanh(raw_s)], dim=2).flatten(1, 2)


def build_flowlib(shape, scales: int, hidden: int, blocks: int):
    model = flowlib.realnvp_image(shape, num_scales=scales, hidden_channels=hidden, num_blocks=blocks, alpha=ALPHA)
    return model, lambda x: -model.log_prob(x).mean()


def build_normflows(shape, scales: int, hidden: int, blocks: int):
    import normflows as nf

    def checkerboard(c, h, w, parity):
        st = SharedST(TwinResidualConvNet(c, 2 * c, hidden, blocks), c)
        b = checkerboard_mask(c, h, w, parity).float()  # 1 = conditioning, as flowlib's mask
        return nf.flows.MaskedAffineFlow(b, t=_Half(st, "t"), s=_Half(st, "s"))

    def channel(c, parity):
        half = c // 2
        net = InterleavedST(TwinResidualConvNet(half, 2 * (c - half), hidden, blocks), c - half)
        return nf.flows.AffineCouplingBlock(net, scale=True, scale_map="exp",
                                            split_mode="channel" if parity == 0 else "channel_inv")

    c, h, w = shape
    levels, q0 = [], []  # data -> latent order here; normflows wants latent -> data
    for _ in range(scales - 1):
        before = [checkerboard(c, h, w, k % 2) for k in range(3)]
        c, h, w = 4 * c, h // 2, w // 2
        after = [channel(c, k % 2) for k in range(3)]
        levels.append([*before, nf.flows.Squeeze(), *after])
        q0.append(nf.distributions.DiagGaussian((c - c // 2, h, w), trainable=False))
        c = c // 2
    levels.append([checkerboard(c, h, w, k % 2) for k in range(4)])
    q0.append(nf.distributions.DiagGaussian((c, h, w), trainable=False))
    # normflows: level 0 is the deepest; Merge.inverse = chunk(2): first half goes on,
    # second half is factored out (flowlib factors out the first half: a mirror image).
    model = nf.MultiscaleFlow(
        q0[::-1], [list(reversed(level)) for level in levels[::-1]],
        [nf.flows.Merge() for _ in range(scales - 1)], transform=nf.transforms.Logit(ALPHA), class_cond=False,
    )
    log_levels = math.prod(shape) * math.log(256)

    def loss(x: Tensor) -> Tensor:
        y = (x.float() + torch.rand(x.shape)) / 256
        return -(model.log_prob(y, None) - log_levels).mean()

    return model, loss


BUILDERS = {"flowlib": build_flowlib, "normflows": build_normflows}


def conv_flops(model: nn.Module, loss_fn, x: Tensor) -> int:
    """Forward conv FLOPs of one loss evaluation, counted with hooks (``2 B C_out H W C_in k^2``)."""
    total = 0

    def hook(mod: nn.Conv2d, inp, out) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total += 2 * out.numel() * (mod.in_channels // mod.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad(), flowlib.value_checks(False):
        loss_fn(x)
    for h in handles:
        h.remove()
    return total


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(__doc__.splitlines()[0], repeats=7, steps=3, warmup=2)
    p.add_argument("--batch", type=int, default=32, help="32 keeps a step near 0.5 s on 2 cores")
    p.add_argument("--hidden", type=int, default=32, help="hidden channels of the s/t nets")
    p.add_argument("--blocks", type=int, default=2, help="residual blocks per s/t net")
    p.add_argument("--scales", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.warmup, args.batch, args.hidden, args.blocks = 2, 1, 1, 8, 8, 1
    common.setup_threads(args.threads)
    libs = args.libs.split(",") if args.libs else list(LIBS)
    shape = (1, 28, 28)
    torch.manual_seed(0)

    images, source = common.load_mnist_images(4 * args.batch)
    batches = list(images.split(args.batch))
    models, steps, params, flops = {}, {}, {}, {}
    for name in libs:
        models[name], loss_fn = BUILDERS[name](shape, args.scales, args.hidden, args.blocks)
        params[name] = count_parameters(models[name])
        flops[name] = 3 * conv_flops(models[name], loss_fn, batches[0])  # fwd + bwd ~ 3x fwd
        # RealNVP's presets train in fp32 (bf16 cost 0.12 bits/dim: results/precision_check.md).
        steps[name] = common.make_step(models[name], loss_fn, batches, ADAM, args.adam, name, native_precision="fp32")
    with flowlib.value_checks(False):
        peak = common.matmul_peak(512 if args.quick else 2048)
        rates = common.interleaved(steps, args.batch, args.repeats, args.steps, args.warmup)
        peak = max(peak, common.matmul_peak(512 if args.quick else 2048))
    ref = "flowlib" if "flowlib" in libs else libs[0]
    summary = common.summarize(rates, ref)

    info = common.machine_info()
    config = dict(shape=shape, scales=args.scales, hidden_channels=args.hidden, num_blocks=args.blocks,
                  batch=args.batch, alpha=ALPHA)
    print(f"RealNVP multi-scale training step, fp32, Adam{ADAM} ({common.describe_adam(args.adam)}), torch threads {info['threads']}, data: {source}")
    print(f"config: {config}")
    print("architecture per scale: 3 checkerboard couplings, squeeze, 3 channel couplings, factor out half; "
          "final: 4 checkerboard couplings; one residual conv net per coupling for s and t (s = a tanh)")
    print(f"machine: {info['cpu']}, torch {info['torch']}; versions: {versions()}")
    print(f"fp32 mm peak: {peak:.1f} GFLOP/s; {args.repeats} interleaved rounds x {args.steps} steps, "
          f"{args.warmup} warmup steps each\n")
    rows = []
    for name in libs:
        s = summary[name]
        gflops = flops[name] * s["median"] / args.batch / 1e9
        s.update(params=params[name], step_gflop=flops[name] / 1e9, gflops=gflops)
        rows.append([name, f"{params[name]:,}", f"{flops[name] / 1e9:.2f}", f"{s['median']:.1f}",
                     f"{s['min']:.1f} - {s['max']:.1f}", f"{1000 * args.batch / s['median']:.0f}",
                     f"{gflops:.1f}", f"{100 * gflops / peak:.0f}%", f"{s[f'{ref}_over_this']:.3f}"])
    table = common.format_table(["library", "parameters", "conv GFLOP/step", "samples/s (median)", "min - max",
                                 "ms/step", "GFLOP/s", "of mm peak", f"{ref} / this"], rows)
    print(table)
    if len(set(params.values())) != 1 or len(set(flops.values())) != 1:
        print("\nWARNING: parameter or FLOP counts differ:", params, flops)
    result = {"benchmark": "realnvp_image_training", "machine": info, "versions": versions(), "config": config,
              "adam": ADAM, "adam_impl": args.adam, "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup, "data": source,
              "mm_peak_gflops": peak, "libraries": summary}
    if not args.no_save and not args.quick:
        md = (f"Multi-scale RealNVP training step ({config}, fp32, Adam, {info['threads']} threads, "
              f"{info['cpu']}, torch {info['torch']}, {info['time']}); {args.repeats} rounds x {args.steps} steps\n\n{table}")
        common.write_results("realnvp_image_training", result, md)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
