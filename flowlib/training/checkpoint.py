"""Checkpoints that are never lost, never mixed up and safe to load.

* `atomic_save` writes to a temporary file unique to the writer, then
  renames it over the target, so a reader sees the old file or the new one,
  never half of one; a failure (disk full, no permission) names the path and
  the cause and removes the temporary file.
* Every checkpoint carries a SHA-256 of its contents (key ``"sha256"``:
  type, dtype, shape and bytes of every tensor, and every key and plain
  value), so damaged bytes are found when it is read, never loaded.
* The run folder itself (free space, lock, moving an old run aside) is
  `flowlib.training.run_folder`'s.
* `load_checkpoint` reads with ``torch.load(weights_only=True)``: tensors and
  plain containers only, no pickled code; then it checks the SHA-256.
  `load_results` reads ``results.json``. Each failure is a `CheckpointError`
  naming the file.
* `rng_state` / `set_rng_state`: the random state that makes a resumed run
  draw the same dequantization noise as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import TrainConfig, TrainResult, build_model, config_from_dict
from ..files import write_atomically

__all__ = ["CheckpointError", "atomic_save", "atomic_write_text", "state_bytes",
           "check_best", "load_checkpoint", "load_config", "load_model", "model_from_checkpoint",
           "load_results", "rng_state", "set_rng_state"]


class CheckpointError(RuntimeError):
    """A checkpoint or results file could not be written or read; the message names the path and the cause."""


def _cause(e: BaseException) -> str:
    """``"Type: first line of the message"`` (200 characters at most), or the type alone when it says nothing.

    >>> _cause(EOFError()), _cause(ValueError("bad\\nmore"))
    ('EOFError', 'ValueError: bad')
    """
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _write(path: Path, write: Any) -> None:
    """`flowlib.files.write_atomically`, with a failure named as a `CheckpointError` (path and cause)."""
    try:
        write_atomically(path, write)
    except (OSError, RuntimeError) as e:
        cause = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else _cause(e)
        if isinstance(e, RuntimeError) and path.parent.exists():
            free = shutil.disk_usage(path.parent).free
            cause += f" (free space in {path.parent}: {free / 2**20:.0f} MiB)"
        raise CheckpointError(f"could not write {path}: {cause}") from e


_DIGEST_KEY = "sha256"


def _hash(h: Any, v: Any) -> None:
    """Add ``v`` to the hash ``h``: a type tag and the contents (a tensor's dtype, shape and bytes).

    Lengths are hashed before contents, so two different objects never hash the same bytes.
    """
    if isinstance(v, Tensor):
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{v.dtype}{tuple(v.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy())
    elif isinstance(v, dict):
        h.update(f"D{len(v)}:".encode())
        for key, value in v.items():
            _hash(h, key)
            _hash(h, value)
    elif isinstance(v, (list, tuple)):
        h.update(f"{'L' if isinstance(v, list) else 'U'}{len(v)}:".encode())
        for item in v:
            _hash(h, item)
    elif isinstance(v, (str, bytes)):
        raw = v.encode() if isinstance(v, str) else v
        h.update(f"{type(v).__name__}{len(raw)}:".encode() + raw)
    elif isinstance(v, float):
        h.update(f"f{v.hex()};".encode())
    elif v is None or isinstance(v, (bool, int, torch.dtype, torch.device)):
        h.update(f"{type(v).__name__}{v};".encode())
    else:
        raise TypeError(f"a checkpoint holds tensors and plain values only, not {type(v).__name__}")


def _digest(obj: dict[str, Any]) -> str:
    """The SHA-256 (hex) of a checkpoint's contents, wherever its tensors lie."""
    h = hashlib.sha256()
    _hash(h, obj)
    return h.hexdigest()


def atomic_save(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (unique temporary file, then rename), with a checksum.

    ``obj`` is saved with one more key, ``"sha256"``: the SHA-256 of its
    contents, which `load_checkpoint` checks. ``torch.load`` reads the file
    as any other (the extra key aside).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> atomic_save({"x": torch.ones(2)}, folder / "a.pt")
    >>> sorted(p.name for p in folder.iterdir()), load_checkpoint(folder / "a.pt")["x"]
    (['a.pt'], tensor([1., 1.]))
    """
    if not isinstance(obj, dict) or _DIGEST_KEY in obj:
        raise TypeError(f"a checkpoint is a dict without a {_DIGEST_KEY!r} key, got {type(obj).__name__}")
    stored = {**obj, _DIGEST_KEY: _digest(obj)}
    _write(Path(path), lambda f: torch.save(stored, f))


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


def check_best(path: Path, run_id: str) -> None:
    """Raise `CheckpointError` unless ``path`` (``best.pt``) exists and belongs to run ``run_id``."""
    best = load_checkpoint(path) if path.exists() else None
    if best is None or best.get("run_id") != run_id:
        why = "is missing" if best is None else "belongs to another run"
        raise CheckpointError(f"{path} {why}, so this run's best model is lost; "
                              f"start the run afresh (run_or_load does so)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `atomic_save` and check its SHA-256; returns it without the ``"sha256"`` key.

    Reads with ``weights_only=True``. A missing, unreadable or damaged file
    is a `CheckpointError` naming it, and so is a file without a checksum:
    checkpoints written before flowlib checksummed them are refused, not
    trusted (train the run again; `flowlib.training.runs.run_or_load` does so).
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"no checkpoint at {path}") from e
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read {path} ({_cause(e)}); it is damaged or not a flowlib checkpoint") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a flowlib checkpoint")
    stored = ckpt.pop(_DIGEST_KEY, None)
    if stored is None:
        raise CheckpointError(f"{path} has no checksum (written by an older flowlib), so it cannot be verified; "
                              f"train the run again")
    try:
        ok = _digest(ckpt) == stored
    except TypeError as e:
        raise CheckpointError(f"{path} does not match its checksum ({e}): the file is damaged") from e
    if not ok:
        raise CheckpointError(f"{path} does not match its checksum: the file is damaged; train the run again "
                              f"or restore the file from a copy")
    return ckpt


def load_config(saved: Any, path: str | Path) -> TrainConfig:
    """The `TrainConfig` of a ``"config"`` entry read from ``path``; an invalid one is a `CheckpointError`."""
    try:
        return config_from_dict(saved)
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} holds no valid trainer config ({_cause(e)}); "
                              f"it is damaged or not a flowlib run file") from e


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """Rebuild a model from ``best.pt`` or ``checkpoint.pt``; returns ``(model in eval mode, config)``.

    Weights that do not fit the model its config describes are a `CheckpointError` naming the file.
    """
    return model_from_checkpoint(load_checkpoint(path, map_location), path, map_location)


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path,
                          map_location: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """`load_model` for a checkpoint already read (by `load_checkpoint`) from ``path``."""
    config = load_config(ckpt.get("config"), path)
    try:
        model = build_model(config).to(map_location)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the weights in {path} do not fit the {config.model} model its config describes "
                              f"({_cause(e)}); the file is damaged or was written by another flowlib") from e
    return model.eval(), config


#: The fields of results.json that `load_results` checks, and their JSON types.
_RESULT_TYPES = {"config": (dict,), "run_id": (str,), "epochs_done": (int,), "test_bpd": (int, float, type(None))}


def load_results(path: str | Path) -> TrainResult:
    """Read a run's ``results.json``; a missing, invalid or incomplete file is a `CheckpointError` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"no results file at {path}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path} ({_cause(e)}); it is damaged") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not a run's results (an object)")
    wrong = [k for k, types in _RESULT_TYPES.items()
             if isinstance(data.get(k), bool) or not isinstance(data.get(k, ...), types)]
    if wrong:
        raise CheckpointError(f"{path} lacks valid fields {wrong}; it is damaged or not a flowlib results file")
    try:
        return TrainResult.from_dict(data)
    except TypeError as e:
        raise CheckpointError(f"{path} is not a complete run result ({_cause(e)})") from e


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
