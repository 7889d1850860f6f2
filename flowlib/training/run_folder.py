"""The run folder: writable before any compute is spent, held by one trainer at a time, never overwritten.

* `check_writable` tries the folder and the free space before the first step.
* `RunLock` keeps two trainers out of one run folder: an ``fcntl.flock`` on
  ``.lock`` that the kernel drops when its process dies, so a lock left by a
  killed trainer is taken over (saying so) and two racing trainers never both
  get it.
* `move_run_aside` moves an earlier run's files into ``replaced-<time>/``
  instead of overwriting them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from .checkpoint import CheckpointError

__all__ = ["check_writable", "RunLock", "move_run_aside"]


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
    """An exclusive lock on a run folder: ``fcntl.flock`` on ``.lock``, held open while the run lasts.

    The file holds the owner's host and pid, for the message a second trainer
    on the same folder gets (a `CheckpointError` naming the owner). The
    kernel drops the lock when its process dies (kill -9 included), so a
    lock file left behind is simply taken over, saying so on stderr; two
    processes that find it never both get it.

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
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self.fd is not None

    def _content(self) -> str:
        """What ``.lock`` holds (``"host pid"``), or ``""`` when it cannot be read."""
        try:
            return self.path.read_text(errors="replace")
        except OSError:
            return ""

    def _open_locked(self) -> int | None:
        """A descriptor of ``.lock`` locked by this process, or None when another process holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # its owner released it (and removed the file) as we locked it: lock the new one

    def acquire(self) -> None:
        """Take the lock, or raise `CheckpointError` naming the trainer that holds it."""
        try:
            fd = self._open_locked()
        except OSError as e:
            raise CheckpointError(f"cannot create the lock file {self.path}: "
                                  f"{os.strerror(e.errno or errno.EIO)}") from e
        if fd is None:
            who = _owner_text(self._content())
            raise CheckpointError(
                f"run folder {self.path.parent} is in use by another trainer ({who}); "
                f"wait for it to finish (or stop it), or choose another folder (--out)")
        left = os.read(fd, 200).decode(errors="replace")
        if left.strip():  # a released lock's file is removed: this one's owner died holding it
            print(f"Taking over the lock {self.path} left by a trainer that no longer runs "
                  f"({_owner_text(left)}).", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Remove ``.lock`` and drop the lock (in that order, so nobody locks the removed file unnoticed)."""
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _owner_text(content: str) -> str:
    """``"pid 12 on host"`` from a lock file's ``"host 12"``, or ``"unknown owner"``."""
    parts = content.split()
    return f"pid {parts[1]} on {parts[0]}" if len(parts) == 2 else "unknown owner"


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
