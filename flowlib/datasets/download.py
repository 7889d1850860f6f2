"""Downloading files safely: capped, deadlined, verified in memory, then placed atomically.

:func:`fetch_missing` is how :mod:`flowlib.datasets.mnist` gets missing MNIST files;
the pieces it is built from are usable on their own.

Size cap
    At most ``_MAX_DOWNLOAD_BYTES`` (16 MiB; the largest MNIST archive is
    9.9 MB) are held per file: a larger ``Content-Length`` is refused before
    any byte is read, and a body that grows past the cap is cut off there.

Deadline
    Each network read (and the connection) waits at most ``_TIMEOUT_S``
    (10 s), and one file's whole download at most ``_DEADLINE_S`` (300 s),
    so a server trickling bytes is cut off at the latest one read timeout
    after the deadline.

Mirrors
    :data:`MNIST_MIRRORS` are tried in order; the first whose bytes pass the
    caller's check wins. When none does, the error names every mirror's
    failure.

Verified, then placed atomically
    Bytes are checked in memory before anything is written. A verified file
    is written to a temporary ``.part`` file and renamed into place, so a
    file at its final path is always complete. Its folders are created only
    then, and removed again if the write fails: a failed download leaves
    no empty folder behind (one that would shadow a good data folder).

Missing files
    When files are still missing, :class:`FileNotFoundError` lists the full
    paths where they are expected, how to provide them by hand, and why each
    mirror failed (or that downloading was disabled).

Gzip bombs
    :func:`gunzip` stops once the output passes a given size, so an archive
    that inflates to gigabytes is cut off before it fills the memory.
"""

from __future__ import annotations

import functools
import gzip
import http.client
import io
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from ..files import write_atomically

__all__ = ["MNIST_MIRRORS", "download_verified", "fetch", "fetch_missing", "gunzip"]

#: Base URLs tried in order when a file is missing.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

#: Seconds one network read (and the connection) may take.
_TIMEOUT_S = 10.0
#: Seconds one file's whole download may take, however the bytes trickle in.
_DEADLINE_S = 300.0
#: Largest download accepted (the largest archive, train images, is 9,912,422 bytes).
_MAX_DOWNLOAD_BYTES = 16 * 2**20
_CHUNK = 1 << 16


def gunzip(data: bytes | BinaryIO, limit: int) -> bytes:
    """Decompress gzip ``data`` (bytes or a binary file), holding at most ``limit + 1`` bytes.

    Raises ``ValueError`` as soon as the output passes ``limit`` bytes (a gzip
    bomb stops there), and the gzip module's errors (``OSError``,
    ``EOFError``, ``zlib.error``) on a corrupt or truncated stream.

    >>> gunzip(gzip.compress(b"flow"), limit=4)
    b'flow'
    >>> try:
    ...     gunzip(gzip.compress(bytes(10**6)), limit=1000)
    ... except ValueError as e:
    ...     print(e)
    it decompresses to more than 1,000 bytes (a gzip bomb?); decompression was stopped there
    """
    out = bytearray()
    with gzip.GzipFile(fileobj=io.BytesIO(data) if isinstance(data, bytes) else data, mode="rb") as g:
        while chunk := g.read(min(_CHUNK, limit + 1 - len(out))):
            out += chunk
            if len(out) > limit:
                raise ValueError(
                    f"it decompresses to more than {limit:,} bytes (a gzip bomb?); "
                    f"decompression was stopped there"
                )
    return bytes(out)


def fetch(url: str) -> bytes:
    """The bytes at ``url``, streamed with a size cap and a total deadline.

    Raises ``ValueError`` past ``_MAX_DOWNLOAD_BYTES`` (announced by
    ``Content-Length`` or counted while reading), ``TimeoutError`` once
    ``_DEADLINE_S`` seconds have passed, and ``urllib``'s errors
    (``OSError``, ``http.client.HTTPException``) when the transfer fails.

    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d, "digits.bin")
    ...     _ = path.write_bytes(b"0123456789")
    ...     fetch(path.as_uri())
    b'0123456789'
    """
    deadline = time.monotonic() + _DEADLINE_S
    limit = _MAX_DOWNLOAD_BYTES
    with urllib.request.urlopen(url, timeout=min(_TIMEOUT_S, _DEADLINE_S)) as r:
        declared = (r.headers.get("Content-Length") or "").strip() if r.headers else ""
        if declared.isdigit() and int(declared) > limit:
            raise ValueError(f"the server announces {int(declared):,} bytes, more than the {limit:,} accepted")
        read = getattr(r, "read1", r.read)  # read1: whatever has arrived, without waiting for a full chunk
        body = bytearray()
        while chunk := read(min(_CHUNK, limit + 1 - len(body))):
            body += chunk
            if len(body) > limit:
                raise ValueError(f"download passed {limit:,} bytes, more than any MNIST archive; stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"download not complete after the {_DEADLINE_S:g} s deadline "
                    f"({len(body):,} bytes received); stopped"
                )
    return bytes(body)


def download_verified(
    name: str,
    dest: Path,
    verify: Callable[[bytes], object],
    mirrors: Sequence[str] | None = None,
) -> None:
    """Fetch ``name`` from the first mirror whose bytes pass ``verify``; write them to ``dest``.

    ``mirrors`` are base URLs (default :data:`MNIST_MIRRORS`), tried in
    order; ``verify(body)`` rejects bytes by raising ``ValueError`` (or the
    gzip module's errors). Nothing is written, and no folder created, unless
    a mirror delivered verified bytes; they are then written with
    :func:`write_atomically`. Raises ``OSError`` naming every mirror's error
    when none delivered, or saying that writing the verified file failed.

    >>> with tempfile.TemporaryDirectory() as d:
    ...     good = Path(d, "good")
    ...     good.mkdir()
    ...     _ = (good / "a.txt").write_bytes(b"flow")
    ...     mirrors = [Path(d, "gone").as_uri() + "/", good.as_uri() + "/"]
    ...     download_verified("a.txt", Path(d, "out", "a.txt"), verify=len, mirrors=mirrors)
    ...     Path(d, "out", "a.txt").read_bytes()
    b'flow'
    """
    errors = []
    for base in MNIST_MIRRORS if mirrors is None else mirrors:
        url = base + name
        try:
            body = fetch(url)
            verify(body)
            break
        except (OSError, ValueError, EOFError, zlib.error, http.client.HTTPException) as e:
            # URLError and timeouts are OSErrors; a cut connection is an HTTPException
            errors.append(f"{url}: {e}")
    else:
        raise OSError("; ".join(errors))
    try:
        write_atomically(dest, lambda f: f.write(body))
    except OSError as e:
        raise OSError(f"downloaded and verified from {url}, but writing {dest} failed: {e}") from e


def fetch_missing(
    folder: Path,
    names: Sequence[str],
    verify: Callable[[str, bytes], object],
    download: bool = True,
) -> None:
    """Make sure ``folder`` holds the MNIST files ``names``, downloading the missing ones.

    Each missing file is fetched with :func:`download_verified`, checked by
    ``verify(name, body)``. Raises ``FileNotFoundError`` when some are still
    missing (or ``download`` is false): the message lists the full paths
    where they are expected, how to provide them, and why each download failed.

    >>> try:
    ...     fetch_missing(Path("/nowhere/MNIST/raw"), ["a.gz"], verify=lambda name, body: None, download=False)
    ... except FileNotFoundError as e:
    ...     print(str(e).splitlines()[:2])
    ['MNIST files not found in /nowhere/MNIST/raw:', '  /nowhere/MNIST/raw/a.gz']
    """
    missing = [n for n in names if not (folder / n).is_file()]
    errors: list[str] = []
    if missing and download:
        for n in missing:
            try:
                download_verified(n, folder / n, functools.partial(verify, n))
            except OSError as e:
                errors.append(f"{n}: {e}")
        missing = [n for n in names if not (folder / n).is_file()]
    if not missing:
        return
    raise FileNotFoundError("\n".join([
        f"MNIST files not found in {folder}:",
        *(f"  {folder / m}" for m in missing),
        "Put the gzipped IDX files there (torchvision's MNIST/raw layout; an "
        "existing torchvision download works), or set $FLOWLIB_DATA to a folder "
        "that contains MNIST/raw/ with them.",
        "Downloading them failed: " + " | ".join(errors) if errors else "Downloading was disabled (download=False).",
    ]))
