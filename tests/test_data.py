"""tapeflow.data: IDX reading and verification, dataset lookup and download, batching, sharding.

Nothing here reaches the internet: downloads go to a local http.server on 127.0.0.1 or to
file:// URLs, and an autouse fixture points the default mirror at a closed local port.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tapeflow import data

REAL_DATA_DIR = os.environ.get("TAPEFLOW_DATA_DIR")  # read before the fixture below clears it
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TAPEFLOW_DATA_DIR", raising=False)
    monkeypatch.setenv("TAPEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TAPEFLOW_DATA_MIRROR", "http://127.0.0.1:9/")  # discard port: refused
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # No Debian system copy may leak into these tests.
    spec = data._DATASETS["fashion-mnist"]
    monkeypatch.setitem(data._DATASETS, "fashion-mnist",
                        data._Spec(spec.title, spec.sha256, spec.mirrors, ()))


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, content: bytes, *, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def fake_dataset(seed: int, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {STEMS[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            STEMS[1]: rng.integers(0, 10, n_train).astype(np.uint8),
            STEMS[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            STEMS[3]: rng.integers(0, 10, n_test).astype(np.uint8)}


def write_dataset(folder: Path, arrays: dict[str, np.ndarray], *, gz: bool = True) -> dict:
    """Write the four files; return their hash table (computed here, independently)."""
    hashes = {}
    for stem, array in arrays.items():
        content = idx_bytes(array)
        write(folder / (stem + ".gz" if gz else stem), content, gz=gz)
        hashes[stem] = hashlib.sha256(content).hexdigest()
    return hashes


def assert_splits_equal(splits: data.Splits, arrays: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(splits.train_images, arrays[STEMS[0]])
    np.testing.assert_array_equal(splits.train_labels, arrays[STEMS[1]].astype(np.int64))
    np.testing.assert_array_equal(splits.test_images, arrays[STEMS[2]])
    np.testing.assert_array_equal(splits.test_labels, arrays[STEMS[3]].astype(np.int64))
    assert splits.train_labels.dtype == np.int64 and splits.train_images.dtype == np.uint8


# ---------------------------------------------------------------------------------------------
# IDX reader


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    array = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    path = write(tmp_path / "x.idx", idx_bytes(array), gz=gz)
    out = data.read_idx(path, sha256=hashlib.sha256(idx_bytes(array)).hexdigest())
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_hash_is_of_uncompressed_content(tmp_path):
    content = idx_bytes(np.arange(100, dtype=np.uint8))
    fast = write(tmp_path / "fast.gz", gzip.compress(content, compresslevel=1), gz=False)
    best = write(tmp_path / "best.gz", gzip.compress(content, compresslevel=9, mtime=5), gz=False)
    raw = write(tmp_path / "raw", content, gz=False)
    assert fast.read_bytes() != best.read_bytes()
    expected = hashlib.sha256(content).hexdigest()
    assert {data.sha256_uncompressed(p) for p in (fast, best, raw)} == {expected}


def test_multi_member_gzip(tmp_path):
    content = idx_bytes(np.arange(50, dtype=np.uint8))
    members = gzip.compress(content[:20]) + gzip.compress(content[20:])
    path = write(tmp_path / "x.gz", members + b"\x00" * 10, gz=False)  # with zero padding
    np.testing.assert_array_equal(data.read_idx(path), np.arange(50, dtype=np.uint8))
    write(path, members + b"\x00\x00junk", gz=False)
    with pytest.raises(data.DatasetError, match="corrupt gzip data"):
        data.read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_names_file_and_sizes(tmp_path, gz):
    content = idx_bytes(np.zeros((10, 28, 28), np.uint8))  # 16 + 7840 bytes
    path = write(tmp_path / "short", content[:-100], gz=gz)
    with pytest.raises(data.DatasetError, match="truncated") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)
    assert "expected 7856 bytes, got 7756" in str(info.value)


def test_truncated_header(tmp_path):
    path = write(tmp_path / "hdr", bytes([0, 0, 8, 3, 0, 0]), gz=False)
    with pytest.raises(data.DatasetError, match="expected a complete IDX header, got 6"):
        data.read_idx(path)


def test_trailing_bytes_are_an_error(tmp_path):
    path = write(tmp_path / "long", idx_bytes(np.zeros(5, np.uint8)) + b"xx", gz=True)
    with pytest.raises(data.DatasetError, match="expected 13 bytes, read at least 15"):
        data.read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    rng = np.random.default_rng(0)  # incompressible, so half the file is about half the data
    packed = gzip.compress(idx_bytes(rng.integers(0, 256, 40000, dtype=np.uint8)))
    path = write(tmp_path / "cut.gz", packed[: len(packed) // 2], gz=False)
    with pytest.raises(data.DatasetError, match="gzip stream ends early") as info:
        data.read_idx(path)
    message = str(info.value)
    assert str(path) in message and "expected 40008 bytes, got " in message
    got = int(message.split("got ")[1].split()[0])
    assert 0 < got < 40008
    # Only the 8-byte trailer (CRC-32, length) missing: all data is there, still an error.
    write(path, packed[:-8], gz=False)
    with pytest.raises(data.DatasetError, match="ends early, expected 40008 bytes, got 40008"):
        data.read_idx(path)
    with pytest.raises(data.DatasetError, match="gzip stream ends early"):
        data.sha256_uncompressed(path)


def test_corrupt_gzip(tmp_path):
    packed = bytearray(gzip.compress(idx_bytes(np.arange(4000, dtype=np.int32))))
    packed[len(packed) // 2] ^= 0xFF
    packed[len(packed) // 2 + 1] ^= 0xFF
    path = write(tmp_path / "bad.gz", bytes(packed), gz=False)
    with pytest.raises(data.DatasetError, match="corrupt gzip data") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_gzip_crc_mismatch(tmp_path):
    packed = bytearray(gzip.compress(idx_bytes(np.arange(10, dtype=np.uint8))))
    packed[-8] ^= 0xFF  # first byte of the CRC-32 trailer
    path = write(tmp_path / "crc.gz", bytes(packed), gz=False)
    with pytest.raises(data.DatasetError, match="corrupt gzip data"):
        data.read_idx(path)


def _bomb(path: Path, dims: tuple[int, ...], zeros: int) -> Path:
    """A gzip file whose IDX header declares ``dims`` and whose payload is ``zeros`` zero
    bytes compressed ~1000:1 (a decompression bomb when ``zeros`` is large)."""
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    packer = __import__("zlib").compressobj(9, 8, 31)
    parts = [packer.compress(header)]
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        parts.append(packer.compress(block))
    path.write_bytes(b"".join(parts) + packer.flush())
    return path


def test_gzip_bomb_declaring_6_gib_is_refused_at_its_header(tmp_path):
    bomb = _bomb(tmp_path / "bomb.gz", (8217411, 28, 28), 64 << 20)  # says 6 GiB, 64 KiB file
    assert bomb.stat().st_size < 200_000
    with pytest.raises(data.DatasetError, match=r"declares 6,442,450,240 bytes .*limit"):
        data.read_idx(bomb)
    with pytest.raises(data.DatasetError, match="truncated: expected 6442450240 bytes, got "
                                                "67108880"):
        data.read_idx(bomb, max_bytes=8 << 30)  # allowed: inflates only what is there (64 MiB)


def test_max_bytes_from_the_environment(tmp_path, monkeypatch):
    f = write(tmp_path / "a", idx_bytes(np.zeros((10, 10), np.uint8)), gz=False)
    monkeypatch.setenv("TAPEFLOW_MAX_IDX_BYTES", "50")
    with pytest.raises(data.DatasetError, match="declares 112 bytes .* 50-byte limit"):
        data.read_idx(f)
    assert data.read_idx(f, max_bytes=112).shape == (10, 10)
    monkeypatch.setenv("TAPEFLOW_MAX_IDX_BYTES", "lots")
    with pytest.raises(data.DatasetError, match="TAPEFLOW_MAX_IDX_BYTES='lots'"):
        data.read_idx(f)


def test_canonical_names_are_bounded_by_the_canonical_sizes(tmp_path):
    """Under a canonical name with verification on, a header declaring another size (say a
    600 MB bomb, within the general limit) is refused before its payload is inflated."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    _bomb(folder / "train-images-idx3-ubyte.gz", (800_000, 28, 28), 8 << 20)
    for stem in STEMS[1:]:  # present (never read: the first file already fails)
        (folder / stem).write_bytes(b"")
    with pytest.raises(data.DatasetError, match=r"declares 627,200,016 bytes .* canonical "
                                                r"file has 47,040,016"):
        data.load_mnist(tmp_path, download=False)
    assert dict(data.KNOWN_SIZES) == {STEMS[0]: 47_040_016, STEMS[1]: 60_008,
                                      STEMS[2]: 7_840_016, STEMS[3]: 10_008}


def test_wrong_magic_and_type_code(tmp_path):
    path = write(tmp_path / "magic", b"\x01\x00\x08\x01" + b"\x00\x00\x00\x01" + b"\x07", gz=True)
    with pytest.raises(data.DatasetError, match="not an IDX file") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)
    path = write(tmp_path / "code", b"\x00\x00\x0a\x01" + b"\x00\x00\x00\x01" + b"\x07", gz=False)
    with pytest.raises(data.DatasetError, match="unknown IDX type code 0x0A"):
        data.read_idx(path)


def test_wrong_hash_names_file_expected_and_actual(tmp_path):
    content = idx_bytes(np.arange(10, dtype=np.uint8))
    path = write(tmp_path / "x.gz", content, gz=True)
    actual = hashlib.sha256(content).hexdigest()
    with pytest.raises(data.DatasetError) as info:
        data.read_idx(path, sha256="ab" * 32)
    message = str(info.value)
    assert str(path) in message and "ab" * 32 in message and actual in message
    assert issubclass(data.DatasetError, ValueError)


# ---------------------------------------------------------------------------------------------
# Lookup order and verification of local files


def test_lookup_order_arg_env_cache(tmp_path, monkeypatch):
    arrays = {where: fake_dataset(seed) for seed, where in enumerate(["arg", "env", "cache"])}
    hashes = {where: write_dataset(tmp_path / where / "mnist", a) for where, a in arrays.items()}
    # Files written straight into the cache folder (no dataset subfolder): <cache>/mnist.
    monkeypatch.setenv("TAPEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TAPEFLOW_DATA_DIR", str(tmp_path / "env"))
    load = functools.partial(data.load_mnist, download=False)
    assert_splits_equal(load(tmp_path / "arg", files=hashes["arg"]), arrays["arg"])
    assert_splits_equal(load(files=hashes["env"]), arrays["env"])
    monkeypatch.delenv("TAPEFLOW_DATA_DIR")
    assert_splits_equal(load(files=hashes["cache"]), arrays["cache"])


def test_files_directly_in_data_dir_and_raw(tmp_path):
    arrays = fake_dataset(3)
    hashes = write_dataset(tmp_path / "flat", arrays, gz=False)
    assert_splits_equal(data.load_fashion_mnist(tmp_path / "flat", download=False, files=hashes),
                        arrays)


def test_system_dir_for_fashion_mnist(tmp_path, monkeypatch):
    arrays = fake_dataset(4)
    hashes = write_dataset(tmp_path / "usr-share", arrays)
    spec = data._DATASETS["fashion-mnist"]
    monkeypatch.setitem(data._DATASETS, "fashion-mnist",
                        data._Spec(spec.title, spec.sha256, spec.mirrors,
                                   (str(tmp_path / "usr-share"),)))
    assert_splits_equal(data.load_fashion_mnist(download=False, files=hashes), arrays)


def test_local_file_with_wrong_hash_and_verify_false(tmp_path):
    arrays = fake_dataset(5)
    hashes = write_dataset(tmp_path / "d", arrays)
    bad = dict(hashes, **{STEMS[3]: "0" * 64})
    with pytest.raises(data.DatasetError, match="SHA-256 mismatch") as info:
        data.load_mnist(tmp_path / "d", download=False, files=bad)
    assert str(tmp_path / "d" / (STEMS[3] + ".gz")) in str(info.value)
    assert hashes[STEMS[3]] in str(info.value)
    # Custom data: the caller explicitly opts out of verification of local files.
    assert_splits_equal(data.load_mnist(tmp_path / "d", download=False, files=bad, verify=False),
                        arrays)
    # The built-in table is used without files=: these fake files are not MNIST (refused by
    # their canonical size already, before hashing).
    with pytest.raises(data.DatasetError, match="not the canonical file"):
        data.load_mnist(tmp_path / "d", download=False)


def test_files_table_must_be_complete(tmp_path):
    with pytest.raises(ValueError, match="files= must map exactly"):
        data.load_mnist(tmp_path, download=False, files={STEMS[0]: "0" * 64})


def test_bad_shapes_and_labels_rejected(tmp_path):
    arrays = fake_dataset(6)
    arrays[STEMS[1]] = np.full(5, 10, np.uint8)
    hashes = write_dataset(tmp_path / "labels", arrays)
    with pytest.raises(data.DatasetError, match=r"labels must lie in 0..9, got 10..10"):
        data.load_mnist(tmp_path / "labels", download=False, files=hashes)
    arrays = fake_dataset(6)
    arrays[STEMS[3]] = np.zeros(4, np.uint8)  # 3 test images, 4 labels
    hashes = write_dataset(tmp_path / "count", arrays)
    with pytest.raises(data.DatasetError, match=r"3 images but labels of shape \(4,\)"):
        data.load_mnist(tmp_path / "count", download=False, files=hashes)


def test_offline_error_lists_files_and_where_to_put_them(tmp_path):
    with pytest.raises(data.DatasetError) as info:
        data.load_fashion_mnist(tmp_path / "empty", download=False)
    message = str(info.value)
    for stem in STEMS:
        assert f"{stem}.gz" in message
    assert str(tmp_path / "empty" / "fashion-mnist") in message
    assert str(tmp_path / "cache" / "fashion-mnist") in message
    assert "TAPEFLOW_DATA_DIR" in message and "download=False" in message


def test_normalize():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    flat = data.normalize(images)
    assert flat.dtype == np.float32 and flat.shape == (1, 4)
    np.testing.assert_allclose(flat, [[0.0, 1.0, 0.2, 0.4]], rtol=1e-6)
    assert data.normalize(images, flatten=False).shape == (1, 2, 2)


# ---------------------------------------------------------------------------------------------
# Downloads (local only)


@pytest.fixture
def server(tmp_path):
    """An http.server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_from_local_http_mirror(tmp_path, server):
    root, url = server
    arrays = fake_dataset(7)
    hashes = write_dataset(root / "mnist", arrays)
    # The first mirror has nothing (404), the second serves the files.
    splits = data.load_mnist(tmp_path / "none", mirrors=[url + "/missing/", url + "/{name}/"],
                             files=hashes)
    assert_splits_equal(splits, arrays)
    cache = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(s + ".gz" for s in STEMS)
    # Now cached: loads without a network and without download.
    assert_splits_equal(data.load_mnist(tmp_path / "none", download=False, files=hashes), arrays)


def test_download_env_mirror_and_file_url(tmp_path, server, monkeypatch):
    root, url = server
    arrays = fake_dataset(8)
    hashes = write_dataset(root, arrays)
    monkeypatch.setenv("TAPEFLOW_DATA_MIRROR", url)
    assert_splits_equal(data.load_fashion_mnist(files=hashes), arrays)
    arrays = fake_dataset(9)
    hashes = write_dataset(tmp_path / "mirror", arrays)
    monkeypatch.setenv("TAPEFLOW_CACHE_DIR", str(tmp_path / "cache2"))
    splits = data.load_mnist(mirrors=(tmp_path / "mirror").as_uri(), files=hashes)
    assert_splits_equal(splits, arrays)


def test_download_hash_mismatch_removes_file(tmp_path, server):
    root, url = server
    arrays = fake_dataset(10)
    hashes = write_dataset(root, arrays)
    bad = dict(hashes, **{STEMS[0]: "f" * 64})
    with pytest.raises(data.DatasetError) as info:
        data.load_mnist(tmp_path / "none", mirrors=[url], files=bad, verify=False)
    message = str(info.value)
    assert "SHA-256 mismatch" in message and "f" * 64 in message and hashes[STEMS[0]] in message
    assert f"{url}/{STEMS[0]}.gz" in message
    cache = tmp_path / "cache" / "mnist"
    assert not (cache / f"{STEMS[0]}.gz").exists()
    assert not (cache / f"{STEMS[0]}.gz.part").exists()


def test_download_failure_says_where_to_put_files(tmp_path):
    with pytest.raises(data.DatasetError) as info:
        data.load_mnist(tmp_path / "none", mirrors=["http://127.0.0.1:9/"])
    message = str(info.value)
    assert "download failed" in message
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "none" / "mnist") in message and "TAPEFLOW_DATA_DIR" in message
    assert not any((tmp_path / "cache" / "mnist").iterdir())


# ---------------------------------------------------------------------------------------------
# Real data (only where TAPEFLOW_DATA_DIR holds it)


@pytest.mark.parametrize("name, loader", [("mnist", data.load_mnist),
                                          ("fashion-mnist", data.load_fashion_mnist)])
def test_real_dataset(name, loader):
    folder = Path(REAL_DATA_DIR or "/nonexistent") / name
    if not REAL_DATA_DIR or not (folder / f"{STEMS[0]}.gz").is_file():
        pytest.skip(f"real {name} not available: set TAPEFLOW_DATA_DIR to a folder with {name}/")
    splits = loader(REAL_DATA_DIR, download=False)
    assert splits.train_images.shape == (60000, 28, 28)
    assert splits.train_labels.shape == (60000,)
    assert splits.test_images.shape == (10000, 28, 28)
    assert splits.test_labels.shape == (10000,)
    assert splits.train_images.dtype == np.uint8 and splits.test_labels.dtype == np.int64
    assert set(np.unique(splits.train_labels)) == set(range(10))
    assert set(np.unique(splits.test_labels)) == set(range(10))
    # The verification ran on these files: an independent hash agrees with the table, and a
    # wrong table entry makes the same load fail.
    path = folder / f"{STEMS[3]}.gz"
    expected = data.KNOWN_SHA256[name][STEMS[3]]
    assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == expected
    bad = dict(data.KNOWN_SHA256[name], **{STEMS[3]: "0" * 64})
    with pytest.raises(data.DatasetError, match="SHA-256 mismatch"):
        loader(REAL_DATA_DIR, download=False, files=bad)


# ---------------------------------------------------------------------------------------------
# Batching and sharding


def test_batches_permutation_is_a_function_of_seed_and_epoch():
    got = np.concatenate(list(data.batches(100, 32, seed=3, epoch=2)))
    np.testing.assert_array_equal(got, np.random.default_rng([3, 2]).permutation(100))
    again = np.concatenate(list(data.batches(100, 32, seed=3, epoch=2)))
    np.testing.assert_array_equal(got, again)
    other_epoch = np.concatenate(list(data.batches(100, 32, seed=3, epoch=3)))
    other_seed = np.concatenate(list(data.batches(100, 32, seed=4, epoch=2)))
    assert not np.array_equal(got, other_epoch) and not np.array_equal(got, other_seed)
    assert [len(b) for b in data.batches(100, 32, seed=3, epoch=2)] == [32, 32, 32, 4]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), batch_size=st.integers(1, 64), seed=st.integers(0, 2**32),
       epoch=st.integers(0, 50), drop=st.booleans(), shuffle=st.booleans())
def test_batches_cover_range(n, batch_size, seed, epoch, drop, shuffle):
    parts = list(data.batches(n, batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                              drop_remainder=drop))
    assert all(p.dtype == np.int64 for p in parts)
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if drop:
        assert [len(p) for p in parts] == [batch_size] * (n // batch_size)
        assert len(np.unique(flat)) == len(flat) and set(flat) <= set(range(n))
    else:
        assert sorted(flat.tolist()) == list(range(n))
        if not shuffle:
            np.testing.assert_array_equal(flat, np.arange(n))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 200), size=st.integers(1, 5), seed=st.integers(0, 1000))
def test_shard_indices_cover_global_batch_exactly(n, size, seed):
    global_idx = np.random.default_rng(seed).permutation(1000)[:n]
    parts = [data.shard_indices(global_idx, rank, size) for rank in range(size)]
    np.testing.assert_array_equal(np.concatenate(parts), global_idx)
    lengths = [len(p) for p in parts]
    assert lengths == [n // size + (rank < n % size) for rank in range(size)]
    ranges = [data.shard_range(n, rank, size) for rank in range(size)]
    assert [i for r in ranges for i in r] == list(range(n))
    for part, r in zip(parts, ranges):
        np.testing.assert_array_equal(part, global_idx[r.start:r.stop])


def test_one_two_four_ranks_see_the_same_global_batches():
    for global_batch in data.batches(1000, 250, seed=1, epoch=0):
        for size in (1, 2, 4):
            union = np.concatenate([data.shard_indices(global_batch, r, size)
                                    for r in range(size)])
            np.testing.assert_array_equal(union, global_batch)
    assert data.shard_range(10, 0, 4) == range(0, 3)
    assert data.shard_range(10, 3, 4) == range(8, 10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(10, 0, seed=0, epoch=0))
    with pytest.raises(ValueError, match="rank=4, size=4"):
        data.shard_range(10, 4, 4)
    with pytest.raises(ValueError, match="rank=-1"):
        data.shard_indices(np.arange(3), -1, 2)
