"""The trainer: runs, resumes exactly, keeps the best model, stops on NaN, runs data-parallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowlib import train as T

ROOT = Path(__file__).resolve().parent.parent


def toy_config(tmp_path: Path, name: str = "run", **kw) -> T.TrainConfig:
    values = dict(epochs=2, train_size=512, eval_size=256, batch_size=64, log_every=3,
                  model_kwargs=dict(num_couplings=2, hidden=16), out_dir=str(tmp_path / name))
    values.update(kw)
    return T.make_config("realnvp", "quick", "two_moons", **values)


def params(model_or_path) -> list[torch.Tensor]:
    if isinstance(model_or_path, (str, Path)):
        model, _ = T.load_model(model_or_path)
    else:
        model = model_or_path
    return [p.detach().clone() for p in model.state_dict().values()]


def test_toy_run_writes_results_and_safe_checkpoints(tmp_path):
    result = T.train(toy_config(tmp_path), progress=False)
    out = Path(result.out_dir)
    assert result.epochs_done == 2 and not result.interrupted
    assert result.test_bpd is not None and result.test_bpd < result.history[0]["train_bpd"] + 1
    assert (out / "results.json").exists()
    for name in ("checkpoint.pt", "best.pt"):
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["config"]["model"] == "realnvp"
    assert not list(out.glob("*.tmp"))


def test_resume_continues_exactly(tmp_path):
    full = T.train(toy_config(tmp_path, "full"), progress=False)
    part = T.train(toy_config(tmp_path, "part", max_steps=11), progress=False)  # stops mid-epoch 2
    assert part.steps == 11 and part.epochs_done == 1 and part.test_bpd is None
    resumed = T.train(toy_config(tmp_path, "part"), resume=True, progress=False)
    assert resumed.steps == full.steps
    a = torch.load(Path(full.out_dir) / "checkpoint.pt", weights_only=True)
    b = torch.load(Path(resumed.out_dir) / "checkpoint.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed.test_bpd == pytest.approx(full.test_bpd, abs=1e-9)


def test_resume_refuses_a_different_config(tmp_path):
    T.train(toy_config(tmp_path, max_steps=2), progress=False)
    with pytest.raises(ValueError, match="different config"):
        T.train(toy_config(tmp_path, lr=0.5), resume=True, progress=False)


def test_resume_without_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        T.train(toy_config(tmp_path), resume=True, progress=False)


def test_keyboard_interrupt_saves_and_resumes(tmp_path):
    def stop(record):
        raise KeyboardInterrupt

    first = T.train(toy_config(tmp_path), progress=False, on_epoch=stop)
    assert first.interrupted and first.epochs_done == 1
    second = T.train(toy_config(tmp_path), resume=True, progress=False)
    assert second.epochs_done == 2 and second.test_bpd is not None


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    T.train(toy_config(tmp_path, epochs=1), progress=False)
    ckpt = Path(tmp_path / "run" / "checkpoint.pt")
    before = ckpt.read_bytes()
    original = T.FlowModel.log_prob
    monkeypatch.setattr(T.FlowModel, "log_prob", lambda self, x: original(self, x) * float("nan"))
    with pytest.raises(T.TrainingDiverged, match="kept the last good checkpoint"):
        T.train(toy_config(tmp_path, epochs=2), resume=True, progress=False)
    assert ckpt.read_bytes() == before


def test_presets_and_bad_names():
    paper = T.make_config("nice", "paper")
    assert (paper.lr, paper.betas, paper.eps) == (1e-3, (0.9, 0.01), 1e-4)
    model = T.build_model(paper)
    assert sum(p.numel() for p in model.parameters()) == 19158352
    with pytest.raises(ValueError, match="presets for 'nice'"):
        T.make_config("nice", "huge")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        T.make_config("nice", "cpu", colour="red")


@pytest.mark.parametrize("model", ["nice", "realnvp"])
def test_mnist_quick_preset_trains(tmp_path, model):
    if not (ROOT.parent / "shared" / "data" / "MNIST" / "raw").exists() and "FLOWLIB_DATA" not in os.environ:
        pytest.skip("MNIST not available: set FLOWLIB_DATA to a folder holding MNIST/raw/*.gz")
    overrides = dict(out_dir=str(tmp_path / model), train_size=128, eval_size=64, epochs=1)
    if model == "realnvp":
        overrides.update(batch_size=32, model_kwargs=dict(hidden_channels=4, num_blocks=1, num_scales=2))
    result = T.train(T.make_config(model, "quick", **overrides), progress=False)
    assert result.test_bpd is not None and 0 < result.test_bpd < 16
    loaded, _ = T.load_model(Path(result.out_dir) / "best.pt")
    assert loaded.sample(2).shape[0] == 2


def test_cli_runs_and_reports(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "flowlib.train", "nice", "--dataset", "rings", "--preset", "quick",
         "--out", str(out), "--no-progress", "--epochs", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test" in proc.stdout and (out / "results.json").exists()


def test_data_parallel_matches_single_process(tmp_path):
    """2 CPU processes on gloo, global batch 64 = single process with batch 64."""
    common = ["realnvp", "--dataset", "two_moons", "--preset", "quick", "--no-progress", "--device", "cpu",
              "--epochs", "1", "--batch-size", "64"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    single = subprocess.run([sys.executable, "-m", "flowlib.train", *common, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "flowlib.train", *common, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert a["steps"] == b["steps"] > 0
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)
