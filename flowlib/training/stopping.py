"""Stopping a long run between two steps: Ctrl-C and SIGTERM become a flag.

A ``KeyboardInterrupt`` lands wherever the program happens to be: halfway
through a forward pass (after the dequantization noise was drawn and the
batch-norm statistics moved), or right after ``optimizer.step()`` before the
step was counted. A checkpoint taken there cannot be resumed exactly. So
while a run trains, `stop_signals_to` replaces the handlers of SIGINT and
SIGTERM by a `StopFlag` that only records the signal; the training loop reads
it between steps, and the evaluations (validation, the final test) between
batches, and stops there, where the state is whole. A second signal raises
``KeyboardInterrupt`` at once, for a user who wants out now.

>>> import os, signal
>>> flag = StopFlag(quiet=True)
>>> with stop_signals_to(flag):
...     os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C
...     flag.signal                          # recorded, nothing raised
'SIGINT'
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["StopFlag", "stop_signals_to"]


class StopFlag:
    """Records the first SIGINT/SIGTERM (``.signal``); a second one raises ``KeyboardInterrupt``."""

    def __init__(self, quiet: bool = False) -> None:
        self.signal: str | None = None
        self.quiet = quiet

    def __call__(self, signum: int, frame: object) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt("second interrupt: stopped without saving")
        self.signal = signal.Signals(signum).name
        if not self.quiet:
            print(f"\n{self.signal}: stopping after this step or evaluation batch, with a checkpoint to resume "
                  f"from (press Ctrl-C again to stop at once, without saving) ...", file=sys.stderr, flush=True)


@contextmanager
def stop_signals_to(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGINT and SIGTERM to ``flag`` inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be set in the main thread
        return
    previous = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
