"""`flowlib.training.rescore`: a finished run scored again with K dequantization samples per test image."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import flowlib.training.checkpoint as C
import flowlib.training.config as Cfg
import flowlib.training.rescore as RS
import flowlib.training.train as T
from flowlib.training.rescore import main, rescore


def train_run(folder: Path, **kw: object) -> Path:
    """A tiny multi-scale RealNVP on 128 digits, tested on 96 in batches of 40, 40 and 16."""
    config = Cfg.make_config("realnvp", "quick", out_dir=str(folder), train_size=128, eval_size=96, epochs=2,
                             batch_size=32, eval_batch_size=40, precision="fp32", **kw)
    T.train(config, progress=False)
    return folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("rescore") / "run")


@pytest.fixture(scope="module")
def run_with_4_samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose own test number is the importance-weighted bound with K = 4 (``--eval-samples 4``)."""
    return train_run(tmp_path_factory.mktemp("rescore") / "run4", eval_samples=4)


def test_one_sample_gives_back_the_runs_own_test_number(finished_run: Path) -> None:
    """Same images, same batches (40, 40, 16), same evaluation seed per batch: the trainer's number exactly."""
    saved = json.loads((finished_run / "results.json").read_text())
    r = rescore(finished_run, samples=1, progress=False)
    assert r.test_bpd == pytest.approx(saved["test_bpd"], abs=1e-9)
    assert r.test_bpd_single == r.test_bpd and r.count == 96 and r.run_id == saved["run_id"]
    assert r.run_test_bpd == saved["test_bpd"] and r.run_samples == 1


def test_the_runs_own_number_is_labelled_with_the_runs_k(run_with_4_samples: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """A run evaluated with K = 4: its number is the K = 4 one, and ``--samples 1`` computes the K = 1 one."""
    saved = json.loads((run_with_4_samples / "results.json").read_text())
    same_k = rescore(run_with_4_samples, samples=4, progress=False)
    assert same_k.test_bpd == pytest.approx(saved["test_bpd"], abs=1e-9)  # the trainer's number is K = 4's
    assert main([str(run_with_4_samples), "--samples", "1", "--out", str(tmp_path / "r.json")]) == 0
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["run_test_bpd"] == saved["test_bpd"] and written["run_samples"] == 4
    assert written["test_bpd_single"] == written["test_bpd"] > saved["test_bpd"]  # K = 1 is looser (by 3e-4 here)
    out = capsys.readouterr().out
    assert f"{saved['test_bpd']:.4f} with K = 4" in out and f"{written['test_bpd']:.4f} bits/dim with K = 1" in out


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
    with pytest.raises(C.CheckpointError, match="neither results.json nor checkpoint.pt"):
        rescore(tmp_path, samples=2)
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text((finished_run / "results.json").read_text())
    best = C.load_checkpoint(finished_run / "best.pt")
    best["run_id"] = "someone-else"
    C.atomic_save(best, other / "best.pt")
    with pytest.raises(C.CheckpointError, match="same run"):
        rescore(other, samples=2)


# ----------------------------------------------------------------------------- a final evaluation that was stopped


def test_a_stopped_final_evaluation_is_finished_by_rescore(finished_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """checkpoint.pt says all epochs are done and best.pt is the run's, but results.json was never written."""
    saved = json.loads((finished_run / "results.json").read_text())
    stopped = tmp_path / "stopped"
    shutil.copytree(finished_run, stopped, ignore=shutil.ignore_patterns("results.json"))
    assert main([str(stopped), "--samples", "1", "--out", str(tmp_path / "r.json")]) == 0
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["test_bpd"] == pytest.approx(saved["test_bpd"], abs=1e-9)  # the number the trainer had made
    assert written["run_id"] == saved["run_id"] and written["run_test_bpd"] is None
    assert "the run's own number: unknown" in capsys.readouterr().out


def test_an_unfinished_run_is_refused_saying_to_resume(tmp_path: Path) -> None:
    run = train_run(tmp_path / "run", max_steps=6)  # epoch 1 of 2 done (best.pt written), stopped in epoch 2
    assert (run / "best.pt").exists() and not (run / "results.json").exists()
    with pytest.raises(C.CheckpointError, match="1 of its 2 epochs.*--resume"):
        rescore(run, samples=1, progress=False)


# ----------------------------------------------------------------------------- damaged or mismatched run folders


def _edit_best(run: Path, edit: Callable[[dict], None]) -> None:
    best = C.load_checkpoint(run / "best.pt")
    edit(best)
    C.atomic_save(best, run / "best.pt")


def _edit_results(run: Path, edit: Callable[[dict], None]) -> None:
    results = json.loads((run / "results.json").read_text())
    edit(results)
    (run / "results.json").write_text(json.dumps(results))


def _flip_weights(path: Path) -> None:
    """Invert 64 bytes in the middle of the largest weight tensor's bytes in ``path`` (the file stays readable)."""
    weights = torch.load(path, weights_only=True)["model"].values()
    raw = bytes(max((t.untyped_storage() for t in weights), key=len))  # torch.save writes whole storages
    data = bytearray(path.read_bytes())
    at = data.find(raw) + len(raw) // 2
    assert len(raw) >= 128 and at > len(raw) // 2
    data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
    path.write_bytes(bytes(data))


def _other_width(run: Path) -> None:
    """best.pt and results.json agree on a config whose nets are wider than best.pt's weights."""
    def wider(config: dict) -> None:
        config["model_kwargs"] = {**config["model_kwargs"], "hidden_channels": 16}
    _edit_best(run, lambda b: wider(b["config"]))
    _edit_results(run, lambda r: wider(r["config"]))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "best.pt missing": (lambda run: (run / "best.pt").unlink(), "best.pt"),
    "best.pt empty": (lambda run: (run / "best.pt").write_bytes(b""), "best.pt"),
    "best.pt truncated": (lambda run: (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:300]), "best.pt"),
    "best.pt weights flipped": (lambda run: _flip_weights(run / "best.pt"), "best.pt"),
    "results.json a list": (lambda run: (run / "results.json").write_text("[]"), "results.json"),
    "results.json without run_id": (lambda run: _edit_results(run, lambda r: r.pop("run_id")), "results.json"),
    "results.json invalid": (lambda run: (run / "results.json").write_text("{not json"), "results.json"),
    "best.pt of another architecture": (_other_width, "best.pt"),
    "best.pt of another config": (lambda run: _edit_best(run, lambda b: b["config"].update(lr=0.5)), "lr"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_run_folder_is_one_line_and_exit_4(finished_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture, damage: str) -> None:
    damaged = tmp_path / "run"
    shutil.copytree(finished_run, damaged)
    how, named = DAMAGE[damage]
    how(damaged)
    capsys.readouterr()
    assert main([str(damaged), "--samples", "1"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err, err


def test_out_that_cannot_be_written_is_refused_before_any_work(finished_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the test set was scored before --out was checked")

    monkeypatch.setattr(RS, "log_likelihood_sum", no_work)
    assert main([str(finished_run), "--samples", "1", "--out", str(tmp_path)]) == 2  # a folder
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err and "folder" in err, err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for code in ("0 ", "2 bad arguments", "4 "):
        assert code in out, code
