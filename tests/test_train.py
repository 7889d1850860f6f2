"""The trainer: exact resume after real signals, runs that cannot be mixed up, clear failures, data parallel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowlib.training import checkpoint as C
from flowlib.training import evaluate as E
from flowlib.training import fit as F
from flowlib.training import config as Cfg
from flowlib.training import runs as R
from flowlib.training import train as T
from flowlib.datasets.mnist import data_root, mnist_dir

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


def test_resume_after_max_steps_is_exact(tmp_path):
    full = T.train(toy_config(tmp_path, "full"), progress=False)
    part = T.train(toy_config(tmp_path, "part", max_steps=11), progress=False)  # stops mid-epoch 2
    assert part.steps == 11 and part.epochs_done == 1 and part.test_bpd is None
    resumed = T.train(toy_config(tmp_path, "part"), resume=True, progress=False)
    assert resumed.steps == full.steps and resumed.history[-1]["train_bpd"] == full.history[-1]["train_bpd"]
    assert_same_run(tmp_path / "full", tmp_path / "part")
    assert resumed.test_bpd == full.test_bpd


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
            _signal_at(m, T.FlowModel, "log_prob", call, signum)
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
            m.setattr(T, "train_step", step_then_signal)
        elif where == "validation":
            _signal_at(m, T, "log_likelihood_sum", call, signum)
        else:
            _signal_at(m, T, "atomic_save", call, signum)
        stopped = T.train(mnist_config(tmp_path, "part"), progress=False)
    assert stopped.interrupted and stopped.epochs_done < 3 and stopped.test_bpd is None
    resumed = T.train(mnist_config(tmp_path, "part"), resume=True, progress=False)
    assert not resumed.interrupted and resumed.epochs_done == 3
    assert_same_run(tmp_path / "full", tmp_path / "part")


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
    with C.RunLock(config.out_dir):
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
    original = T.FlowModel.log_prob
    monkeypatch.setattr(T.FlowModel, "log_prob", lambda self, x: original(self, x) * float("nan"))
    with pytest.raises(T.TrainingDiverged, match="kept the last good checkpoint"):
        T.train(toy_config(tmp_path, epochs=2), resume=True, progress=False)
    assert ckpt.read_bytes() == before


def test_nan_loss_in_the_first_epoch_says_no_checkpoint_exists(tmp_path, monkeypatch):
    original = T.FlowModel.log_prob
    monkeypatch.setattr(T.FlowModel, "log_prob", lambda self, x: original(self, x) * float("nan"))
    with pytest.raises(T.TrainingDiverged, match="no checkpoint had been written yet"):
        T.train(toy_config(tmp_path), progress=False)


# ----------------------------------------------------------------------------- presets, MNIST, command line


def test_presets_and_bad_names():
    paper = Cfg.make_config("nice", "paper")
    # NICE's "beta2 = 0.01" in the first Adam notation (beta = 1 - decay) is today's 0.99.
    assert (paper.lr, paper.betas, paper.eps) == (1e-3, (0.9, 0.99), 1e-4)
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


def test_data_parallel_matches_single_process(tmp_path):
    """2 CPU processes on gloo, global batch 64 = single process with batch 64."""
    common = ["realnvp", "--dataset", "two_moons", "--preset", "quick", "--no-progress", "--device", "cpu",
              "--epochs", "1", "--batch-size", "64", "--precision", "fp32"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    single = subprocess.run([sys.executable, "-m", "flowlib.training", *common, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "flowlib.training", *common, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert a["state"]["steps"] == b["state"]["steps"] > 0
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)
