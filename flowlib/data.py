"""MNIST, read from torchvision's file layout and verified byte for byte.

Where the files live
    ``<root>/MNIST/raw/`` holds the four gzipped IDX files::

        train-images-idx3-ubyte.gz   train-labels-idx1-ubyte.gz
        t10k-images-idx3-ubyte.gz    t10k-labels-idx1-ubyte.gz

    This is torchvision's layout, so an existing torchvision download works.
    :func:`data_root` picks ``<root>``: ``$FLOWLIB_DATA`` when set, otherwise
    whichever of ``<repo>/data`` and ``<repo>/../shared/data`` holds the most
    MNIST files (an existing but empty folder never shadows one that holds
    the files), otherwise ``<repo>/data`` (where downloads go).

Verification
    Every file's IDX header is checked (magic number 2051 for images, 2049
    for labels; 60000 or 10000 items; 28x28 pixels) and the md5 of its
    *decompressed* bytes is compared with the reference value. Hashing the
    decompressed bytes makes the check independent of how the archive was
    gzipped. A corrupt or truncated file raises :class:`ValueError` naming the
    file and asking to delete it and download it again; a file that cannot be
    read for lack of permission raises :class:`PermissionError` saying so.
    Decompression stops after 47,040,016 bytes (the largest MNIST file), so a
    gzip bomb is cut off before it fills the memory.

Caching
    After a successful verification the decoded tensors are stored in
    ``<root>/MNIST/processed/`` (a ``.pt`` file whose name contains the md5s),
    when that folder can be written; later loads read it and re-check the
    same md5 on the tensors, which is several times faster than
    decompressing. On a read-only data folder nothing is cached.

Downloading
    Missing files are streamed from the usual mirrors into memory, at most
    16 MiB per file (the largest archive is 9.9 MB), within 10 s per network
    read and 300 s in all per file (a server trickling bytes is cut off),
    verified, and only then written (atomically) into place. Folders are
    created only when a verified file is written, and removed again if that
    write fails, so a failed download leaves nothing behind. Without
    network, :class:`FileNotFoundError` says which files are needed, the
    full path where to put them, and why each mirror failed.

Mini-batches
    :func:`batches` yields in-memory mini-batches by index; it is all a
    training loop on a tensor that fits in memory needs (no DataLoader
    workers).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import struct
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_MIRRORS",
    "data_root",
    "mnist_dir",
    "load_mnist",
    "mnist_splits",
    "batches",
    "downscale",
]

_REPO = Path(__file__).resolve().parent.parent

#: split -> (images file, labels file), as in torchvision's ``MNIST/raw``.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: md5 of the decompressed IDX bytes of each file.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}

#: Base URLs tried in order when a file is missing.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

_COUNTS = {"train": 60000, "test": 10000}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
_ROWS = _COLS = 28

#: Seconds one network read (and the connection) may take.
_TIMEOUT_S = 10.0
#: Seconds one file's whole download may take, however the bytes trickle in.
_DEADLINE_S = 300.0
#: Largest download accepted (the largest archive, train images, is 9,912,422 bytes).
_MAX_DOWNLOAD_BYTES = 16 * 2**20
#: Largest decompressed file accepted: train images, 16 + 60000 * 28 * 28 bytes.
_MAX_DECOMPRESSED_BYTES = 47_040_016
_CHUNK = 1 << 16


# ----------------------------------------------------------------------------
# Locations
# ----------------------------------------------------------------------------


def data_root() -> Path:
    """The data root: ``$FLOWLIB_DATA``, else the default folder holding the data.

    Order: ``$FLOWLIB_DATA`` if set (even if it does not exist yet); else,
    of ``<repo>/data`` and ``<repo>/../shared/data``, the one holding the
    most MNIST files (raw archives and decoded caches), ties going to the
    first existing one, so an empty folder never shadows a filled one; and
    when neither exists, ``<repo>/data``, where downloads go. ``<repo>`` is
    the folder that contains the ``flowlib`` package.
    """
    env = os.environ.get("FLOWLIB_DATA")
    if env:
        return Path(env).expanduser()
    candidates = [_REPO / "data", _REPO.parent / "shared" / "data"]
    # max() keeps the first of equal keys: the order above breaks ties.
    return max(candidates, key=lambda c: (_count_mnist_files(c), c.is_dir()))


def _count_mnist_files(root: Path) -> int:
    """How many MNIST raw archives and decoded caches ``root`` holds (0 if unreadable)."""
    raw = root / "MNIST" / "raw"
    paths = [raw / n for pair in MNIST_FILES.values() for n in pair]
    paths += [_cache_path(raw, split) for split in MNIST_FILES]
    try:
        return sum(p.is_file() for p in paths)
    except OSError:
        return 0


def mnist_dir(root: str | Path | None = None) -> Path:
    """The folder ``<root>/MNIST/raw`` that holds (or will hold) the files."""
    base = data_root() if root is None else Path(root).expanduser()
    return base / "MNIST" / "raw"


# ----------------------------------------------------------------------------
# Decoding and verification
# ----------------------------------------------------------------------------


def _fix_hint(path: Path) -> str:
    return (
        f"Delete {path} and download it again (load_mnist(download=True) "
        f"fetches missing files and verifies them)."
    )


class _TooLarge(ValueError):
    """Data larger than any MNIST file: cut off, never read to the end."""


def _gunzip(fileobj: BinaryIO, limit: int) -> bytes:
    """Decompress a gzip stream, holding at most ``limit + 1`` decompressed bytes.

    Raises `_TooLarge` as soon as the output passes ``limit`` bytes (a gzip
    bomb stops there), and the gzip module's errors (``OSError``,
    ``EOFError``, ``zlib.error``) on a corrupt or truncated stream.
    """
    out = bytearray()
    with gzip.GzipFile(fileobj=fileobj, mode="rb") as g:
        while chunk := g.read(min(_CHUNK, limit + 1 - len(out))):
            out += chunk
            if len(out) > limit:
                raise _TooLarge(
                    f"it decompresses to more than {limit:,} bytes, more than the largest "
                    f"MNIST file (a gzip bomb?); decompression was stopped there"
                )
    return bytes(out)


def _open_for_reading(path: Path) -> BinaryIO:
    """``open(path, "rb")``, with a lack of permission reported as such (not as corruption)."""
    try:
        return open(path, "rb")
    except PermissionError as e:
        raise PermissionError(
            e.errno,
            f"Cannot read MNIST file {path}: permission denied. The file may be fine; give "
            f"your user read access to it (e.g. chmod u+r), or set $FLOWLIB_DATA to a folder "
            f"with a copy you can read",
            str(path),
        ) from e


def _decompress(path: Path) -> bytes:
    with _open_for_reading(path) as f:
        try:
            return _gunzip(f, _MAX_DECOMPRESSED_BYTES)
        except _TooLarge as e:
            raise ValueError(f"MNIST file {path} is corrupt: {e}. " + _fix_hint(path)) from e
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(
                f"MNIST file {path} is corrupt or truncated (gzip error: {e}). " + _fix_hint(path)
            ) from e


def _decode(raw: bytes, name: str, split: str, path: Path) -> Tensor:
    """Check the IDX header, size and md5 of decompressed bytes; decode them."""
    try:
        return _decode_idx(raw, name, split)
    except ValueError as e:
        raise ValueError(f"MNIST file {path} is corrupt or truncated: {e}. " + _fix_hint(path)) from e


def _decode_idx(raw: bytes, name: str, split: str) -> Tensor:
    """The tensor in IDX bytes ``raw``; ``ValueError(why)`` unless header, size and md5 match."""
    is_images = "images" in name
    magic = _IMAGE_MAGIC if is_images else _LABEL_MAGIC
    count = _COUNTS[split]
    header_len = 16 if is_images else 8
    item = _ROWS * _COLS if is_images else 1

    if len(raw) < header_len:
        raise ValueError(f"only {len(raw)} bytes, shorter than the {header_len}-byte IDX header")
    fields = struct.unpack(">" + "I" * (header_len // 4), raw[:header_len])
    if fields[0] != magic:
        raise ValueError(f"IDX magic number is {fields[0]}, expected {magic}")
    if fields[1] != count:
        raise ValueError(f"header says {fields[1]} items, expected {count}")
    if is_images and (fields[2], fields[3]) != (_ROWS, _COLS):
        raise ValueError(f"images are {fields[2]}x{fields[3]}, expected {_ROWS}x{_COLS}")
    expected_len = header_len + count * item
    if len(raw) != expected_len:
        raise ValueError(f"{len(raw)} bytes after decompression, expected {expected_len}")
    digest = hashlib.md5(raw).hexdigest()
    if digest != MNIST_MD5[name]:
        raise ValueError(f"md5 of the decompressed data is {digest}, expected {MNIST_MD5[name]}")

    data = torch.frombuffer(bytearray(raw[header_len:]), dtype=torch.uint8)
    if is_images:
        return data.view(count, 1, _ROWS, _COLS)
    return data.to(torch.int64)


def _read_verified(path: Path, name: str, split: str) -> Tensor:
    return _decode(_decompress(path), name, split, path)


def _tensor_md5(t: Tensor, is_images: bool) -> str:
    """md5 of the IDX file that ``t`` decodes from (header + payload)."""
    n = t.shape[0]
    if is_images:
        header = struct.pack(">IIII", _IMAGE_MAGIC, n, _ROWS, _COLS)
        payload = t.contiguous().numpy().tobytes()
    else:
        header = struct.pack(">II", _LABEL_MAGIC, n)
        payload = t.to(torch.uint8).numpy().tobytes()
    return hashlib.md5(header + payload).hexdigest()


# ----------------------------------------------------------------------------
# Cache of decoded tensors
# ----------------------------------------------------------------------------


def _cache_path(raw_dir: Path, split: str) -> Path:
    img, lbl = MNIST_FILES[split]
    key = f"{MNIST_MD5[img][:12]}-{MNIST_MD5[lbl][:12]}"
    return raw_dir.parent / "processed" / f"flowlib-{split}-{key}.pt"


def _load_cache(path: Path, split: str) -> tuple[Tensor, Tensor] | None:
    """The cached tensors if the cache exists and matches the md5s, else None."""
    if not path.is_file():
        return None
    img_name, lbl_name = MNIST_FILES[split]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = obj["images"], obj["labels"]
        n = _COUNTS[split]
        ok = (
            images.dtype == torch.uint8
            and images.shape == (n, 1, _ROWS, _COLS)
            and labels.dtype == torch.int64
            and labels.shape == (n,)
            and _tensor_md5(images, True) == MNIST_MD5[img_name]
            and _tensor_md5(labels, False) == MNIST_MD5[lbl_name]
        )
    except Exception:  # unreadable or foreign cache: ignore it and rebuild
        return None
    return (images, labels) if ok else None


def _save_cache(path: Path, images: Tensor, labels: Tensor) -> None:
    """Write the cache atomically; silently skip where the folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"images": images, "labels": labels}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return


# ----------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------


def _fetch(url: str) -> bytes:
    """The bytes at ``url``, streamed with a size cap and a total deadline.

    Raises ``_TooLarge`` past ``_MAX_DOWNLOAD_BYTES`` (announced by
    ``Content-Length`` or counted while reading) and ``TimeoutError`` once
    ``_DEADLINE_S`` seconds have passed; each read waits at most
    ``_TIMEOUT_S`` seconds, so a trickling server is cut off at the latest
    one read timeout after the deadline.
    """
    deadline = time.monotonic() + _DEADLINE_S
    limit = _MAX_DOWNLOAD_BYTES
    with urllib.request.urlopen(url, timeout=min(_TIMEOUT_S, _DEADLINE_S)) as r:
        declared = (r.headers.get("Content-Length") or "").strip() if r.headers else ""
        if declared.isdigit() and int(declared) > limit:
            raise _TooLarge(f"the server announces {int(declared):,} bytes, more than the {limit:,} accepted")
        read = getattr(r, "read1", r.read)  # read1: whatever has arrived, without waiting for a full chunk
        body = bytearray()
        while chunk := read(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise _TooLarge(f"download passed {limit:,} bytes, more than any MNIST archive; stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"download not complete after the {_DEADLINE_S:g} s deadline "
                    f"({len(body):,} bytes received); stopped"
                )
    return bytes(body)


def _missing_dirs(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove ``dirs`` (deepest first) while they are empty; stop at the first that is not."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


def _write_atomically(dest: Path, body: bytes) -> None:
    """Write ``body`` to ``dest`` through a temporary file and a rename.

    Creates ``dest``'s folder only now, and removes the folders it created
    when the write fails, so a failure leaves no empty folder behind.
    """
    created = _missing_dirs(dest.parent)
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, dest)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _remove_empty_dirs(created)
        raise


def _download(name: str, split: str, dest: Path) -> None:
    """Fetch ``name`` from the mirrors, verify it in memory, then write it to ``dest``.

    Nothing is written, and no folder created, unless a mirror delivered a
    verified file. Raises OSError (with every mirror's error) when none did,
    or when writing the verified file failed.
    """
    errors = []
    for base in MNIST_MIRRORS:
        url = base + name
        try:
            body = _fetch(url)
            _decode_idx(_gunzip(io.BytesIO(body), _MAX_DECOMPRESSED_BYTES), name, split)
        except (OSError, ValueError, EOFError, zlib.error, http.client.HTTPException) as e:
            # URLError and timeouts are OSErrors; a cut connection is an HTTPException
            errors.append(f"{url}: {e}")
            continue
        try:
            _write_atomically(dest, body)
        except OSError as e:
            raise OSError(f"downloaded and verified from {url}, but writing {dest} failed: {e}") from e
        return
    raise OSError("; ".join(errors))


def _missing_message(raw_dir: Path, missing: list[str], errors: list[str]) -> str:
    lines = [
        f"MNIST files not found in {raw_dir}:",
        *(f"  {raw_dir / m}" for m in missing),
        "Put the gzipped IDX files there (torchvision's MNIST/raw layout; an "
        "existing torchvision download works), or set $FLOWLIB_DATA to a folder "
        "that contains MNIST/raw/ with them.",
    ]
    if errors:
        lines.append("Downloading them failed: " + " | ".join(errors))
    else:
        lines.append("Downloading was disabled (download=False).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Public loaders
# ----------------------------------------------------------------------------


def load_mnist(
    split: str = "train",
    root: str | Path | None = None,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load an MNIST split as verified tensors.

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000 images).
        root: data root containing ``MNIST/raw``; default :func:`data_root`.
        download: fetch missing files from the mirrors (verified by md5).

    Returns:
        ``(images, labels)``: ``uint8`` images of shape ``(N, 1, 28, 28)``
        with values in ``0..255``, and ``int64`` labels of shape ``(N,)`` in
        ``0..9``.

    Raises:
        ValueError: unknown split, or a corrupt or truncated file.
        FileNotFoundError: files missing and not downloadable; the message
            lists the full paths where they are expected.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    raw_dir = mnist_dir(root)
    cache = _cache_path(raw_dir, split)
    cached = _load_cache(cache, split)
    if cached is not None:
        return cached

    names = MNIST_FILES[split]
    missing = [n for n in names if not (raw_dir / n).is_file()]
    errors: list[str] = []
    if missing and download:
        for n in missing:
            try:
                _download(n, split, raw_dir / n)
            except OSError as e:
                errors.append(f"{n}: {e}")
        missing = [n for n in names if not (raw_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(_missing_message(raw_dir, missing, errors))

    images = _read_verified(raw_dir / names[0], names[0], split)
    labels = _read_verified(raw_dir / names[1], names[1], split)
    _save_cache(cache, images, labels)
    return images, labels


def mnist_splits(
    root: str | Path | None = None,
    valid_size: int = 10000,
    seed: int | None = None,
    download: bool = True,
) -> dict[str, Tensor]:
    """Train / validation / test MNIST images (``uint8``, ``(N, 1, 28, 28)``).

    The validation set is held out from the 60000 training images; the test
    set is the official 10000. By default (``seed=None``) the split is the
    conventional contiguous one: the *last* ``valid_size`` training images
    are the validation set (50000 / 10000, as in the NICE and RealNVP
    setups), so it is the same for every reader and every library. Passing
    an integer ``seed`` instead holds out a seeded random subset.

    Returns:
        ``{"train": ..., "valid": ..., "test": ...}``.
    """
    n = _COUNTS["train"]
    if isinstance(valid_size, bool) or not isinstance(valid_size, int) or not 0 <= valid_size < n:
        raise ValueError(f"valid_size must be an integer in [0, {n}), got {valid_size!r}")
    train, _ = load_mnist("train", root, download)
    test, _ = load_mnist("test", root, download)
    if seed is None:
        order = torch.arange(n)
    else:
        g = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(n, generator=g)
    cut = n - valid_size
    return {"train": train[order[:cut]], "valid": train[order[cut:]], "test": test}


def batches(
    x: Tensor,
    batch_size: int,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """Yield mini-batches of ``x`` along its first dimension (one epoch).

    With ``shuffle=True`` the order is a ``torch.randperm`` drawn from
    ``generator`` (the global RNG when ``None``), so a seeded generator gives
    the same batches every time, and successive epochs with the same
    generator object differ. Every index appears exactly once per epoch
    (minus the short last batch when ``drop_last=True``). Indexing happens on
    ``x``'s device; the permutation is drawn on the CPU.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> [b.tolist() for b in batches(torch.arange(5), 2, shuffle=False, drop_last=True)]
        [[0, 1], [2, 3]]
        >>> sum(len(b) for b in batches(torch.arange(10), 3, generator=g))
        10
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension, got a 0-d tensor")
    n = x.shape[0]
    if shuffle:
        order = torch.randperm(n, generator=generator).to(x.device)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n

    def _gen() -> Iterator[Tensor]:
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, stop)
            if order is None:
                yield x[start:end]
            else:
                yield x[order[start:end]]

    return _gen()


def downscale(images: Tensor, factor: int = 2) -> Tensor:
    """Average-pool ``(N, C, H, W)`` 8-bit images by ``factor`` and round back to ``uint8``.

    >>> downscale(torch.tensor([[[[0, 255], [255, 255]]]], dtype=torch.uint8))
    tensor([[[[191]]]], dtype=torch.uint8)
    """
    pooled = F.avg_pool2d(images.float(), factor)
    return pooled.round().clamp(0, 255).to(torch.uint8)
