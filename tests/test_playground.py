"""The widgets of chapters 1-3: what they show is what flowlib.fit, flowlib.plots and flowlib.warp compute."""

from __future__ import annotations

import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import pytest

import flowlib.playground as pg
from flowlib.analysis import count_parameters
from flowlib.fit import evaluate, fit
from flowlib.models import toy_model
from flowlib.playground import DEFAULT_LR, PLAYGROUND_CLASSES, playground, transform_playground
from flowlib.plots import figure_png, plot_density_and_samples
from flowlib.toy import toy_splits
from flowlib.warp import plot_warp

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = dict(num_couplings=2, hidden=8, steps=20, n_train=256, n_test=128, batch_size=64)


def _classes(widget) -> list[str]:
    return list(widget._dom_classes)


def test_playground_imports_neither_the_trainer_nor_widgets_eagerly() -> None:
    code = "import sys, flowlib.playground; print(sorted(m for m in ('flowlib.train', 'ipywidgets', 'matplotlib.pyplot') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_widget_parts_and_classes() -> None:
    box = playground(density="8gaussians", kind="nice", **SMALL)
    parts = box.parts
    assert PLAYGROUND_CLASSES["root"] in _classes(box)
    for key in ("density", "model", "couplings", "hidden", "steps", "lr", "train", "progress", "status", "plot"):
        assert PLAYGROUND_CLASSES[key] in _classes(parts[key]), key
    assert parts["train"].description == "Train"
    assert [parts[k].description for k in ("density", "model", "couplings", "hidden", "steps", "lr")] == \
        ["density", "model", "couplings", "hidden", "steps", "lr"]
    # before training: the data of the chosen density, drawn by flowlib.plots
    train, _ = toy_splits("8gaussians", 256, 128, seed=0)
    assert bytes(parts["plot"].value) == figure_png(plot_density_and_samples(None, train))


def test_train_reports_the_fit_and_evaluation_of_flowlib_fit() -> None:
    box = playground(density="two_moons", kind="realnvp", lr=1e-2, **SMALL)
    parts = box.parts
    before = bytes(parts["plot"].value)
    parts["train"].click()
    assert parts["progress"].value == parts["progress"].max == 20
    assert not parts["train"].disabled and not parts["density"].disabled
    # the same run done by hand gives the same model, so the same test NLL and picture
    train, test = toy_splits("two_moons", 256, 128, seed=0)
    model = toy_model("realnvp", 2, 8, seed=0)
    fit(model, train, steps=20, batch_size=64, lr=1e-2, clip_grad=10.0, schedule="cosine", unit="nats", seed=0)
    nll = evaluate(model, test).nats
    status = parts["status"].value
    assert f"test NLL {nll:.3f} nats" in status and f"{count_parameters(model)} parameters" in status
    png = figure_png(plot_density_and_samples(model, train, title="two_moons, realnvp"))
    assert bytes(parts["plot"].value) == png != before


def test_fit_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def spy(model, train, **kwargs):
        seen.update(kwargs)
        return fit(model, train, **kwargs)

    monkeypatch.setattr(pg, "fit", spy)
    box = playground(density="rings", kind="nice", **SMALL)
    box.parts["train"].click()
    assert (seen["unit"], seen["schedule"], seen["clip_grad"], seen["steps"], seen["batch_size"]) == \
        ("nats", "cosine", 10.0, 20, 64)
    assert seen["lr"] == pytest.approx(DEFAULT_LR["nice"])


def test_density_change_redraws_the_data() -> None:
    box = playground(density="rings", **SMALL)
    box.parts["density"].value = "checkerboard"
    train, _ = toy_splits("checkerboard", 256, 128, seed=0)
    assert bytes(box.parts["plot"].value) == figure_png(plot_density_and_samples(None, train))


def test_a_control_changed_while_training_keeps_the_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    box = playground(density="two_moons", kind="realnvp", **SMALL)
    parts = box.parts
    during: dict = {}

    def fit_and_fiddle(model, train, **kwargs):
        during["disabled"] = [parts[k].disabled for k in ("density", "model", "couplings", "hidden", "steps", "lr", "train")]
        parts["density"].value = "pinwheel"  # a change that reaches the kernel while it trains
        return fit(model, train, **kwargs)

    monkeypatch.setattr(pg, "fit", fit_and_fiddle)
    parts["train"].click()
    assert all(during["disabled"])
    assert "two_moons, realnvp" in parts["status"].value and "test NLL" in parts["status"].value
    trained = bytes(parts["plot"].value)
    pinwheel, _ = toy_splits("pinwheel", 256, 128, seed=0)
    assert trained != figure_png(plot_density_and_samples(None, pinwheel))
    two_moons, _ = toy_splits("two_moons", 256, 128, seed=0)
    assert trained != figure_png(plot_density_and_samples(None, two_moons))
    # after training, a change shows the new density's data again
    parts["density"].value = "rings"
    rings, _ = toy_splits("rings", 256, 128, seed=0)
    assert bytes(parts["plot"].value) == figure_png(plot_density_and_samples(None, rings))


def test_learning_rate_follows_the_model_until_moved() -> None:
    box = playground(kind="realnvp", **SMALL)
    lr, model = box.parts["lr"], box.parts["model"]
    assert lr.value == pytest.approx(DEFAULT_LR["realnvp"])
    model.value = "nice"
    assert lr.value == pytest.approx(DEFAULT_LR["nice"])
    lr.value = 1e-2
    model.value = "realnvp"
    assert lr.value == pytest.approx(1e-2)
    assert playground(kind="nice", lr=5e-3, **SMALL).parts["lr"].value == pytest.approx(5e-3)
    with pytest.raises(ValueError, match="kind"):
        playground(kind="glow")


def test_training_error_is_shown_and_the_ui_stays_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no luck")

    monkeypatch.setattr(pg, "fit", broken)
    box = playground(**SMALL)
    box.parts["train"].click()  # ipywidgets logs the exception that the handler re-raises
    assert re.search(r"error.*RuntimeError: no luck", box.parts["status"].value)
    assert not box.parts["train"].disabled and not box.parts["density"].disabled


def test_transform_playground_draws_plot_warp() -> None:
    box = transform_playground(scale_x=1.2)
    assert PLAYGROUND_CLASSES["transform_root"] in _classes(box)
    image = box.parts["plot"]
    assert PLAYGROUND_CLASSES["plot"] in _classes(image)
    expected = dict(scale_x=1.2, scale_y=1.0, bend=0.0, angle_deg=0.0, tails=0.0)
    assert bytes(image.value) == figure_png(plot_warp(**expected))
    box.parts["bend"].value = 0.5
    assert bytes(image.value) == figure_png(plot_warp(**{**expected, "bend": 0.5}))
    with pytest.raises(ValueError, match="unknown settings"):
        transform_playground(bend_x=1.0)
