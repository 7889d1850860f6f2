"""The benchmark scripts' own helpers: their doctests, and a quick equal-time comparison of preset candidates.

The benchmarks are scripts, not part of the test command's timing; this checks that the ones the presets are
tuned with run and do what their docstrings say, in seconds (``--quick``: the quick preset, nothing written).
"""

from __future__ import annotations

import doctest
import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name)
               for name in ("common", "cpu_presets_curve", "preset_candidates", "dead_units")}
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("name", ["cpu_presets_curve", "preset_candidates"])
def test_doctests(scripts, name):
    failures, tried = doctest.testmod(scripts[name])
    assert tried > 0 and failures == 0


def test_candidates_train_for_equal_time_at_their_measured_speeds(scripts):
    result = scripts["preset_candidates"].main(
        ["glow", "--quick", "--candidate", "base={}", "--candidate", 'fast-lr={"lr": 0.002}'])
    speed = {s["name"]: s["steps_per_s"] for s in result["speed"]}
    runs = {r["name"]: r for r in result["runs"]}
    assert set(runs) == {"base", "fast-lr"}
    for name, run in runs.items():
        # the steps are the budget at the measured speed, whatever the machine did while they trained
        assert run["steps"] == max(1, round(result["minutes"] * 60 * speed[name]))
        assert run["valid_steps"][-1] == run["steps"] and len(run["valid_bpd_fp32"]) == len(run["valid_steps"])
    assert runs["fast-lr"]["overrides"] == {"lr": 0.002}


def test_dead_units_reports_every_hidden_layer_from_the_first_step(scripts):
    data = scripts["dead_units"].main(["--quick", "--candidate", "base={}",
                                       "--candidate", 'pytorch-bias={"model_kwargs": {"zero_hidden_bias": false}}'])
    assert [c["name"] for c in data["candidates"]] == ["base", "pytorch-bias"]
    for candidate in data["candidates"]:
        reports = candidate["reports"]
        assert [r["step"] for r in reports] == [0, 3, 6] and reports[0]["train_bpd"] is None
        assert all(len(r["dead"]) == 2 and all(0.0 <= f <= 1.0 for f in r["dead"]) for r in reports)  # quick: 2 layers
        assert candidate["valid_bpd"] > 0


def test_a_candidate_must_be_name_and_json(scripts):
    with pytest.raises(ValueError, match="NAME=JSON"):
        scripts["preset_candidates"].main(["glow", "--quick", "--candidate", "base"])


@pytest.mark.parametrize("field", ["lerning_rate", "compile", "optimizer", "train_size", "epochs"])
def test_a_field_the_comparison_would_ignore_is_refused_before_any_training(scripts, field):
    # a typo, or a setting fit-based training does not apply (compiling, another optimizer, other data)
    with pytest.raises(ValueError, match=f"sets '{field}'"):
        scripts["preset_candidates"].main(["glow", "--quick", "--candidate", f'c={{"{field}": 1}}'])
