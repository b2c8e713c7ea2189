"""Every kind of damaged or hostile IDX file is refused with a DatasetError naming the file —
never another exception, a silently wrong array, or unbounded memory. The count of kinds here is
the figure reported for the data-safety issue."""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from tapeflow import data

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    return (bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
            + array.tobytes())


IMAGES = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
GOOD = _idx(IMAGES)
GZ = gzip.compress(GOOD, mtime=0)


def _bomb(declared: tuple[int, ...], zeros: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    header = bytes([0, 0, 8, len(declared)]) + b"".join(struct.pack(">I", d) for d in declared)
    return packer.compress(header) + packer.compress(bytes(zeros)) + packer.flush()


def _flip(raw: bytes, at: int) -> bytes:
    b = bytearray(raw)
    b[at] ^= 0xFF
    return bytes(b)


# name -> bytes of a file read on its own with read_idx (user data: no hash, default cap)
FILE_DAMAGE = {
    "empty": b"",
    "one byte": b"\x00",
    "three bytes": b"\x00\x00\x08",
    "magic byte 0": _flip(GOOD, 0),
    "magic byte 1": _flip(GOOD, 1),
    "unknown type code": GOOD[:2] + b"\x07" + GOOD[3:],
    "ndim says 200, header cut": b"\x00\x00\x08\xc8" + b"\x00" * 12,
    "header cut inside dims": GOOD[:10],
    "payload 1 byte short": GOOD[:-1],
    "payload half": GOOD[:len(GOOD) // 2],
    "payload 1 byte extra": GOOD + b"\x00",
    "payload 1 MB extra": GOOD + bytes(1 << 20),
    "dims declare 6 GiB (raw)": _idx(np.zeros((1, 1, 1), np.uint8))[:4]
    + struct.pack(">III", 8217411, 28, 28) + bytes(100),
    "dims product overflows 64 bits": b"\x00\x00\x08\x04" + struct.pack(">IIII", *[2**32 - 1] * 4),
    "float payload cut": _idx(np.zeros(10, ">f4"), 0x0D)[:-3],
    "gzip cut in the middle": GZ[:len(GZ) // 2],
    "gzip header only": GZ[:10],
    "gzip corrupt deflate": GZ[:20] + _flip(GZ, 20)[20:30] + GZ[30:],
    "gzip CRC-32 wrong": GZ[:-8] + _flip(GZ[-8:], 0),
    "gzip size field wrong": GZ[:-4] + _flip(GZ[-4:], 0),
    "gzip magic then garbage": b"\x1f\x8b" + bytes(range(200)),
    "gzip trailing garbage member": GZ + b"\x1f\x8b\x08\x00garbage",
    "gzip second member cut": GZ + GZ[:len(GZ) // 2],
    "gzip of a truncated IDX": gzip.compress(GOOD[:-100], mtime=0),
    "gzip of extra data": gzip.compress(GOOD + bytes(5000), mtime=0),
    "gzip bomb declaring 6 GiB": _bomb((8217411, 28, 28), 32 << 20),
    "gzip bomb declaring 3 GiB, 1-D": _bomb((3 << 30,), 16 << 20),
    "all zero bytes": bytes(4096),
    "random bytes": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "text file": b"this is not an IDX file\n" * 20,
}


@pytest.mark.parametrize("name", list(FILE_DAMAGE))
def test_damaged_file_is_refused(tmp_path, name):
    path = tmp_path / "damaged-idx"
    path.write_bytes(FILE_DAMAGE[name])
    with pytest.raises(data.DatasetError) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def _dataset(folder: Path, **replace: bytes) -> Path:
    rng = np.random.default_rng(2)
    arrays = {STEMS[0]: IMAGES, STEMS[1]: rng.integers(0, 10, 6).astype(np.uint8),
              STEMS[2]: IMAGES[:3], STEMS[3]: rng.integers(0, 10, 3).astype(np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        (folder / f"{stem}.gz").write_bytes(replace.get(stem, gzip.compress(_idx(array), mtime=0)))
    return folder


# name -> (file stem replaced, content, verify): refused by the loader's checks
LOAD_DAMAGE = {
    "labels above 9": (STEMS[1], _idx(np.full(6, 12, np.uint8)), False),
    "images 27 wide": (STEMS[0], _idx(np.zeros((6, 28, 27), np.uint8)), False),
    "images as int32": (STEMS[0], _idx(np.zeros((6, 28, 28), ">i4"), 0x0C), False),
    "fewer labels than images": (STEMS[1], _idx(np.zeros(5, np.uint8)), False),
    "labels 2-D": (STEMS[1], _idx(np.zeros((6, 1), np.uint8)), False),
    "canonical name, payload byte flipped": (STEMS[0], _flip(GOOD, 500), True),
    "canonical name, other size": (STEMS[0], GOOD, True),
    "canonical name, bomb within the general cap": (STEMS[0], _bomb((800_000, 28, 28), 8 << 20),
                                                    True),
}


@pytest.mark.parametrize("name", list(LOAD_DAMAGE))
def test_damaged_dataset_is_refused_by_the_loader(tmp_path, monkeypatch, name):
    monkeypatch.setenv("TAPEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    stem, content, verify = LOAD_DAMAGE[name]
    if not content.startswith(b"\x1f\x8b"):
        content = gzip.compress(content, mtime=0)
    folder = _dataset(tmp_path / "mnist", **{stem: content})
    with pytest.raises(data.DatasetError) as info:
        data.load_mnist(tmp_path, download=False, verify=verify)
    assert str(folder) in str(info.value)


def test_the_kinds_counted():
    assert len(FILE_DAMAGE) + len(LOAD_DAMAGE) == 38
