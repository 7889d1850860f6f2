"""Tests of flowlib.data: verified MNIST loading and in-memory mini-batches."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest
import torch

import flowlib.data as data
from flowlib.data import MNIST_FILES, batches, data_root, load_mnist, mnist_splits

# The verified copy: $FLOWLIB_DATA when set (CI sets it), else ../shared/data beside the repository.
SHARED = Path(os.environ.get("FLOWLIB_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SHARED_RAW = SHARED / "MNIST" / "raw"
needs_shared = pytest.mark.skipif(
    not all((SHARED_RAW / f).is_file() for fs in MNIST_FILES.values() for f in fs),
    reason=f"verified MNIST copy not found in {SHARED_RAW}",
)


@pytest.fixture(scope="module")
def mnist():
    if not SHARED_RAW.is_dir():
        pytest.skip(f"verified MNIST copy not found in {SHARED_RAW}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWLIB_DATA", str(SHARED))
        return {"train": load_mnist("train", download=False), "test": load_mnist("test", download=False)}


def _raw_copy(tmp_path: Path, split: str = "test") -> Path:
    """Copy one split's raw files into tmp_path/MNIST/raw and return that folder."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_FILES[split]:
        shutil.copyfile(SHARED_RAW / f, raw / f)
    return raw


# ---------------------------------------------------------------- loading


@needs_shared
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_shapes_dtypes_ranges(mnist, split, n):
    x, y = mnist[split]
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (n,) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 255
    assert y.min() == 0 and y.max() == 9
    assert torch.bincount(y, minlength=10).min() > n // 12  # every digit present


@needs_shared
def test_known_values(mnist):
    # The first training digit is a 5, the first test digit a 7.
    assert mnist["train"][1][0] == 5 and mnist["test"][1][0] == 7
    assert mnist["train"][1][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_mnist("valid")


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWLIB_DATA", str(tmp_path / "x"))
    assert data_root() == tmp_path / "x"
    monkeypatch.delenv("FLOWLIB_DATA")
    repo = Path(data.__file__).resolve().parent.parent
    expected = repo / "data"
    if not expected.is_dir() and (repo.parent / "shared" / "data").is_dir():
        expected = repo.parent / "shared" / "data"
    assert data_root() == expected


@needs_shared
def test_mnist_splits(mnist, monkeypatch):
    monkeypatch.setattr(data, "load_mnist", lambda split, root=None, download=True: mnist[split])
    s = mnist_splits()
    train = mnist["train"][0]
    assert s["train"].shape == (50000, 1, 28, 28) and s["valid"].shape == (10000, 1, 28, 28)
    assert s["test"].shape == (10000, 1, 28, 28) and s["test"].dtype == torch.uint8
    assert torch.equal(s["train"], train[:50000]) and torch.equal(s["valid"], train[50000:])
    r = mnist_splits(valid_size=1000, seed=0)
    assert r["train"].shape[0] == 59000 and r["valid"].shape[0] == 1000
    assert torch.equal(r["valid"], mnist_splits(valid_size=1000, seed=0)["valid"])
    assert not torch.equal(r["valid"], train[59000:])
    with pytest.raises(ValueError, match="valid_size"):
        mnist_splits(valid_size=60000)


# ---------------------------------------------------------------- integrity


@needs_shared
def test_truncated_gzip(tmp_path):
    raw = _raw_copy(tmp_path)
    f = raw / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        load_mnist("test", root=tmp_path, download=False)
    assert str(f) in str(e.value) and "Delete" in str(e.value)


@needs_shared
def test_flipped_bytes_in_archive(tmp_path):
    raw = _raw_copy(tmp_path)
    f = raw / "t10k-images-idx3-ubyte.gz"
    b = bytearray(f.read_bytes())
    for i in range(len(b) // 2, len(b) // 2 + 64):
        b[i] ^= 0xFF
    f.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="corrupt") as e:
        load_mnist("test", root=tmp_path, download=False)
    assert str(f) in str(e.value)


@needs_shared
def test_changed_payload_fails_md5(tmp_path):
    # A valid gzip of valid-looking IDX data with one label changed: only the
    # md5 can catch this.
    raw = _raw_copy(tmp_path)
    f = raw / "t10k-labels-idx1-ubyte.gz"
    b = bytearray(gzip.decompress(f.read_bytes()))
    b[100] = (b[100] + 1) % 10
    f.write_bytes(gzip.compress(bytes(b)))
    with pytest.raises(ValueError, match="md5") as e:
        load_mnist("test", root=tmp_path, download=False)
    assert str(f) in str(e.value)


@needs_shared
def test_bad_magic(tmp_path):
    raw = _raw_copy(tmp_path)
    f = raw / "t10k-labels-idx1-ubyte.gz"
    b = bytearray(gzip.decompress(f.read_bytes()))
    b[3] = 0x03  # 2049 -> 2051
    f.write_bytes(gzip.compress(bytes(b)))
    with pytest.raises(ValueError, match="magic number is 2051, expected 2049"):
        load_mnist("test", root=tmp_path, download=False)


def test_missing_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWLIB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        load_mnist("train", download=False)
    msg = str(e.value)
    for f in MNIST_FILES["train"]:
        assert str(tmp_path / "MNIST" / "raw" / f) in msg
    assert "FLOWLIB_DATA" in msg


def test_download_failure_is_file_not_found(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MNIST_MIRRORS", ((tmp_path / "nowhere").as_uri() + "/",))
    with pytest.raises(FileNotFoundError, match="Downloading them failed") as e:
        load_mnist("test", root=tmp_path)
    assert str(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz") in str(e.value)
    assert not list((tmp_path / "MNIST" / "raw").glob("*.part"))


@needs_shared
def test_download_verifies_and_caches(tmp_path, monkeypatch):
    # Mirrors: a missing one, a corrupt one, then a good one (file:// URLs,
    # so no network is needed).
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in MNIST_FILES["test"]:
        (bad / f).write_bytes((SHARED_RAW / f).read_bytes()[:1000])
    mirrors = ((tmp_path / "nowhere").as_uri() + "/", bad.as_uri() + "/", SHARED_RAW.as_uri() + "/")
    monkeypatch.setattr(data, "MNIST_MIRRORS", mirrors)
    root = tmp_path / "root"
    x, y = load_mnist("test", root=root)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    raw = root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_FILES["test"])  # no leftovers
    caches = list((root / "MNIST" / "processed").glob("*.pt"))
    assert len(caches) == 1
    # The cache is used (raw files no longer needed) and equals the raw decode.
    for f in raw.iterdir():
        f.unlink()
    x2, y2 = load_mnist("test", root=root, download=False)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # A corrupt cache is ignored, not trusted.
    caches[0].write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError):
        load_mnist("test", root=root, download=False)


# ---------------------------------------------------------------- batches


@pytest.mark.parametrize("n,bs", [(10, 3), (12, 4), (5, 8)])
def test_batches_cover_each_index_once(n, bs):
    x = torch.arange(n)
    g = torch.Generator().manual_seed(0)
    out = list(batches(x, bs, shuffle=True, generator=g))
    assert torch.equal(torch.sort(torch.cat(out)).values, x)
    assert all(len(b) == bs for b in out[:-1]) and 1 <= len(out[-1]) <= bs


def test_batches_drop_last_and_order():
    x = torch.arange(10)
    assert [b.tolist() for b in batches(x, 4, shuffle=False)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    out = list(batches(x, 4, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=True))
    assert len(out) == 2 and all(len(b) == 4 for b in out)
    assert len(set(torch.cat(out).tolist())) == 8


def test_batches_deterministic():
    x = torch.randn(50, 1, 2, 2)
    a = list(batches(x, 7, shuffle=True, generator=torch.Generator().manual_seed(3)))
    b = list(batches(x, 7, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    g = torch.Generator().manual_seed(3)
    e1 = torch.cat(list(batches(torch.arange(50), 7, generator=g)))
    e2 = torch.cat(list(batches(torch.arange(50), 7, generator=g)))
    assert not torch.equal(e1, e2)  # next epoch, new order
    assert a[0].shape == (7, 1, 2, 2)


@pytest.mark.parametrize("bs", [0, -2, 1.5])
def test_batches_bad_size(bs):
    with pytest.raises(ValueError, match="batch_size"):
        batches(torch.arange(4), bs)
