"""Where flowlib writes, and how: the workspace folder and atomic file writes.

One place decides where runs and figures go (`workspace`), and one function
writes every file that must never be seen half written (`write_atomically`:
checkpoints, results, downloaded data).

The workspace is, in this order: ``$FLOWLIB_HOME`` when set; else the book's
checkout that the current folder lies in (the nearest folder upwards holding
both ``run.py`` and ``flowlib/``, so a chapter run from ``chapters/`` writes
into the checkout); else the current folder. Never the installed package's
own folder: an installed flowlib writes where its user works.

>>> import os, tempfile
>>> from unittest import mock
>>> with mock.patch.dict(os.environ, {"FLOWLIB_HOME": "/data/flows"}):
...     workspace().as_posix(), runs_dir().as_posix()
('/data/flows', '/data/flows/runs')
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["workspace", "runs_dir", "figures_dir", "shown_path", "write_atomically"]


def _checkout_above(folder: Path) -> Path | None:
    """The nearest folder at or above ``folder`` that holds the book (``run.py`` and ``flowlib/``)."""
    for candidate in (folder, *folder.parents):
        if (candidate / "run.py").is_file() and (candidate / "flowlib").is_dir():
            return candidate
    return None


def workspace() -> Path:
    """The folder that holds ``runs/`` and ``figures/`` (see the module docstring for the order)."""
    env = os.environ.get("FLOWLIB_HOME")
    if env:
        return Path(env).expanduser()
    here = Path.cwd().resolve()
    return _checkout_above(here) or here


def runs_dir() -> Path:
    """``<workspace>/runs``: the trainer's default run folders live here."""
    return workspace() / "runs"


def figures_dir() -> Path:
    """``<workspace>/figures``: where the book's figures go when the book is rebuilt."""
    return workspace() / "figures"


def shown_path(path: str | Path) -> str:
    """``path`` relative to the workspace when it lies inside it, else as given (for messages and results files).

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"FLOWLIB_HOME": "/data/flows"}):
    ...     shown_path("/data/flows/runs/nice"), shown_path("/elsewhere/run")
    ('runs/nice', '/elsewhere/run')
    """
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(workspace().resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def write_atomically(dest: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create ``dest`` by calling ``write`` on a temporary file, then renaming it into place.

    ``dest`` is either absent or complete, never half written: the temporary
    file is unique to the writer, and ``os.replace`` is atomic on one file
    system. Its missing folders are created now and removed again (with the
    temporary file) if anything fails, so a failure leaves nothing behind.

    >>> with tempfile.TemporaryDirectory() as d:
    ...     dest = Path(d, "new", "note.txt")
    ...     write_atomically(dest, lambda f: f.write(b"flow"))
    ...     [p.name for p in dest.parent.iterdir()], dest.read_bytes()
    (['note.txt'], b'flow')
    """
    created = []  # dest's missing folders, deepest first
    folder = dest.parent
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, dest)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for d in created:  # remove them while empty; stop at the first that is not
            try:
                d.rmdir()
            except OSError:
                break
        raise
