"""The trainer: exact resume after real signals, runs that cannot be mixed up, clear failures, data parallel."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowlib.training import checkpoint as C
from flowlib.training.run_folder import RunLock
from flowlib.training import distributed as D
from flowlib.training import evaluate as E
from flowlib.training import fit as F
from flowlib.training import config as Cfg
from flowlib.training import runs as R
from flowlib.training import loop as L
from flowlib.training import train as T
from flowlib.datasets.mnist import data_root, mnist_dir
from flowlib.flow_model import FlowModel
from flowlib.models import toy_model

ROOT = Path(__file__).resolve().parent.parent
HAVE_MNIST = (mnist_dir(data_root()) / "train-images-idx3-ubyte.gz").exists()
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="MNIST not available: set FLOWLIB_DATA")


def toy_config(tmp_path: Path, name: str = "run", **kw) -> Cfg.TrainConfig:
    values = dict(epochs=2, train_size=512, eval_size=256, batch_size=64, log_every=3,
                  model_kwargs=dict(num_couplings=2, hidden=16), out_dir=str(tmp_path / name), precision="fp32")
    values.update(kw)
    return Cfg.make_config("realnvp", "quick", "two_moons", **values)


def mnist_config(tmp_path: Path, name: str, **kw) -> Cfg.TrainConfig:
    """A tiny multi-scale RealNVP on 128 digits: dequantization noise and BatchNorm statistics both matter."""
    values = dict(out_dir=str(tmp_path / name), train_size=128, eval_size=64, epochs=3, batch_size=32,
                  log_every=1, eval_batch_size=16, precision="fp32",
                  model_kwargs=dict(hidden_channels=4, num_blocks=1, num_scales=2))
    values.update(kw)
    return Cfg.make_config("realnvp", "quick", **values)


def assert_same_run(dir_a: Path, dir_b: Path) -> None:
    """checkpoint.pt of two runs: parameters, buffers, optimizer state, RNG and history bit-identical."""
    a = torch.load(dir_a / "checkpoint.pt", weights_only=True)
    b = torch.load(dir_b / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for (ka, va), (kb, vb) in zip(sorted(a["optimizer"]["state"].items()), sorted(b["optimizer"]["state"].items())):
        for name in va:
            assert torch.equal(va[name], vb[name]), (ka, name)
    assert torch.equal(a["rng"]["cpu"], b["rng"]["cpu"])
    for key in ("epoch", "step_in_epoch", "steps", "loss_sum", "loss_count", "best_valid_bpd", "best_epoch"):
        assert a["state"][key] == b["state"][key], key
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a["state"]["history"]) == strip(b["state"]["history"])


# ----------------------------------------------------------------------------- runs and resume


def test_toy_run_writes_results_and_safe_checkpoints(tmp_path):
    config = toy_config(tmp_path)
    untrained = E.evaluate(Cfg.build_model(config), Cfg.load_dataset(config)["test"]).bpd
    result = T.train(config, progress=False)
    out = Path(result.out_dir)
    assert result.epochs_done == 2 and not result.interrupted
    # 16 steps at lr 1e-3 beat the untrained model (2.73 bits/dim) by 0.12 bits/dim (measured).
    assert result.test_bpd < untrained - 0.1
    saved = json.loads((out / "results.json").read_text())
    for name in ("checkpoint.pt", "best.pt"):
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["config"] == saved["config"]
    assert torch.load(out / "best.pt", weights_only=True)["run_id"] == saved["run_id"]
    assert not list(out.glob("*.part")) and not (out / ".lock").exists()


@pytest.mark.parametrize("model", ["maf", "spline_coupling", "spline_ar"])
def test_the_trainer_trains_the_autoregressive_and_spline_toy_kinds(tmp_path, model):
    """Chapter 12's kinds go through the trainer as RealNVP does: built by `toy_model`, trained, checkpointed,
    the best model reloaded with the same test score."""
    values = dict(epochs=1, train_size=256, eval_size=128, batch_size=64, log_every=2,
                  model_kwargs=dict(num_couplings=2, hidden=8), out_dir=str(tmp_path / model), precision="fp32")
    config = Cfg.make_config(model, "quick", "rings", **values)
    assert type(Cfg.build_model(config)) is type(toy_model(model, 2, 8))
    result = T.train(config, progress=False)
    assert result.epochs_done == 1 and math.isfinite(result.test_bpd)
    best = torch.load(Path(result.out_dir) / "best.pt", weights_only=True)
    reloaded = Cfg.build_model(config)
    reloaded.load_state_dict(best["model"])
    assert {k for k, _ in reloaded.named_parameters()} == {k for k, _ in toy_model(model, 2, 8).named_parameters()}


def test_resume_after_max_steps_is_exact(tmp_path):
    full = T.train(toy_config(tmp_path, "full"), progress=False)
    part = T.train(toy_config(tmp_path, "part", max_steps=11), progress=False)  # stops mid-epoch 2
    assert part.steps == 11 and part.epochs_done == 1 and part.test_bpd is None
    resumed = T.train(toy_config(tmp_path, "part"), resume=True, progress=False)
    assert resumed.steps == full.steps and resumed.history[-1]["train_bpd"] == full.history[-1]["train_bpd"]
    assert_same_run(tmp_path / "full", tmp_path / "part")
    assert resumed.test_bpd == full.test_bpd


def learning_rates_of_the_steps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A list that gets the learning rate of every step the trainer takes from now on."""
    rates: list[float] = []
    original = F.train_step

    def step_and_record(model, optimizer, x, **kw):
        rates.append(optimizer.param_groups[0]["lr"])
        return original(model, optimizer, x, **kw)

    monkeypatch.setattr(L, "train_step", step_and_record)
    return rates


def test_the_trainer_steps_with_the_cosine_to_min_lr(tmp_path, monkeypatch):
    """``min_lr``: the learning rate of every step is the cosine from lr to min_lr over the run's steps."""
    rates = learning_rates_of_the_steps(monkeypatch)
    T.train(toy_config(tmp_path, lr=1e-2, schedule="cosine", min_lr=4e-3), progress=False)
    total = 16  # 2 epochs of 512 examples in batches of 64
    assert len(rates) == total
    for t, rate in enumerate(rates):
        assert rate == pytest.approx(4e-3 + 0.5 * 6e-3 * (1 + math.cos(math.pi * t / total)), rel=1e-12)
    assert rates[-1] > 4e-3


def test_the_trainer_warms_the_learning_rate_up(tmp_path, monkeypatch):
    """``warmup_epochs``: the first epoch's rates rise linearly to the cosine's, which the second follows alone."""
    rates = learning_rates_of_the_steps(monkeypatch)
    T.train(toy_config(tmp_path, lr=1e-2, schedule="cosine", warmup_epochs=1.0), progress=False)
    total, warmup = 16, 8  # 2 epochs of 8 steps (512 examples in batches of 64), the first warming up
    assert len(rates) == total
    for t, rate in enumerate(rates):
        cosine = 0.5 * 1e-2 * (1 + math.cos(math.pi * t / total))
        assert rate == pytest.approx(cosine * min(1.0, (t + 1) / warmup), rel=1e-12)
    assert rates[0] == pytest.approx(1e-2 / warmup, rel=1e-12) and rates[0] < rates[1] < rates[2]
    assert Path(Cfg.make_config("glow", "cpu", warmup_epochs=1.0).out_dir).name == "glow-mnist-cpu-warmup1"


def test_polyak_average_leaves_training_alone_and_is_what_is_scored_and_kept(tmp_path, monkeypatch,
                                                                              average_closed_form):
    """``average_epochs``: the trained weights are those of the plain run; ``checkpoint.pt`` holds their
    normalised exponential average (its closed form, ``average_closed_form`` in conftest.py) and ``best.pt`` the
    average scored."""

    plain = T.train(toy_config(tmp_path, "plain"), progress=False)
    trained: list[dict[str, torch.Tensor]] = []
    original = F.train_step

    def step_and_record(model, optimizer, x, **kw):
        loss = original(model, optimizer, x, **kw)
        trained.append({k: v.clone() for k, v in model.state_dict().items()})
        return loss

    monkeypatch.setattr(L, "train_step", step_and_record)
    averaged = T.train(toy_config(tmp_path, "averaged", average_epochs=1.0), progress=False)
    ckpt = torch.load(tmp_path / "averaged" / "checkpoint.pt", weights_only=True)
    plain_ckpt = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)
    for key, value in plain_ckpt["model"].items():
        assert torch.equal(ckpt["model"][key], value), key
    beta = 1 - 1 / 8  # 512 examples in batches of 64: 8 steps an epoch
    assert ckpt["average"]["updates"] == len(trained) == 16 and ckpt["average"]["beta"] == beta
    for key, value in ckpt["average"]["model"].items():
        if value.is_floating_point():
            expected = average_closed_form([w[key].double() for w in trained], beta).float()
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    assert averaged.best_epoch == 2  # so best.pt holds the last average
    best = torch.load(tmp_path / "averaged" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], v) for k, v in ckpt["average"]["model"].items())
    assert averaged.test_bpd != plain.test_bpd and averaged.history[0]["train_bpd"] == plain.history[0]["train_bpd"]
    assert Path(Cfg.make_config("glow", "cpu", average_epochs=1.0).out_dir).name == "glow-mnist-cpu-avg1"
    # NICE's cpu preset averages; turning that off shows in the folder name
    assert Path(Cfg.make_config("nice", "cpu", average_epochs=None).out_dir).name == "nice-mnist-cpu-noavg"


def test_resume_with_an_average_is_exact(tmp_path):
    full = T.train(toy_config(tmp_path, "full", average_epochs=0.5), progress=False)
    T.train(toy_config(tmp_path, "part", average_epochs=0.5, max_steps=11), progress=False)
    resumed = T.train(toy_config(tmp_path, "part", average_epochs=0.5), resume=True, progress=False)
    assert_same_run(tmp_path / "full", tmp_path / "part")
    a, b = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["average"] for name in ("full", "part"))
    assert a["updates"] == b["updates"] == 16
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed.test_bpd == full.test_bpd


def test_resuming_an_averaged_run_from_a_checkpoint_without_its_average_is_refused(tmp_path):
    T.train(toy_config(tmp_path, "part", average_epochs=0.5, max_steps=5), progress=False)
    path = tmp_path / "part" / "checkpoint.pt"
    ckpt = C.load_checkpoint(path)
    del ckpt["average"]
    C.atomic_save(ckpt, path)
    with pytest.raises(C.CheckpointError, match="holds no weight average, but average_epochs is 0.5"):
        T.train(toy_config(tmp_path, "part", average_epochs=0.5), resume=True, progress=False)


def _signal_at(monkeypatch, module, name: str, call: int, signum: int = signal.SIGINT) -> list[int]:
    """Deliver a real signal to this process during the ``call``-th call of ``module.name``."""
    original, calls = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signum)
            time.sleep(0.01)  # the handler runs here, in the middle of the work
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


@needs_mnist
@pytest.mark.parametrize("where, call, signum", [
    ("log_prob", 6, signal.SIGINT),             # inside the forward pass of step 6 (BatchNorm stats, noise drawn)
    ("optimizer_step", 5, signal.SIGINT),       # right after Adam's update of step 5
    ("validation", 2, signal.SIGINT),           # during the first epoch's validation
    ("save", 2, signal.SIGINT),                 # while best.pt is being written
    ("log_prob", 9, signal.SIGTERM),            # SIGTERM is handled like Ctrl-C
])
def test_signal_anywhere_then_resume_is_bit_identical(tmp_path, monkeypatch, where, call, signum):
    T.train(mnist_config(tmp_path, "full"), progress=False)
    with monkeypatch.context() as m:
        if where == "log_prob":
            _signal_at(m, FlowModel, "log_prob", call, signum)
        elif where == "optimizer_step":
            original = F.train_step

            def step_then_signal(model, optimizer, x, **kw):
                calls.append(1)
                loss = original(model, optimizer, x, **kw)
                if len(calls) == call:
                    os.kill(os.getpid(), signum)
                    time.sleep(0.01)
                return loss

            calls: list[int] = []
            m.setattr(L, "train_step", step_then_signal)
        elif where == "validation":
            _signal_at(m, L, "log_likelihood_sum", call, signum)
        else:
            _signal_at(m, L, "atomic_save", call, signum)
        stopped = T.train(mnist_config(tmp_path, "part"), progress=False)
    assert stopped.interrupted and stopped.epochs_done < 3 and stopped.test_bpd is None
    resumed = T.train(mnist_config(tmp_path, "part"), resume=True, progress=False)
    assert not resumed.interrupted and resumed.epochs_done == 3
    assert_same_run(tmp_path / "full", tmp_path / "part")


@pytest.mark.slow
@needs_mnist
def test_real_ctrl_c_on_the_command_line_then_resume(tmp_path):
    """SIGINT to a running `python -m flowlib.training` at an arbitrary moment, then --resume: the same run."""
    common = [sys.executable, "-m", "flowlib.training", "realnvp", "--preset", "quick", "--epochs", "40",
              "--max-steps", "60", "--no-progress", "--precision", "fp32"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = subprocess.run(common + ["--out", str(tmp_path / "full")], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(common + ["--out", str(tmp_path / "part")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    # Wait until the training loop runs, then interrupt wherever it is.
    for line in proc.stderr:
        if line.startswith("Training realnvp"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Stopped: checkpoint saved" in err, err[-2000:]
    resumed = subprocess.run(common + ["--out", str(tmp_path / "part"), "--resume"], capture_output=True,
                             text=True, cwd=ROOT, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(tmp_path / "full", tmp_path / "part")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_final_evaluation_stops_cleanly_and_resume_finishes_it(tmp_path, signum):
    """Ctrl-C or SIGTERM while the best model is scored on the test set: exit 130 with one line on how to
    finish, no traceback, the lock released, the complete checkpoint kept; --resume with another
    --eval-samples runs only the final evaluation and records its K."""
    out = tmp_path / "run"
    common = [sys.executable, "-m", "flowlib.training", "realnvp", "--dataset", "two_moons", "--preset", "cpu",
              "--epochs", "1", "--batch-size", "1000", "--precision", "fp32", "--no-progress", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # this process's kernels, below
    # 10 test chunks of 1000 points, 200 samples each: seconds per chunk, so the signal lands inside.
    proc = subprocess.Popen(common + ["--eval-samples", "200"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)
    for line in proc.stderr:
        if line.startswith("Final evaluation"):
            break
    time.sleep(0.3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Stopped during the final test evaluation" in err
    assert "--resume" in err and f"python -m flowlib.training.rescore {out} --samples 200" in err
    assert not (out / ".lock").exists() and not (out / "results.json").exists()
    checkpoint = (out / "checkpoint.pt").read_bytes()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 1  # training is complete
    resumed = subprocess.run(common + ["--resume", "--eval-samples", "2"], capture_output=True, text=True,
                             cwd=ROOT, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "checkpoint.pt").read_bytes() == checkpoint and not (out / ".lock").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["eval_samples"] == 2 and not saved["interrupted"]
    # A 2D toy has no noise: K = 2 equal terms score log p itself. Recomputed here with K = 1, in the trainer's
    # float32 chunks (the same float32 values): float64 sums of the 10000 terms are within 10000 u of the exact
    # sum relative to sum |log p| (u = 2**-53), the log-mean-exp of two equal terms within 2 u, bits/dim 2 u.
    model, config = C.load_model(out / "best.pt")
    with torch.no_grad():
        log_p = torch.cat([model.log_prob(c).double() for c in Cfg.load_dataset(config)["test"].split(1000)])
    tol = (log_p.numel() + 4) * 2.0**-53 * log_p.abs().mean().item() / (model.num_dims * math.log(2))
    assert abs(saved["test_bpd"] - (-log_p.mean().item() / (model.num_dims * math.log(2)))) <= tol


def test_train_state_is_a_dataclass_saved_as_a_plain_dict(tmp_path):
    state = L.TrainState()
    with pytest.raises(AttributeError):
        state.step_in_epcoh = 3  # a typo is an error, not a new key
    saved = T.train(toy_config(tmp_path, epochs=1), progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert type(ckpt["state"]) is dict and ckpt["state"]["run_id"] == saved.run_id
    restored = L.TrainState.from_dict(ckpt["state"], Path("checkpoint.pt"))
    assert (restored.epoch, restored.steps, restored.history) == (1, saved.steps, ckpt["state"]["history"])
    with pytest.raises(C.CheckpointError, match=r"unknown fields \['epochs'\]"):
        L.TrainState.from_dict({**ckpt["state"], "epochs": 3}, Path("checkpoint.pt"))


def test_keyboard_interrupt_from_a_callback_saves_and_resumes(tmp_path):
    def stop(record):
        raise KeyboardInterrupt

    first = T.train(toy_config(tmp_path), progress=False, on_epoch=stop)
    assert first.interrupted and first.epochs_done == 1
    second = T.train(toy_config(tmp_path), resume=True, progress=False)
    assert second.epochs_done == 2 and second.test_bpd is not None


def test_resume_refuses_a_different_config(tmp_path):
    T.train(toy_config(tmp_path, max_steps=2), progress=False)
    with pytest.raises(ValueError, match=r"different config \(fields \['lr'\]\)"):
        T.train(toy_config(tmp_path, lr=0.5), resume=True, progress=False)


def test_resume_without_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(C.CheckpointError, match="no checkpoint at .*checkpoint.pt"):
        T.train(toy_config(tmp_path), resume=True, progress=False)


# ----------------------------------------------------------------------------- runs that cannot be mixed up


def test_run_or_load_loads_only_its_own_run(tmp_path, capsys):
    config = toy_config(tmp_path, epochs=1)
    model, first = R.run_or_load(config, progress=False)
    again, loaded = R.run_or_load(config, progress=False)
    assert loaded.run_id == first.run_id
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # A second run started afresh in the same folder and stopped after one epoch of two ...
    def stop(record):
        raise KeyboardInterrupt
    T.train(toy_config(tmp_path, epochs=2, lr=2e-3), progress=False, on_epoch=stop)
    # ... moved the first run aside instead of overwriting its best.pt,
    aside = list(Path(config.out_dir).glob("replaced-*"))
    assert len(aside) == 1 and (aside[0] / "best.pt").exists() and (aside[0] / "results.json").exists()
    assert "moved to replaced-" in capsys.readouterr().err
    # and asking for the first config again trains it afresh: never the other run's model.
    _, third = R.run_or_load(config, progress=False)
    assert third.run_id != first.run_id and third.config == first.config


def test_best_pt_from_another_run_is_never_returned(tmp_path, capsys):
    config = toy_config(tmp_path, epochs=1)
    _, first = R.run_or_load(config, progress=False)
    other = T.train(toy_config(tmp_path, "other", epochs=1, seed=3), progress=False)
    (Path(config.out_dir) / "best.pt").write_bytes((Path(other.out_dir) / "best.pt").read_bytes())
    _, again = R.run_or_load(config, progress=False)
    assert "different runs" in capsys.readouterr().err
    assert again.run_id != first.run_id  # retrained, not mixed


@pytest.mark.parametrize("damage", ["delete best", "truncate best", "delete results", "garble results"])
def test_missing_or_damaged_files_never_leave_a_stuck_run(tmp_path, damage):
    config = toy_config(tmp_path, epochs=1)
    _, first = R.run_or_load(config, progress=False)
    out = Path(config.out_dir)
    if damage == "delete best":
        (out / "best.pt").unlink()
    elif damage == "truncate best":
        (out / "best.pt").write_bytes((out / "best.pt").read_bytes()[:100])
    elif damage == "delete results":
        (out / "results.json").unlink()
    else:
        (out / "results.json").write_text("{not json")
    model, result = R.run_or_load(config, progress=False)
    assert result.epochs_done == 1 and result.test_bpd is not None
    if damage.endswith("results"):  # the checkpoint and best.pt are whole: finished from them, same run
        assert result.run_id == first.run_id and result.test_bpd == first.test_bpd
    _, loaded = R.run_or_load(config, progress=False)  # and the next call simply loads it
    assert loaded.run_id == result.run_id


def test_default_run_folder_names_the_changed_fields():
    a = Cfg.make_config("nice", "cpu")
    b = Cfg.make_config("nice", "cpu", lr=3e-3, seed=2, epochs=50)
    assert Path(a.out_dir).name == "nice-mnist-cpu"
    assert Path(b.out_dir).name == "nice-mnist-cpu-epochs50-lr0.003-seed2"


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path):
    config = toy_config(tmp_path)
    Path(config.out_dir).mkdir(parents=True)
    with RunLock(config.out_dir):
        with pytest.raises(C.CheckpointError, match="in use by another trainer"):
            T.train(config, progress=False)
    # A lock left by a dead process (kill -9) is taken over.
    (Path(config.out_dir) / ".lock").write_text("%s 999999999" % __import__("socket").gethostname())
    assert T.train(config, progress=False).epochs_done == 2


# ----------------------------------------------------------------------------- failures named before compute


def test_unwritable_run_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(C.CheckpointError, match=r"cannot write to the run folder .*file/run"):
        T.train(toy_config(tmp_path, out_dir=str(blocker / "run")), progress=False)


def test_full_disk_fails_before_training(tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(C.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(C.CheckpointError, match="not enough free space"):
        T.train(toy_config(tmp_path), progress=False)


def test_a_failed_write_names_the_path_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full_disk(obj, f, *a, **kw):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 2215808 vs 2215700")

    monkeypatch.setattr(C.torch, "save", full_disk)
    with pytest.raises(C.CheckpointError, match=r"could not write .*best.pt: .*unexpected pos.*free space"):
        T.train(toy_config(tmp_path), progress=False)
    assert [p.name for p in (tmp_path / "run").iterdir()] == []


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", -5, "batch_size must be a positive integer, got -5"),
    ("epochs", 0, "epochs must be a positive integer, got 0"),
    ("batch_size", 100000, "batch_size 100000 is larger than the training set"),
    ("precision", "fp8", "precision must be one of"),
    ("betas", (0.9, 1.5), "betas must be in"),
])
def test_bad_settings_are_clear_value_errors(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        T.train(toy_config(tmp_path, **{field: value}), progress=False)


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, "-m", "flowlib.training", "nice", "--dataset", "rings", "--preset", "quick",
                           "--device", "cuda", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "sees no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    T.train(toy_config(tmp_path, epochs=1), progress=False)
    ckpt = Path(tmp_path / "run" / "checkpoint.pt")
    before = ckpt.read_bytes()
    original = FlowModel.log_prob
    monkeypatch.setattr(FlowModel, "log_prob", lambda self, x: original(self, x) * float("nan"))
    with pytest.raises(T.TrainingDiverged, match="kept the last good checkpoint"):
        T.train(toy_config(tmp_path, epochs=2), resume=True, progress=False)
    assert ckpt.read_bytes() == before


def test_nan_loss_in_the_first_epoch_says_no_checkpoint_exists(tmp_path, monkeypatch):
    original = FlowModel.log_prob
    monkeypatch.setattr(FlowModel, "log_prob", lambda self, x: original(self, x) * float("nan"))
    with pytest.raises(T.TrainingDiverged, match="no checkpoint had been written yet"):
        T.train(toy_config(tmp_path), progress=False)


# ----------------------------------------------------------------------------- presets, MNIST, command line


def test_nice_papers_eps_in_bits_per_dim_takes_the_papers_steps():
    """Adam on a loss c times smaller takes the same steps only with an eps c times smaller.

    The paper's eps 1e-4 is on nats per example; the paper preset's eps on the trainer's bits/dim loss is that
    times the loss factor 1 / (D ln 2). Gradients of a NICE started at zero are small enough for the unscaled
    eps to change the steps."""
    from flowlib.models import nice

    paper = Cfg.make_config("nice", "paper")
    assert paper.eps == pytest.approx(1e-4 * F.loss_scale(Cfg.build_model(paper), "bpd"), rel=1e-12)
    torch.manual_seed(0)
    models = [nice(8, num_couplings=2, hidden=16, num_hidden_layers=2).double() for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    factor = F.loss_scale(models[0], "bpd")
    steps_in = {"nats": (models[0], 1e-4), "bpd": (models[1], 1e-4 * factor), "unscaled": (models[2], 1e-4)}
    optimizers = {k: F.make_optimizer(m, 1e-3, (0.9, 0.99), eps) for k, (m, eps) in steps_in.items()}
    x = torch.rand(256, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for key, (model, _) in steps_in.items():
            F.train_step(model, optimizers[key], x, unit="nats" if key == "nats" else "bpd")
    gap = lambda m: max((a - b).abs().max().item() for a, b in zip(models[0].parameters(), m.parameters()))  # noqa: E731
    assert gap(models[1]) < 1e-9 < 1e-4 < gap(models[2])


def test_presets_and_bad_names():
    paper = Cfg.make_config("nice", "paper")
    # NICE's "beta2 = 0.01" in the first Adam notation (beta = 1 - decay) is today's 0.99.
    # Its eps 1e-4 is on nats per example; the trainer's loss is in bits/dim (next test).
    assert (paper.lr, paper.betas) == (1e-3, (0.9, 0.99))
    assert paper.eps == pytest.approx(1e-4 / (784 * math.log(2)), rel=1e-12)
    model = Cfg.build_model(paper)
    # 4 couplings of 392 -> 1000 -> (4 x 1000 -> 1000) -> 392 with biases, plus 784 scales.
    assert sum(p.numel() for p in model.parameters()) == 4 * (393 * 1000 + 4 * 1001 * 1000 + 1001 * 392) + 784
    with pytest.raises(ValueError, match="presets for 'nice'"):
        Cfg.make_config("nice", "huge")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        Cfg.make_config("nice", "cpu", colour="red")


@needs_mnist
@pytest.mark.parametrize("model", ["nice", "realnvp", "glow"])
def test_mnist_quick_preset_trains(tmp_path, model):
    overrides = dict(out_dir=str(tmp_path / model), train_size=128, eval_size=64, epochs=1)
    if model == "realnvp":
        overrides.update(batch_size=32, model_kwargs=dict(hidden_channels=4, num_blocks=1, num_scales=2))
    result = T.train(Cfg.make_config(model, "quick", **overrides), progress=False)
    # One epoch on 128 digits (measured): NICE 6.23 bits/dim, held near its data-dependent start
    # (6.05; from S = 0 it would be 10.0); RealNVP 8.96, down from 10.88 untrained; Glow 6.39, below its
    # ActNorm data start (6.48; 10.88 without it, so a trainer that skipped the initialisation fails).
    low, high = {"nice": (5.9, 6.5), "realnvp": (8.5, 9.5), "glow": (6.0, 6.8)}[model]
    assert low < result.test_bpd < high
    loaded, _ = C.load_model(Path(result.out_dir) / "best.pt")
    assert loaded.sample(2).shape[0] == 2


def test_cli_runs_and_reports(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "flowlib.training", "nice", "--dataset", "rings", "--preset", "quick",
         "--out", str(out), "--no-progress", "--epochs", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test" in proc.stdout and (out / "results.json").exists()


def _torchrun(processes: int) -> list[str]:
    """The command that launches ``python -m flowlib.training`` in ``processes`` processes (gloo on CPUs)."""
    if processes == 1:
        return [sys.executable, "-m", "flowlib.training"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "flowlib.training"]


def _trainer(processes: int, args: list[str], out: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(_torchrun(processes) + args + ["--out", str(out)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_data_parallel_matches_single_process(tmp_path):
    """2 CPU processes on gloo, global batch 64 = single process with batch 64 (a 2D toy: no noise, no batch norm)."""
    common = ["realnvp", "--dataset", "two_moons", "--preset", "quick", "--no-progress", "--device", "cpu",
              "--epochs", "1", "--batch-size", "64", "--precision", "fp32"]
    _trainer(1, common, tmp_path / "one")
    _trainer(2, common, tmp_path / "two")
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert a["state"]["steps"] == b["state"]["steps"] > 0
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)


# A float32 sum of n terms is within n * u of the exact sum, relative to the sum of the terms' magnitudes
# (u = 2**-24; Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., eq. 4.4, worst case).
# The largest sums of the models below are RealNVP's batch-norm statistics and convolution gradients at
# 28 x 28, over the global batch of 32 images: n = 32 * 28 * 28. One process and two add them in different orders.
MNIST_SUM_TOL = 32 * 28 * 28 * 2.0**-24  # 1.5e-3
LR = 1e-3  # the quick preset's Adam learning rate


def _relative_error(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    return ((a.double() - b.double()).abs().max() / scale).item() if a.numel() else 0.0


def _compare_runs(one: dict, two: dict, first_step: bool) -> None:
    """checkpoint.pt of a 1-process and a 2-process run at the same step: what must agree, and how well.

    * the random state, exactly: both consumed the noise of the same global batches;
    * every batch-norm running variance, and Adam's moments (the gradients' running averages), to
      `MNIST_SUM_TOL` relative to their largest entry: they are sums over the global batch;
    * after the first step, the parameters to ``LR * MNIST_SUM_TOL``: Adam's first update is
      ``lr * g / (|g| + eps)``, which a relative change ``eta`` of ``g`` moves by at most ``lr * eta``, and
      the coupling nets' last layers start at zero, so no gradient reaches the layers before them yet.
      From the second step on, a parameter the loss does not depend on (a convolution bias that feeds a
      batch norm) has a gradient of pure roundoff, which Adam normalises into moves of up to ``lr`` per step
      in a direction the summation order picks, in any two float32 runs; so are the running means that
      follow such biases. There only the running variances (blind to such shifts) and the moments compare.
    """
    assert torch.equal(one["rng"]["cpu"], two["rng"]["cpu"])
    for key in ("epoch", "step_in_epoch", "steps", "loss_count"):
        assert one["state"][key] == two["state"][key], key
    for name, value in one["model"].items():
        if not value.is_floating_point():  # step counters, ActNorm's "initialized"
            assert torch.equal(value, two["model"][name]), name
        elif name.endswith("running_var") or (first_step and name.endswith("running_mean")):
            assert _relative_error(value, two["model"][name], value.abs().max().item()) < MNIST_SUM_TOL, name
        elif first_step and not name.endswith("running_mean"):  # a parameter
            assert _relative_error(value, two["model"][name], 1.0) < LR * MNIST_SUM_TOL, name
    moments_a, moments_b = one["optimizer"]["state"], two["optimizer"]["state"]
    for moment in ("exp_avg", "exp_avg_sq"):
        scale = max(v[moment].abs().max().item() for v in moments_a.values())
        for i in moments_a:
            assert _relative_error(moments_a[i][moment], moments_b[i][moment], scale) < MNIST_SUM_TOL, (moment, i)


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("model", ["realnvp", "glow"])
def test_two_processes_train_on_mnist_as_one_process(tmp_path, model):
    """torchrun, 2 processes on gloo = 1 process with the same global batch, on MNIST: the dequantization
    noise, RealNVP's batch norms (in its coupling nets), Glow's ActNorm started from the data; after the first
    step, and after both runs resume to step 3 (the next batches, Adam's moments, the running averages)."""
    common = [model, "--preset", "quick", "--no-progress", "--device", "cpu", "--precision", "fp32",
              "--epochs", "2"]
    load = lambda run: torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)  # noqa: E731
    for processes in (1, 2):
        _trainer(processes, common + ["--max-steps", "1"], tmp_path / f"p{processes}")
    _compare_runs(load("p1"), load("p2"), first_step=True)
    for processes in (1, 2):
        _trainer(processes, common + ["--max-steps", "3", "--resume"], tmp_path / f"p{processes}")
    one, two = load("p1"), load("p2")
    assert one["state"]["steps"] == 3
    _compare_runs(one, two, first_step=False)
    assert abs(one["state"]["loss_sum"] - two["state"]["loss_sum"]) < MNIST_SUM_TOL * abs(one["state"]["loss_sum"])


def _local_share_worker(rank: int, world: int, port: int, folder: str) -> None:
    """One process of `test_local_share_is_the_single_process_step`: its step's results, saved."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, x = _local_share_model_and_batch()
        results = _one_step(model, x, D.wrap_data_parallel(model, torch.device("cpu")))
        D.all_reduce_sum(results["loss"]).div_(world)  # the mean of the halves' mean losses
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _one_step(model: FlowModel, x: torch.Tensor, net: torch.nn.Module | None = None) -> dict:
    """The mean negative log-likelihood of ``x`` (the global batch), backpropagated as the trainer's step does,
    through ``net`` (`flowlib.training.distributed.wrap_data_parallel`) when given; in the model's dtype."""
    torch.manual_seed(1)
    if net is None:
        log_p = model.log_prob(x)
    else:
        z, log_det = net(x)
        log_p = model.prior.log_prob(z) + log_det
    loss = -log_p.mean()
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: p.grad for n, p in model.named_parameters()},
            "buffers": dict(model.named_buffers()), "rng": torch.get_rng_state()}


def _local_share_model_and_batch() -> tuple[FlowModel, torch.Tensor]:
    """Variational dequantization (batch norms in its nets), logit, BatchNormFlow, a coupling with batch norms,
    BatchNormFlow; float64, every parameter away from its initial value; a global batch of 8 images."""
    from flowlib import AffineCoupling, BatchNormFlow, Sequential
    from flowlib.dequantization import VariationalDequantize
    from flowlib.logit import Logit
    from flowlib.masks import checkerboard_mask
    from flowlib.nets import ResidualConvNet

    torch.manual_seed(0)  # the layers' initial weights
    g = torch.Generator().manual_seed(0)
    net = ResidualConvNet(1, 2, hidden_channels=4, num_blocks=1)
    flow = Sequential(VariationalDequantize(1, hidden_channels=4, num_couplings=2), Logit(0.05), BatchNormFlow(1),
                      AffineCoupling(checkerboard_mask(1, 4, 4, 0), net), BatchNormFlow(1))
    model = FlowModel(flow, "normal", (1, 4, 4)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model, torch.randint(0, 256, (8, 1, 4, 4), generator=g, dtype=torch.uint8)


def test_local_share_is_the_single_process_step(tmp_path):
    """2 processes, each its half of a global batch inside DDP, against 1 process on the whole batch (float64):
    the same noise (the dequantizer runs on the whole batch), the global batch's statistics in every batch norm
    after it (BatchNorm2d and BatchNormFlow), and the same gradients, loss, running averages and random state."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_local_share_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    reference = _one_step(*_local_share_model_and_batch())
    # float64 sums over at most the batch's 8 * 4 * 4 = 128 values per channel are within 128 * 2**-53 of their
    # exact value relative to the magnitude of their terms (Higham eq. 4.4), one process's order or two's. The
    # terms are taken at the scale of the largest entry of their kind: of any parameter's gradient (a bias that
    # feeds a batch norm has a gradient of pure roundoff, no scale of its own), of each running average.
    tol = 128 * 2.0**-53
    grad_scale = max(g.abs().max().item() for g in reference["grads"].values())
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["rng"], reference["rng"])
        assert _relative_error(got["loss"], reference["loss"], abs(reference["loss"].item())) < tol
        for name, grad in reference["grads"].items():
            assert _relative_error(got["grads"][name], grad, grad_scale) < tol, (rank, name)
        for name, buffer in reference["buffers"].items():
            if not buffer.is_floating_point() or not buffer.numel():  # masks, counters: exact
                assert torch.equal(got["buffers"][name], buffer), (rank, name)
            else:
                assert _relative_error(got["buffers"][name], buffer, buffer.abs().max().item()) < tol, (rank, name)
