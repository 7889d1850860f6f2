"""Checkpoints that are never lost, never mixed up and safe to load.

* `atomic_save` writes to a temporary file unique to the writer, then
  renames it over the target, so a reader sees the old file or the new one,
  never half of one; a failure (disk full, no permission) names the path and
  the cause and removes the temporary file.
* `check_writable` tries the folder and the free space before any compute
  is spent.
* `RunLock` keeps two trainers out of one run folder.
* `load_checkpoint` reads with ``torch.load(weights_only=True)``: tensors and
  plain containers only, no pickled code.
* `rng_state` / `set_rng_state`: the random state that makes a resumed run
  draw the same dequantization noise as an uninterrupted one.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import TrainConfig, build_model, config_from_dict
from ..files import write_atomically

__all__ = ["CheckpointError", "atomic_save", "atomic_write_text", "check_writable", "state_bytes", "RunLock",
           "move_run_aside", "check_best", "load_checkpoint", "load_model", "rng_state", "set_rng_state"]


class CheckpointError(RuntimeError):
    """A checkpoint or results file could not be written or read; the message names the path and the cause."""


def _write(path: Path, write: Any) -> None:
    """`flowlib.files.write_atomically`, with a failure named as a `CheckpointError` (path and cause)."""
    try:
        write_atomically(path, write)
    except (OSError, RuntimeError) as e:
        cause = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e).splitlines()[0]
        if isinstance(e, RuntimeError) and path.parent.exists():
            free = shutil.disk_usage(path.parent).free
            cause += f" (free space in {path.parent}: {free / 2**20:.0f} MiB)"
        raise CheckpointError(f"could not write {path}: {cause}") from e


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (unique temporary file, then rename).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> atomic_save({"x": torch.ones(2)}, folder / "a.pt")
    >>> sorted(p.name for p in folder.iterdir()), load_checkpoint(folder / "a.pt")["x"]
    (['a.pt'], tensor([1., 1.]))
    """
    _write(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` to ``path`` atomically."""
    _write(Path(path), lambda f: f.write(text.encode()))


def state_bytes(*modules_or_optimizers: nn.Module | torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the state dicts (what a checkpoint of them takes on disk, roughly)."""
    total = 0

    def visit(v: Any) -> None:
        nonlocal total
        if isinstance(v, Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)

    for m in modules_or_optimizers:
        visit(m.state_dict())
    return total


def check_writable(folder: str | Path, needed_bytes: int = 0) -> None:
    """Raise `CheckpointError` now, before training, if ``folder`` cannot take files of ``needed_bytes``.

    Creates the folder, writes and removes a probe file, and compares the free
    space with ``needed_bytes`` (a checkpoint is written next to the previous
    one before the rename, so twice its size can be needed).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"ok")
    except OSError as e:
        raise CheckpointError(f"cannot write to the run folder {folder}: {os.strerror(e.errno or errno.EIO)}") from e
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise CheckpointError(f"not enough free space in {folder}: checkpoints need about "
                              f"{needed_bytes / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free")


class RunLock:
    """An exclusive lock on a run folder (``.lock`` holding the owner's host and pid).

    A second trainer on the same folder gets a `CheckpointError` naming the
    owner; a lock left by a process that no longer runs (kill -9) is taken over.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with RunLock(folder):
    ...     RunLock(folder).acquire()
    Traceback (most recent call last):
    ...
    flowlib.training.checkpoint.CheckpointError: run folder ... is in use by another trainer (pid ...); ...
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / ".lock"
        self.held = False

    def _owner(self) -> tuple[str, int] | None:
        try:
            host, pid = self.path.read_text().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner[0] == socket.gethostname() and not _alive(owner[1]):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                who = f"pid {owner[1]} on {owner[0]}" if owner else "unknown owner"
                raise CheckpointError(
                    f"run folder {self.path.parent} is in use by another trainer ({who}); "
                    f"wait for it, or choose another folder (--out). If no trainer runs, delete {self.path}.")
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def move_run_aside(out: Path, names: tuple[str, ...]) -> Path | None:
    """Move an earlier run's files in ``out`` into ``out/replaced-<time>/`` (never overwrite a run); say so.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()); _ = (folder / "best.pt").write_text("x")
    >>> aside = move_run_aside(folder, ("best.pt", "results.json"))  # says so on stderr
    >>> sorted(p.name for p in aside.iterdir()), (folder / "best.pt").exists()
    (['best.pt'], False)
    """
    present = [name for name in names if (out / name).exists()]
    if not present:
        return None
    stamp, n = time.strftime("replaced-%Y%m%d-%H%M%S"), 1
    aside = out / stamp
    while aside.exists():
        n += 1
        aside = out / f"{stamp}-{n}"
    aside.mkdir()
    for name in present:
        (out / name).rename(aside / name)
    print(f"Starting afresh: the earlier run's files in {out} were moved to {aside.name}/ "
          f"(pass resume=True / --resume to continue a run instead).", file=sys.stderr)
    return aside


def check_best(path: Path, run_id: str) -> None:
    """Raise `CheckpointError` unless ``path`` (``best.pt``) exists and belongs to run ``run_id``."""
    best = load_checkpoint(path) if path.exists() else None
    if best is None or best.get("run_id") != run_id:
        why = "is missing" if best is None else "belongs to another run"
        raise CheckpointError(f"{path} {why}, so this run's best model is lost; "
                              f"start the run afresh (run_or_load does so)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a missing or unreadable file is a `CheckpointError`."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"no checkpoint at {path}") from e
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              f"it is damaged or not a flowlib checkpoint") from e


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """Rebuild a model from ``best.pt`` or ``checkpoint.pt``; returns ``(model in eval mode, config)``."""
    ckpt = load_checkpoint(path, map_location)
    config = config_from_dict(ckpt["config"])
    model = build_model(config).to(map_location)
    model.load_state_dict(ckpt["model"])
    return model.eval(), config


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The CPU random state, and the device's when it is a GPU."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
