"""`flowlib.training.rescore`: a finished run scored again with K dequantization samples per test image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import flowlib.training.config as Cfg
import flowlib.training.train as T
from flowlib.training.rescore import main, rescore


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rescore") / "run"
    config = Cfg.make_config("realnvp", "quick", out_dir=str(out), train_size=128, eval_size=96, epochs=2,
                             batch_size=32, eval_batch_size=40, precision="fp32")
    T.train(config, progress=False)
    return out


def test_one_sample_gives_back_the_runs_own_test_number(finished_run: Path) -> None:
    """Same images, same batches (40, 40, 16), same evaluation seed per batch: the trainer's number exactly."""
    saved = json.loads((finished_run / "results.json").read_text())
    r = rescore(finished_run, samples=1, progress=False)
    assert r.test_bpd == pytest.approx(saved["test_bpd"], abs=1e-9)
    assert r.test_bpd_single == saved["test_bpd"] and r.count == 96 and r.run_id == saved["run_id"]


def test_more_samples_tighten_the_bound(finished_run: Path) -> None:
    """The importance-weighted bound rises with K (in expectation; over 96 images the margin is far above noise)."""
    bpd = [rescore(finished_run, samples=k, progress=False).test_bpd for k in (1, 4, 16)]
    assert bpd[0] > bpd[1] > bpd[2]
    assert bpd[0] - bpd[2] < 0.5          # a slack, not a different model


def test_cli_writes_the_json(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.json"
    assert main([str(finished_run), "--samples", "2", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["samples"] == 2 and written["test_bpd"] < written["test_bpd_single"] + 0.05
    assert "K = 2" in capsys.readouterr().out


def test_refuses_what_is_not_a_finished_run(finished_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="samples must be at least 1"):
        rescore(finished_run, samples=0)
    with pytest.raises(ValueError, match="no results.json"):
        rescore(tmp_path, samples=2)
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text((finished_run / "results.json").read_text())
    best = torch.load(finished_run / "best.pt", weights_only=True)
    best["run_id"] = "someone-else"
    torch.save(best, other / "best.pt")
    with pytest.raises(ValueError, match="same finished run"):
        rescore(other, samples=2)
