"""Signatures: what every rank states before a collective, so ranks can agree before data moves.

A :class:`Signature` (kind, op, dtype, shape, root, a checksum, the per-communicator sequence
number, the caller's step) encodes into 16 int64; ranks exchange them in one small
``Iallgather`` and :func:`first_difference` finds the first rank that differs. Also here: the
argument checks whose failure a rank announces in its signature (so every rank raises, instead
of one rank leaving the others waiting), and the helpers that turn arrays and Tensors into the
host arrays that travel.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["Signature", "REDUCE_OPS", "KINDS", "DTYPES", "ANY", "unwrap", "check_dtype",
           "check_op", "check_root", "json_bytes", "json_load", "shape_crc", "text_crc",
           "first_difference", "mismatch_message"]

REDUCE_OPS = ("average", "sum", "min", "max", "product")
#: collective kinds, as sent in signatures (the code is the index)
KINDS = ("allreduce", "allgather", "broadcast", "barrier", "allgather_object",
         "broadcast_object", "reduce_gradients", "exit", "alltoall", "reducescatter",
         "grouped_allreduce", "join", "new_group")
_KIND_CODE = {k: i + 1 for i, k in enumerate(KINDS)}
_OP_CODE = {op: i + 1 for i, op in enumerate(REDUCE_OPS)}
# dtype -> code sent in signatures; float16 is reduced in float32 (MPI has no float16 math)
DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64),
          np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.uint8), np.dtype(np.bool_))
_DTYPE_CODE = {d: i + 1 for i, d in enumerate(DTYPES)}
_REDUCIBLE = DTYPES[:5]
ANY = -1  # a signature field this rank does not constrain (e.g. a broadcast receiver's shape)
_NFIELDS = 16


# -- arguments ------------------------------------------------------------------------------------

def _identity(a):
    return a


def unwrap(x: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """A host NumPy view of ``x`` and a function turning a result back into ``x``'s kind
    (NumPy array, ``tapeflow.Tensor``, CuPy array: the copy to and from the host is MPI
    staging, named as such)."""
    if isinstance(x, np.ndarray):
        return x, _identity
    value = getattr(x, "_value", None)
    if value is not None:  # tapeflow.Tensor / Variable
        host, back = unwrap(value)
        from tapeflow.tensor import Tensor

        return host, lambda a: Tensor(back(a))
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy.asnumpy(x), cupy.asarray
    return np.asarray(x), _identity


def check_dtype(dtype: np.dtype, what: str, reducible: bool = False) -> str | None:
    """The problem with ``dtype`` for collective ``what`` (``None`` when it is fine)."""
    allowed = _REDUCIBLE if reducible else DTYPES
    if dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        return (f"{what}: dtype {dtype} has no MPI mapping; supported dtypes are {names} "
                f"(cast first, e.g. x.astype(np.float32))")
    return None


def check_op(op: str, dtype: np.dtype, what: str) -> str | None:
    """The problem with reducing ``dtype`` by ``op`` (``None`` when it is fine)."""
    if op not in REDUCE_OPS:
        return f"{what}: op must be one of {list(REDUCE_OPS)}, got {op!r}"
    problem = check_dtype(dtype, what, reducible=True)
    if problem:
        return problem
    if op == "average" and dtype.kind in "iu":
        return (f"{what}: op='average' of integer dtype {dtype} would need integer division; "
                "use op='sum' and divide yourself, or cast to a float dtype")
    return None


def check_root(root: Any, size: int) -> int:
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < size:
        raise ValueError(f"root must be a rank in [0, {size}), got {root!r}")
    return int(root)


def json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, separators=(",", ":")).encode("utf-8"), dtype=np.uint8)


def json_load(data: np.ndarray) -> Any:
    return json.loads(data.tobytes().decode("utf-8"))


def shape_crc(shape: Sequence[int]) -> int:
    return zlib.crc32(repr(tuple(int(d) for d in shape)).encode())


def text_crc(text: str) -> int:
    return zlib.crc32(text.encode())


# -- signatures -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Signature:
    """What one rank is about to do in a collective; ranks must agree before data moves.

    ``dtype``/``shape`` may be ``None`` (unconstrained), ``count`` is the element count,
    ``crc`` a checksum of anything else that must agree (a gradient layout), ``tag`` the
    caller's step, ``error`` True when this rank's arguments were invalid (every rank then
    raises instead of one rank leaving the others waiting)."""

    kind: str
    op: str | None = None
    dtype: np.dtype | None = None
    shape: tuple | None = None
    root: int | None = None
    crc: int | None = None
    tag: int = 0
    seq: int = 0
    error: bool = False
    count: int | None = None
    ragged: bool = False  # the first dimension may differ between ranks (allgather)

    def encode(self) -> np.ndarray:
        f = np.full(_NFIELDS, ANY, dtype=np.int64)
        f[0] = 0x7AFE
        f[1] = _KIND_CODE[self.kind]
        f[2] = _OP_CODE.get(self.op, ANY) if self.op else ANY
        f[3] = _DTYPE_CODE.get(self.dtype, 0) if self.dtype is not None else ANY
        f[4] = ANY if self.root is None else self.root
        count = self.count
        if count is None and self.shape is not None and not self.ragged:
            count = int(np.prod(self.shape, dtype=np.int64))
        f[5] = ANY if count is None else count
        if self.shape is not None:
            f[6] = len(self.shape)
            f[7:11] = [int(d) for d in self.shape[:4]] + [ANY] * (4 - len(self.shape[:4]))
            f[11] = shape_crc(self.shape)
        if self.crc is not None:
            f[11] = self.crc
        if self.ragged and self.shape is not None:
            f[11] = shape_crc(self.shape[1:])  # the first dimension is free, not compared
            f[15] = 1
        f[12], f[13], f[14] = self.seq, self.tag, int(self.error)
        return f

    @staticmethod
    def decode(f: np.ndarray) -> dict:
        """The fields of an encoded signature that a joined rank needs to take part."""
        f = [int(v) for v in f]
        return {"kind": KINDS[f[1] - 1] if 0 < f[1] <= len(KINDS) else "?",
                "op": REDUCE_OPS[f[2] - 1] if 0 < f[2] <= len(REDUCE_OPS) else None,
                "dtype": DTYPES[f[3] - 1] if 0 < f[3] <= len(DTYPES) else None,
                "root": f[4] if f[4] != ANY else None,
                "count": f[5] if f[5] != ANY else 0}

    @staticmethod
    def describe(f: np.ndarray) -> str:
        """A readable rendering of an encoded signature."""
        f = [int(v) for v in f]
        if f[0] != 0x7AFE:
            return "<not a tapeflow collective>"
        kind = KINDS[f[1] - 1] if 0 < f[1] <= len(KINDS) else f"kind {f[1]}"
        parts = []
        if f[2] != ANY:
            parts.append(f"op={REDUCE_OPS[f[2] - 1]!r}" if 0 < f[2] <= len(REDUCE_OPS)
                         else f"op {f[2]}")
        if f[3] != ANY:
            parts.append(str(DTYPES[f[3] - 1]) if 0 < f[3] <= len(DTYPES) else "bad dtype")
        if f[6] != ANY:
            dims = ["*" if d == ANY else d for d in f[7:7 + min(f[6], 4)]]
            shape = "(" + ", ".join(map(str, dims)) + (", ..." if f[6] > 4 else "") + \
                    ("," if f[6] == 1 else "") + ")"
            parts.append(f"shape {shape}")
        elif f[5] != ANY:
            parts.append(f"{f[5]} elements")
        if f[4] != ANY:
            parts.append(f"root={f[4]}")
        if f[14]:
            parts.append("invalid arguments")
        text = f"{kind}({', '.join(parts)}) #{f[12]}"
        return text + (f" at step {f[13]}" if f[13] else "")


def first_difference(sigs: np.ndarray) -> int | None:
    """The first rank whose signature differs from the others' (``None``: all agree).

    Fields set to ``ANY`` on a rank constrain nothing; the reference for each field is the first
    rank that sets it."""
    n = sigs.shape[0]
    ref = np.full(_NFIELDS, ANY, dtype=np.int64)
    for r in range(n):
        row = sigs[r]
        for i in range(_NFIELDS):
            v = row[i]
            if v == ANY or i in (13, 14):  # the step is reported, not compared (dist.join
                continue                     # lets ranks take different numbers of steps)
            if i == 7 and row[15] == 1:      # a ragged first dimension (allgather)
                continue
            if ref[i] == ANY:
                ref[i] = v
            elif ref[i] != v:
                return r
        if row[14]:
            return r
    return None


def mismatch_message(sigs: np.ndarray, bad: int) -> str:
    invalid = [r for r in range(sigs.shape[0]) if sigs[r][14]]
    if invalid:
        kind = Signature.describe(sigs[invalid[0]]).split("(")[0]
        return (f"rank{'s' if len(invalid) > 1 else ''} {', '.join(map(str, invalid))} passed "
                f"invalid arguments to {kind} (nothing was exchanged; "
                f"{'they' if len(invalid) > 1 else 'it'} raised the reason)")
    ref = 0 if bad != 0 else 1
    a, b = Signature.describe(sigs[ref]), Signature.describe(sigs[bad])
    return (f"ranks called different collectives (nothing was combined): rank {ref} called {a}, "
            f"rank {bad} called {b}")
