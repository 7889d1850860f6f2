"""The trainer's presets: for each model, the ``paper``'s settings, a ``cpu`` budget of about half an hour on
two cores, a seconds-long ``quick`` run for tests, and the 2D ``toy`` sizes; each with where its numbers come from.

A preset is a dict of `flowlib.training.config.TrainConfig` fields; `make_config` starts from one and
applies any override.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MODELS", "PRESET_NAMES", "PRESETS"]

# Adam's step, lr m / (sqrt(v) + eps), is the same for a loss c times larger with an eps c times larger, and for no
# other eps. NICE's eps 1e-4 is for its loss in nats per example; the trainer's loss is in bits/dim, 1 / (784 ln 2)
# of it, so the paper's Adam is eps = 1e-4 / (784 ln 2) = 1.84e-7 here (tests/test_train.py,
# test_nice_papers_eps_in_bits_per_dim_takes_the_papers_steps). The cpu and quick presets keep the eps they were
# measured with, 1e-4 on bits/dim: 543 times the paper's, which damps the steps of weights with small gradients.
_NICE_PAPER_EPS = 1e-4 / (784 * math.log(2))
_NICE_ADAM = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-4)

#: The models the trainer builds (`build_model`).
MODELS = ("nice", "realnvp", "glow", "maf", "spline_coupling", "spline_ar")

#: The presets' names (``"toy"`` is the 2D toys' sizes, picked by ``dataset``, not a name).
PRESET_NAMES = ("paper", "cpu", "quick")


PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # NICE (Dinh et al. 2015, section 5.1): 4 additive couplings, 5 x 1000 ReLU, logistic prior,
    # Adam with lr 1e-3, momentum 0.9, beta2 "0.01" (= betas (0.9, 0.99) today), eps 1e-4 (on nats per example).
    # Batch 200 and up to 1500 epochs as in the authors' released code (laurent-dinh/nice, exp/nice_mnist.yaml),
    # best validation kept. That code trains otherwise with another optimizer: RMSProp (averaging 0.95, the rms
    # floored at 1e-2) with momentum 0 for five epochs and 0.5 from the sixth, the learning rate divided by 1.0005
    # after every update down to 1e-4, and a fixed 'tile' reordering of the pixels first. This preset follows the
    # paper's text (Adam at a constant rate) instead; the trainer has the released optimizer and schedule
    # (--optimizer rmsprop_momentum --schedule exponential), not the reordering.
    ("nice", "paper"): dict(epochs=1500, batch_size=200, checkpoint_minutes=10.0, log_every=250,
                            model_kwargs=dict(zero_hidden_bias=True), **{**_NICE_ADAM, "eps": _NICE_PAPER_EPS}),
    # Same model and optimizer, about 30 minutes on 2 cores: bf16 nets where the CPU has them (687 against 337
    # samples/s in fp32 over a whole fit with its validation passes, 0.002 bits/dim apart after 1,250 steps:
    # benchmarks/results/precision_check.md),
    # 65 epochs with the learning rate on a cosine to 0, weight decay 2e-5, the weights' Polyak average over
    # one epoch scored and kept (`flowlib.training.averaging`), and the coupling nets' hidden biases starting at
    # zero (`flowlib.nets.MLP`; as NICE's released code). On the AMD EPYC: 4.290 and 4.270 test bits/dim for seeds 0
    # and 1 (4.280 +- 0.014) in 33.2 and 35.2 min (results/nice-mnist-cpu{,-seed1}.json).
    # With PyTorch's default biases (--hidden-bias pytorch), 95-96% of the units of the nets' fifth hidden layer ended
    # dead, against 87-88% with zero biases (benchmarks/results/dead_units*.md), and the same preset reached 4.514, 4.548
    # and 4.469 (4.510 +- 0.040) in 33.0, 29.2 and 33.4 min
    # (results/nice-mnist-cpu-zero_hidden_biasFalse{,-seed1,-seed2}.json). With those biases, tuned first: without the
    # decay and the average (--weight-decay 0 --average-epochs 0) 4.564, 4.581 and 4.526 (4.557 +- 0.028;
    # results/nice-mnist-cpu-wd0{,-seed1,-seed2}-noavg.json), overfitting, validation rising after epoch 38 or 39 on every
    # seed; the decay alone (--average-epochs 0) 4.528, 4.563 and 4.481 (4.524 +- 0.041;
    # results/nice-mnist-cpu-wd2e-05{,-seed1,-seed2}.json); the decay and the average each better on every seed. The
    # cosine ending at 2e-4 (--min-lr) gave 4.521 on seed 0, worse; an average over two epochs (--average-epochs 2) 4.514
    # on seed 0, the same; weight decay 5e-5, dropout 0.2 and lr 2e-3 much worse (docs/results.md).
    ("nice", "cpu"): dict(epochs=65, batch_size=200, schedule="cosine", weight_decay=2e-5, average_epochs=1.0,
                          model_kwargs=dict(zero_hidden_bias=True), **_NICE_ADAM),
    ("nice", "quick"): dict(epochs=2, batch_size=100, model_kwargs=dict(hidden=64, num_hidden_layers=2),
                            train_size=1000, eval_size=500, log_every=5, **_NICE_ADAM),
    # Multi-scale RealNVP (Dinh et al. 2017, section 3.6) with residual s/t nets of 64 features
    # (the paper's CIFAR-10 size; the paper has no MNIST experiment), Adam lr 1e-3, batch 64, fp32 (no run yet).
    # bf16 autocast is 0.12 bits/dim worse after 300 equal steps (one seed, benchmarks/results/precision_check.md)
    # but 0.275 better at equal time (1.59x the steps, 3 seeds: benchmarks/results/precision_equal_time.md).
    ("realnvp", "paper"): dict(epochs=100, batch_size=64, lr=1e-3, weight_decay=5e-5, clip_grad=100.0, precision="fp32",
                               model_kwargs=dict(hidden_channels=64, num_blocks=8),
                               checkpoint_minutes=10.0, log_every=100, eval_batch_size=500),
    # 30 to 38 minutes on 2 cores: 7 epochs, bf16 nets where the CPU has them (precision "auto"), lr 2e-3 on a
    # cosine to 0. Chosen at equal time: bf16 beat fp32 on every seed (above); at 5 minutes lr 2e-3 reached
    # 1.722 valid bits/dim against 1.847 for 1e-3 and 2.088 for 48 channels (one seed,
    # benchmarks/results/preset_candidates-realnvp.md). The earlier fp32 preset (4 epochs at lr 1e-3) reached
    # 1.538 test bits/dim (results/realnvp-mnist-cpu-fp32.json); bf16 at lr 1e-3 for 7 epochs 1.464
    # (results/realnvp-mnist-cpu-bf16-e7.json). This preset on the AMD EPYC: 1.397, 1.403 and 1.372 for seeds 0, 1
    # and 2 (1.391 +- 0.016) in 38.0, 30.8 and 33.8 min (results/realnvp-mnist-cpu{,-seed1,-seed2}.json; its
    # epochs took 245-482 s, slower where other work shared the cores).
    ("realnvp", "cpu"): dict(epochs=7, batch_size=64, lr=2e-3, weight_decay=5e-5, clip_grad=100.0,
                             schedule="cosine",
                             model_kwargs=dict(hidden_channels=32, num_blocks=2), eval_batch_size=500),
    # Glow (Kingma & Dhariwal 2018, section 3): 2 scales (28x28 squeezes to 14x14, then 7x7) of
    # ActNorm, 1x1 convolution and affine coupling steps. The paper has no MNIST model; "paper" uses its
    # CIFAR-10 depth and width (32 steps per scale, 512 hidden channels) with Adam lr 1e-3, for a GPU.
    ("glow", "paper"): dict(epochs=100, batch_size=64, lr=1e-3, clip_grad=100.0, precision="fp32",
                            model_kwargs=dict(steps_per_scale=32, hidden_channels=512),
                            checkpoint_minutes=10.0, log_every=100, eval_batch_size=500),
    # About 30 minutes on 2 cores, as the RealNVP cpu preset: 8 steps per scale, 96 hidden channels (276k
    # parameters), 16 epochs, bf16 nets where the CPU has them (precision "auto"), each step's loss compiled,
    # lr 2e-3 on a cosine to 0. At equal time bf16 beat fp32 on every seed (1.628 +- 0.004 against 1.668 +- 0.001
    # valid bits/dim, 3 seeds: benchmarks/results/precision_equal_time.md) and the compiled bf16 step is 1.20x
    # the eager one for 51 s of compiling (benchmarks/results/compile_check-bf16.md). At 5 minutes lr 2e-3
    # reached 1.540 valid bits/dim against 1.576 for 3e-3 and 1.612 for 1e-3 (one seed,
    # benchmarks/results/preset_candidates-glow.md). The earlier fp32 preset (10 epochs at lr 1e-3, not compiled)
    # reached 1.470 test bits/dim in 28.3 min (results/glow-mnist-cpu-fp32.json); this one at lr 1e-3 1.423 in
    # 37.3 min, its validation flat over its last 4 epochs (results/glow-mnist-cpu-lr1e-3.json). This preset on
    # the AMD EPYC: 1.363, 1.330 and 1.366 for seeds 0, 1 and 2 (1.353 +- 0.020, at the 1.35 the budget is meant
    # to reach within the seeds' spread) in 27.9, 27.9 and 34.0 min (results/glow-mnist-cpu{,-seed1,-seed2}.json;
    # seed 0's run repeated its first float for float). The weights' average (--average-epochs 1) gained
    # 0.004 and 0.0005 on seeds 0 and 1 for more time (results/glow-mnist-cpu{,-seed1}-avg1.json; docs/speed.md), so
    # it is not used here. A linear warm-up over the first epoch (--warmup-epochs 1) gave 1.352 on seed 0 and 1.361 on
    # seed 1 (results/glow-mnist-cpu-warmup1{,-seed1}.json): not used either.
    ("glow", "cpu"): dict(epochs=16, batch_size=64, lr=2e-3, clip_grad=100.0, schedule="cosine", compile=True,
                          model_kwargs=dict(steps_per_scale=8, hidden_channels=96), eval_batch_size=500),
    ("glow", "quick"): dict(epochs=2, batch_size=32, lr=1e-3, clip_grad=100.0, precision="fp32",
                            model_kwargs=dict(steps_per_scale=2, hidden_channels=8),
                            train_size=256, eval_size=128, log_every=2, eval_batch_size=128),
    ("realnvp", "quick"): dict(epochs=2, batch_size=32, lr=1e-3, clip_grad=100.0, precision="fp32",
                               model_kwargs=dict(hidden_channels=8, num_blocks=1),
                               train_size=256, eval_size=128, log_every=2, eval_batch_size=128),
    # 2D toy densities (vector models).
    ("nice", "toy"): dict(epochs=20, batch_size=256, lr=1e-3,
                          model_kwargs=dict(num_couplings=6, hidden=64, num_hidden_layers=2)),
    ("realnvp", "toy"): dict(epochs=20, batch_size=256, lr=1e-3, model_kwargs=dict(hidden=64)),
    # The autoregressive and spline kinds of chapter 12 (2D toys only), as RealNVP's toy preset with the width
    # that gives each about its parameters (35,352 for 8 couplings of width 64; `flowlib.book.analysis.width_for_params`):
    # MAF 35,832 (width 63), spline coupling 35,824 (55), spline autoregressive 35,696 (46).
    ("maf", "toy"): dict(epochs=20, batch_size=256, lr=1e-3, model_kwargs=dict(hidden=63)),
    ("spline_coupling", "toy"): dict(epochs=20, batch_size=256, lr=1e-3, model_kwargs=dict(hidden=55)),
    ("spline_ar", "toy"): dict(epochs=20, batch_size=256, lr=1e-3, model_kwargs=dict(hidden=46)),
}
