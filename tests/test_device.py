"""Device code paths: what runs on the CPU here runs the same on a GPU, and the GPU-only checks when one is present.

On every machine: batches reach the model's device without pinning on the CPU; autocast takes its device type
from the model; ``max_minutes`` stops a run after whole steps and ``--resume`` continues it bit for bit;
``results.json`` records the float32 matmul precision in effect, and torch's TF32 switches are restored after
a run; no ``.cuda()`` call and no tensor factory without a device in the trainer; and
``benchmarks/gpu_paper_runs.py`` runs end to end in ``--quick`` mode.

With a CUDA GPU (skipped elsewhere): a quick preset trains on it, log-dets match autograd there (with TF32
off, within float32's roundoff bound), bf16 autocast runs the nets in bf16 there, and batches copied from
pinned host memory without a host sync give the same steps as data already on the GPU.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowlib.datasets.mnist import data_root, mnist_dir
from flowlib.models import nice, realnvp, realnvp_image
from flowlib.training import config as Cfg
from flowlib.training import precision as P
from flowlib.training import train as T
from flowlib.training.evaluate import evaluate
from flowlib.training.fit import fit, loss_scale, negative_log_likelihood

from conftest import assert_close_to_roundoff, autograd_log_det, roundoff

ROOT = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
needs_mnist = pytest.mark.skipif(not (mnist_dir(data_root()) / "train-images-idx3-ubyte.gz").exists(),
                                 reason="MNIST not available: set FLOWLIB_DATA")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def toy_config(tmp_path: Path, name: str = "run", **kw) -> Cfg.TrainConfig:
    values = dict(epochs=2, train_size=512, eval_size=256, batch_size=64, log_every=3, device="cpu",
                  model_kwargs=dict(num_couplings=2, hidden=16), out_dir=str(tmp_path / name), precision="fp32")
    values.update(kw)
    return Cfg.make_config("realnvp", "quick", "two_moons", **values)


def perturbed(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """The nets start at zero (every coupling the identity): move every parameter so that each one matters."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p))
    return model.eval()


@pytest.fixture
def tf32_switches():
    """torch's legacy TF32 switches, put back after the test however it ends."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield before
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# ----------------------------------------------------------------------------- host-to-device copies


@pytest.mark.parametrize("target", ["cpu", "meta"])
def test_to_device_never_pins_memory_off_cuda(target, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("pin_memory called for a non-CUDA target")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    x = torch.arange(6.0).reshape(2, 3)
    y = P.to_device(x, target)
    assert y.device.type == target and y.shape == x.shape
    if target == "cpu":
        assert y is x  # nothing moved, nothing copied


@needs_cuda
def test_pinned_non_blocking_batches_give_the_steps_of_data_on_the_gpu():
    """`fit` with the data on the host (pinned copies, no host sync) against the same data already on the GPU."""
    data = torch.randn(512, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([2.0, 0.5])
    runs = []
    for where in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = realnvp(2, num_couplings=2, hidden=16).to("cuda")
        result = fit(model, data.to(where), steps=12, batch_size=64, unit="nats", seed=0)
        runs.append((result.train_loss, [p.detach().cpu() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_fit_evaluate_and_sample_on_a_named_device(device):
    """Host data, a model on ``device``: fit's test loss is `evaluate`'s of the trained model; samples stay there."""
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(512, 2, generator=gen), torch.randn(256, 2, generator=gen)
    model = realnvp(2, num_couplings=2, hidden=16).to(torch.device(device))
    result = fit(model, train, steps=10, batch_size=64, unit="nats", test=test, seed=0)
    assert result.test_loss == evaluate(model, test).nats
    samples = model.sample(5)
    assert samples.device.type == device and torch.isfinite(model.log_prob(samples)).all()


# ----------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_takes_its_device_from_the_model(device, monkeypatch):
    """bf16: the nets run in bf16 on the model's device type and the loss is what autocast there gives."""
    model = perturbed(nice(16, num_couplings=2, hidden=32, num_hidden_layers=2)).to(device)
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(0)).to(device)
    scale = loss_scale(model, "nats")
    asked, original = [], torch.autocast
    monkeypatch.setattr(P.torch, "autocast", lambda kind, **kw: asked.append(kind) or original(kind, **kw))
    dtypes = []
    hooks = [m.register_forward_hook(lambda mod, i, o: dtypes.append(o.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    loss = negative_log_likelihood(model, x, scale, "bf16")
    for h in hooks:
        h.remove()
    assert asked == [device] and dtypes and set(dtypes) == {torch.bfloat16}
    with original(device, dtype=torch.bfloat16):
        expected = -model.log_prob(x).float().mean() * scale
    assert torch.equal(loss, expected) and not torch.equal(loss, negative_log_likelihood(model, x, scale, "fp32"))


# ----------------------------------------------------------------------------- the time budget


def test_time_budget_stops_after_whole_steps_and_resume_is_exact(tmp_path):
    """``max_minutes`` so small that it is spent at once: each call takes one step (at least one, so every call
    moves on), saves, and exits cleanly; resuming to the end gives the uninterrupted run's parameters and test
    number bit for bit."""
    full = T.train(toy_config(tmp_path, "full"), progress=False)
    first = T.train(toy_config(tmp_path, "part", max_minutes=1e-9), progress=False)
    assert (first.steps, first.test_bpd, first.interrupted) == (1, None, False)
    second = T.train(toy_config(tmp_path, "part", max_minutes=1e-9), resume=True, progress=False)
    assert second.steps == 2  # the clock starts again at a resume
    assert not (tmp_path / "part" / "results.json").exists()
    resumed = T.train(toy_config(tmp_path, "part"), resume=True, progress=False)
    assert resumed.steps == full.steps and resumed.test_bpd == full.test_bpd
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("field, value", [("max_minutes", 0), ("max_minutes", -1.0), ("max_minutes", float("nan")),
                                          ("max_minutes", True), ("matmul_precision", "tf16"),
                                          ("matmul_precision", None)])
def test_bad_time_budget_or_matmul_precision_is_a_clear_error(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        toy_config(tmp_path, **{field: value})


def test_cli_takes_the_time_budget_and_matmul_precision(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "flowlib.training", "nice", "--dataset", "rings", "--preset", "quick", "--out",
         str(out), "--no-progress", "--device", "cpu", "--max-minutes", "1e-9", "--matmul-precision", "tf32"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Time budget of 1e-09 minutes reached" in proc.stderr and "--resume" in proc.stderr
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["state"]["steps"] == 1 and saved["config"]["matmul_precision"] == "tf32"


def _trainer(processes: int, args: list[str]) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "flowlib.training"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "-m", "flowlib.training"]
    proc = subprocess.run(launcher + args, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_processes_agree_on_the_time_budget_and_resume(tmp_path):
    """Under torchrun the processes stop together at a log point (one stopping alone would leave the other
    waiting in an all-reduce), and the resumed run is the single process's up to summation order."""
    common = ["realnvp", "--dataset", "two_moons", "--preset", "quick", "--no-progress", "--device", "cpu",
              "--precision", "fp32", "--batch-size", "64", "--epochs", "1"]
    _trainer(1, common + ["--out", str(tmp_path / "one")])
    _trainer(2, common + ["--out", str(tmp_path / "two"), "--max-minutes", "1e-9"])
    paused = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert paused["state"]["steps"] == 5  # the first log point of the toy quick preset (log_every 5)
    _trainer(2, common + ["--out", str(tmp_path / "two"), "--resume"])
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert a["state"]["steps"] == b["state"]["steps"] > 5
    for key in a["model"]:  # as test_train's data-parallel test: the same sums in another order
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)


# ----------------------------------------------------------------------------- TF32


def test_results_record_fp32_matmuls_by_default(tmp_path):
    result = T.train(toy_config(tmp_path), progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result.matmul_precision == saved["matmul_precision"] == "fp32"
    assert saved["config"]["matmul_precision"] == "fp32"


@pytest.mark.parametrize("setting, before", [("tf32", (False, False)), ("fp32", (True, True)),
                                             ("fp32", (False, True))])  # the last: PyTorch's defaults
def test_the_run_sets_tf32_as_asked_records_it_and_restores_torch(tmp_path, monkeypatch, tf32_switches, setting,
                                                                   before):
    """On a device taken to have TF32 tensor cores: inside the run torch's switches are the config's (whatever
    they were before), results.json says which, and afterwards they are what they were."""
    monkeypatch.setattr(P, "has_tf32", lambda device: True)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    seen = []
    result = T.train(toy_config(tmp_path, matmul_precision=setting), progress=False,
                     on_epoch=lambda record: seen.append(P.tf32_enabled()))
    assert seen == [setting == "tf32"] * 2
    assert result.matmul_precision == setting
    assert json.loads((tmp_path / "run" / "results.json").read_text())["matmul_precision"] == setting
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_tf32_asked_on_a_cpu_runs_and_records_fp32(tmp_path, tf32_switches):
    result = T.train(toy_config(tmp_path, matmul_precision="tf32"), progress=False)
    assert result.matmul_precision == "fp32" and not P.has_tf32("cpu")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32_switches


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
def test_switches_set_through_torchs_newer_api_are_restored(monkeypatch, tf32_switches):
    """torch >= 2.9 refuses to read its legacy switches after the new ones were set apart from them; the
    context still runs, and puts the new ones back."""
    monkeypatch.setattr(P, "has_tf32", lambda device: True)
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    with P.matmul_precision("fp32", "cuda") as effective:
        assert effective == "fp32" and not P.tf32_enabled()
    assert torch.backends.cuda.matmul.fp32_precision == "tf32" and torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert P.tf32_enabled()


# ----------------------------------------------------------------------------- the code itself


def _calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]


def test_no_cuda_calls_and_no_tf32_switch_outside_precision():
    sources = sorted((ROOT / "flowlib").rglob("*.py"))
    cuda_calls = [f"{p.relative_to(ROOT)}:{c.lineno}" for p in sources for c in _calls(p)
                  if isinstance(c.func, ast.Attribute) and c.func.attr == "cuda"]
    assert not cuda_calls, f".cuda() moves to one GPU behind the model's back: {cuda_calls}"
    switches = [str(p.relative_to(ROOT)) for p in sources if p.name != "precision.py"
                and any(s in p.read_text() for s in ("allow_tf32", "float32_matmul_precision", "fp32_precision"))]
    assert not switches, f"TF32 is set in flowlib.training.precision only: {switches}"


_FACTORIES = {"zeros", "ones", "empty", "full", "tensor", "arange", "rand", "randn", "randint", "eye", "linspace"}


def test_the_trainer_makes_every_tensor_on_a_named_device():
    """In flowlib.training, a tensor factory names its device (a bare one would land on the CPU under a GPU run);
    the data orders (``randperm``) are drawn on the CPU on purpose and moved."""
    bare = [f"{p.name}:{c.lineno} torch.{c.func.attr}" for p in sorted((ROOT / "flowlib" / "training").glob("*.py"))
            for c in _calls(p) if isinstance(c.func, ast.Attribute) and c.func.attr in _FACTORIES
            and isinstance(c.func.value, ast.Name) and c.func.value.id == "torch"
            and not any(k.arg == "device" for k in c.keywords)]
    assert not bare, f"tensor factories without device=: {bare}"


# ----------------------------------------------------------------------------- benchmarks/gpu_paper_runs.py


def _script():
    spec = importlib.util.spec_from_file_location("gpu_paper_runs", ROOT / "benchmarks" / "gpu_paper_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_gpu_paper_runs_plans_compiled_paper_calls_of_at_most_six_minutes(capsys):
    assert _script().main(["--dry-run", "--models", "nice,realnvp,glow", "--epochs", "realnvp=7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert "--preset paper" in line and "--compile" in line and "--device cuda" in line
        assert "--max-minutes 6 " in line and "--no-progress" in line
    assert "--epochs 7" in lines[1] and "--matmul-precision tf32" in lines[1]
    with pytest.raises(ValueError, match="--epochs takes MODEL=N"):
        _script().main(["--dry-run", "--epochs", "realnvp:7"])


@pytest.mark.slow
@needs_mnist
def test_gpu_paper_runs_quick_mode_runs_end_to_end(tmp_path):
    """The whole script on the CPU: every run paused after one step, resumed to the end, only results copied."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_paper_runs.py"), "--quick", "--out",
                           str(out), "--runs", str(tmp_path / "runs")], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["nice-mnist-quick.json", "realnvp-mnist-quick.json",
                                                     "summary.json"]
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    for entry, steps in zip(summary["runs"], (20, 16)):  # the quick presets: 2 epochs of 10 and of 8 steps
        results = json.loads((out / entry["results_file"]).read_text())
        assert entry["finished"] and [c["returncode"] for c in entry["calls"]] == [0, 0]
        assert results["steps"] == entry["steps"] == steps and results["epochs_done"] == 2
        assert results["matmul_precision"] == "fp32"  # RealNVP asks for tf32: a CPU has none
    assert "Time budget" in proc.stderr


# ----------------------------------------------------------------------------- on a CUDA GPU (and the CPU)


def _small_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "nice":
        return perturbed(nice(16, num_couplings=4, hidden=32, num_hidden_layers=2))
    return perturbed(realnvp_image((1, 8, 8), num_scales=2, hidden_channels=8, num_blocks=1, preprocess=False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["nice", "realnvp"])
def test_log_dets_match_autograd_on_the_device(device, name):
    """float32 log-dets on ``device`` against autograd's float64 Jacobian on ``device``, within the roundoff
    bound derived on the CPU (it holds for every summation order, so for the GPU's kernels too), with TF32 off
    (cuDNN would run the convolutions in TF32 by default, far outside float32's bound)."""
    model = _small_model(name)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(6, 16, generator=gen) if name == "nice" else torch.randn(6, 1, 8, 8, generator=gen)
    r = roundoff(lambda m, v: m(v)[1], model, x)
    on_device, on_device64 = copy.deepcopy(model).to(device), copy.deepcopy(model).double().to(device)
    with P.matmul_precision("fp32", device):
        log_det = on_device(x.to(device))[1]
        reference, reference_bound = autograd_log_det(lambda v: on_device64(v)[0], x.to(device), r.sites)
    assert log_det.device.type == reference.device.type == device
    assert_close_to_roundoff(log_det.cpu(), reference.cpu(), r.bound + reference_bound.cpu(),
                             f"log-det on {device} against autograd on {device}")


@needs_cuda
@needs_mnist
@pytest.mark.slow
def test_quick_presets_train_on_cuda(tmp_path, tf32_switches):
    """NICE's quick preset to the end on the GPU (bf16 nets, TF32 asked), RealNVP's for 3 compiled steps."""
    from flowlib.flow import initialize_from_data

    config = Cfg.make_config("nice", "quick", device="cuda", matmul_precision="tf32", out_dir=str(tmp_path / "nice"))
    result = T.train(config, progress=False)
    saved = json.loads((tmp_path / "nice" / "results.json").read_text())
    expected = "tf32" if torch.cuda.get_device_capability()[0] >= 8 else "fp32"
    assert saved["matmul_precision"] == result.matmul_precision == expected
    assert torch.cuda.get_device_name() in saved["device"] and saved["precision"] == P.resolve_precision("auto", "cuda")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32_switches
    splits = Cfg.load_dataset(config)
    torch.manual_seed(config.seed)
    untrained = Cfg.build_model(config).to("cuda")
    initialize_from_data(untrained, splits["train"][: config.batch_size].to("cuda"))
    assert result.test_bpd < evaluate(untrained, splits["test"]).bpd
    compiled = T.train(Cfg.make_config("realnvp", "quick", device="cuda", compile=True, max_steps=3,
                                       out_dir=str(tmp_path / "realnvp")), progress=False)
    assert compiled.steps == 3 and compiled.device == saved["device"]
