"""Shared fixtures and helpers for the flowlib tests.

* every test starts from the same random state (``torch.manual_seed(0)``);
* ``float64`` switches the default dtype to float64 for one test;
* ``perturb`` makes a flow's parameters non-trivial (the conditioner nets are
  zero-initialised, so untouched couplings would be the identity);
* ``assert_log_det`` compares a flow's analytic log-det with autograd's;
* `roundoff` computes a function of a module in the test's dtype and in
  float64 with a bound on the rounding error derived from the dtype's unit
  roundoff and the computation itself: every float comparison of a computed
  value with its exact value takes its tolerance from it
  (`assert_close_to_roundoff`), none is set from a measurement.

With ``FLOWLIB_CHECK_TREE=1`` (``python3 run.py test`` sets it) the session
fails when the tests changed any file git tracks or left a new untracked one:
quick and test runs must never write over the stored chapters or figures.

Threads: torch runs on ``FLOWLIB_TEST_THREADS`` threads, else
``OMP_NUM_THREADS``, else 1 (the tests use tiny tensors, where a thread pool
costs more than it saves and oversubscribes a shared CI machine). The thread
count changes the kernels' summation order, so CI runs the layer tests with 2
threads as well; the roundoff bounds hold for every order.
"""

from __future__ import annotations

import copy
import http.server
import threading
import hashlib
import math
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from flowlib.jacobian import jacobian

THREADS = int(os.environ.get("FLOWLIB_TEST_THREADS") or os.environ.get("OMP_NUM_THREADS") or 1)
torch.set_num_threads(THREADS)

ROOT = Path(__file__).resolve().parent.parent


def _tree_state() -> tuple[str, str] | None:
    """``(git status, hash of the diff against HEAD)`` of the work tree, or None outside a git checkout."""
    try:
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout
        diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return status, hashlib.sha256(diff).hexdigest()


def pytest_report_header(config: pytest.Config) -> str:
    return f"flowlib: torch {torch.__version__} on {torch.get_num_threads()} thread(s) (FLOWLIB_TEST_THREADS)"


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._flowlib_tree = _tree_state() if os.environ.get("FLOWLIB_CHECK_TREE") == "1" else None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_flowlib_tree", None)
    if before is None:
        return
    after = _tree_state()
    if after != before:
        changed = sorted(set(after[0].splitlines()) ^ set(before[0].splitlines())) if after else []
        print(f"\nFAILED: the test run changed the work tree (tracked or new files): {changed or 'file contents'}")
        session.exitstatus = 1

@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def float64():
    """Default dtype float64 for the duration of one test."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(previous)


def _perturb(module: nn.Module, scale: float = 0.3, seed: int = 1) -> nn.Module:
    """Add ``scale * N(0, 1)`` noise to every parameter of ``module`` (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p))
    return module


def slogdet_bound(matrix: Tensor, depth: int = 0, u: float = 2.0**-53) -> Tensor:
    """A bound on the rounding error of ``torch.linalg.slogdet(matrix)[1]`` computed with unit roundoff ``u``.

    ``slogdet`` factors ``A = P L U``; its backward error, and the error of ``A``'s entries if they come out
    of ``depth`` rounding ops (autograd's Jacobian), is ``u sum_k c_k d_k`` per entry with
    ``sum_k c_k^2 <= (D + depth) (P |L| |U|)_ij^2``. ``d log|det A| / d A_ij = (A^-1)_ji``, so with
    Hoeffding as in `roundoff` the error is at most
    ``LAMBDA * u * sqrt((D + depth) * sum_ij ((A^-1)_ji (P |L| |U|)_ij)^2)`` (float64: u = 2**-53).
    """
    a = matrix.detach().double()
    p, lower, upper = torch.linalg.lu(a)
    coefficients = torch.linalg.inv(a).transpose(-1, -2) * (p @ (lower.abs() @ upper.abs()))
    return LAMBDA * u * math.sqrt(a.shape[-1] + depth) * coefficients.square().sum((-2, -1)).sqrt()


def autograd_log_det(fn: Callable[[Tensor], Tensor], x: Tensor, depth: int) -> tuple[Tensor, Tensor]:
    """``log|det J|`` of ``fn`` at ``x`` by autograd in float64 (``fn`` must compute in float64), and its error bound."""
    jac = jacobian(fn, x.double()).detach()
    return torch.linalg.slogdet(jac)[1], slogdet_bound(jac, depth)


def assert_log_det_matches_autograd(flow: nn.Module, x: Tensor, log_det: Tensor, inverse: bool = False) -> Tensor:
    """Assert ``log_det`` (of ``flow``'s forward or inverse at ``x``) equals autograd's, to within roundoff.

    The reference is autograd in float64 with the same parameters, the tolerance the `roundoff` bound of the
    analytic log-det in ``x``'s dtype plus the bound on the reference's own error (`autograd_log_det`).
    """
    r = roundoff(lambda m, v: (m.inverse if inverse else m.forward)(v)[1], flow, x)
    flow64 = copy.deepcopy(flow).double()
    direction = flow64.inverse if inverse else flow64.forward
    reference, reference_bound = autograd_log_det(lambda v: direction(v)[0], x, r.sites)
    assert log_det.shape == (x.shape[0],) and log_det.dtype == x.dtype
    assert torch.isfinite(reference).all()
    assert_close_to_roundoff(log_det, reference, r.bound + reference_bound, "log-det against autograd")
    return reference


@pytest.fixture
def perturb() -> Callable[..., nn.Module]:
    return _perturb


@pytest.fixture
def assert_log_det() -> Callable[..., Tensor]:
    return assert_log_det_matches_autograd


def _average_closed_form(values: list[Tensor], beta: float) -> Tensor:
    """Polyak averaging's closed form :math:`\\sum_s (1-\\beta)\\beta^{t-s}\\theta_s / (1-\\beta^t)`, summed
    term by term (the reference of `flowlib.training.averaging`'s running update)."""
    t = len(values)
    total = sum((1 - beta) * beta ** (t - s) * v for s, v in enumerate(values, start=1))
    return total / (1 - beta ** t)


@pytest.fixture
def average_closed_form() -> Callable[[list[Tensor], float], Tensor]:
    return _average_closed_form


# ----------------------------------------------------------------------------- roundoff bounds
#
# Every comparison of a computed value with its exact value uses `roundoff`: the tolerance is derived from the
# unit roundoff u of the dtype and the computation itself, never set from a measurement on one CPU.

LAMBDA = 6.0  # confidence multiplier: an element exceeds its bound with probability <= 2 exp(-LAMBDA^2 / 2) = 3e-8
LIBRARY_ULPS = 4  # exp, log, tanh, ...: SLEEF/libm/MKL are within 1 to 3.5 ulps; 1 ulp <= 2u relative
_EXACT = frozenset({  # data movement, sign and order operations: their results are representable, no rounding
    "getitem", "get", "cat", "stack", "chunk", "split", "split_with_sizes", "index_select", "narrow", "select",
    "flatten", "reshape", "view", "view_as", "permute", "transpose", "t", "expand", "expand_as", "contiguous",
    "unsqueeze", "squeeze", "flip", "clone", "detach", "neg", "abs", "sign", "relu", "max", "min", "amax", "amin",
    "clamp", "clamp_min", "clamp_max", "floor", "ceil", "round", "where", "masked_fill", "diag", "diagonal",
    "tril", "triu", "eye", "zeros", "ones", "new_zeros", "new_ones", "zeros_like",
    "ones_like", "pixel_shuffle", "pixel_unshuffle", "roll", "repeat", "tile", "gather",
    "setitem", "zero", "minimum", "maximum", "nextafter", "broadcast_tensors", "sort", "argsort",
    "topk", "unbind", "movedim", "diag_embed", "T", "mT", "empty", "empty_like", "new_empty",
})
_ADD = frozenset({"add", "sub", "rsub", "radd"})
_MUL = frozenset({"mul", "rmul", "div", "truediv", "rtruediv", "rdiv"})
_LIBRARY = frozenset({"exp", "expm1", "log", "log1p", "log2", "tanh", "sigmoid", "softplus", "logsigmoid",
                      "sqrt", "rsqrt", "pow", "rpow", "square", "reciprocal", "logit"})
_RANDOM = frozenset({"rand", "randn", "rand_like", "randn_like", "normal", "uniform", "normal_", "uniform_"})
_CONTROL = frozenset({"set_grad_enabled", "is_grad_enabled", "is_autocast_enabled", "get_default_dtype"})
_CASTS = frozenset({"to", "float", "double", "half", "bfloat16", "type", "type_as"})
_CONSTANT = frozenset({"full", "new_full", "full_like", "fill", "tensor", "as_tensor", "scalar_tensor"})
_LOW_PRECISION = frozenset({"linear", "conv2d", "matmul", "mm", "bmm", "addmm"})  # what CPU autocast runs in bf16


def _lu_backward_error(a: Tensor) -> Tensor:
    """LU with partial pivoting, ``P L U = A + E``: ``E_ij = u sum_k c_k d_k`` with ``sum c_k^2 <= D (P|L||U|)_ij^2``."""
    p, lower, upper = torch.linalg.lu(a)
    return math.sqrt(a.shape[-1]) * (p @ (lower.abs() @ upper.abs()))


def _cholesky_backward_error(a: Tensor) -> Tensor:
    """Cholesky, ``L L^T = A + E``: ``sum c_k^2 <= (D + 1) (|L||L^T|)_ij^2`` (Higham theorem 10.3)."""
    lower = torch.linalg.cholesky(a).abs()
    return math.sqrt(a.shape[-1] + 1) * (lower @ lower.transpose(-1, -2))


# Backward stable ops: the computed result is the exact result for a perturbed first operand (Higham, chapters 8-10).
_BACKWARD = {
    "linalg_slogdet": _lu_backward_error, "slogdet": _lu_backward_error, "logdet": _lu_backward_error,
    "det": _lu_backward_error, "linalg_cholesky": _cholesky_backward_error, "linalg_cholesky_ex": _cholesky_backward_error,
    "linalg_solve_triangular": lambda a: math.sqrt(a.shape[-1]) * a.abs(),  # (T + E) x = b, |E| <= gamma_n |T|
}


class Roundoff(NamedTuple):
    value: Tensor  # ``fn`` in the module's own dtype (and autocast state): what the test computes
    reference: Tensor  # ``fn`` of the same parameters and inputs in float64
    bound: Tensor  # elementwise: |value - exact| <= bound (up to a probability of 3e-8 per element)
    sites: int  # how many rounding sites the bound sums over


def _op(func) -> tuple[str, bool]:
    """``(name, in_place)`` of a torch function: ``__iadd__`` and ``add_`` are ``("add", True)``."""
    name = getattr(func, "__name__", repr(func))
    core = name.strip("_")
    in_place = name.endswith("_") and not name.startswith("__")
    if name.startswith("__i") and core[1:] in ("add", "sub", "mul", "truediv", "matmul"):
        core, in_place = core[1:], True
    return core, in_place


def _signature(name: str, args: tuple, kwargs: dict, low: bool) -> bytes:
    """What determines an op's rounding: its name and the exact bits of its operands (bf16-cast under autocast)."""
    h = hashlib.sha1(name.encode())
    for a in list(args) + sorted(kwargs.items(), key=lambda kv: kv[0]):
        if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], str):
            h.update(a[0].encode())
            a = a[1]
        if isinstance(a, Tensor):
            t = a.detach()
            if low and t.is_floating_point():
                t = t.to(torch.bfloat16)
            if t.is_floating_point():
                t = t + 0.0  # -0.0 and 0.0 compute alike (x * 0 gives either sign)
            # the layout matters (a matmul of a transposed operand may sum in another order), except for a
            # convolution, which PyTorch runs in its weight's memory format whatever its input's
            h.update(repr((t.dtype, tuple(t.shape), None if name == "conv2d" else t.stride())).encode())
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(a).encode())
    return h.digest()


class _Rounding(TorchFunctionMode):
    """Runs a function twice, op for op: pass 1 in the module's dtype, pass 2 in float64 with an error term per rounding.

    Pass 1 records, for every torch function call, its name, the bits of its operands (calls with bitwise equal
    operands round the same way: they share one error term) and its random draws (replayed in pass 2).
    Pass 2 adds ``delta`` (zero, requiring grad) to the result of every op that rounds (to the operand, for the
    backward stable factorisations in ``_BACKWARD``), and keeps ``u * m``, the op's rounding coefficient.
    """

    def __init__(self, record: list | None = None, noise: list[Tensor] | None = None,
                 autocast_sites: bool = True) -> None:
        super().__init__()
        self.replay, self.record = record is not None, record if record is not None else []
        self.noise, self.autocast_sites = list(noise or []), autocast_sites
        self.step, self.shared = 0, {}
        self.sites: list[tuple[Tensor, Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name, in_place = _op(func)
        if name in _CONTROL:
            return func(*args, **kwargs)
        if not self.replay:
            low = torch.is_autocast_enabled("cpu") and name in _LOW_PRECISION
            key = None if name in _EXACT or name in _RANDOM else _signature(name, args, kwargs, low)
            src = args[0].dtype if (name in _CASTS or name in _BACKWARD) and isinstance(args[0], Tensor) else None
            if name == "copy" and len(args) > 1 and isinstance(args[1], Tensor):  # dst.copy_(src)
                src = args[1].dtype
            out = func(*args, **kwargs)
            if name in _RANDOM and isinstance(out, Tensor) and self.noise:  # the caller's draws instead
                given = self.noise.pop(0).detach().to(out)
                out = args[0].copy_(given) if in_place else given
            dtype = out.dtype if isinstance(out, Tensor) else src
            drawn = out.detach().clone() if name in _RANDOM and isinstance(out, Tensor) else None
            self.record.append((name, key, low, dtype, src, drawn))
            return out
        if self.step >= len(self.record) or self.record[self.step][0] != name:
            raise RuntimeError(f"roundoff: float64 pass diverged from the first at op {self.step} ({name})")
        _, key, low, dtype, src, drawn = self.record[self.step]
        self.step += 1
        with torch.enable_grad():  # follow errors through no_grad blocks (running statistics, data-dependent init)
            if drawn is not None:
                return args[0].copy_(drawn) if in_place else drawn.to(torch.float64)
            if name == "detach":  # the error analysis follows values, detached or not
                return args[0]
            if name in _BACKWARD:  # computed exactly for a perturbed operand: the error goes on the operand
                operand = args[0]
                delta = self._delta(key, operand, dtype, lambda: _BACKWARD[name](operand.detach()), False)
                return func(operand + delta, *args[1:], **kwargs)
            if low and not self.autocast_sites:  # a bf16 operand absorbs fp32 perturbations: no error flows in
                detached = [a.detach() if isinstance(a, Tensor) else a for a in args]
                return func(*detached, **kwargs)
            if name == "copy":  # a copy into a narrower float rounds, as a cast does
                out = func(*args, **kwargs)
                if src is None or not src.is_floating_point or torch.finfo(src).eps >= torch.finfo(dtype).eps:
                    return out
            elif name in _CASTS and dtype is not None and dtype.is_floating_point:
                # keep float64; a cast the first pass narrowed (float64 -> float32) is one rounding
                out = args[0] if src is not None and src.is_floating_point else func(*args, **kwargs).double()
                if src is None or not src.is_floating_point or torch.finfo(src).eps >= torch.finfo(dtype).eps:
                    return out
            else:
                out = func(*args, **kwargs)
            if isinstance(out, (tuple, list)) and key is not None and any(
                    isinstance(t, Tensor) and t.is_floating_point() for t in out):
                raise NotImplementedError(f"roundoff: no rounding model for torch op {name!r} (several results)")
            if not isinstance(out, Tensor) or not out.is_floating_point() or key is None:
                return out
            if dtype == torch.bfloat16 and not self.autocast_sites:
                return out
            delta = self._delta(key, out, dtype, lambda: self._coefficient(name, args, kwargs, out, low, dtype), low)
            return out.add_(delta) if in_place else out + delta

    def _delta(self, key: bytes, like: Tensor, dtype: torch.dtype, coefficient, low: bool) -> Tensor:
        """The error term of the op with signature ``key`` (shared by calls with bitwise equal operands)."""
        if key not in self.shared:
            u = 2.0**-8 if low else torch.finfo(dtype).eps / 2
            scale = (u * coefficient()).expand(like.shape)
            self.shared[key] = (torch.zeros_like(like, requires_grad=True), scale)
            self.sites.append(self.shared[key])
        delta = self.shared[key][0]
        if delta.shape != like.shape:
            raise RuntimeError("roundoff: two ops with equal operands but results of different shapes")
        return delta

    @staticmethod
    def _coefficient(name: str, args: tuple, kwargs: dict, out: Tensor, low: bool, dtype: torch.dtype) -> Tensor:
        """``m`` with the op's rounding error = ``u * sum_k c_k d_k`` (``|d_k| <= 1``), ``m^2 = sum_k c_k^2``."""
        A = lambda t: t.detach().abs() if isinstance(t, Tensor) else t  # noqa: E731
        o = out.detach()
        if name in ("linear", "conv2d", "matmul", "mm", "bmm"):
            x, w = args[0], args[1]
            bias = args[2] if len(args) > 2 and name in ("linear", "conv2d") else kwargs.get("bias")
            rest = {k: v for k, v in kwargs.items() if k != "bias"} if name != "matmul" else {}
            op = {"linear": F.linear, "conv2d": F.conv2d}.get(name)
            if op is None:  # matmul, mm, bmm: no bias
                op = lambda a, b, c, **_: torch.matmul(a, b)  # noqa: E731
            extra = args[3:] if name == "conv2d" else ()
            b_abs = None if bias is None else A(bias)
            if low:  # operands rounded to bf16 (2 roundings per product), the bias, the result rounded to bf16
                squares = op(A(x) ** 2, A(w) ** 2, None if bias is None else b_abs**2, *extra, **rest)
                return torch.sqrt(2 * squares + o**2)
            n = w[0].numel() if name in ("linear", "conv2d") else x.shape[-1]
            absolute = op(A(x), A(w), b_abs, *extra, **rest)
            return math.sqrt(n + 1) * absolute
        if name in ("var", "std"):  # sum of n squares of (x - mean): relative error sqrt(n + 3) u
            x = args[0]
            n = x.numel() // max(o.numel(), 1)
            return math.sqrt(n + 3) * (o if name == "var" else o / 2 + o).abs()
        if name in ("sum", "mean"):
            x = args[0]
            n = max(x.numel() // max(o.numel(), 1) - 1, 1)
            total = A(x).sum(*args[1:], **kwargs) if name == "sum" else A(x).mean(*args[1:], **kwargs)
            return math.sqrt(n + 1) * total.expand(o.shape)
        if name == "linalg_inv":  # LU-based inverse: |X - A^-1| <~ c_n u |X| |A| |X|
            X = o.abs()
            return math.sqrt(3 * X.shape[-1]) * (X @ A(args[0]) @ X)
        if name == "dropout":  # in evaluation mode the identity (exact); in training random, which has no model here
            training = args[2] if len(args) > 2 else kwargs.get("train", kwargs.get("training", True))
            if not training:
                return torch.zeros_like(o)
        if name == "batch_norm":
            p = dict(zip(("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"), args))
            p = {"weight": None, "bias": None, "training": False, "eps": 1e-5, **p, **kwargs}
            x = A(p["input"])
            dims, view = [0] + list(range(2, x.dim())), [1, -1] + [1] * (x.dim() - 2)
            if p["training"]:  # batch statistics: sums of n terms each
                mean = p["input"].detach().mean(dims)
                var, n = p["input"].detach().var(dims, unbiased=False), x.numel() // x.shape[1]
                spread = x + mean.abs().view(view) + x.mean(dims).view(view)
            else:
                var, n = p["running_var"].detach(), 1
                spread = x + A(p["running_mean"]).view(view)
            gain = (1 if p["weight"] is None else A(p["weight"])) / torch.sqrt(var + p["eps"])
            # (x - mean) / sqrt(var + eps) * w + b: six roundings, and the n-term sums of the batch statistics
            return math.sqrt(n + 6) * (spread * gain.view(view) + (0 if p["bias"] is None else A(p["bias"]).view(view)))
        if name in _ADD or name in _MUL:
            a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
            if name in ("rsub", "radd", "rmul", "rtruediv", "rdiv"):
                a, b = b, a
            value = lambda t: t.detach().to(o.dtype) if isinstance(t, Tensor) else torch.tensor(float(t), dtype=o.dtype)  # noqa: E731
            va, vb = value(a), value(b)
            # Exact cases: x + 0, x - x (Sterbenz), x * 2^k, 0 / y, x / 2^k (no overflow or underflow here)
            if name in _ADD:
                exact = (va == 0) | (vb == 0) | (o == 0)
            else:
                pow2 = lambda v: (v == 0) | (torch.frexp(v)[0].abs() == 0.5)  # noqa: E731
                exact = (va == 0) | pow2(vb) | (pow2(va) if name in ("mul", "rmul") else False)
            m = torch.where(exact, 0.0, o.abs())
            for s in (a, b):  # a Python number is rounded to the tensor's dtype first
                if isinstance(s, (int, float)) and float(torch.tensor(float(s), dtype=dtype)) != float(s):
                    m = torch.sqrt(m**2 + (o.abs() if name in _MUL else abs(float(s)) * abs(kwargs.get("alpha", 1))) ** 2)
            return m
        if name in _LIBRARY:
            return 2 * LIBRARY_ULPS * o.abs()
        if name == "lerp":  # a + w (b - a): three roundings
            a, b, w = args[0], args[1], args[2] if len(args) > 2 else kwargs["weight"]
            return math.sqrt(3) * (A(a) + A(w) * (A(a) + A(b)))
        if name in _CASTS or name == "copy":
            return o.abs()
        if name in _CONSTANT:  # a Python number rounded to the dtype, where it is not representable
            return torch.where(o.to(dtype).to(o.dtype) == o, 0.0, o.abs())
        raise NotImplementedError(f"roundoff: no rounding model for torch op {name!r}; add one to tests/conftest.py")


def roundoff(fn: Callable[..., Tensor], module: nn.Module, *inputs: Tensor, lam: float = LAMBDA,
             noise: list[Tensor] | None = None, autocast_sites: bool = True) -> Roundoff:
    """``fn(module, *inputs)`` computed as the test computes it, in float64, and a bound on its rounding error.

    The bound is a first-order rounding error analysis of ``fn`` done by the computer: every torch op
    ``k`` that rounds commits an error ``u_k * sum_j c_kj d_kj`` with ``|d_kj| <= 1`` (Higham, *Accuracy and
    Stability of Numerical Algorithms*, 2nd ed., 2002, section 3.1), and the error in output ``i`` is, to
    first order in u,

        err_i = sum_k g_ik * u_k * sum_j c_kj d_kj,    g_ik = d output_i / d (result of op k),

    with ``g`` from autograd through a float64 copy of ``module`` (the amplification of that error by
    everything after it: the later layers, the inverse). Modelling the ``d_kj`` as independent and mean zero,
    Hoeffding's inequality (Higham & Mary, "A new approach to probabilistic rounding error analysis",
    SIAM J. Sci. Comput. 41(5), 2019) gives, with probability at least ``1 - 2 exp(-lam^2 / 2)``,

        |err_i| <= bound_i = lam * sqrt( sum_k (g_ik * u_k * m_k)^2 ),    m_k^2 = sum_j c_kj^2,

    where ``u_k = 2**-24`` in float32 (``2**-53`` in float64, ``2**-8`` for a matmul or convolution under
    bf16 autocast) and ``m_k`` per op (all elementwise, on the float64 values):

    * ``Linear`` / ``Conv2d`` / ``matmul`` with fan-in ``n`` (``in_features``, ``in_channels * kh * kw``):
      ``m = sqrt(n + 1) * (|W| |h| + |b|)``: ``n`` products and ``n`` additions, each partial sum at most
      ``|W| |h| + |b|``. This holds for every summation order, blocking and thread count, which is why the
      bound is the same on every CPU. Under bf16 autocast: ``m^2 = 2 |W|^2 |h|^2 + |b|^2 + |out|^2``;
    * a sum or mean of ``n`` terms: ``sqrt(n) * sum |x|``; ``batch_norm``: ``sqrt(n + 6) * (|x| + |mean|) |w| / std + |b|``
      (``n`` = the batch's count per channel in training mode, 1 in eval mode); ``linalg.inv``: ``sqrt(3 D) |X| |A| |X|``;
    * ``+ - * /``: ``|result|`` (IEEE: correctly rounded), 0 where exact (adding 0, ``x - x``, scaling by a power
      of 2), plus ``|operand|`` for a Python number not representable in the dtype;
    * ``exp, log, tanh, sigmoid, softplus, ...``: ``2 * LIBRARY_ULPS * |result|`` (within 4 ulps);
    * a cast to a narrower float, a constant from a Python number: ``|result|``; data movement, ``relu``,
      ``max``, ``floor``: exact;
    * the backward stable factorisations (``slogdet``, ``cholesky``, ``solve_triangular``) get their error on
      the operand instead: ``(A + E)`` with ``m = sqrt(D) P |L| |U|`` (LU), ``sqrt(D + 1) |L| |L^T|``
      (Cholesky), ``sqrt(D) |T|`` (triangular solve).

    The two passes run op for op: ops whose operands are bitwise equal in the test's own dtype share one error
    term, as they share the same rounding (a coupling's inverse recomputes its net on the conditioning half it
    left unchanged, so the net's rounding errors cancel, as they do in the computation). That takes PyTorch's
    CPU kernels to be deterministic: equal operands, shapes, layouts and thread count give equal bits (oneDNN
    and MKL are, on the 64-byte aligned buffers PyTorch allocates). Without it the multi-scale layer's bound
    would be 3x looser and would miss some inverses with a parameter off by 1e-3. Random draws of the
    first pass are replayed in the second, so both see the same noise; ``noise`` (a list of tensors) replaces
    them, in order, in both. ``lam = 6``: with the rounding errors uniform in ``[-u, u]`` that is
    ``6 sqrt(3) = 10.4`` standard deviations.

    Under bf16 autocast, ``autocast_sites=False`` is for comparing two computations that share the nets' bf16
    arithmetic bit for bit (a coupling's inverse recomputing its net from the same conditioning half, autograd
    rerunning the forward pass): it leaves out every bf16 rounding, and lets no fp32 error into a matmul or
    convolution, since rounding its operands to bf16 absorbs a perturbation of a few fp32 ulps. That fails only
    when the perturbation crosses a bf16 rounding boundary: with probability about ``2**-16`` per operand value.

    Returns ``Roundoff(value, reference, bound, sites)``; ``fn`` gets a copy of ``module`` in each pass (in
    float64 for the second), so it may change it, and must return one tensor.

    >>> layer = nn.Linear(100, 1).requires_grad_(False)
    >>> r = roundoff(lambda m, v: m(v), layer, torch.randn(3, 100))
    >>> bool(((r.value.double() - r.reference).abs() <= r.bound).all()), r.sites
    (True, 1)
    """
    first = copy.deepcopy(module)
    recorder = _Rounding(noise=noise)
    with recorder:
        value = fn(first, *inputs)
    second = copy.deepcopy(module).double().requires_grad_(False)  # errors, not parameters, get gradients
    analysis = _Rounding(recorder.record, autocast_sites=autocast_sites)
    inputs64 = [t.double() if isinstance(t, Tensor) and t.is_floating_point() else t for t in inputs]
    with torch.autocast("cpu", enabled=False), analysis:
        reference = fn(second, *inputs64)
    if analysis.step != len(recorder.record):
        raise RuntimeError("roundoff: the float64 pass ran fewer ops than the first")
    flat = reference.reshape(-1)
    squares = torch.zeros_like(flat, dtype=torch.float64)
    deltas = [d for d, _ in analysis.sites]
    if deltas and flat.requires_grad:  # g_ik for all outputs i at once: one batched backward pass
        grads = torch.autograd.grad(flat, deltas, torch.eye(flat.numel(), dtype=flat.dtype), retain_graph=True,
                                    allow_unused=True, is_grads_batched=True)
        for g, (_, scale) in zip(grads, analysis.sites):
            if g is not None:
                squares += (g * scale).square().reshape(flat.numel(), -1).sum(1)
    bound = lam * squares.sqrt().reshape(reference.shape)
    return Roundoff(value.detach(), reference.detach(), bound, len(deltas))


def assert_close_to_roundoff(actual: Tensor, expected: Tensor, bound: Tensor, what: str = "value") -> None:
    """Assert ``|actual - expected| <= bound`` elementwise (``expected`` exact, ``bound`` from `roundoff`)."""
    err = (actual.detach().double() - expected.detach().double()).abs()
    bound = bound.to(err).expand_as(err)
    bad = err > bound
    if bad.any():
        ratio = (err / bound).nan_to_num(posinf=float("inf")).max()
        i = int(torch.argmax(torch.where(bad, err - bound, -1.0).flatten()))
        raise AssertionError(f"{what}: {int(bad.sum())} of {err.numel()} elements beyond their roundoff bound, "
                             f"worst {err.flatten()[i]:.3g} > {bound.flatten()[i]:.3g} (up to {ratio:.3g}x the bound)")


def assert_every_wrong_inverse_is_caught(flow: nn.Module, x: Tensor, shift: float = 1e-3) -> list[str]:
    """Guard a derived round-trip tolerance: an inverse with any one parameter tensor off by ``shift`` fails it.

    The bound is the correct flow's round trip's (`roundoff`); returns the names of the parameters tried.
    """
    z, _ = flow(x)
    bound = roundoff(lambda m, v: m.inverse(m(v)[0])[0], flow, x).bound
    names = [n for n, _ in flow.named_parameters()]
    assert names, "a flow without parameters cannot have a wrong inverse"
    for name in names:
        wrong = copy.deepcopy(flow)
        with torch.no_grad():
            wrong.get_parameter(name).add_(shift)
        with pytest.raises(AssertionError, match="beyond their roundoff bound"):
            assert_close_to_roundoff(wrong.inverse(z)[0], x, bound, name)
    return names


@contextmanager
def serve_on_localhost(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) answering with ``handler``, in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def assert_same_function(fn_a: Callable[..., Tensor], fn_b: Callable[..., Tensor], module: nn.Module,
                         *inputs: Tensor, what: str = "value") -> None:
    """Two ways of computing one function (``fn(module, *inputs)``) agree to within the sum of their `roundoff` bounds."""
    a, b = roundoff(fn_a, module, *inputs), roundoff(fn_b, module, *inputs)
    assert_close_to_roundoff(a.value, b.value, a.bound + b.bound, what)
