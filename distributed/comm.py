"""Communicators: one small interface named after MPI, with implementations chosen by name.

>>> import numpy as np
>>> from tapeflow.distributed.comm import init
>>> comm = init("local")            # under ``mpiexec -n 8``, init() picks "mpi"
>>> comm.allreduce(np.arange(3.0) * (comm.rank + 1), op="sum")
array([0., 1., 2.])

Every method accepts NumPy arrays, CuPy arrays and ``tapeflow.Tensor`` (results come back as the
same kind). Supported dtypes are float16, float32, float64, int32 and int64; float16 is reduced
in float32 (MPI has no float16 arithmetic) and rounded back. No pickle anywhere: arrays travel
through mpi4py's buffer (uppercase) methods, small metadata as JSON bytes
(:meth:`Communicator.allgather_json`, :meth:`Communicator.broadcast_json`).

:class:`MPICommunicator` works on a duplicate of ``COMM_WORLD`` (like mpi4jax), so library
traffic never matches the user's own messages. Each collective is posted non-blocking and
completed by :class:`~tapeflow.distributed.faults.StallMonitor`, which reports ranks that have
not arrived after ``stall_timeout`` seconds (``$TAPEFLOW_STALL_TIMEOUT``, default 60, 0 = off).
"""
from __future__ import annotations

import atexit
import json
import os
import warnings
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

__all__ = [
    "Communicator",
    "Handle",
    "MismatchError",
    "MPICommunicator",
    "LocalCommunicator",
    "REDUCE_OPS",
    "init",
    "get_comm",
    "register_backend",
    "available_backends",
]

REDUCE_OPS = ("average", "sum", "max")
# dtype -> (code sent in metadata headers, mpi4py datatype name used for reductions)
_DTYPES = {
    np.dtype(np.float16): (0, "FLOAT"),  # reduced in float32
    np.dtype(np.float32): (1, "FLOAT"),
    np.dtype(np.float64): (2, "DOUBLE"),
    np.dtype(np.int32): (3, "INT32_T"),
    np.dtype(np.int64): (4, "INT64_T"),
}
_DTYPE_OF_CODE = {code: dt for dt, (code, _) in _DTYPES.items()}
_MAX_NDIM = 64  # NumPy's limit; fixes the size of the shape headers
SHARED_MEMORY_ENV = "TAPEFLOW_SHARED_MEMORY"
_LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                 "MPI_LOCALNRANKS", "MPI_LOCALNRANKIDS")


class MismatchError(ValueError):
    """Ranks called a collective with different sizes, dtypes or ops; raised on every
    rank before anything is reduced, so the job can report it instead of hanging."""


# -- argument handling shared by all implementations ---------------------------------------------

def _identity(a):
    return a


def _unwrap(x: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """A host NumPy view of ``x`` and a function turning a result back into ``x``'s kind."""
    if isinstance(x, np.ndarray):
        return x, _identity
    value = getattr(x, "_value", None)
    if value is not None:  # tapeflow.Tensor / Variable (imported lazily: no cycle with the core)
        host, back = _unwrap(value)

        def to_tensor(a: np.ndarray):
            import tapeflow

            return tapeflow.constant(back(a))

        return host, to_tensor
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy.asnumpy(x), cupy.asarray
    return np.asarray(x), _identity


def _check_dtype(dtype: np.dtype, what: str) -> None:
    if dtype not in _DTYPES:
        names = ", ".join(str(d) for d in _DTYPES)
        raise TypeError(f"{what}: dtype {dtype} has no MPI mapping; supported dtypes are {names} "
                        f"(cast first, e.g. x.astype(np.float32))")


def _check_op(op: str, dtype: np.dtype, what: str) -> None:
    if op not in REDUCE_OPS:
        raise ValueError(f"{what}: op must be one of {list(REDUCE_OPS)}, got {op!r}")
    _check_dtype(dtype, what)
    if op == "average" and dtype.kind in "iu":
        raise TypeError(f"{what}: op='average' of integer dtype {dtype} would need integer "
                        "division; use op='sum' and divide yourself, or cast to a float dtype")


class _ScratchPool:
    """Reusable byte buffers for reductions that cannot run in the caller's array.

    MPI registers (pins) the memory of every buffer it is handed and caches that by address: a
    fresh 2.6 MB buffer per allreduce cost 2.5 ms more than a reused one (mpich wheel, UCX),
    while copying into a reused buffer costs 0.06 ms. At most ``max_bytes`` are kept.
    """

    def __init__(self, max_bytes: int = 256 << 20):
        self._free: dict[int, list[np.ndarray]] = {}
        self._bytes = 0
        self._max_bytes = max_bytes

    def take(self, nbytes: int) -> np.ndarray:
        free = self._free.get(nbytes)
        if free:
            self._bytes -= nbytes
            return free.pop()
        return np.empty(max(nbytes, 1), dtype=np.uint8)[:nbytes]

    def give(self, raw: np.ndarray) -> None:
        if raw.nbytes and self._bytes + raw.nbytes <= self._max_bytes:
            self._free.setdefault(raw.nbytes, []).append(raw)
            self._bytes += raw.nbytes


def _check_inplace(buf: Any, op: str, what: str) -> None:
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{what} reduces a numpy.ndarray in place (the fused-bucket buffer); got "
                        f"{type(buf).__name__}; use allreduce() for tensors and other arrays")
    if not buf.flags.writeable:
        raise ValueError(f"{what}: the buffer (shape {buf.shape}, {buf.dtype}) is read-only")
    _check_op(op, buf.dtype, what)


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, separators=(",", ":")).encode("utf-8"), dtype=np.uint8)


def _json_load(data: np.ndarray) -> Any:
    return json.loads(data.tobytes().decode("utf-8"))


def _check_root(root: int, size: int) -> int:
    if not isinstance(root, (int, np.integer)) or not 0 <= root < size:
        raise ValueError(f"root must be a rank in [0, {size}), got {root!r}")
    return int(root)


# -- the interface -------------------------------------------------------------------------------

class Handle(ABC):
    """An in-flight non-blocking collective: ``wait()`` returns its result, ``test()`` polls."""

    @abstractmethod
    def wait(self) -> Any:
        """Block until done and return the result (calling it again returns the same result)."""

    @abstractmethod
    def test(self) -> bool:
        """True once the collective is complete (then ``wait()`` returns at once)."""


class _DoneHandle(Handle):
    def __init__(self, result: Any):
        self._result = result

    def wait(self) -> Any:
        return self._result

    def test(self) -> bool:
        return True


class Communicator(ABC):
    """A group of ``size`` processes; collectives must be called by every rank in the same order.

    ``op`` is ``"average"`` (float dtypes only), ``"sum"`` or ``"max"``.
    """

    @property
    @abstractmethod
    def rank(self) -> int:
        """This process's index in ``[0, size)``."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Number of processes."""

    @property
    @abstractmethod
    def local_rank(self) -> int:
        """Index among the processes on this node (e.g. to pick a GPU)."""

    @property
    @abstractmethod
    def local_size(self) -> int:
        """Number of processes on this node."""

    @property
    @abstractmethod
    def backend(self) -> str:
        """The registry name: ``"mpi"``, ``"local"``, ..."""

    @abstractmethod
    def allreduce(self, x: Any, op: str = "average") -> Any:
        """Reduce ``x`` over all ranks; every rank gets the result (a new array or Tensor)."""

    @abstractmethod
    def allreduce_(self, buf: np.ndarray, op: str = "average") -> np.ndarray:
        """Reduce the NumPy array ``buf`` in place (the fused-bucket path); return ``buf``."""

    @abstractmethod
    def iallreduce(self, x: Any, op: str = "average") -> Handle:
        """Start :meth:`allreduce` (``x`` is copied first); ``handle.wait()`` gives the result."""

    @abstractmethod
    def iallreduce_(self, buf: np.ndarray, op: str = "average") -> Handle:
        """Start :meth:`allreduce_` on ``buf``; do not touch ``buf`` before ``handle.wait()``."""

    def allreduce_many_(self, bufs: list, op: str = "average", *,
                        check_finite: bool = False) -> bool | None:
        """Reduce several NumPy arrays in place as one collective (blocking).

        With ``check_finite``, return whether every reduced value is finite (the same answer
        on every rank: a NaN or infinity on any rank makes it False), else ``None``.
        Implementations may fuse the buffers and test finiteness while reducing (the MPI one
        does, through shared memory within a node, where ranks that pass different sizes or
        dtypes get a :class:`MismatchError` before anything is reduced); this default posts
        one :meth:`iallreduce_` per buffer and waits for all."""
        handles = [self.iallreduce_(b, op) for b in bufs]
        for h in handles:
            h.wait()
        if not check_finite:
            return None
        return all(bool(np.isfinite(b).all()) for b in bufs)

    def reduces_in_shared_memory(self, nbytes: int, dtype: Any) -> bool:
        """True when a blocking in-place reduction of ``nbytes`` of ``dtype`` goes through
        shared memory. Such a reduction cannot progress in the background, so a caller that
        would start it early (the distributed tape) should instead run it at the end, fused."""
        del nbytes, dtype
        return False

    def shared_buffer(self, nbytes: int) -> np.ndarray | None:
        """A uint8 array of ``nbytes`` in memory the next :meth:`allreduce_many_` can reduce
        without copying: buffers carved from it back to back, from its start, are reduced where
        they lie. ``None`` when there is no such memory (or it is still viewed by arrays from
        the previous loan); then reduce ordinary arrays. Local, not collective."""
        del nbytes
        return None

    @abstractmethod
    def broadcast(self, x: Any = None, root: int = 0) -> Any:
        """Return root's ``x`` on every rank. Elsewhere ``x`` only picks the result's kind
        (Tensor or array) and may be ``None``."""

    @abstractmethod
    def allgather(self, x: Any) -> list:
        """The list of every rank's ``x``, indexed by rank. First dimensions may differ; dtype
        and the other dimensions must agree (else ``ValueError`` on every rank)."""

    @abstractmethod
    def barrier(self) -> None:
        """Return once every rank has entered the barrier."""

    @abstractmethod
    def allgather_json(self, obj: Any) -> list:
        """The list of every rank's JSON-serialisable ``obj`` (round-tripped through JSON)."""

    @abstractmethod
    def broadcast_json(self, obj: Any = None, root: int = 0) -> Any:
        """Root's JSON-serialisable ``obj`` on every rank (round-tripped through JSON)."""

    def allgather_concat(self, x: Any) -> Any:
        """:meth:`allgather` concatenated along axis 0 (scalars give a vector of ``size``)."""
        arr, rewrap = _unwrap(x)
        parts = self.allgather(arr)
        return rewrap(np.concatenate([np.atleast_1d(p) for p in parts], axis=0))

    def close(self) -> None:
        """Release the communicator's resources (collective for MPI)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank}/{self.size} backend={self.backend!r}>"


# -- size 1, no MPI ---------------------------------------------------------------------------

class LocalCommunicator(Communicator):
    """One process, no MPI import: collectives return copies, with the same checks as MPI.

    The stall arguments are accepted (a single process cannot stall) so ``init`` options work
    with either backend.
    """

    def __init__(self, stall_timeout: float | None = None, stall_action: str | None = None,
                 shared_memory: bool | None = None, node_size: int | None = None):
        del stall_timeout, stall_action, shared_memory, node_size  # the MPI options, unused

    rank = property(lambda self: 0, doc="Always 0.")
    size = property(lambda self: 1, doc="Always 1.")
    local_rank = property(lambda self: 0, doc="Always 0.")
    local_size = property(lambda self: 1, doc="Always 1.")
    backend = property(lambda self: "local", doc='``"local"``.')

    def allreduce(self, x: Any, op: str = "average") -> Any:
        arr, rewrap = _unwrap(x)
        _check_op(op, arr.dtype, "allreduce")
        return rewrap(np.array(arr, order="C", copy=True))

    def allreduce_(self, buf: np.ndarray, op: str = "average") -> np.ndarray:
        _check_inplace(buf, op, "allreduce_")
        return buf

    def iallreduce(self, x: Any, op: str = "average") -> Handle:
        return _DoneHandle(self.allreduce(x, op))

    def iallreduce_(self, buf: np.ndarray, op: str = "average") -> Handle:
        return _DoneHandle(self.allreduce_(buf, op))

    def broadcast(self, x: Any = None, root: int = 0) -> Any:
        _check_root(root, 1)
        if x is None:
            raise ValueError("broadcast: the root rank must pass an array, got None")
        arr, rewrap = _unwrap(x)
        _check_dtype(arr.dtype, "broadcast")
        return rewrap(np.array(arr, order="C", copy=True))

    def allgather(self, x: Any) -> list:
        arr, rewrap = _unwrap(x)
        _check_dtype(arr.dtype, "allgather")
        return [rewrap(np.array(arr, order="C", copy=True))]

    def barrier(self) -> None:
        return None

    def allgather_json(self, obj: Any) -> list:
        return [_json_load(_json_bytes(obj))]

    def broadcast_json(self, obj: Any = None, root: int = 0) -> Any:
        _check_root(root, 1)
        return _json_load(_json_bytes(obj))


# -- MPI ----------------------------------------------------------------------------------------

class _MPIHandle(Handle):
    """A posted MPI request plus what to do with the work buffer once it completes."""

    def __init__(self, comm: "MPICommunicator", name: str, request: Any, seq: int,
                 finish: Callable[[], Any]):
        self._comm, self._name, self._request, self._seq = comm, name, request, seq
        self._finish: Callable[[], Any] | None = finish
        self._result: Any = None

    def _complete(self) -> Any:
        if self._finish is not None:
            self._result = self._finish()
            self._finish = self._request = None
        return self._result

    def wait(self) -> Any:
        if self._finish is not None:
            self._comm._monitor.wait(self._request, self._name, self._seq)
        return self._complete()

    def test(self) -> bool:
        if self._finish is not None and not self._request.Test():
            return False
        self._complete()
        return True


class MPICommunicator(Communicator):
    """Collectives over mpi4py on a private duplicate of ``COMM_WORLD`` (creation is collective).

    ``stall_timeout`` (seconds, 0 = off; default ``$TAPEFLOW_STALL_TIMEOUT`` or 60) and
    ``stall_action`` (``"warn"``: report every period and keep waiting; ``"abort"``: report,
    then ``MPI_Abort``) configure the stall report. ``comm`` overrides the communicator that is
    duplicated (default ``MPI.COMM_WORLD``).

    Blocking in-place reductions of at least 64 KiB (``allreduce_``, ``allreduce_many_``) run
    through a shared-memory window among the ranks of each node, hierarchically across nodes
    (:mod:`tapeflow.distributed.shm`): 1.15-1.5x the speed of the MPI library's ``Allreduce``
    on one node for 2.68 MB (BENCHMARKS.md). ``shared_memory=False`` (or ``$TAPEFLOW_SHARED_MEMORY=0``) keeps everything in MPI;
    ``node_size`` groups ranks ``rank // node_size`` as nodes instead of by shared memory.
    """

    def __init__(self, stall_timeout: float | None = None, stall_action: str | None = None,
                 *, comm: Any = None, shared_memory: bool | None = None,
                 node_size: int | None = None):
        from mpi4py import MPI

        from .faults import StallMonitor

        self._MPI = MPI
        self._comm = (MPI.COMM_WORLD if comm is None else comm).Dup()
        self._rank, self._size = self._comm.Get_rank(), self._comm.Get_size()
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self._rank)
        self._local_rank, self._local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self._monitor = StallMonitor(self._comm, stall_timeout, stall_action)
        self._pool = _ScratchPool()
        if shared_memory is None:
            shared_memory = os.environ.get(SHARED_MEMORY_ENV, "1").strip().lower() not in (
                "0", "false", "no", "off")
        self._shm = None
        if shared_memory and self._size > 1:
            from .shm import SharedMemoryReducer

            shm = SharedMemoryReducer(self._comm, node_size=node_size,
                                      stall_timeout=self._monitor.timeout,
                                      stall_action=self._monitor.action)
            self._shm = shm if shm.enabled else None
        # Free the RMA window before mpi4py's own atexit MPI_Finalize (atexit runs last-in
        # first-out); a window left allocated makes UCX print leak warnings at exit.
        atexit.register(self._close_at_exit)

    rank = property(lambda self: self._rank, doc="Rank in ``COMM_WORLD`` (or ``comm``).")
    size = property(lambda self: self._size, doc="Number of ranks.")
    local_rank = property(lambda self: self._local_rank, doc="Rank among this node's ranks.")
    local_size = property(lambda self: self._local_size, doc="Ranks on this node.")
    backend = property(lambda self: "mpi", doc='``"mpi"``.')

    @property
    def stall_timeout(self) -> float:
        """Seconds a collective may wait before it is reported (0 = never); settable."""
        return self._monitor.timeout

    @stall_timeout.setter
    def stall_timeout(self, seconds: float) -> None:
        from .faults import stall_settings

        self._monitor.timeout, _ = stall_settings(seconds, self._monitor.action)
        if self._shm is not None:
            self._shm.stall_timeout = self._monitor.timeout

    def _require_open(self) -> None:
        if self._comm is None:
            raise RuntimeError("this communicator was closed; call tapeflow.distributed.init()")

    def _run(self, name: str, post: Callable[[], Any]) -> None:
        """Post one non-blocking collective and complete it under the stall monitor."""
        self._require_open()
        seq = self._monitor.enter()
        self._monitor.wait(post(), name, seq)

    # reductions: a work buffer (the caller's, or a copy) is reduced in place, then finished
    def _post_reduce(self, work: np.ndarray, op: str) -> tuple[Any, int]:
        self._require_open()
        MPI = self._MPI
        mpi_type = getattr(MPI, _DTYPES[work.dtype][1])
        seq = self._monitor.enter()
        req = self._comm.Iallreduce(MPI.IN_PLACE, [work, mpi_type],
                                    op=MPI.MAX if op == "max" else MPI.SUM)
        return req, seq

    def _finish_reduce(self, work: np.ndarray, op: str, out: np.ndarray) -> np.ndarray:
        """Write the reduced ``work`` (averaged if asked) into ``out``, in one pass."""
        if op == "average":
            np.divide(work, self._size, out=out, casting="unsafe")
        elif out is not work:
            np.copyto(out, work, casting="unsafe")
        return out

    def _scratch_reduce(self, arr: np.ndarray, op: str, name: str, out: np.ndarray,
                        finish: Callable[[np.ndarray], Any]) -> _MPIHandle:
        """Reduce a copy of ``arr`` in a pooled buffer, then write the result into ``out``."""
        work_dtype = np.dtype(np.float32) if arr.dtype == np.float16 else arr.dtype
        raw = self._pool.take(arr.size * work_dtype.itemsize)
        work = raw.view(work_dtype).reshape(arr.shape)
        np.copyto(work, arr)
        req, seq = self._post_reduce(work, op)

        def done() -> Any:
            self._finish_reduce(work, op, out)
            self._pool.give(raw)
            return finish(out)

        return _MPIHandle(self, name, req, seq, done)

    def _iallreduce(self, x: Any, op: str, name: str) -> _MPIHandle:
        arr, rewrap = _unwrap(x)
        _check_op(op, arr.dtype, name)
        return self._scratch_reduce(arr, op, name, np.empty(arr.shape, arr.dtype), rewrap)

    def _iallreduce_(self, buf: np.ndarray, op: str, name: str) -> _MPIHandle:
        _check_inplace(buf, op, name)
        if not buf.flags.c_contiguous or buf.dtype == np.float16:
            return self._scratch_reduce(buf, op, name, buf, _identity)
        req, seq = self._post_reduce(buf, op)  # the fused-bucket path: no copy at all
        return _MPIHandle(self, name, req, seq, lambda: self._finish_reduce(buf, op, buf))

    def allreduce(self, x: Any, op: str = "average") -> Any:
        return self._iallreduce(x, op, "allreduce").wait()

    def allreduce_(self, buf: np.ndarray, op: str = "average") -> np.ndarray:
        _check_inplace(buf, op, "allreduce_")
        if buf.flags.c_contiguous and self.reduces_in_shared_memory(buf.nbytes, buf.dtype):
            self._require_open()
            self._shm.allreduce_([buf], op)
            return buf
        return self._iallreduce_(buf, op, "allreduce_").wait()

    def allreduce_many_(self, bufs: list, op: str = "average", *,
                        check_finite: bool = False) -> bool | None:
        for b in bufs:
            _check_inplace(b, op, "allreduce_many_")
        if bufs and len({b.dtype for b in bufs}) == 1 and all(
                b.flags.c_contiguous for b in bufs) and self.reduces_in_shared_memory(
                    sum(b.nbytes for b in bufs), bufs[0].dtype):
            self._require_open()
            return self._shm.allreduce_(list(bufs), op, check_finite=check_finite)
        return super().allreduce_many_(bufs, op, check_finite=check_finite)

    def reduces_in_shared_memory(self, nbytes: int, dtype: Any) -> bool:
        return self._shm is not None and self._shm.eligible(nbytes, np.dtype(dtype))

    def shared_buffer(self, nbytes: int) -> np.ndarray | None:
        return None if self._shm is None else self._shm.lend(nbytes)

    def iallreduce(self, x: Any, op: str = "average") -> Handle:
        return self._iallreduce(x, op, "iallreduce")

    def iallreduce_(self, buf: np.ndarray, op: str = "average") -> Handle:
        return self._iallreduce_(buf, op, "iallreduce_")

    def broadcast(self, x: Any = None, root: int = 0) -> Any:
        MPI = self._MPI
        root = _check_root(root, self._size)
        arr, rewrap = (None, _identity) if x is None else _unwrap(x)
        header = np.zeros(2 + _MAX_NDIM, dtype=np.int64)
        if self._rank == root:
            # a bad root array is announced in the header, so every rank raises (none hangs)
            header[0] = -2 if arr is None else _DTYPES.get(arr.dtype, (-1,))[0]
            if header[0] >= 0:
                header[1] = arr.ndim
                header[2:2 + arr.ndim] = arr.shape
        self._run("broadcast", lambda: self._comm.Ibcast([header, MPI.INT64_T], root=root))
        if header[0] == -2:
            raise ValueError(f"broadcast: the root rank {root} passed None")
        if header[0] < 0:
            if self._rank == root:
                _check_dtype(arr.dtype, "broadcast")
            raise TypeError(f"broadcast: the root rank {root}'s array has a dtype with no MPI "
                            "mapping")
        dtype, shape = _DTYPE_OF_CODE[int(header[0])], tuple(header[2:2 + header[1]])
        data = np.array(arr, order="C", copy=True) if self._rank == root else np.empty(shape, dtype)
        if data.nbytes:
            self._run("broadcast", lambda: self._comm.Ibcast(
                [data.reshape(-1).view(np.uint8), MPI.BYTE], root=root))
        return rewrap(data)

    def allgather(self, x: Any) -> list:
        MPI = self._MPI
        arr, rewrap = _unwrap(x)
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        header = np.zeros(2 + _MAX_NDIM, dtype=np.int64)
        header[0] = _DTYPES.get(arr.dtype, (-1,))[0]
        header[1] = arr.ndim
        header[2:2 + arr.ndim] = arr.shape
        headers = np.empty((self._size, header.size), dtype=np.int64)
        self._run("allgather", lambda: self._comm.Iallgather(
            [header, MPI.INT64_T], [headers, MPI.INT64_T]))
        shapes = [tuple(int(d) for d in h[2:2 + h[1]]) for h in headers]
        if header[0] < 0:
            _check_dtype(arr.dtype, "allgather")
        bad = [r for r, h in enumerate(headers) if h[0] < 0]
        if bad:
            raise TypeError(f"allgather: ranks {bad} passed dtypes with no MPI mapping")
        dtypes = [_DTYPE_OF_CODE[int(h[0])] for h in headers]
        if len(set(dtypes)) > 1 or len({s[1:] for s in shapes}) > 1:
            desc = ", ".join(f"rank {r}: {d} {s}" for r, (d, s) in enumerate(zip(dtypes, shapes)))
            raise ValueError("allgather: ranks must agree on dtype and on every dimension but "
                             f"the first; got {desc}")
        if len({len(s) for s in shapes}) > 1:
            raise ValueError(f"allgather: ranks passed arrays of different ranks (ndim): {shapes}")
        itemsize = arr.dtype.itemsize
        counts = [int(np.prod(s, dtype=np.int64)) * itemsize for s in shapes]
        displs = [int(d) for d in np.cumsum([0] + counts[:-1])]
        recv = np.empty(sum(counts), dtype=np.uint8)
        send = arr.reshape(-1).view(np.uint8)
        self._run("allgather", lambda: self._comm.Iallgatherv(
            [send, MPI.BYTE], [recv, (counts, displs), MPI.BYTE]))
        return [rewrap(recv[d:d + c].view(arr.dtype).reshape(s))
                for d, c, s in zip(displs, counts, shapes)]

    def barrier(self) -> None:
        self._run("barrier", lambda: self._comm.Ibarrier())

    def allgather_json(self, obj: Any) -> list:
        MPI = self._MPI
        try:
            data, error = _json_bytes(obj), None
        except (TypeError, ValueError) as exc:  # still take part, so no rank hangs
            data, error = np.zeros(0, dtype=np.uint8), exc
        length = np.array([-1 if error else data.size], dtype=np.int64)
        lengths = np.empty(self._size, dtype=np.int64)
        self._run("allgather_json", lambda: self._comm.Iallgather(
            [length, MPI.INT64_T], [lengths, MPI.INT64_T]))
        bad = [r for r, n in enumerate(lengths) if n < 0]
        if bad:
            raise TypeError(f"allgather_json: ranks {bad} passed objects that are not "
                            f"JSON-serialisable") from error
        counts = [int(n) for n in lengths]
        displs = [int(d) for d in np.cumsum([0] + counts[:-1])]
        recv = np.empty(sum(counts), dtype=np.uint8)
        self._run("allgather_json", lambda: self._comm.Iallgatherv(
            [data, MPI.BYTE], [recv, (counts, displs), MPI.BYTE]))
        return [_json_load(recv[d:d + c]) for d, c in zip(displs, counts)]

    def broadcast_json(self, obj: Any = None, root: int = 0) -> Any:
        MPI = self._MPI
        root = _check_root(root, self._size)
        data, error = np.zeros(0, dtype=np.uint8), None
        if self._rank == root:
            try:
                data = _json_bytes(obj)
            except (TypeError, ValueError) as exc:
                error = exc
        length = np.array([-1 if error else data.size], dtype=np.int64)
        self._run("broadcast_json", lambda: self._comm.Ibcast([length, MPI.INT64_T], root=root))
        if length[0] < 0:
            raise TypeError(f"broadcast_json: the root rank {root}'s object is not "
                            "JSON-serialisable") from error
        if self._rank != root:
            data = np.empty(int(length[0]), dtype=np.uint8)
        self._run("broadcast_json", lambda: self._comm.Ibcast([data, MPI.BYTE], root=root))
        return _json_load(data)

    def close(self) -> None:
        """Free the RMA window and the duplicated communicator (collective)."""
        if self._comm is not None:
            atexit.unregister(self._close_at_exit)
            self._close_windows()
            comm, self._comm = self._comm, None
            comm.Free()

    def _close_at_exit(self) -> None:
        if self._comm is not None and self._MPI.Is_initialized() and not self._MPI.Is_finalized():
            self._close_windows()
            self._comm = None

    def _close_windows(self) -> None:
        self._monitor.close()
        if self._shm is not None:
            self._shm.close()
            self._shm = None


# -- registry -----------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., Communicator]] = {
    "mpi": MPICommunicator,
    "local": LocalCommunicator,
}
_current: Communicator | None = None


def register_backend(name: str, factory: Callable[..., Communicator]) -> None:
    """Make ``init(name)`` call ``factory(**options)`` (e.g. the GPU work's ``"nccl"``)."""
    if name == "auto":
        raise ValueError('"auto" is reserved for backend selection')
    _FACTORIES[name] = factory


def available_backends() -> list[str]:
    """The names :func:`init` accepts."""
    return ["auto", *sorted(_FACTORIES)]


def _under_launcher() -> bool:
    return any(os.environ.get(name) for name in _LAUNCHER_ENV)


def _auto_backend() -> str:
    """``"mpi"`` under a launcher (or when MPI is already up with several ranks), else local."""
    if _under_launcher():
        try:
            from mpi4py import MPI  # noqa: F401
        except ImportError as exc:
            size = os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "?"
            warnings.warn(f"running under an MPI launcher (world size {size}) but mpi4py does "
                          f"not import ({exc}); every process runs alone as rank 0 of 1",
                          RuntimeWarning, stacklevel=3)
            return "local"
        return "mpi"
    import sys

    mpi = sys.modules.get("mpi4py.MPI")  # never import MPI (MPI_Init) just to find size 1
    if mpi is not None and mpi.Is_initialized() and mpi.COMM_WORLD.Get_size() > 1:
        return "mpi"
    return "local"


def init(backend: str = "auto", **options: Any) -> Communicator:
    """Create (or return) the communicator for ``backend`` and make it :func:`get_comm`'s.

    ``"auto"`` picks ``"mpi"`` under ``mpiexec`` and ``"local"`` in a plain process. Called
    again without options for the same backend, it returns the existing communicator.
    ``options`` go to the backend (e.g. ``stall_timeout=10, stall_action="abort"``).
    """
    global _current
    if backend != "auto" and backend not in _FACTORIES:
        raise ValueError(f"unknown communicator backend {backend!r}; "
                         f"valid names: {available_backends()}")
    name = _auto_backend() if backend == "auto" else backend
    if _current is not None and _current.backend == name and not options:
        return _current
    _current = _FACTORIES[name](**options)
    _limit_blas_threads(_current)
    return _current


_BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _limit_blas_threads(comm: Communicator) -> int | None:
    """With several ranks on a node, give each rank ``cores // ranks_on_node`` BLAS threads.

    Ranks that each start a full-size BLAS pool oversubscribe the cores, and a rank spinning in
    a collective then competes with its neighbour's BLAS threads (measured: 25x slower steps on
    two cores). A thread count the user set in the environment is left alone.
    """
    if comm.size == 1 or any(os.environ.get(v) for v in _BLAS_ENV):
        return None
    from threadpoolctl import threadpool_limits

    from .launcher import threads_per_rank

    n = threads_per_rank(max(comm.local_size, 1))
    threadpool_limits(limits=n, user_api="blas")
    return n


def get_comm() -> Communicator:
    """The communicator made by :func:`init` (``init("auto")`` on first use)."""
    return _current if _current is not None else init("auto")
