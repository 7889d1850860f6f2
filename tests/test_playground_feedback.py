"""What the playground says while and after it trains, and what a press of Train with unchanged settings does.

The progress comes from `flowlib.training.fit.fit`'s callback (`progress_reporter`, `training_line`); the result
names its settings, seed, seconds and test NLL (`result_line`); a press whose settings are those of the result on
display trains nothing and says so, a second one retrains with the next seed (`press_seed`, `idle_line`).
"""

from __future__ import annotations

import math
import re

import matplotlib

matplotlib.use("Agg")

import pytest

import flowlib.book.playground as pg
import flowlib.book.playground_training as pg_training
from flowlib.book.playground import (PROGRESS_EVERY, PlaygroundRun, PlaygroundSettings, idle_line, playground,
                                     press_seed, progress_reporter, result_line, train_playground, training_line)
from flowlib.book.analysis import count_parameters
from flowlib.book.widgets import WIDGET_VIEW, show
from flowlib.training.fit import fit
from test_playground import SMALL, _displayed, _untimed

RINGS = PlaygroundSettings("rings", "nice", 2, 8, 20, 1e-3)
CURRENT = "this result is current for these settings"


class FakeTrainer:
    """Stands in for `train_playground`: records each call, reports progress twice, returns a made-up result."""

    def __init__(self) -> None:
        self.calls: list[tuple[PlaygroundSettings, int]] = []

    def __call__(self, density, kind, num_couplings, hidden, steps, lr, *, seed, callback, data_seed, **data):
        settings = PlaygroundSettings(density, kind, num_couplings, hidden, steps, lr)
        self.calls.append((settings, seed))
        assert data_seed == 0  # every seed trains on the same data
        callback(steps // 2, 2.0)
        callback(steps, 1.0)
        nll = 1.5 + seed
        return PlaygroundRun(None, nll, result_line(settings, seed, 10, nll, 0.1), f"png {len(self.calls)}".encode(),
                             settings, seed, 0.1)


@pytest.fixture
def trainer(monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    fake = FakeTrainer()
    monkeypatch.setattr(pg, "train_playground", fake)
    return fake


def _run(settings: PlaygroundSettings, seed: int) -> PlaygroundRun:
    return PlaygroundRun(None, 1.0, result_line(settings, seed, 10, 1.0, 0.1), b"png", settings, seed, 0.1)


# ----------------------------------------------------------------------------- plain functions


def test_progress_callback_reports_increasing_steps_and_finite_losses() -> None:
    seen: list[tuple[int, float]] = []
    run = train_playground("two_moons", "realnvp", 2, 8, 3 * PROGRESS_EVERY + 5, 1e-2, n_train=256, n_test=64,
                           batch_size=64, callback=lambda step, loss: seen.append((step, loss)))
    steps = [step for step, _ in seen]
    assert steps == [PROGRESS_EVERY, 2 * PROGRESS_EVERY, 3 * PROGRESS_EVERY, 3 * PROGRESS_EVERY + 5]
    assert all(math.isfinite(loss) for _, loss in seen)
    assert run.settings == PlaygroundSettings("two_moons", "realnvp", 2, 8, 80, 1e-2) and run.seed == 0
    assert run.seconds > 0 and f"trained in {run.seconds:.1f} s" in run.status
    assert run.parameters == count_parameters(run.model)


def test_the_lines_name_the_settings_and_the_seed() -> None:
    assert training_line(RINGS, 3) == "training rings, nice, 2 couplings of width 8, 20 steps, lr 1e-3, seed 3: starting"
    assert training_line(RINGS, 3, 10, 1.23456, 2.04).endswith(": step 10/20, train loss 1.235 nats, 2.0 s")
    assert result_line(RINGS, 3, 42, 2.5, 12.34) == \
        "rings, nice, 2 couplings of width 8, 20 steps, lr 1e-3, seed 3, 42 parameters, trained in 12.3 s: test NLL 2.500 nats"
    assert result_line(RINGS, 3, 42, 2.5, None) == \
        "rings, nice, 2 couplings of width 8, 20 steps, lr 1e-3, seed 3, 42 parameters: test NLL 2.500 nats"
    ticks = iter([10.0, 10.5, 11.25])
    lines: list = []
    callback = progress_reporter(RINGS, 3, lambda step, line: lines.append((step, line)), clock=lambda: next(ticks))
    callback(5, 2.0)
    callback(10, 1.5)
    assert lines == [(5, training_line(RINGS, 3, 5, 2.0, 0.5)), (10, training_line(RINGS, 3, 10, 1.5, 1.25))]


def test_press_seed() -> None:
    shown = _run(RINGS, 4)
    steps40 = PlaygroundSettings("rings", "nice", 2, 8, 40, 1e-3)
    assert press_seed(None, RINGS, False, seed=7) == 7  # the first press: the playground's seed
    assert press_seed(shown, RINGS, False) is None  # unchanged: nothing trains
    assert press_seed(shown, RINGS, True) == 5  # pressed again: the next seed
    assert press_seed(shown, steps40, False) == press_seed(shown, steps40, True) == 4  # changed: the same seed


def test_idle_line() -> None:
    shown = _run(RINGS, 4)
    assert idle_line(None, RINGS, False) == "press Train"
    assert idle_line(shown, RINGS, False) == shown.status
    line = idle_line(shown, RINGS, True)
    assert line.startswith(shown.status + "; " + CURRENT) and line.endswith("new seed, seed 5")
    other = PlaygroundSettings("pinwheel", "realnvp", 2, 16, 40, 1e-3)
    assert idle_line(shown, other, True) == f"{shown.status}; press Train to fit pinwheel with realnvp, width 16, 40 steps (seed 4)"


# ----------------------------------------------------------------------------- the widget


def test_status_before_during_and_after_training(monkeypatch: pytest.MonkeyPatch) -> None:
    box = playground(density="rings", kind="nice", **{**SMALL, "steps": 60})
    status, progress = box.parts["status"], box.parts["progress"]
    assert status.value == "press Train"
    during: list = []

    def watched_fit(model, train, *, callback, **kwargs):
        during.append((progress.value, progress.max, status.value))

        def watching(step, loss):
            callback(step, loss)
            during.append((progress.value, progress.max, status.value))

        return fit(model, train, callback=watching, **kwargs)

    monkeypatch.setattr(pg_training, "fit", watched_fit)
    box.parts["train"].click()
    head = "training rings, nice, 2 couplings of width 8, 60 steps, lr 1e-3, seed 0"
    assert during[0] == (0, 60, f"{head}: starting")  # before the first step
    assert [d[0] for d in during[1:]] == [25, 50, 60] and all(d[1] == 60 for d in during)
    for step, _, line in during[1:]:
        assert re.fullmatch(rf"{head}: step {step}/60, train loss -?[0-9.]+ nats, [0-9.]+ s", line), line
    assert re.fullmatch(r"rings, nice, 2 couplings of width 8, 60 steps, lr 1e-3, seed 0, \d+ parameters, "
                        r"trained in [0-9.]+ s: test NLL -?[0-9.]+ nats", status.value), status.value


def test_an_unchanged_press_says_the_result_is_current_and_a_second_retrains_with_the_next_seed(
        trainer: FakeTrainer) -> None:
    box = playground(density="rings", kind="nice", **SMALL)
    parts = box.parts
    press = parts["train"].click
    press()
    assert trainer.calls == [(RINGS, 0)] and bytes(parts["plot"].value) == b"png 1"
    assert parts["status"].value == result_line(RINGS, 0, 10, 1.5, 0.1)
    press()  # unchanged settings: nothing trains, the status says so
    assert len(trainer.calls) == 1 and bytes(parts["plot"].value) == b"png 1"
    assert parts["status"].value.startswith(result_line(RINGS, 0, 10, 1.5, 0.1) + "; " + CURRENT)
    assert "press Train again to retrain with a new seed, seed 1" in parts["status"].value
    press()  # pressed again: the next seed
    assert trainer.calls[1:] == [(RINGS, 1)] and bytes(parts["plot"].value) == b"png 2"
    assert parts["status"].value == result_line(RINGS, 1, 10, 2.5, 0.1)
    press()
    assert len(trainer.calls) == 2 and "seed 2" in parts["status"].value
    press()
    assert trainer.calls[2:] == [(RINGS, 2)]


def test_a_changed_setting_retrains_with_the_same_seed(trainer: FakeTrainer) -> None:
    box = playground(density="rings", kind="nice", **SMALL)
    parts = box.parts
    parts["train"].click()
    parts["train"].click()
    parts["train"].click()  # now seed 1 is on display
    parts["steps"].value = 40
    assert parts["status"].value == result_line(RINGS, 1, 10, 2.5, 0.1) + "; press Train to fit rings with 40 steps (seed 1)"
    parts["train"].click()
    steps40 = PlaygroundSettings("rings", "nice", 2, 8, 40, 1e-3)
    assert trainer.calls[-1] == (steps40, 1) and "40 steps, lr 1e-3, seed 1" in parts["status"].value
    # a press found the result current; a setting changed and changed back: the next press says so again
    parts["train"].click()
    parts["hidden"].value = 12
    parts["hidden"].value = 8
    parts["train"].click()
    assert len(trainer.calls) == 3 and CURRENT in parts["status"].value
    parts["density"].value = "pinwheel"
    parts["train"].click()
    assert trainer.calls[-1] == (PlaygroundSettings("pinwheel", "nice", 2, 8, 40, 1e-3), 1)


def test_show_displays_the_widget_before_it_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader sees the widget and its progress from the first step; the stored picture is the trained one."""
    monkeypatch.delenv("FLOWLIB_QUICK", raising=False)
    shown = _displayed(monkeypatch)
    box = playground(density="rings", kind="nice", **SMALL)
    data_png = bytes(box.parts["plot"].value)
    seen: dict = {}

    def spy(model, train, **kwargs):
        seen["outputs"] = [dict(o) for o in shown]
        seen["status"] = box.parts["status"].value
        return fit(model, train, **kwargs)

    monkeypatch.setattr(pg_training, "fit", spy)
    show(box)
    first, = seen["outputs"]  # displayed before the first step, with the data's picture
    assert first[WIDGET_VIEW]["model_id"] == box.model_id and first["image/png"] == data_png
    assert seen["status"].startswith("training rings, nice")
    widget, caption = shown  # then updated in place to the trained picture; the caption after it
    assert widget[WIDGET_VIEW]["model_id"] == box.model_id
    assert widget["image/png"] == bytes(box.parts["plot"].value) != data_png
    status = box.parts["status"].value
    assert re.search(r", trained in [0-9.]+ s: ", status)  # the widget says how long it took; the stored caption does not
    assert re.sub(r", trained in [0-9.]+ s", "", status) in caption["text/markdown"]
    assert "trained in" not in caption["text/markdown"]


def test_after_show_in_quick_mode_train_fits_the_chosen_steps(monkeypatch: pytest.MonkeyPatch,
                                                               trainer: FakeTrainer) -> None:
    monkeypatch.setenv("FLOWLIB_QUICK", "1")
    shown = _displayed(monkeypatch)
    box = playground(density="rings", kind="nice", **{**SMALL, "steps": 200})
    show(box)
    quick = PlaygroundSettings("rings", "nice", 2, 8, pg.QUICK_STEPS, 1e-3)
    assert trainer.calls == [(quick, 0)] and shown[0]["image/png"] == b"png 1"
    assert "200 steps (seed 0)" in box.parts["status"].value  # the slider's value is what Train fits next
    box.parts["train"].click()
    assert trainer.calls[-1] == (PlaygroundSettings("rings", "nice", 2, 8, 200, 1e-3), 0)
