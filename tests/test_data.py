"""Tests of flowlib.datasets.mnist (verified MNIST loading, in-memory mini-batches) and of
flowlib.datasets.download (capped, deadlined, verified downloads), through load_mnist."""

from __future__ import annotations

import builtins
import errno
import gzip
import http.server
import os
import shutil
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import flowlib.datasets.mnist as data
import flowlib.datasets.download as download
from flowlib.datasets.mnist import MNIST_FILES, data_root, load_mnist, mnist_splits
from flowlib.files import workspace
from flowlib.training.fit import batches

from conftest import serve_on_localhost

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
    monkeypatch.delenv("FLOWLIB_DATA", raising=False)
    repo = workspace()

    def holds_mnist(root: Path) -> bool:
        return all((root / "MNIST" / "raw" / f).is_file() for fs in MNIST_FILES.values() for f in fs)

    # The folder holding the files wins (the repository's first); the
    # hermetic test below covers the other cases.
    for expected in (repo / "data", repo.parent / "shared" / "data"):
        if holds_mnist(expected):
            assert data_root() == expected
            break


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
    monkeypatch.setattr(download, "MNIST_MIRRORS", ((tmp_path / "nowhere").as_uri() + "/",))
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
    monkeypatch.setattr(download, "MNIST_MIRRORS", mirrors)
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


@needs_shared
def test_tampered_cache_is_rebuilt(tmp_path):
    # A well-formed cache whose tensors differ from the files by one label is not trusted.
    _raw_copy(tmp_path)
    x, y = load_mnist("test", root=tmp_path, download=False)
    (cache,) = (tmp_path / "MNIST" / "processed").glob("*.pt")
    tampered = y.clone()
    tampered[0] = (tampered[0] + 1) % 10
    torch.save({"images": x, "labels": tampered}, cache)
    x2, y2 = load_mnist("test", root=tmp_path, download=False)
    assert torch.equal(x2, x) and torch.equal(y2, y)


@needs_shared
def test_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    _raw_copy(tmp_path)

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    x, y = load_mnist("test", root=tmp_path, download=False)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert not (tmp_path / "MNIST" / "processed").exists()  # no empty folder, no .part file


# ---------------------------------------------------------------- where the data lives


def _raw_folder_with(root: Path, names: tuple[str, ...] = tuple(n for p in MNIST_FILES.values() for n in p)) -> Path:
    """``root/MNIST/raw`` holding files named like MNIST's; `data_root` looks only at which names exist."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for n in names:
        (raw / n).write_bytes(b"not read: data_root only lists names")
    return raw


def test_empty_repo_folder_does_not_shadow_the_shared_copy(tmp_path, monkeypatch):
    # A failed download of old left an empty <repo>/data/MNIST/raw behind; the
    # shared copy beside the repository must still be found.
    monkeypatch.delenv("FLOWLIB_DATA", raising=False)
    repo, shared = tmp_path / "repo", tmp_path / "shared" / "data"
    (repo / "data" / "MNIST" / "raw").mkdir(parents=True)
    _raw_folder_with(shared)
    monkeypatch.setenv("FLOWLIB_HOME", str(repo))
    assert data_root() == shared
    # A repository folder that really holds the files still comes first on a tie ...
    _raw_folder_with(repo / "data")
    assert data_root() == repo / "data"
    # ... and neither existing means <repo>/data, where downloads go.
    monkeypatch.setenv("FLOWLIB_HOME", str(tmp_path / "elsewhere" / "repo"))
    assert data_root() == tmp_path / "elsewhere" / "repo" / "data"


def test_failed_download_creates_no_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWLIB_DATA", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("FLOWLIB_HOME", str(repo))
    monkeypatch.setattr(download, "MNIST_MIRRORS", ((tmp_path / "nowhere").as_uri() + "/",))
    with pytest.raises(FileNotFoundError, match="Downloading them failed"):
        load_mnist("test")
    assert list(repo.iterdir()) == []  # no data/MNIST/raw to shadow ../shared/data later
    with pytest.raises(FileNotFoundError):
        load_mnist("test", root=tmp_path / "explicit")
    assert not (tmp_path / "explicit").exists()


@needs_shared
def test_failed_write_removes_the_folders_it_created(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MNIST_MIRRORS", (SHARED_RAW.as_uri() + "/",))

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    root = tmp_path / "root"
    with pytest.raises(FileNotFoundError, match="No space left on device") as e:
        load_mnist("test", root=root)
    assert "verified" in str(e.value) and "writing" in str(e.value)
    assert not root.exists()  # neither the folders nor a .part file are left behind


# ---------------------------------------------------------------- permissions


def test_permission_denied_is_reported_as_such(tmp_path, monkeypatch):
    # As root, chmod 000 does not stop reads: simulate the refusal at open().
    raw = _raw_folder_with(tmp_path, MNIST_FILES["test"])
    denied = raw / MNIST_FILES["test"][0]
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(PermissionError, match="(?i)permission denied") as e:
        load_mnist("test", root=tmp_path, download=False)
    assert str(denied) in str(e.value)
    assert "corrupt" not in str(e.value) and "Delete" not in str(e.value)


@needs_shared
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_on_a_real_file(tmp_path):
    raw = _raw_copy(tmp_path)
    denied = raw / MNIST_FILES["test"][0]
    denied.chmod(0)
    try:
        with pytest.raises(PermissionError, match="(?i)permission denied") as e:
            load_mnist("test", root=tmp_path, download=False)
    finally:
        denied.chmod(0o644)
    assert str(denied) in str(e.value) and "corrupt" not in str(e.value)


# ---------------------------------------------------------------- hostile servers

BOMB_BYTES = 64 * 2**20  # decompressed size of the gzip bomb (about 64 KB gzipped)
TRICKLE_S = 8.0  # how long the trickling server keeps going at most


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    """``/<kind>/<file>``: bomb (a gzip bomb), big and big-announced (endless
    bytes, without and with a Content-Length), trickle (a byte every 50 ms)."""

    bomb = gzip.compress(bytes(BOMB_BYTES), compresslevel=9)

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        kind = self.path.strip("/").split("/")[0]
        try:
            getattr(self, "_" + kind.replace("-", "_"), self._missing)()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: what the tests want

    def _missing(self) -> None:
        self.send_error(404)

    def _headers(self, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _bomb(self) -> None:
        self._headers(len(self.bomb))
        self.wfile.write(self.bomb)

    def _endless(self, length: int | None) -> None:
        self._headers(length)
        chunk = os.urandom(1 << 16)
        for _ in range(1024):  # 64 MiB at most
            self.wfile.write(chunk)

    def _big(self) -> None:
        self._endless(None)

    def _big_announced(self) -> None:
        self._endless(64 * 2**20)

    def _trickle(self) -> None:
        self._headers(5 * 2**20)
        stop = time.monotonic() + TRICKLE_S
        while time.monotonic() < stop:
            self.wfile.write(b"\x1f")
            self.wfile.flush()
            time.sleep(0.05)


@pytest.fixture
def hostile_server() -> Iterator[str]:
    """A local HTTP server on 127.0.0.1 serving `_HostileHandler`; yields its base URL."""
    with serve_on_localhost(_HostileHandler) as url:
        yield url.rstrip("/")


def _peak_memory(fn) -> tuple[int, BaseException | None]:
    """Peak bytes Python allocated while ``fn()`` ran, and the exception it raised."""
    tracemalloc.start()
    error = None
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - returned to the test
        error = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


def test_download_gzip_bomb_is_cut_off(tmp_path, monkeypatch, hostile_server):
    limit = 2**20
    monkeypatch.setattr(data, "_MAX_DECOMPRESSED_BYTES", limit)
    monkeypatch.setattr(download, "MNIST_MIRRORS", (hostile_server + "/bomb/",))
    peak, error = _peak_memory(lambda: load_mnist("test", root=tmp_path / "root"))
    assert isinstance(error, FileNotFoundError), error
    assert f"more than {limit:,} bytes" in str(error)
    assert peak < 8 * 2**20, f"{peak:,} bytes allocated for a {BOMB_BYTES:,}-byte bomb"
    assert not (tmp_path / "root").exists()


def test_local_gzip_bomb_is_cut_off(tmp_path, monkeypatch):
    limit = 2**20
    monkeypatch.setattr(data, "_MAX_DECOMPRESSED_BYTES", limit)
    raw = _raw_folder_with(tmp_path, MNIST_FILES["test"])
    bomb = raw / MNIST_FILES["test"][0]
    bomb.write_bytes(_HostileHandler.bomb)
    peak, error = _peak_memory(lambda: load_mnist("test", root=tmp_path, download=False))
    assert isinstance(error, ValueError) and str(bomb) in str(error), error
    assert f"more than {limit:,} bytes" in str(error)
    assert peak < 8 * 2**20, f"{peak:,} bytes allocated for a {BOMB_BYTES:,}-byte bomb"


@pytest.mark.parametrize("kind, message", [("big", "download passed 65,536 bytes"),
                                           ("big-announced", "announces 67,108,864 bytes")])
def test_download_size_is_capped(tmp_path, monkeypatch, hostile_server, kind, message):
    monkeypatch.setattr(download, "_MAX_DOWNLOAD_BYTES", 2**16)
    monkeypatch.setattr(download, "MNIST_MIRRORS", (f"{hostile_server}/{kind}/",))
    peak, error = _peak_memory(lambda: load_mnist("test", root=tmp_path / "root"))
    assert isinstance(error, FileNotFoundError), error
    assert message in str(error)
    assert peak < 8 * 2**20, f"{peak:,} bytes allocated for a download capped at 65,536"
    assert not (tmp_path / "root").exists()


def test_trickling_download_meets_the_deadline(tmp_path, monkeypatch, hostile_server):
    # Each read gets a byte well within the per-read timeout: only a total deadline stops it.
    monkeypatch.setattr(download, "_DEADLINE_S", 1.0)
    monkeypatch.setattr(download, "_TIMEOUT_S", 0.5)
    monkeypatch.setattr(download, "MNIST_MIRRORS", (hostile_server + "/trickle/",))
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="deadline") as e:
        load_mnist("test", root=tmp_path / "root")
    elapsed = time.monotonic() - start
    assert elapsed < 4.0, f"two files at a 1 s deadline each took {elapsed:.1f} s"
    assert all(f"trickle/{f}" in str(e.value) for f in MNIST_FILES["test"])
    assert not (tmp_path / "root").exists()


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
