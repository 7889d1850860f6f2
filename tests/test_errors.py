"""Bad input gets a clear ValueError that says what was expected and what came."""

from __future__ import annotations

import math
import re

import pytest
import torch

from flowlib import (
    MLP, ActNorm, AdditiveCoupling, AffineCoupling, BatchNormFlow, Dequantize, DiagonalScaling,
    InvertibleConv1x1, Logit, MultiScale, Permutation, RandomPermutation, ResidualConvNet,
    ReversePermutation, Sequential, Squeeze, alternating_mask, channel_mask, checkerboard_mask,
    half_mask, log_abs_det_jacobian, make_prior, nice, realnvp, realnvp_image, value_checks,
)
from flowlib.dequantization import VariationalDequantize
from flowlib.models import glow
from flowlib.flow import initialize_from_data
from flowlib.reshape import unsqueeze


def shapes(expected: str, got: tuple[int, ...]) -> str:
    """Regex for '<expected shape> ... got <actual shape>'."""
    return re.escape(expected) + r".*got " + re.escape(str(got))


def vector_coupling(cls=AdditiveCoupling, dim=4):
    mask = alternating_mask(dim)
    width = 1 if cls is AdditiveCoupling else 2
    return cls(mask, MLP(int(mask.sum()), width * int((~mask).sum()), hidden=4))


def image_coupling(cls=AffineCoupling, mask=None):
    mask = checkerboard_mask(2, 4, 4) if mask is None else mask
    return cls(mask, ResidualConvNet(2, 4, hidden_channels=4, num_blocks=1))


# Each row: (layer factory, bad input shape, expected-shape text in the message).
SHAPE_ERRORS = [
    ("additive-size", vector_coupling, (2, 5), "(B, 4)"),
    ("additive-rank", vector_coupling, (2, 4, 1), "(B, 4)"),
    ("affine-size", lambda: vector_coupling(AffineCoupling, 6), (3, 4), "(B, 6)"),
    ("affine-image-size", image_coupling, (2, 2, 4, 6), "(B, 2, 4, 4)"),
    ("affine-image-rank", image_coupling, (2, 32), "(B, 2, 4, 4)"),
    ("channel-coupling-size", lambda: AffineCoupling(channel_mask(2, 3, 3), ResidualConvNet(1, 2, 4, 1)),
     (2, 3, 3, 3), "(B, 2, 3, 3)"),
    ("diagonal-size", lambda: DiagonalScaling(3), (2, 4), "(B, 3)"),
    ("diagonal-image", lambda: DiagonalScaling((2, 3, 3)), (2, 2, 3, 4), "(B, 2, 3, 3)"),
    ("permutation-size", lambda: ReversePermutation(4), (2, 5), "(B, 4) or (B, 4, H, W)"),
    ("permutation-rank", lambda: RandomPermutation(4), (2, 4, 3), "(B, 4) or (B, 4, H, W)"),
    ("permutation-channels", lambda: Permutation(torch.tensor([1, 0])), (2, 3, 2, 2), "(B, 2) or (B, 2, H, W)"),
    ("batchnorm-size", lambda: BatchNormFlow(3), (2, 4), "(B, 3) or (B, 3, H, W)"),
    ("batchnorm-rank", lambda: BatchNormFlow(3).eval(), (2, 3, 4), "(B, 3) or (B, 3, H, W)"),
    ("actnorm-size", lambda: ActNorm(3), (2, 2, 5, 5), "(B, 3) or (B, 3, H, W)"),
    ("conv1x1-size", lambda: InvertibleConv1x1(3), (2, 4, 2, 2), "(B, 3) or (B, 3, H, W)"),
    ("conv1x1-rank", lambda: InvertibleConv1x1(3), (2, 3, 2), "(B, 3) or (B, 3, H, W)"),
    ("squeeze-rank", Squeeze, (2, 4), "(B, C, H, W)"),
    ("multiscale-size", lambda: MultiScale([Squeeze()], ReversePermutation(2), (1, 4, 4)), (2, 1, 4, 6),
     "(B, 1, 4, 4)"),
    ("logit-rank", Logit, (5,), "(B, *event_shape)"),
    ("dequantize-rank", Dequantize, (5,), "(B, *event_shape)"),
    ("sequential", lambda: Sequential(DiagonalScaling(2), DiagonalScaling(3)), (2, 2), "(B, 3)"),
]


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("make, shape, expected", [pytest.param(*row[1:], id=row[0]) for row in SHAPE_ERRORS])
def test_wrong_shape_names_expected_and_actual(make, shape, expected, direction):
    layer = make()
    if direction == "inverse" and isinstance(layer, MultiScale):
        expected = "(B, 16)"
    x = torch.zeros(shape)
    with pytest.raises(ValueError, match=shapes(expected, shape)):
        getattr(layer, direction)(x)


def test_multiscale_inverse_wants_the_flat_latent():
    ms = MultiScale([Squeeze()], ReversePermutation(2), (1, 4, 4))
    with pytest.raises(ValueError, match=shapes("(B, 16)", (2, 1, 4, 4))):
        ms.inverse(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=shapes("(B, 16)", (2, 15))):
        ms.inverse(torch.zeros(2, 15))


def test_model_log_prob_checks_shape():
    with pytest.raises(ValueError, match=shapes("(B, 6)", (2, 5))):
        nice(6, hidden=4, num_hidden_layers=1).log_prob(torch.zeros(2, 5))
    model = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1)
    with pytest.raises(ValueError, match=shapes("(B, 1, 8, 8)", (2, 1, 8, 6))):
        model.log_prob(torch.zeros(2, 1, 8, 6, dtype=torch.uint8))


# ------------------------------------------------------------ odd squeezes


@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (2, 3, 4, 5), (1, 1, 5, 5)])
def test_squeeze_odd_size(shape):
    _, _, h, w = shape
    with pytest.raises(ValueError, match=f"even height and width, got H={h}, W={w}"):
        Squeeze()(torch.zeros(shape))


def test_unsqueeze_needs_channels_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4, got C=6"):
        unsqueeze(torch.zeros(1, 6, 2, 2))
    with pytest.raises(ValueError, match=shapes("(B, C, H, W)", (1, 8))):
        Squeeze().inverse(torch.zeros(1, 8))


def test_multiscale_odd_level():
    with pytest.raises(ValueError, match=re.escape("level of shape (2, 3, 3): H and W must be even")):
        MultiScale([Squeeze(), Squeeze()], ReversePermutation(4), shape=(1, 6, 6))


def test_realnvp_image_size_not_divisible():
    with pytest.raises(ValueError, match="3 scales need H and W divisible by 4, got H=6, W=6"):
        realnvp_image((1, 6, 6), num_scales=3)
    with pytest.raises(ValueError, match=re.escape("shape must be (C, H, W), got (28, 28)")):
        realnvp_image((28, 28))


# ------------------------------------------------------------------- masks


def test_mask_that_does_not_fit_the_input():
    layer = AdditiveCoupling(checkerboard_mask(1, 4, 4), ResidualConvNet(1, 1, 4, 1))
    with pytest.raises(ValueError, match=shapes("(B, 1, 4, 4)", (2, 1, 8, 8))):
        layer(torch.zeros(2, 1, 8, 8))
    vector = vector_coupling(dim=4)
    with pytest.raises(ValueError, match=shapes("(B, 4)", (2, 1, 2, 2))):
        vector(torch.zeros(2, 1, 2, 2))


@pytest.mark.parametrize("mask", [torch.ones(4, dtype=torch.bool), torch.ones(2, 2, 2, dtype=torch.bool),
                                  torch.zeros(4, dtype=torch.bool)])
def test_mask_must_have_both_parts(mask):
    with pytest.raises(ValueError, match=r"both conditioning \(True\) and transformed \(False\)"):
        AdditiveCoupling(mask, MLP(2, 2))


def test_mask_rank():
    with pytest.raises(ValueError, match=re.escape("mask must have shape (D,) or (C, H, W), got (2, 2)")):
        AffineCoupling(torch.tensor([[True, False], [False, True]]), MLP(2, 2))


@pytest.mark.parametrize("make", [alternating_mask, half_mask])
@pytest.mark.parametrize("parity", [2, -1])
def test_bad_parity_vector(make, parity):
    with pytest.raises(ValueError, match=f"parity must be 0 or 1, got {parity}"):
        make(4, parity=parity)


@pytest.mark.parametrize("make", [checkerboard_mask, channel_mask])
def test_bad_parity_image(make):
    with pytest.raises(ValueError, match="parity must be 0 or 1, got 2"):
        make(2, 4, 4, parity=2)


def test_masks_too_small():
    with pytest.raises(ValueError, match="dim must be at least 2, got 1"):
        alternating_mask(1)
    with pytest.raises(ValueError, match="dim must be at least 2, got 1"):
        half_mask(1)
    with pytest.raises(ValueError, match="a channel mask needs at least 2 channels, got 1"):
        channel_mask(1, 4, 4)
    with pytest.raises(ValueError, match=re.escape("at least 2 pixels, got (3, 1, 1)")):
        checkerboard_mask(3, 1, 1)


def test_permutation_must_be_a_permutation():
    with pytest.raises(ValueError, match=re.escape("permutation of 0..2, got [0, 0, 2]")):
        Permutation(torch.tensor([0, 0, 2]))


# ------------------------------------------------------------ 8-bit data


@pytest.mark.parametrize(
    "values, message",
    [
        ([[-1.0, 3.0]], r"8-bit data, integers in \[0, 255\]; got values in \[-1, 3\]"),
        ([[0.0, 256.0]], r"8-bit data, integers in \[0, 255\]; got values in \[0, 256\]"),
        ([[0.5, 3.0]], r"integer levels in \[0, 255\], got non-integer values"),
        ([[0.1, 0.9]], r"already scaled to \[0, 1\]"),
    ],
)
def test_dequantize_rejects_non_8bit(values, message):
    with pytest.raises(ValueError, match=message):
        Dequantize()(torch.tensor(values))


def test_dequantize_rejects_out_of_range_integers():
    with pytest.raises(ValueError, match=r"got values in \[0, 300\]"):
        Dequantize()(torch.tensor([[0, 300]]))
    with pytest.raises(ValueError, match=r"2-bit data, integers in \[0, 3\]; got values in \[0, 4\]"):
        Dequantize(num_levels=4)(torch.tensor([[0.0, 4.0]]))
    with pytest.raises(ValueError, match=r"num_levels must be a power of two >= 2 \(the 2\*\*bits levels of bits-bit data\), got 1"):
        Dequantize(num_levels=1)


@pytest.mark.parametrize(
    "alpha, values, message",
    [
        (0.05, [[0.2, 1.5]], r"\[0, 1\] \(alpha=0.05\); got values in \[0.2, 1.5\]"),
        (0.05, [[-0.1, 0.5]], r"\[0, 1\] \(alpha=0.05\); got values in \[-0.1, 0.5\]"),
        (0.0, [[0.0, 0.5]], r"\(0, 1\) \(alpha=0.0\); got values in \[0, 0.5\]"),
        (0.0, [[0.5, 1.0]], r"\(0, 1\) \(alpha=0.0\); got values in \[0.5, 1\]"),
    ],
)
def test_logit_outside_unit_interval(alpha, values, message):
    with pytest.raises(ValueError, match=message):
        Logit(alpha)(torch.tensor(values))


def test_logit_bad_alpha():
    with pytest.raises(ValueError, match=re.escape("alpha must be in [0, 0.5), got 0.5")):
        Logit(alpha=0.5)


def test_model_rejects_scaled_images():
    model = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1)
    with pytest.raises(ValueError, match="non-integer values"):
        model.log_prob(torch.rand(2, 1, 8, 8))


# ------------------------------------------------------------ value checks


def test_value_checks_can_be_disabled():
    bad_levels = torch.tensor([[-1.0, 0.5, 300.0]])
    bad_unit = torch.tensor([[1.5, 0.5]])
    with value_checks(False):
        y, log_det = Dequantize()(bad_levels)  # no error: the caller vouched for the data
        assert torch.equal(log_det, torch.tensor([-3 * math.log(256)]))
        z, _ = Logit()(bad_unit)
        assert torch.isnan(z[0, 0]) and torch.isfinite(z[0, 1])
        with value_checks(True):
            with pytest.raises(ValueError, match="8-bit data"):
                Dequantize()(bad_levels)
        Dequantize()(bad_levels)  # the inner block restored the outer setting
    with pytest.raises(ValueError, match="8-bit data"):
        Dequantize()(bad_levels)
    with pytest.raises(ValueError, match=r"Logit expects values in \[0, 1\]"):
        Logit()(bad_unit)


def test_value_checks_restored_after_an_exception():
    with pytest.raises(RuntimeError):
        with value_checks(False):
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="8-bit data"):
        Dequantize()(torch.tensor([[-1.0]]))


def test_shape_checks_stay_on_without_value_checks():
    with value_checks(False):
        with pytest.raises(ValueError, match=shapes("(B, 3)", (2, 4))):
            DiagonalScaling(3)(torch.zeros(2, 4))
        with pytest.raises(ValueError, match="even height and width"):
            Squeeze()(torch.zeros(1, 1, 3, 3))


# ----------------------------------------------------- priors and presets


def test_bad_prior_name():
    with pytest.raises(ValueError, match=r"prior must be one of \['gaussian', 'logistic', 'normal'\], got 'cauchy'"):
        make_prior("cauchy")
    for build in (lambda: nice(4, hidden=4, prior="cauchy"), lambda: realnvp(2, hidden=4, prior="cauchy"),
                  lambda: realnvp_image((1, 4, 4), num_scales=1, hidden_channels=4, num_blocks=1, prior="cauchy")):
        with pytest.raises(ValueError, match="got 'cauchy'"):
            build()


def test_bad_preset_arguments():
    with pytest.raises(ValueError, match="dim must be at least 2, got 1"):
        nice(1)
    with pytest.raises(ValueError, match="num_couplings must be at least 1, got 0"):
        nice(4, num_couplings=0)
    with pytest.raises(ValueError, match="dim must be at least 2, got 1"):
        realnvp(1)
    with pytest.raises(ValueError, match="num_scales must be at least 1, got 0"):
        realnvp_image((1, 8, 8), num_scales=0)
    with pytest.raises(ValueError, match="num_hidden_layers must be at least 1, got 0"):
        MLP(2, 2, num_hidden_layers=0)


def test_non_square_jacobian():
    with pytest.raises(ValueError, match=re.escape("square Jacobian, got (3, 2)")):
        log_abs_det_jacobian(lambda x: torch.cat([x, x[:, :1]], dim=1), torch.zeros(4, 2))


def test_sequential_takes_flows_only():
    with pytest.raises(TypeError, match="Sequential takes Flow layers, got Linear"):
        Sequential(DiagonalScaling(2), torch.nn.Linear(2, 2))


# ----------------------------------------------- empty batches and single examples


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("shape", [(0, 3), (0, 1, 2, 2)])
def test_dequantize_rejects_an_empty_batch(shape, direction):
    with pytest.raises(ValueError, match=r"at least one example.*got an empty batch of shape " + re.escape(str(shape))):
        getattr(Dequantize(), direction)(torch.zeros(shape))


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("make", [Dequantize, Logit])
def test_preprocessing_rejects_a_0d_tensor(make, direction):
    with pytest.raises(ValueError, match=shapes("(B, *event_shape)", ())):
        getattr(make(), direction)(torch.tensor(0.5))


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 2, 2)])
def test_batchnorm_rejects_an_empty_batch_before_touching_its_statistics(shape):
    bn = BatchNormFlow(3).train()
    with pytest.raises(ValueError, match=r"at least one example.*got an empty batch of shape " + re.escape(str(shape))):
        bn(torch.zeros(shape))
    # The running averages are still their initial values, not NaN: the layer still works.
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(bn.running_var, torch.ones(3))
    x = torch.randn(8, *shape[1:])
    z, _ = bn.eval()(x)
    torch.testing.assert_close(z, x / math.sqrt(1 + bn.eps))
    with pytest.raises(ValueError, match="empty batch"):
        bn.inverse(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 2, 2)])
def test_actnorm_rejects_an_empty_batch_before_initialising(shape):
    an = ActNorm(3)
    with pytest.raises(ValueError, match=r"at least one example.*got an empty batch of shape " + re.escape(str(shape))):
        initialize_from_data(an, torch.zeros(shape))
    assert not an.initialized
    assert torch.equal(an.bias, torch.zeros(3)) and torch.equal(an.log_scale, torch.zeros(3))
    # A real batch afterwards initialises it as usual: zero mean, unit variance per feature.
    x = 4 * torch.randn(16, *shape[1:]) + 1
    initialize_from_data(an, x)
    z, _ = an(x)
    dims = [0] if len(shape) == 2 else [0, 2, 3]
    torch.testing.assert_close(z.mean(dims), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std(dims, unbiased=False), torch.ones(3), rtol=0, atol=1e-4)


def test_actnorm_needs_two_values_per_feature_to_initialise():
    an = ActNorm(3)
    with pytest.raises(ValueError, match=r"at least 2 values per feature.*got 1 from input of shape \(1, 3\)"):
        initialize_from_data(an, torch.randn(1, 3))
    assert not an.initialized and torch.equal(an.log_scale, torch.zeros(3))  # no 1e6 scale
    # One image has H * W values per channel: enough, and the statistics are that image's.
    x = torch.randn(1, 3, 2, 2)
    initialize_from_data(an, x)
    mean = x.mean(dim=(0, 2, 3))
    std = ((x - mean.view(1, 3, 1, 1)) ** 2).mean(dim=(0, 2, 3)).sqrt()
    torch.testing.assert_close(an.bias.detach(), -mean)
    torch.testing.assert_close(an.log_scale.detach(), -torch.log(std + 1e-6))


# ------------------------------------------------------------ dtypes


def test_dequantize_outputs_the_model_dtype():
    x = torch.tensor([[0, 17, 255]], dtype=torch.uint8)
    layer = Dequantize().to(torch.float64)
    torch.manual_seed(1)
    y, log_det = layer(x)
    torch.manual_seed(1)
    u = torch.rand(x.shape, dtype=torch.float64)  # the same noise, drawn independently
    assert y.dtype == log_det.dtype == torch.float64
    torch.testing.assert_close(y, (x.double() + u) / 256, rtol=0, atol=0)
    torch.testing.assert_close(log_det, torch.tensor([-3 * math.log(256)], dtype=torch.float64))
    # The default (float32) layer gives float32 whatever the integer dtype.
    for dtype in (torch.uint8, torch.int64):
        y32, log_det32 = Dequantize()(x.to(dtype))
        assert y32.dtype == log_det32.dtype == torch.float32


def test_float64_image_model_takes_uint8_digits():
    model = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1).double()
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    torch.manual_seed(2)
    log_prob = model.log_prob(x)
    assert log_prob.dtype == torch.float64 and log_prob.shape == (3,) and torch.isfinite(log_prob).all()
    torch.manual_seed(2)  # the same dequantization noise, on the data cast by hand
    torch.testing.assert_close(log_prob, model.log_prob(x.double()), rtol=0, atol=0)


# ------------------------------------------------------------ training settings


CLIP_MESSAGE = "clip_grad must be a positive finite number or None, got "


@pytest.mark.parametrize("clip_grad", [-1.0, 0, 0.0, float("nan"), float("inf"), True])
def test_clip_grad_is_none_or_positive_and_finite_wherever_it_enters(clip_grad):
    """A negative bound scales the gradients by a negative factor (the steps climb the loss); 0 or NaN
    turned clipping off without a word. The config, `fit` and `train_step` all refuse them."""
    from flowlib.training.config import make_config
    from flowlib.training.fit import fit, make_optimizer, train_step

    message = re.escape(CLIP_MESSAGE + repr(clip_grad))
    with pytest.raises(ValueError, match=message):
        make_config("nice", "quick", clip_grad=clip_grad)
    model, x = realnvp(2, num_couplings=2, hidden=4), torch.randn(64, 2)
    with pytest.raises(ValueError, match=message):
        fit(model, x, steps=1, batch_size=32, unit="nats", clip_grad=clip_grad)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        train_step(model, make_optimizer(model), x, clip_grad=clip_grad, unit="nats")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before any step


@pytest.mark.parametrize("field, value, message", [
    ("checkpoint_minutes", float("nan"), "checkpoint_minutes must be a positive finite number, got nan"),
    ("checkpoint_minutes", float("inf"), "checkpoint_minutes must be a positive finite number, got inf"),
    ("checkpoint_minutes", 0.0, "checkpoint_minutes must be a positive finite number, got 0.0"),
    ("checkpoint_minutes", -5.0, "checkpoint_minutes must be a positive finite number, got -5.0"),
    ("eps", 0.0, "eps must be a positive finite number, got 0.0"),
    ("eps", -1e-8, "eps must be a positive finite number, got -1e-08"),
    ("weight_decay", -1e-5, "weight_decay must be a finite number >= 0, got -1e-05"),
    ("weight_decay", float("nan"), "weight_decay must be a finite number >= 0, got nan"),
    ("epochs", 1.5, "epochs must be a positive integer, got 1.5"),
    ("epochs", True, "epochs must be a positive integer, got True"),
    ("batch_size", 2.5, "batch_size must be a positive integer, got 2.5"),
    ("eval_samples", 2.5, "eval_samples must be a positive integer, got 2.5"),
    ("eval_batch_size", 10.0, "eval_batch_size must be a positive integer, got 10.0"),
    ("log_every", 0.5, "log_every must be a positive integer, got 0.5"),
    ("train_size", 100.5, "train_size must be a positive integer or None, got 100.5"),
    ("max_steps", 2.5, "max_steps must be a positive integer or None, got 2.5"),
    ("device", "tpu", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    ("device", "cuda:x", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'cuda:x'"),
    ("betas", (0.9,), "betas must be in [0, 1), two decay rates (beta1, beta2); got (0.9,)"),
    ("betas", (0.9, 0.99, 0.999), "betas must be in [0, 1), two decay rates (beta1, beta2); got (0.9, 0.99, 0.999)"),
    ("lr", float("inf"), "lr must be a positive finite number, got inf"),
    ("seed", 2**70, f"seed must be an integer in [0, 2**63), got {2**70}"),
    ("seed", 2**63, f"seed must be an integer in [0, 2**63), got {2**63}"),
    ("seed", -1, "seed must be an integer in [0, 2**63), got -1"),
    ("seed", 1.5, "seed must be an integer in [0, 2**63), got 1.5"),
    ("model_kwargs", [("hidden", 4)], "model_kwargs must be a dict of the model's keyword arguments, got [('hidden', 4)]"),
    ("model_kwargs", "hidden=4", "model_kwargs must be a dict of the model's keyword arguments, got 'hidden=4'"),
    ("out_dir", 3, "out_dir must be a path (str), got 3"),
])
def test_train_config_refuses_a_bad_field_where_it_is_made(field, value, message):
    from flowlib.training.config import TrainConfig, make_config

    with pytest.raises(ValueError, match=re.escape(message)):
        make_config("nice", "quick", **{field: value})
    with pytest.raises(ValueError, match=re.escape(message)):  # and a config made by hand
        TrainConfig(**{field: value})


def test_train_config_checks_model_dataset_and_preset():
    from flowlib.training.config import TrainConfig, make_config

    glow_on_toys = re.escape("glow is an image model: dataset must be 'mnist', got 'moons' "
                             "(the 2D toy densities take the models ('nice', 'realnvp', 'maf', 'spline_coupling', "
                             "'spline_ar'))")
    with pytest.raises(ValueError, match=glow_on_toys):
        make_config("glow", dataset="moons")
    maf_on_mnist = re.escape("maf is a model of the 2D toy densities: dataset must be one of ('two_moons', ")
    with pytest.raises(ValueError, match=maf_on_mnist + r".*got 'mnist' \(MNIST takes the models \('nice', 'realnvp', 'glow'\)\)"):
        make_config("maf", "cpu")
    with pytest.raises(ValueError, match=re.escape("spline_ar is a model of the 2D toy densities")):
        TrainConfig(model="spline_ar")  # and a config made by hand
    with pytest.raises(ValueError, match=r"dataset must be 'mnist' or a 2D toy density \('two_moons', .*got 'moons'"):
        make_config("nice", dataset="moons")
    with pytest.raises(ValueError, match=r"preset must be one of \('paper', 'cpu', 'quick'\), got 'toy'"):
        make_config("nice", "toy")  # the toys' sizes, never a preset of MNIST
    with pytest.raises(ValueError, match=r"preset must be one of \('paper', 'cpu', 'quick'\), got 'huge'"):
        TrainConfig(preset="huge")


def test_fit_refuses_bad_settings_before_any_step():
    from flowlib.training.fit import fit

    model, x = realnvp(2, num_couplings=2, hidden=4), torch.randn(64, 2)
    before = [p.detach().clone() for p in model.parameters()]
    for kwargs, message in [
        (dict(steps=2.5), "steps must be an integer >= 1, got 2.5"),
        (dict(batch_size=2.5), "batch_size must be an integer >= 1, got 2.5"),
        (dict(eval_every=0), "eval_every must be at least 1, got 0"),
        (dict(seed=2**70), f"seed must be an integer in [0, 2**63), got {2**70}"),
        (dict(lr=float("nan")), "lr must be a positive finite number, got nan"),
        (dict(eps=0.0), "eps must be a positive finite number, got 0.0"),
        (dict(weight_decay=-1.0), "weight_decay must be a finite number >= 0, got -1.0"),
        (dict(betas=(0.9,)), "betas must be in [0, 1), two decay rates (beta1, beta2); got (0.9,)"),
        (dict(precision="fp16"), "precision must be one of ('auto', 'bf16', 'fp32'), got 'fp16'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            fit(model, x, **{"steps": 1, "batch_size": 32, "unit": "nats", **kwargs})
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ------------------------------------------------------------ layer and model sizes


@pytest.mark.parametrize("build, message", [
    pytest.param(lambda: MLP(2, 2, hidden=0), "hidden must be at least 1, got 0", id="mlp-hidden-0"),
    pytest.param(lambda: MLP(2, 2, hidden=-1), "hidden must be at least 1, got -1", id="mlp-hidden-negative"),
    pytest.param(lambda: MLP(2, 2, hidden=2.5), "hidden must be an integer >= 1, got 2.5", id="mlp-hidden-float"),
    pytest.param(lambda: MLP(0, 2), "in_features must be at least 1, got 0", id="mlp-in-0"),
    pytest.param(lambda: ResidualConvNet(2, 4, num_blocks=-1), "num_blocks must be at least 0, got -1",
                 id="resnet-blocks-negative"),
    pytest.param(lambda: ResidualConvNet(2, 4, hidden_channels=0), "hidden_channels must be at least 1, got 0",
                 id="resnet-hidden-0"),
    pytest.param(lambda: realnvp(2, num_couplings=0), "num_couplings must be at least 1, got 0",
                 id="realnvp-couplings-0"),
    pytest.param(lambda: realnvp(2, hidden=0), "hidden must be at least 1, got 0", id="realnvp-hidden-0"),
    pytest.param(lambda: nice(4, hidden=-1), "hidden must be at least 1, got -1", id="nice-hidden-negative"),
    pytest.param(lambda: nice(4, num_couplings=2.0), "num_couplings must be an integer >= 1, got 2.0",
                 id="nice-couplings-float"),
    pytest.param(lambda: realnvp_image((1, 8, 8), num_scales=2, num_blocks=-1), "num_blocks must be at least 0, got -1",
                 id="realnvp-image-blocks-negative"),
    pytest.param(lambda: glow((1, 8, 8), num_scales=0), "num_scales must be at least 1, got 0", id="glow-scales-0"),
    pytest.param(lambda: glow((1, 8, 8), num_scales=2, hidden_channels=0), "hidden_channels must be at least 1, got 0",
                 id="glow-hidden-0"),
    pytest.param(lambda: ActNorm(0), "num_features must be at least 1, got 0", id="actnorm-0"),
    pytest.param(lambda: BatchNormFlow(0), "num_features must be at least 1, got 0", id="batchnorm-0"),
    pytest.param(lambda: BatchNormFlow(2, eps=0.0), "eps must be a positive finite number, got 0.0", id="batchnorm-eps"),
    pytest.param(lambda: BatchNormFlow(2, momentum=1.5), "momentum must be a number in [0, 1], got 1.5",
                 id="batchnorm-momentum"),
    pytest.param(lambda: InvertibleConv1x1(0), "num_channels must be at least 1, got 0", id="conv1x1-0"),
    pytest.param(lambda: DiagonalScaling(0), "shape must be at least 1, got 0", id="scaling-0"),
    pytest.param(lambda: DiagonalScaling(2, min_std=float("nan")), "min_std must be a positive finite number, got nan",
                 id="scaling-min-std-nan"),
    pytest.param(lambda: ReversePermutation(0), "num_features must be at least 1, got 0", id="reverse-0"),
    pytest.param(lambda: alternating_mask(2.5), "dim must be an integer >= 2, got 2.5", id="mask-float"),
    pytest.param(lambda: Dequantize(2.5), "num_levels must be a power of two >= 2 (the 2**bits levels of bits-bit "
                 "data), got 2.5", id="dequantize-float"),
    pytest.param(lambda: Dequantize(100), "num_levels must be a power of two >= 2", id="dequantize-not-power-of-2"),
    pytest.param(lambda: VariationalDequantize(1, num_levels=100), "num_levels must be a power of two >= 2",
                 id="variational-not-power-of-2"),
])
def test_sizes_are_checked_where_they_enter(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_models_refuse_bool_and_integer_data_and_fractional_sample_counts():
    image_model = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match=re.escape("got a tensor of dtype torch.bool")):
        image_model.log_prob(mask)
    with pytest.raises(ValueError, match=re.escape("Dequantize expects integer levels in [0, 255] (uint8, int or "
                                                   "float), got a bool tensor")):
        Dequantize()(mask.flatten(1))
    with value_checks(False):  # a dtype check, not a value check: it runs without them too
        with pytest.raises(ValueError, match="got a bool tensor"):
            VariationalDequantize(1)(mask)
    toy = realnvp(2, num_couplings=2, hidden=4)
    with pytest.raises(ValueError, match=re.escape("integer data (levels) is for a model that starts with a "
                                                   "dequantizer, got torch.int64")):
        toy.log_prob(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape("n must be an integer >= 1, got 2.5")):
        toy.sample(2.5)
