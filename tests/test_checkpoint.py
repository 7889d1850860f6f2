"""Checkpoints that cannot be read damaged, a run lock that one process holds, and the trainer's one-line errors."""

from __future__ import annotations

import dataclasses
import multiprocessing
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from flowlib.training import checkpoint as C
from flowlib.training.run_folder import RunLock
from flowlib.training import cli
from flowlib.training import config as Cfg
from flowlib.training import runs as R
from flowlib.training import train as T
from flowlib.datasets.mnist import load_mnist


def toy_config(tmp_path: Path, **kw) -> Cfg.TrainConfig:
    """A two-moons RealNVP that trains 2 epochs of 8 steps in about a second."""
    values = dict(epochs=2, train_size=512, eval_size=256, batch_size=64, log_every=3,
                  model_kwargs=dict(num_couplings=2, hidden=16), out_dir=str(tmp_path / "run"), precision="fp32")
    values.update(kw)
    return Cfg.make_config("realnvp", "quick", "two_moons", **values)


def flip_middle(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of ``path`` (a damaged disk block, a bad copy)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + count] = bytes(b ^ 0xFF for b in data[mid:mid + count])
    path.write_bytes(bytes(data))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- checksums


def test_flipped_bytes_are_refused_naming_the_file(tmp_path: Path) -> None:
    weights = {"w": torch.randn(64, 64), "step": 7}
    path = tmp_path / "best.pt"
    C.atomic_save(weights, path)
    loaded = C.load_checkpoint(path)
    assert torch.equal(loaded["w"], weights["w"]) and loaded["step"] == 7
    flip_middle(path)  # 64 of the 16 KiB of weights
    with pytest.raises(C.CheckpointError, match=f"{path}.*checksum"):
        C.load_checkpoint(path)


def test_checkpoint_without_a_checksum_is_refused(tmp_path: Path) -> None:
    """Files written before checkpoints had checksums cannot be verified: refused, saying so."""
    torch.save({"w": torch.ones(3)}, tmp_path / "old.pt")
    with pytest.raises(C.CheckpointError, match=f"{tmp_path / 'old.pt'} .*no checksum"):
        C.load_checkpoint(tmp_path / "old.pt")


def test_empty_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(C.CheckpointError, match=f"cannot read {tmp_path / 'checkpoint.pt'}"):
        C.load_checkpoint(tmp_path / "checkpoint.pt")


def test_a_failed_write_with_an_empty_message_still_names_the_file(tmp_path: Path) -> None:
    def fails(f: object) -> None:
        raise RuntimeError()

    with pytest.raises(C.CheckpointError, match=f"could not write {tmp_path / 'best.pt'}: RuntimeError"):
        C._write(tmp_path / "best.pt", fails)


def test_weights_that_do_not_fit_the_config_are_a_checkpoint_error(tmp_path: Path) -> None:
    config = toy_config(tmp_path)
    other = Cfg.build_model(toy_config(tmp_path, model_kwargs=dict(num_couplings=2, hidden=32)))
    C.atomic_save({"config": Cfg.config_dict(config), "model": other.state_dict()}, tmp_path / "best.pt")
    with pytest.raises(C.CheckpointError, match=f"{tmp_path / 'best.pt'}.*do not fit"):
        C.load_model(tmp_path / "best.pt")


# ----------------------------------------------------------------------------- damaged runs


@pytest.mark.parametrize("finished,name", [(True, "best.pt"), (False, "best.pt"), (False, "checkpoint.pt")])
def test_run_or_load_moves_a_damaged_run_aside_and_trains_afresh(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 finished: bool, name: str) -> None:
    config = toy_config(tmp_path)
    first = T.train(toy_config(tmp_path, max_steps=None if finished else 12), progress=False)  # 12: best.pt exists
    assert (first.epochs_done == 2) == finished
    out = Path(config.out_dir)
    (out / name).write_bytes(b"")
    capsys.readouterr()
    model, result = R.run_or_load(config, progress=False)
    err = capsys.readouterr().err
    assert result.epochs_done == 2 and result.run_id != first.run_id and result.test_bpd is not None
    aside = list(out.glob("replaced-*"))
    assert len(aside) == 1 and (aside[0] / name).stat().st_size == 0
    assert "cannot read" in err and "Starting afresh" in err


# ----------------------------------------------------------------------------- the run lock


def test_a_lock_left_by_a_dead_process_is_taken_over_saying_so(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    pid = dead_pid()
    (tmp_path / ".lock").write_text(f"{socket.gethostname()} {pid}")
    with RunLock(tmp_path):
        assert f"pid {pid}" in capsys.readouterr().err
        with pytest.raises(C.CheckpointError, match="in use by another trainer"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()


def _contend(folder: str, start: float, tried: multiprocessing.Barrier, results: multiprocessing.Queue) -> None:
    """In a child process: take the lock at time ``start`` (spinning till then, to start together with the
    other child); hold it until both have tried, then die without releasing it."""
    while time.time() < start:
        pass
    try:
        RunLock(folder).acquire()
        results.put(True)
    except C.CheckpointError:
        results.put(False)
    tried.wait()


def test_two_processes_racing_for_a_stale_lock_never_both_get_it(tmp_path: Path) -> None:
    """Exactly one of 2 processes that find the same stale lock gets it, in each of 120 trials.

    Taking over by read, delete, create let both in 5 to 18 of 120 trials on 2 shared cores (measured),
    so 120 trials miss that race with a chance below 1 %.
    """
    ctx = multiprocessing.get_context("fork")  # the test's torch is already imported: children start in ms
    pid = dead_pid()
    for trial in range(120):
        (tmp_path / ".lock").write_text(f"{socket.gethostname()} {pid}")  # left by a trainer killed with -9
        tried, results, start = ctx.Barrier(2), ctx.Queue(), time.time() + 0.03
        procs = [ctx.Process(target=_contend, args=(str(tmp_path), start, tried, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        wins = [results.get(timeout=5) for _ in procs]
        assert wins.count(True) == 1, f"trial {trial}: {wins}"


# ----------------------------------------------------------------------------- the trainer's command line


def test_trainer_help_documents_the_exit_codes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for code in ("0 finished", "130", "2 bad settings", "3 ", "4 "):
        assert code in out, code


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_trainer_resume_from_a_damaged_checkpoint_is_one_line_exit_4(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    args = ["realnvp", "--dataset", "two_moons", "--preset", "quick", "--out", str(tmp_path / "run"),
            "--no-progress", "--resume"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    assert cli.main(args) == 4
    assert str(tmp_path / "run" / "checkpoint.pt") in _one_line_error(capsys)


def test_trainer_reports_any_os_error_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def no_permission(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/data/x")

    monkeypatch.setattr(cli, "train", no_permission)
    assert cli.main(["nice", "--dataset", "two_moons", "--preset", "quick", "--out", str(tmp_path)]) == 4
    assert "/data/x" in _one_line_error(capsys)


def test_flowlib_data_naming_a_file_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "mnist.gz").write_bytes(b"not a folder")
    monkeypatch.setenv("FLOWLIB_DATA", str(tmp_path / "mnist.gz"))
    with pytest.raises(ValueError, match=f"FLOWLIB_DATA.*{tmp_path / 'mnist.gz'} is a file, not a folder"):
        load_mnist("test", download=False)
    assert cli.main(["nice", "--preset", "quick", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "is a file, not a folder" in _one_line_error(capsys)


@pytest.fixture
def configs_given_to_train(monkeypatch: pytest.MonkeyPatch) -> list:
    """The configs the trainer's command line hands to `train`, which records them and stops there (exit 4)."""
    seen = []

    def record(config: object, **kwargs: object) -> None:
        seen.append(config)
        raise OSError("recorded")

    monkeypatch.setattr(cli, "train", record)
    return seen


def test_trainer_weight_decay_reaches_the_config_and_the_run_folder_name(configs_given_to_train: list,
                                                                         capsys: pytest.CaptureFixture) -> None:
    seen = configs_given_to_train
    assert cli.main(["nice", "--preset", "cpu", "--weight-decay", "5e-5"]) == 4
    assert seen[0].weight_decay == 5e-5 and seen[0].out_dir.endswith("nice-mnist-cpu-wd5e-05")
    capsys.readouterr()
    assert cli.main(["nice", "--preset", "cpu", "--weight-decay", "-1"]) == 2
    assert "weight_decay must be a finite number >= 0, got -1.0" in _one_line_error(capsys)


def test_trainer_dropout_reaches_nices_nets_and_the_run_folder_name(configs_given_to_train: list,
                                                                    capsys: pytest.CaptureFixture) -> None:
    seen = configs_given_to_train
    assert cli.main(["nice", "--preset", "cpu", "--dropout", "0.2"]) == 4
    assert seen[0].model_kwargs == {"zero_hidden_bias": True, "dropout": 0.2}  # the preset's, and the rate
    assert seen[0].out_dir.endswith("nice-mnist-cpu-dropout0.2")
    capsys.readouterr()
    assert cli.main(["glow", "--preset", "cpu", "--dropout", "0.2"]) == 2
    assert "--dropout is for nice (its coupling MLPs), got model 'glow'" in _one_line_error(capsys)
    from flowlib.training.config import build_model  # the rate is checked where the nets are built
    with pytest.raises(ValueError, match="dropout must be a probability in \\[0, 1\\), got 1.5"):
        build_model(dataclasses.replace(seen[0], model_kwargs={"dropout": 1.5}))


def test_trainer_hidden_bias_reaches_nices_nets_and_the_run_folder_name(configs_given_to_train: list,
                                                                        capsys: pytest.CaptureFixture) -> None:
    seen = configs_given_to_train
    # NICE's cpu preset before its hidden biases started at zero: results/nice-mnist-cpu-zero_hidden_biasFalse-seed1.json
    assert cli.main(["nice", "--preset", "cpu", "--hidden-bias", "pytorch", "--seed", "1"]) == 4
    assert seen[0].model_kwargs == {"zero_hidden_bias": False}
    assert seen[0].out_dir.endswith("nice-mnist-cpu-zero_hidden_biasFalse-seed1")
    assert cli.main(["nice", "--preset", "cpu", "--hidden-bias", "zero"]) == 4  # the preset's own
    assert seen[1].model_kwargs == {"zero_hidden_bias": True} and seen[1].out_dir.endswith("nice-mnist-cpu")
    capsys.readouterr()
    assert cli.main(["realnvp", "--preset", "cpu", "--hidden-bias", "zero"]) == 2
    assert "--hidden-bias is for nice (its coupling MLPs), got model 'realnvp'" in _one_line_error(capsys)
    assert cli.main(["nice", "--dataset", "moons", "--hidden-bias", "zero", "--dropout", "0.1"]) == 2
    assert "--dropout and --hidden-bias are for NICE on MNIST" in _one_line_error(capsys)
    # a config that drops a preset's model argument says so in its folder name (PyTorch's biases, with dropout)
    assert Cfg.make_config("nice", "cpu", model_kwargs={"dropout": 0.2}).out_dir.endswith(
        "nice-mnist-cpu-dropout0.2-nozero_hidden_bias")


def test_trainer_min_lr_reaches_the_config_and_the_run_folder_name(configs_given_to_train: list,
                                                                   capsys: pytest.CaptureFixture) -> None:
    seen = configs_given_to_train
    assert cli.main(["nice", "--preset", "cpu", "--min-lr", "2e-4"]) == 4
    assert seen[0].min_lr == 2e-4 and seen[0].out_dir.endswith("nice-mnist-cpu-minlr0.0002")
    capsys.readouterr()
    assert cli.main(["nice", "--preset", "cpu", "--min-lr", "1e-3"]) == 2
    assert "min_lr must be a number in [0, lr) = [0, 0.001), got 0.001" in _one_line_error(capsys)
    assert cli.main(["nice", "--preset", "cpu", "--min-lr", "1e-4", "--schedule", "constant"]) == 2
    assert "min_lr is where the cosine schedule ends; schedule is 'constant', not 'cosine'" in _one_line_error(capsys)


def test_trainer_warmup_epochs_reaches_the_config_and_the_run_folder_name(configs_given_to_train: list,
                                                                         capsys: pytest.CaptureFixture) -> None:
    seen = configs_given_to_train
    assert cli.main(["glow", "--preset", "cpu", "--warmup-epochs", "0.5"]) == 4
    assert seen[0].warmup_epochs == 0.5 and seen[0].out_dir.endswith("glow-mnist-cpu-warmup0.5")
    capsys.readouterr()
    assert cli.main(["glow", "--preset", "cpu", "--warmup-epochs", "17"]) == 2
    assert "warmup_epochs must be a number in [0, epochs] = [0, 16], got 17.0" in _one_line_error(capsys)
    assert cli.main(["glow", "--preset", "cpu", "--warmup-epochs", "-1"]) == 2
    assert "warmup_epochs must be a number in [0, epochs] = [0, 16], got -1.0" in _one_line_error(capsys)


def test_trainer_average_epochs_reaches_the_config_and_the_run_folder_name(configs_given_to_train: list,
                                                                          capsys: pytest.CaptureFixture) -> None:
    seen = configs_given_to_train
    assert cli.main(["glow", "--preset", "cpu", "--average-epochs", "1"]) == 4
    assert seen[0].average_epochs == 1.0 and seen[0].out_dir.endswith("glow-mnist-cpu-avg1")
    capsys.readouterr()
    assert cli.main(["nice", "--preset", "cpu"]) == 4
    assert seen[1].average_epochs == 1.0 and seen[1].out_dir.endswith("nice-mnist-cpu")
    assert cli.main(["nice", "--preset", "cpu", "--average-epochs", "0"]) == 4  # 0: the preset's average off
    assert seen[2].average_epochs is None and seen[2].out_dir.endswith("nice-mnist-cpu-noavg")
    # the NICE preset before weight decay, the average and the zero hidden biases:
    # results/nice-mnist-cpu-wd0-seed1-noavg.json, run when the preset had none of them
    assert cli.main(["nice", "--preset", "cpu", "--weight-decay", "0", "--average-epochs", "0", "--seed", "1",
                     "--hidden-bias", "pytorch"]) == 4
    assert (seen[3].weight_decay, seen[3].average_epochs, seen[3].model_kwargs) == (0.0, None, {"zero_hidden_bias": False})
    assert seen[3].out_dir.endswith("nice-mnist-cpu-wd0-zero_hidden_biasFalse-seed1-noavg")
    capsys.readouterr()
    assert cli.main(["nice", "--preset", "cpu", "--average-epochs", "-1"]) == 2
    assert "average_epochs must be a positive finite number, got -1.0" in _one_line_error(capsys)
