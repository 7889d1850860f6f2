"""How the two commands (``python -m flowlib.training``, ``python -m flowlib.training.rescore``) report a failure:
one line on stderr, whatever the exception's message looked like."""

from __future__ import annotations

import sys

__all__ = ["print_error"]


def print_error(e: BaseException) -> None:
    """Print ``e`` as one line on stderr: ``error: <its message, lines joined>`` (its type when it has none).

    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     print_error(FileNotFoundError("MNIST files not found in /data:\\n  /data/a.gz"))
    >>> err.getvalue()
    'error: MNIST files not found in /data: /data/a.gz\\n'
    """
    message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    print(f"error: {message or type(e).__name__}", file=sys.stderr)
