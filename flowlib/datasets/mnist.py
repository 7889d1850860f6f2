"""MNIST, read from torchvision's file layout and verified byte for byte.

Where the files live
    ``<root>/MNIST/raw/`` holds the four gzipped IDX files, as torchvision
    lays them out (an existing torchvision download works); ``<root>`` is
    :func:`data_root` (``$FLOWLIB_DATA``, else the repository's data folder).

Verification
    Every file's IDX header is checked (magic number 2051 for images, 2049
    for labels; 60000 or 10000 items; 28x28 pixels) and the md5 of its
    *decompressed* bytes is compared with the reference value, so the check
    does not depend on how the archive was gzipped. A corrupt or truncated
    file raises :class:`ValueError` naming the file and asking to delete it
    and download it again; a file that cannot be read for lack of permission
    raises :class:`PermissionError` saying so. Decompression stops after
    47,040,016 bytes (the largest MNIST file), so a gzip bomb is cut off
    before it fills the memory.

Caching
    The verified tensors are stored in ``<root>/MNIST/processed/`` (a ``.pt``
    file whose name contains the md5s) when that folder can be written;
    later loads re-check the same md5s on them, several times faster than
    decompressing. On a read-only data folder nothing is cached.

Downloading
    Missing files are fetched by :mod:`flowlib.datasets.download`: capped in size and
    time, verified as above before anything is written, then placed
    atomically, so a failed download leaves nothing behind; without network,
    :class:`FileNotFoundError` says where to put the files and why each
    mirror failed.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from torch import Tensor

from ..files import workspace, write_atomically
from .download import fetch_missing, gunzip

__all__ = ["MNIST_FILES", "MNIST_MD5", "data_root", "mnist_dir", "load_mnist", "mnist_splits", "downscale"]


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

_COUNTS = {"train": 60000, "test": 10000}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
_ROWS = _COLS = 28
#: Largest decompressed file accepted: train images, 16 + 60000 * 28 * 28 bytes.
_MAX_DECOMPRESSED_BYTES = 47_040_016


# ----------------------------------------------------------------------------- locations


def data_root() -> Path:
    """The data root: ``$FLOWLIB_DATA``, else the default folder holding the data.

    Order: ``$FLOWLIB_DATA`` if set (even if it does not exist yet); else,
    of ``<workspace>/data`` and ``<workspace>/../shared/data``, the one
    holding the most MNIST files (raw archives and decoded caches), ties
    going to the first existing one, so an empty folder never shadows a
    filled one; and when neither exists, ``<workspace>/data``, where
    downloads go. ``<workspace>`` is `flowlib.files.workspace` (the book's
    checkout when run from it).

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"FLOWLIB_DATA": "/data/flows"}):
    ...     data_root().as_posix()
    '/data/flows'
    """
    env = os.environ.get("FLOWLIB_DATA")
    if env:
        return Path(env).expanduser()
    home = workspace()
    candidates = [home / "data", home.parent / "shared" / "data"]
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
    """The folder ``<root>/MNIST/raw`` that holds (or will hold) the files.

    >>> mnist_dir("/data/flows").as_posix()
    '/data/flows/MNIST/raw'
    """
    base = data_root() if root is None else Path(root).expanduser()
    return base / "MNIST" / "raw"


# ----------------------------------------------------------------------------- decoding and verification


def _idx_header(name: str, split: str) -> bytes:
    """The IDX header that MNIST file ``name`` of ``split`` starts with: magic number, then sizes."""
    if "images" in name:
        return struct.pack(">4I", _IMAGE_MAGIC, _COUNTS[split], _ROWS, _COLS)
    return struct.pack(">2I", _LABEL_MAGIC, _COUNTS[split])


def _decode_idx(raw: bytes, name: str, split: str) -> Tensor:
    """The tensor in IDX bytes ``raw``; ``ValueError(why)`` unless header, size and md5 match."""
    header = _idx_header(name, split)
    h = len(header)
    if len(raw) < h:
        raise ValueError(f"only {len(raw)} bytes, shorter than the {h}-byte IDX header")
    found, expected = (struct.unpack(f">{h // 4}I", b[:h]) for b in (raw, header))
    for what, f, e in zip(("IDX magic number", "number of items", "number of rows", "number of columns"),
                          found, expected):
        if f != e:
            raise ValueError(f"{what} is {f}, expected {e}")
    size = h + math.prod(expected[1:])
    if len(raw) != size:
        raise ValueError(f"{len(raw)} bytes after decompression, expected {size}")
    digest = hashlib.md5(raw).hexdigest()
    if digest != MNIST_MD5[name]:
        raise ValueError(f"md5 of the decompressed data is {digest}, expected {MNIST_MD5[name]}")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=h)
    return data.view(-1, 1, _ROWS, _COLS) if "images" in name else data.to(torch.int64)


def _encode_idx(t: Tensor, name: str, split: str) -> bytes:
    """The IDX bytes of MNIST file ``name`` with payload ``t`` (the inverse of `_decode_idx`)."""
    return _idx_header(name, split) + t.to(torch.uint8).contiguous().numpy().tobytes()


def _decode_gz(gz: bytes | BinaryIO, name: str, split: str) -> Tensor:
    """Decompress (cut off past the largest MNIST file), check and decode a gzipped IDX file."""
    return _decode_idx(gunzip(gz, _MAX_DECOMPRESSED_BYTES), name, split)


def _read_verified(path: Path, name: str, split: str) -> Tensor:
    """The tensor in the MNIST file at ``path``; ``ValueError`` naming the file if it is bad.

    A lack of permission is reported as such (``PermissionError``), not as corruption.
    """
    try:
        f = open(path, "rb")
    except PermissionError as e:
        raise PermissionError(
            e.errno,
            f"Cannot read MNIST file {path}: permission denied. The file may be fine; give "
            f"your user read access to it (e.g. chmod u+r), or set $FLOWLIB_DATA to a folder "
            f"with a copy you can read",
            str(path),
        ) from e
    with f:
        try:
            return _decode_gz(f, name, split)
        except (OSError, EOFError, zlib.error) as e:
            why = f"gzip error: {e}"
        except ValueError as e:
            why = str(e)
    raise ValueError(
        f"MNIST file {path} is corrupt or truncated: {why}. Delete {path} and download it "
        f"again (load_mnist(download=True) fetches missing files and verifies them)."
    )


# ----------------------------------------------------------------------------- cache of decoded tensors


def _cache_path(raw_dir: Path, split: str) -> Path:
    img, lbl = MNIST_FILES[split]
    key = f"{MNIST_MD5[img][:12]}-{MNIST_MD5[lbl][:12]}"
    return raw_dir.parent / "processed" / f"flowlib-{split}-{key}.pt"


def _load_cache(path: Path, split: str) -> tuple[Tensor, Tensor] | None:
    """The cached tensors, re-checked against the md5s; None if absent, unreadable or wrong.

    The tensors are encoded back into IDX bytes and decoded as a raw file
    would be, so a cache is trusted exactly as far as the files themselves.
    """
    if not path.is_file():
        return None
    img, lbl = MNIST_FILES[split]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        images = _decode_idx(_encode_idx(obj["images"], img, split), img, split)
        labels = _decode_idx(_encode_idx(obj["labels"], lbl, split), lbl, split)
    except Exception:  # unreadable or foreign cache: ignore it and rebuild
        return None
    return images, labels


def _save_cache(path: Path, images: Tensor, labels: Tensor) -> None:
    """Write the cache atomically; silently skip where the folder is not writable."""
    try:
        write_atomically(path, lambda f: torch.save({"images": images, "labels": labels}, f))
    except OSError:
        pass


def _check_folders(raw_dir: Path, from_env: bool) -> None:
    """Raise ValueError when the data root or a folder below it (``MNIST``, ``raw``) is a file.

    ``from_env``: the data root came from ``$FLOWLIB_DATA``, and the message says so.
    """
    root = raw_dir.parent.parent
    for folder in (root, raw_dir.parent, raw_dir):
        if folder.exists() and not folder.is_dir():
            if from_env and folder == root:
                raise ValueError(f"$FLOWLIB_DATA: {folder} is a file, not a folder; set FLOWLIB_DATA to the "
                                 f"folder that holds (or will hold) MNIST/raw/")
            raise ValueError(f"{folder} is a file, not a folder: MNIST is read from {raw_dir}; "
                             f"move the file away or choose another data root")


# ----------------------------------------------------------------------------- public loaders


def load_mnist(split: str = "train", root: str | Path | None = None, download: bool = True) -> tuple[Tensor, Tensor]:
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
        ValueError: unknown split, a corrupt or truncated file, or a data
            root (``$FLOWLIB_DATA`` or ``root``) that is a file, not a folder.
        FileNotFoundError: files missing and not downloadable; the message
            lists the full paths where they are expected.

    >>> load_mnist("valid")
    Traceback (most recent call last):
        ...
    ValueError: split must be one of ['test', 'train'], got 'valid'
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    raw_dir = mnist_dir(root)
    _check_folders(raw_dir, from_env=root is None and bool(os.environ.get("FLOWLIB_DATA")))
    cache = _cache_path(raw_dir, split)
    cached = _load_cache(cache, split)
    if cached is not None:
        return cached

    names = MNIST_FILES[split]
    fetch_missing(raw_dir, names, lambda name, body: _decode_gz(body, name, split), download)
    images, labels = (_read_verified(raw_dir / n, n, split) for n in names)
    _save_cache(cache, images, labels)
    return images, labels


def mnist_splits(root: str | Path | None = None, valid_size: int = 10000, seed: int | None = None,
                 download: bool = True) -> dict[str, Tensor]:
    """Train / validation / test MNIST images (``uint8``, ``(N, 1, 28, 28)``).

    The validation set is held out from the 60000 training images; the test
    set is the official 10000. By default (``seed=None``) the split is the
    conventional contiguous one: the *last* ``valid_size`` training images
    are the validation set (50000 / 10000, as in the NICE authors'
    released code), so it is the same for every reader and every library. Passing
    an integer ``seed`` instead holds out a seeded random subset.

    Returns:
        ``{"train": ..., "valid": ..., "test": ...}``.
    """
    n = _COUNTS["train"]
    if isinstance(valid_size, bool) or not isinstance(valid_size, int) or not 0 <= valid_size < n:
        raise ValueError(f"valid_size must be an integer in [0, {n}), got {valid_size!r}")
    train, _ = load_mnist("train", root, download)
    test, _ = load_mnist("test", root, download)
    order = torch.arange(n) if seed is None else torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    cut = n - valid_size
    return {"train": train[order[:cut]], "valid": train[order[cut:]], "test": test}


def downscale(images: Tensor, factor: int = 2) -> Tensor:
    """Average-pool ``(N, C, H, W)`` 8-bit images by ``factor`` and round back to ``uint8``.

    >>> downscale(torch.tensor([[[[0, 255], [255, 255]]]], dtype=torch.uint8))
    tensor([[[[191]]]], dtype=torch.uint8)
    """
    pooled = F.avg_pool2d(images.float(), factor)
    return pooled.round().clamp(0, 255).to(torch.uint8)
