"""Datasets: a verified IDX reader, MNIST / Fashion-MNIST loaders, batching and rank sharding.

Files are checked by the SHA-256 of their *uncompressed* content, so a gzip file from any mirror
(or an uncompressed copy) verifies against the same table. A wrong, truncated or corrupt file is
a :class:`DatasetError` naming the file, never a silently bad array. Nothing is pickled.

>>> import numpy as np
>>> from tapeflow import data
>>> splits = data.load_mnist()                      # doctest: +SKIP
>>> x = data.normalize(splits.train_images)         # doctest: +SKIP
>>> [len(idx) for idx in data.batches(10, 4, seed=0, epoch=0)]
[4, 4, 2]
>>> data.shard_indices(np.arange(10), rank=1, size=3)  # rank 1 of 3: ranks get 4, 3, 3
array([4, 5, 6])
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from types import SimpleNamespace as _Namespace

from .dataset import AUTOTUNE, INFINITE_CARDINALITY, UNKNOWN_CARDINALITY, Dataset

#: ``tf.data.experimental``'s constants.
experimental = _Namespace(AUTOTUNE=AUTOTUNE, INFINITE_CARDINALITY=INFINITE_CARDINALITY,
                          UNKNOWN_CARDINALITY=UNKNOWN_CARDINALITY)

__all__ = [
    "DatasetError",
    "Splits",
    "KNOWN_SHA256",
    "KNOWN_SIZES",
    "MAX_IDX_BYTES",
    "read_idx",
    "sha256_uncompressed",
    "load_mnist",
    "load_fashion_mnist",
    "normalize",
    "batches",
    "shard_indices",
    "shard_range",
    "Dataset",
    "AUTOTUNE",
    "experimental",
]

# IDX type codes -> big-endian NumPy dtypes (http://yann.lecun.com/exdb/mnist/, "IDX format").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Read compressed input in small chunks: deflate expands at most ~1032x, so one chunk can never
# inflate to more than ~64 MiB before the size check in read_idx sees it.
_CHUNK = 1 << 16
_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: Uncompressed size in bytes of each canonical file (MNIST and Fashion-MNIST alike): a header
#: declaring anything else is refused before a byte of payload is inflated.
KNOWN_SIZES: Mapping[str, int] = MappingProxyType(dict(zip(_STEMS, (
    16 + 60000 * 28 * 28, 8 + 60000, 16 + 10000 * 28 * 28, 8 + 10000))))
#: The most a user's IDX file may declare (uncompressed) unless ``max_bytes`` says otherwise;
#: $TAPEFLOW_MAX_IDX_BYTES overrides it. A gzip bomb declaring more is refused at its header.
MAX_IDX_BYTES = 1 << 30


class DatasetError(ValueError):
    """A dataset file is missing, corrupt, truncated, malformed or fails verification."""


class _GzipEndsEarly(DatasetError):
    """Raised by the chunk reader; read_idx turns it into a message with byte counts."""


@dataclass(frozen=True)
class _Spec:
    title: str
    sha256: Mapping[str, str]          # file stem -> SHA-256 of the uncompressed content
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = field(default=())


_DATASETS: dict[str, _Spec] = {
    "mnist": _Spec("MNIST", MappingProxyType(dict(zip(_STEMS, (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2")))),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",
         "https://storage.googleapis.com/cvdf-datasets/mnist/")),
    "fashion-mnist": _Spec("Fashion-MNIST", MappingProxyType(dict(zip(_STEMS, (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34")))),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        # Debian's `dataset-fashion-mnist` package installs the canonical .gz files here.
        ("/usr/share/datasets/fashion-mnist",)),
}

#: Dataset name -> file stem -> SHA-256 of the uncompressed file, e.g.
#: ``KNOWN_SHA256["mnist"]["t10k-labels-idx1-ubyte"]``.
KNOWN_SHA256: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {name: spec.sha256 for name, spec in _DATASETS.items()})


# --------------------------------------------------------------------------------------------
# Reading and verifying


def _uncompressed_chunks(path: Path) -> Iterator[bytes]:
    """Yield the uncompressed bytes of ``path``: gunzipped if it starts with the gzip magic."""
    with open(path, "rb") as f:
        head = f.read(2)
        if head != b"\x1f\x8b":
            yield head
            yield from iter(lambda: f.read(_CHUNK), b"")
            return
        # zlib rather than the gzip module: small input chunks bound how much one step can
        # inflate, and each member's CRC-32 and length are still checked by zlib.
        pending, inflater = head, zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        while True:
            chunk = pending or f.read(_CHUNK)
            pending = b""
            if not chunk:
                break
            try:
                yield inflater.decompress(chunk)
            except zlib.error as e:
                raise DatasetError(f"{path}: corrupt gzip data ({e}); delete the file and "
                                   "fetch it again") from None
            if inflater.eof:  # a member ended; another may follow, after optional zero padding
                rest = inflater.unused_data.lstrip(b"\x00")
                while not rest and (more := f.read(_CHUNK)):
                    rest = more.lstrip(b"\x00")
                if not rest:
                    return
                pending, inflater = rest, zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        if not inflater.eof:
            raise _GzipEndsEarly(f"{path}: truncated: the gzip stream ends early; delete the "
                                 "file and fetch it again")


def sha256_uncompressed(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of the uncompressed content of a (possibly gzipped) file."""
    digest = hashlib.sha256()
    for chunk in _uncompressed_chunks(Path(path)):
        digest.update(chunk)
    return digest.hexdigest()


def _max_bytes(max_bytes: int | None) -> int:
    if max_bytes is not None:
        return int(max_bytes)
    text = os.environ.get("TAPEFLOW_MAX_IDX_BYTES")
    try:
        return int(text) if text else MAX_IDX_BYTES
    except ValueError:
        raise DatasetError(f"TAPEFLOW_MAX_IDX_BYTES={text!r} is not a whole number of bytes"
                           ) from None


def read_idx(path: str | os.PathLike[str], *, sha256: str | None = None,
             size: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or raw) into a native-endian array.

    The header (``0x0000``, type code, ndim, big-endian uint32 dims) is validated and the
    payload must hold exactly ``prod(dims)`` items. With ``sha256``, the uncompressed content
    must hash to it (computed in the same pass that reads the file).

    Memory is bounded before decompression goes far: the uncompressed size the header declares
    must equal ``size`` when given (the canonical files' :data:`KNOWN_SIZES`), and may not
    exceed ``max_bytes`` (default :data:`MAX_IDX_BYTES`, 1 GiB); inflating stops as soon as
    the data passes the declared size. So a small gzip bomb costs at most that much memory.
    """
    path = Path(path)
    limit = _max_bytes(max_bytes)
    buf, digest = bytearray(), hashlib.sha256()
    header_len = expected = None
    dims: tuple[int, ...] = ()
    chunks, ends_early = _uncompressed_chunks(path), False
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            break
        except _GzipEndsEarly:
            ends_early = True
            break
        buf += chunk
        digest.update(chunk)
        if header_len is None and len(buf) >= 4:
            if buf[0] != 0 or buf[1] != 0:
                raise DatasetError(f"{path}: not an IDX file (magic bytes {bytes(buf[:2])!r}, "
                                   "expected b'\\x00\\x00')")
            if buf[2] not in _IDX_DTYPES:
                raise DatasetError(f"{path}: unknown IDX type code 0x{buf[2]:02X} "
                                   f"(known: {', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)})")
            header_len = 4 + 4 * buf[3]
        if expected is None and header_len is not None and len(buf) >= header_len:
            dims = tuple(int.from_bytes(buf[i:i + 4], "big") for i in range(4, header_len, 4))
            expected = header_len + math.prod(dims) * np.dtype(_IDX_DTYPES[buf[2]]).itemsize
            if size is not None and expected != size:
                raise DatasetError(f"{path}: not the canonical file: its IDX header "
                                   f"declares {expected:,} bytes (dims {dims}), the canonical "
                                   f"file has {size:,}; the file is damaged, or it is your "
                                   "own data (then skip verification)")
            if expected > limit:
                raise DatasetError(f"{path}: the IDX header declares {expected:,} bytes (dims "
                                   f"{dims}), more than the {limit:,}-byte limit; raise "
                                   "max_bytes or $TAPEFLOW_MAX_IDX_BYTES if the file is real")
        if expected is not None and len(buf) > expected:  # stop early: never inflate a bomb
            raise DatasetError(f"{path}: more data than the IDX header declares: expected "
                               f"{expected} bytes, read at least {len(buf)}")
    if ends_early or expected is None or len(buf) < expected:
        want = f"{expected} bytes" if expected is not None else "a complete IDX header"
        how = "the gzip stream ends early, " if ends_early else ""
        raise DatasetError(f"{path}: truncated: {how}expected {want}, got {len(buf)} "
                           "(uncompressed); delete the file and fetch it again")
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        raise DatasetError(f"{path}: SHA-256 mismatch (uncompressed content): expected "
                           f"{sha256.lower()}, got {digest.hexdigest()}; the file is damaged "
                           "or not the expected one")
    dtype = np.dtype(_IDX_DTYPES[buf[2]])
    array = np.frombuffer(buf, dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=dtype.itemsize > 1)


# --------------------------------------------------------------------------------------------
# Finding, downloading and loading MNIST-style datasets


@dataclass(frozen=True, eq=False)
class Splits:
    """Train and test arrays: images uint8 ``(N, 28, 28)``, labels int64 ``(N,)``.

    Unpacks as Keras's ``load_data()`` does: ``(x_train, y_train), (x_test, y_test) = splits``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def __iter__(self):
        yield self.train_images, self.train_labels
        yield self.test_images, self.test_labels


def _cache_dir(name: str) -> Path:
    root = os.environ.get("TAPEFLOW_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("tapeflow")
    return Path(root) / name


def _search_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Directories to look in, in order; each base dir is tried as ``base/name`` then ``base``."""
    base = data_dir if data_dir is not None else os.environ.get("TAPEFLOW_DATA_DIR") or None
    dirs = [Path(base) / name, Path(base)] if base is not None else []
    dirs.append(_cache_dir(name))  # also where downloads go, so always searched
    dirs += [Path(d) for d in _DATASETS[name].system_dirs]
    return list(dict.fromkeys(dirs))


def _find(stem: str, dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / f"{stem}.gz", d / stem):
            if candidate.is_file():
                return candidate
    return None


def _mirror_list(name: str, mirrors: Sequence[str] | str | None) -> list[str]:
    if mirrors is None:
        mirrors = os.environ.get("TAPEFLOW_DATA_MIRROR") or _DATASETS[name].mirrors
    if isinstance(mirrors, str):
        mirrors = mirrors.replace(",", " ").split()
    # A mirror may hold several datasets: "{name}" in a base URL becomes the dataset name.
    return [m.replace("{name}", name).rstrip("/") + "/" for m in mirrors]


def _fetch(url: str, dest: Path) -> None:
    if url.startswith("file:"):
        shutil.copyfile(urllib.request.url2pathname(urllib.parse.urlparse(url).path), dest)
        return
    import pooch
    from tqdm.auto import tqdm

    # total=1 only makes the bar truthy for pooch, which then sets the real total (bytes).
    bar = tqdm(total=1, desc=dest.name.removesuffix(".part"), unit="B", unit_scale=True)
    try:
        pooch.HTTPDownloader(progressbar=bar, chunk_size=_CHUNK, timeout=60)(url, str(dest), None)
    except BaseException:
        bar.leave = False  # erase the bar of a failed mirror; the error says what happened
        raise
    finally:
        bar.close()


def _download(name: str, stem: str, sha256: str, mirrors: list[str],
              size: int | None) -> tuple[Path, np.ndarray]:
    """Fetch ``stem.gz`` into the cache, verify it, and only then give it its final name."""
    cache = _cache_dir(name)
    cache.mkdir(parents=True, exist_ok=True)
    final, part = cache / f"{stem}.gz", cache / f"{stem}.gz.part"
    failures = []
    for base in mirrors:
        url = base + f"{stem}.gz"
        part.unlink(missing_ok=True)
        try:
            _fetch(url, part)
            array = read_idx(part, sha256=sha256, size=size)
        except (OSError, ValueError) as e:  # requests' errors are OSErrors; ours ValueErrors
            part.unlink(missing_ok=True)
            failures.append(f"{url}: {e}")
            continue
        os.replace(part, final)
        return final, array
    raise DatasetError("download failed (any partial file was removed):\n  "
                       + "\n  ".join(failures or ["no mirror given"]))


def _missing_message(spec: _Spec, name: str, missing: list[str], dirs: list[Path],
                     mirrors: Sequence[str] | str | None, why: str) -> str:
    files = "\n".join(f"  {s}.gz   (or uncompressed: {s})" for s in missing)
    looked = "\n".join(f"  {d}" for d in dirs)
    urls = "\n".join(f"  {m}{s}.gz" for m in _mirror_list(name, mirrors)[:1] for s in missing)
    return (f"{spec.title}: {why}\nMissing files:\n{files}\nLooked in:\n{looked}\n"
            f"Put them into {dirs[0]}/ (or into <dir>/{name}/ and set TAPEFLOW_DATA_DIR=<dir>, "
            f"or pass data_dir=<dir>). They can be fetched from:\n{urls}")


def _load(name: str, data_dir: str | os.PathLike[str] | None, download: bool, verify: bool,
          mirrors: Sequence[str] | str | None, files: Mapping[str, str] | None) -> Splits:
    spec = _DATASETS[name]
    hashes = dict(spec.sha256 if files is None else files)
    if set(hashes) != set(_STEMS):
        raise ValueError(f"files= must map exactly {list(_STEMS)} to SHA-256 hex digests, "
                         f"got keys {sorted(hashes)}")
    dirs = _search_dirs(name, data_dir)
    found = {stem: _find(stem, dirs) for stem in _STEMS}
    missing = [stem for stem, path in found.items() if path is None]
    if missing and not download:
        raise DatasetError(_missing_message(spec, name, missing, dirs, mirrors,
                                            "not found locally, and download=False"))
    arrays: dict[str, np.ndarray] = {}
    for stem in _STEMS:
        path = found[stem]
        if path is not None:
            arrays[stem] = read_idx(path, sha256=hashes[stem] if verify else None,
                                    size=KNOWN_SIZES[stem] if verify and files is None else None)
            continue
        try:  # downloads are verified even with verify=False: that flag is for local files
            found[stem], arrays[stem] = _download(
                name, stem, hashes[stem], _mirror_list(name, mirrors),
                KNOWN_SIZES[stem] if files is None else None)
        except DatasetError as e:
            message = _missing_message(spec, name, missing, dirs, mirrors, str(e))
            raise DatasetError(message) from None
    for split in ("train", "t10k"):
        images = arrays[f"{split}-images-idx3-ubyte"]
        labels = arrays[f"{split}-labels-idx1-ubyte"]
        where = f"{found[f'{split}-images-idx3-ubyte']}, {found[f'{split}-labels-idx1-ubyte']}"
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DatasetError(f"{where}: images must be uint8 (N, 28, 28), got "
                               f"{images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetError(f"{where}: {len(images)} images but labels of shape "
                               f"{labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DatasetError(f"{where}: labels must lie in 0..9, got "
                               f"{labels.min()}..{labels.max()}")
    return Splits(arrays["train-images-idx3-ubyte"],
                  arrays["train-labels-idx1-ubyte"].astype(np.int64),
                  arrays["t10k-images-idx3-ubyte"],
                  arrays["t10k-labels-idx1-ubyte"].astype(np.int64))


def load_mnist(data_dir: str | os.PathLike[str] | None = None, *, download: bool = True,
               verify: bool = True, mirrors: Sequence[str] | str | None = None,
               files: Mapping[str, str] | None = None) -> Splits:
    """Load MNIST, verified by SHA-256 of the uncompressed files.

    Looks in ``data_dir`` (else ``$TAPEFLOW_DATA_DIR``; in ``<dir>/mnist/`` or ``<dir>``
    itself), then the user cache (``$TAPEFLOW_CACHE_DIR`` or platformdirs' cache,
    ``<cache>/mnist``), then downloads missing files into that cache from ``mirrors`` (else
    ``$TAPEFLOW_DATA_MIRROR``, else the canonical mirrors). ``verify=False`` skips the hash
    check for files found locally (custom data); downloads are always verified. ``files``
    replaces the hash table (file stem -> SHA-256 of the uncompressed content).
    """
    return _load("mnist", data_dir, download, verify, mirrors, files)


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None, *, download: bool = True,
                       verify: bool = True, mirrors: Sequence[str] | str | None = None,
                       files: Mapping[str, str] | None = None) -> Splits:
    """Load Fashion-MNIST like :func:`load_mnist` (folder ``fashion-mnist``); after the cache
    it also looks in ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``)."""
    return _load("fashion-mnist", data_dir, download, verify, mirrors, files)


def normalize(images: np.ndarray, *, flatten: bool = True) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]; ``(N, 28, 28)`` becomes ``(N, 784)`` if ``flatten``."""
    out = np.asarray(images, dtype=np.float32) / np.float32(255.0)
    return out.reshape(len(out), -1) if flatten else out


# --------------------------------------------------------------------------------------------
# Batching and sharding


def batches(n: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
            drop_remainder: bool = False) -> Iterator[np.ndarray]:
    """Yield int64 index arrays covering ``range(n)`` in batches of ``batch_size``.

    The order is ``np.random.default_rng([seed, epoch]).permutation(n)``: a pure function of
    ``(seed, epoch)``, so every rank and every resumed run sees the same global batches.
    """
    if batch_size <= 0 or n < 0:
        raise ValueError(f"need n >= 0 and batch_size > 0, got n={n}, batch_size={batch_size}")
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)
    else:
        order = np.arange(n, dtype=np.int64)
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def shard_range(n: int, rank: int, size: int) -> range:
    """This rank's contiguous part of ``range(n)``; the first ``n % size`` ranks get one more.

    Together the ranks cover ``range(n)`` exactly once (no padding, no duplicates).
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"need 0 <= rank < size, got rank={rank}, size={size}")
    if n < 0:
        raise ValueError(f"need n >= 0, got {n}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def shard_indices(global_idx: np.ndarray, rank: int, size: int) -> np.ndarray:
    """This rank's contiguous part of one global batch of indices (see :func:`shard_range`).

    Concatenating the parts of ranks ``0..size-1`` gives back ``global_idx``, so 1, 2 or 4
    ranks process the same global batch.
    """
    global_idx = np.asarray(global_idx)
    part = shard_range(len(global_idx), rank, size)
    return global_idx[part.start:part.stop]
