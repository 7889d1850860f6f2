"""MNIST, read from torchvision's file layout and verified byte for byte.

Where the files live
    ``<root>/MNIST/raw/`` holds the four gzipped IDX files::

        train-images-idx3-ubyte.gz   train-labels-idx1-ubyte.gz
        t10k-images-idx3-ubyte.gz    t10k-labels-idx1-ubyte.gz

    This is torchvision's layout, so an existing torchvision download works.
    :func:`data_root` picks ``<root>``: ``$FLOWLIB_DATA`` when set, otherwise
    the first existing of ``<repo>/data`` and ``<repo>/../shared/data``,
    otherwise ``<repo>/data`` (where downloads go).

Verification
    Every file's IDX header is checked (magic number 2051 for images, 2049
    for labels; 60000 or 10000 items; 28x28 pixels) and the md5 of its
    *decompressed* bytes is compared with the reference value. Hashing the
    decompressed bytes makes the check independent of how the archive was
    gzipped. A corrupt or truncated file raises :class:`ValueError` naming the
    file and asking to delete it and download it again.

Caching
    After a successful verification the decoded tensors are stored in
    ``<root>/MNIST/processed/`` (a ``.pt`` file whose name contains the md5s),
    when that folder can be written; later loads read it and re-check the
    same md5 on the tensors, which is several times faster than
    decompressing. On a read-only data folder nothing is cached.

Downloading
    Missing files are fetched (10 s timeout per attempt) from the usual
    mirrors into a temporary file, verified, and atomically renamed into
    place. Without network, :class:`FileNotFoundError` says which files are
    needed and the full path where to put them.

Mini-batches
    :func:`batches` yields in-memory mini-batches by index; it is all a
    training loop on a tensor that fits in memory needs (no DataLoader
    workers).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Iterator

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
_TIMEOUT_S = 10.0


# ----------------------------------------------------------------------------
# Locations
# ----------------------------------------------------------------------------


def data_root() -> Path:
    """The data root: ``$FLOWLIB_DATA``, else an existing default folder.

    Order: ``$FLOWLIB_DATA`` if set (even if it does not exist yet), then the
    first existing of ``<repo>/data`` and ``<repo>/../shared/data``, and
    finally ``<repo>/data``, where downloads go. ``<repo>`` is the folder
    that contains the ``flowlib`` package.
    """
    env = os.environ.get("FLOWLIB_DATA")
    if env:
        return Path(env).expanduser()
    candidates = [_REPO / "data", _REPO.parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


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


def _decompress(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(
            f"MNIST file {path} is corrupt or truncated (gzip error: {e}). "
            + _fix_hint(path)
        ) from e


def _decode(raw: bytes, name: str, split: str, path: Path) -> Tensor:
    """Check the IDX header, size and md5 of decompressed bytes; decode them."""
    is_images = "images" in name
    magic = _IMAGE_MAGIC if is_images else _LABEL_MAGIC
    count = _COUNTS[split]
    header_len = 16 if is_images else 8
    item = _ROWS * _COLS if is_images else 1

    def bad(why: str) -> ValueError:
        return ValueError(f"MNIST file {path} is corrupt or truncated: {why}. " + _fix_hint(path))

    if len(raw) < header_len:
        raise bad(f"only {len(raw)} bytes, shorter than the {header_len}-byte IDX header")
    fields = struct.unpack(">" + "I" * (header_len // 4), raw[:header_len])
    if fields[0] != magic:
        raise bad(f"IDX magic number is {fields[0]}, expected {magic}")
    if fields[1] != count:
        raise bad(f"header says {fields[1]} items, expected {count}")
    if is_images and (fields[2], fields[3]) != (_ROWS, _COLS):
        raise bad(f"images are {fields[2]}x{fields[3]}, expected {_ROWS}x{_COLS}")
    expected_len = header_len + count * item
    if len(raw) != expected_len:
        raise bad(f"{len(raw)} bytes after decompression, expected {expected_len}")
    digest = hashlib.md5(raw).hexdigest()
    if digest != MNIST_MD5[name]:
        raise bad(f"md5 of the decompressed data is {digest}, expected {MNIST_MD5[name]}")

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


def _download(name: str, split: str, dest: Path) -> None:
    """Fetch ``name`` from the mirrors, verify it, move it to ``dest``.

    Raises OSError (with every mirror's error) when no mirror delivers a
    verified file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in MNIST_MIRRORS:
        url = base + name
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=name, suffix=".part")
        tmp_path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as r:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
            _read_verified(tmp_path, name, split)
            os.replace(tmp_path, dest)
            return
        except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
            errors.append(f"{url}: {e}")
        finally:
            tmp_path.unlink(missing_ok=True)
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
