"""``MPICommunicator``: checked collectives over mpi4py, on a private duplicate of a communicator.

Every collective first exchanges a :class:`~tapeflow.distributed.base.Signature` (one small
``Iallgather``, the same MPI call whatever the collective), so ranks calling different
collectives, or one with different sizes, dtypes, ops or roots, get a
:class:`~tapeflow.distributed.faults.MismatchError` on every rank before any data moves; the
data then travels by whichever path the agreed signature selects, identically on every rank
(sizes straddling the shared-memory threshold cannot split the ranks). Every wait goes through
the package's one wait loop (:class:`~tapeflow.distributed.faults.Waiter`).

Like mpi4jax, the communicator duplicates ``COMM_WORLD``, so library traffic never matches the
user's own messages. No pickle: arrays travel through mpi4py's buffer (uppercase) methods,
objects as JSON bytes.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

import numpy as np

from . import faults
from .base import Communicator, Layout, LeasePool, Reducer, check_layout_op, even_splits
from .faults import COMPUTING, EXITING, WAITING, MismatchError, StatusBoard, Waiter
from .mpi_join import JOINABLE as _JOINABLE
from .mpi_join import JoinAnswers
from .reducers import BucketReducer, SharedMemoryReducer, mpi_op, mpi_type
from .signature import DTYPES as _DTYPE_LIST
from .signature import REDUCE_OPS as _OPS
from .signature import (
    KINDS, Signature, check_dtype, check_op, check_root, first_difference, json_bytes,
    json_load, mismatch_message, shape_crc, text_crc,
)

__all__ = ["MPICommunicator", "SHARED_MEMORY_ENV"]

SHARED_MEMORY_ENV = "TAPEFLOW_SHARED_MEMORY"
_KIND_CODE = {k: i + 1 for i, k in enumerate(KINDS)}
_JOIN_CODE = _KIND_CODE["join"]
# Open MPI communicators, in creation order. Held until closed (or exit), so that one dropped
# without close() is still freed collectively by the exit protocol, never leaked.
_OPEN: list = []


def _error(problem: str | None) -> Exception | None:
    """The exception for an argument problem (raised after every rank took part)."""
    if not problem:
        return None
    return (TypeError if "dtype" in problem else ValueError)(problem)


class _Agreement:
    """A signature exchange in flight (the non-blocking form, for reducers)."""

    __slots__ = ("request", "sigs", "mine", "error", "what")

    def __init__(self, request, sigs, mine, error, what):
        self.request, self.sigs, self.mine, self.error, self.what = (request, sigs, mine,
                                                                     error, what)


class MPICommunicator(JoinAnswers, Communicator):
    """Checked collectives over mpi4py on a private duplicate of ``comm`` (default
    ``COMM_WORLD``); creation is collective.

    Reductions of at least 64 KiB run through a shared-memory window among the ranks of each
    node, hierarchically across nodes (:mod:`tapeflow.distributed.shm`; 1.15-1.5x the MPI
    library's ``Allreduce`` on one node for 2.68 MB, BENCHMARKS.md). ``shared_memory=False``
    (or ``$TAPEFLOW_SHARED_MEMORY=0``) keeps everything in MPI; ``node_size`` groups ranks
    ``rank // node_size`` as nodes instead of by shared memory. ``stall_warn`` /
    ``stall_timeout`` override ``$TAPEFLOW_STALL_WARN`` / ``$TAPEFLOW_STALL_TIMEOUT``.
    """

    def __init__(self, *, comm: Any = None, shared_memory: bool | None = None,
                 node_size: int | None = None, stall_warn: float | None = None,
                 stall_timeout: float | None = None):
        from mpi4py import MPI

        self._MPI = MPI
        self._comm = (MPI.COMM_WORLD if comm is None else comm).Dup()
        self._rank, self._size = self._comm.Get_rank(), self._comm.Get_size()
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self._rank)
        self._local_rank, self._local_size = node.Get_rank(), node.Get_size()
        node.Free()
        cross = self._comm.Split(color=self._local_rank, key=self._rank)  # one rank per node
        self._cross_rank, self._cross_size = cross.Get_rank(), cross.Get_size()
        cross.Free()
        self._board = StatusBoard(self._comm, KINDS)
        self.waiter = Waiter(self._rank, self._size, self._board, stall_warn, stall_timeout)
        self._seq = 0
        self._joined: list[int] = []  # ranks inside dist.join() during this collective
        self._pool = LeasePool()
        self._owner: int | None = None      # the thread that calls collectives
        self._busy = threading.Lock()
        if shared_memory is None:
            shared_memory = os.environ.get(SHARED_MEMORY_ENV, "1").strip().lower() not in (
                "0", "false", "no", "off")
        self._shm = None
        if shared_memory and self._size > 1:
            from .shm import SharedMemoryEngine

            shm = SharedMemoryEngine(self._comm, self.waiter, node_size=node_size)
            self._shm = shm if shm.enabled else None
        _OPEN.append(self)
        if not faults.installed():  # safe by default, even without dist.init()
            faults.install(self, faults.enabled_by_default())

    rank = property(lambda self: self._rank, doc="Rank in ``COMM_WORLD`` (or ``comm``).")
    size = property(lambda self: self._size, doc="Number of ranks.")
    local_rank = property(lambda self: self._local_rank, doc="Rank among this node's ranks.")
    local_size = property(lambda self: self._local_size, doc="Ranks on this node.")
    cross_rank = property(lambda self: self._cross_rank, doc="Index of this rank's node.")
    cross_size = property(lambda self: self._cross_size, doc="Number of nodes.")
    backend = property(lambda self: "mpi", doc='``"mpi"``.')

    def new_group(self, ranks) -> "MPICommunicator | None":
        """A communicator over ``ranks`` (a process set; collective over this communicator:
        every rank calls it with the same list). Members get a communicator whose ranks are
        numbered in the order of ``ranks``; other ranks get ``None``."""
        ranks = [int(r) for r in ranks]
        error = None
        if not ranks or len(set(ranks)) != len(ranks) or min(ranks) < 0 or \
                max(ranks) >= self._size:
            error = ValueError(f"new_group: ranks must be distinct ranks in [0, {self._size}), "
                               f"got {ranks}")

        def body():
            self._agree(Signature("new_group", crc=text_crc(repr(ranks))), error)
            MPI = self._MPI
            color = 0 if self._rank in ranks else MPI.UNDEFINED
            key = ranks.index(self._rank) if self._rank in ranks else 0
            return self._comm.Split(color=color, key=key)

        sub = self._collective("new_group", body)
        if sub == self._MPI.COMM_NULL:
            return None
        group = MPICommunicator(comm=sub, shared_memory=self._shm is not None,
                                stall_warn=self.waiter.warn, stall_timeout=self.waiter.timeout)
        sub.Free()
        return group

    @property
    def shared_memory(self) -> bool:
        """Whether large reductions go through the intra-node shared-memory window."""
        return self._shm is not None

    @property
    def seq(self) -> int:
        """Sequence number of the last collective this rank entered on this communicator."""
        return self._seq

    def dup(self) -> "MPICommunicator":
        """A new communicator over the same ranks (collective), e.g. one per thread."""
        self._require_open()
        return MPICommunicator(comm=self._comm, shared_memory=self._shm is not None,
                               stall_warn=self.waiter.warn, stall_timeout=self.waiter.timeout)

    # -- entry: one thread, open communicator -----------------------------------------------------
    def _require_open(self) -> None:
        if self._comm is None:
            raise RuntimeError("this communicator was closed; call tapeflow.distributed.init()")

    def _enter(self, what: str) -> None:
        self._require_open()
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif self._owner != me:
            raise RuntimeError(
                f"{what}: collectives on this communicator are called from thread "
                f"{self._owner}; thread {me} ({threading.current_thread().name}) may not call "
                "them (ranks could pair the threads' calls differently and mix their data). "
                "Give each thread its own communicator: comm.dup() in the main thread")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"{what}: a collective on this communicator is already running")

    def _leave(self) -> None:
        self._board.set_state(COMPUTING)
        if self._busy.locked():
            self._busy.release()

    # -- signatures ----------------------------------------------------------------------------
    def _agree_start(self, sig: Signature, error: Exception | None = None) -> _Agreement:
        MPI = self._MPI
        self._seq += 1
        mine = Signature(**{**sig.__dict__, "seq": self._seq, "error": error is not None}
                         ).encode()
        self._board.publish(self._seq, _KIND_CODE[sig.kind], WAITING, sig.tag)
        sigs = np.empty((self._size, mine.size), dtype=np.int64)
        req = self._comm.Iallgather([mine, MPI.INT64_T], [sigs, MPI.INT64_T])
        return _Agreement(req, sigs, mine, error, sig.kind)

    def _agree_finish(self, a: _Agreement, may_abort: bool = True) -> np.ndarray:
        self.waiter.wait(a.request.Test, a.what, self._seq, may_abort=may_abort)
        if a.error is not None:
            raise a.error
        sigs = a.sigs
        joined = [r for r in range(self._size) if sigs[r][1] == _JOIN_CODE]
        self._joined = joined
        if joined:  # ranks inside dist.join() answer with neutral contributions
            if a.what not in _JOINABLE:
                raise MismatchError(
                    f"{a.what} #{self._seq} on rank {self._rank}: ranks {joined} have joined "
                    f"(dist.join) and can only take part in {', '.join(_JOINABLE)}; "
                    "nothing was combined")
            rows = [r for r in range(self._size) if r not in joined]
            root = int(sigs[rows[0]][4])
            if root in joined:
                raise MismatchError(f"{a.what} #{self._seq} on rank {self._rank}: the root, "
                                    f"rank {root}, has joined (dist.join); nothing was sent")
            bad = first_difference(sigs[rows])
            if bad is not None:
                bad = rows[bad]
        else:
            bad = first_difference(sigs)
        if bad is not None:
            raise MismatchError(f"{a.what} #{self._seq} on rank {self._rank}: "
                                + mismatch_message(sigs, bad), sigs)
        return sigs

    def _agree(self, sig: Signature, error: Exception | None = None) -> np.ndarray:
        return self._agree_finish(self._agree_start(sig, error))

    def _wait(self, request: Any, what: str) -> None:
        self.waiter.wait(request.Test, what, self._seq)

    def _collective(self, what: str, body: Callable[[], Any]) -> Any:
        self._enter(what)
        try:
            return body()
        finally:
            self._leave()

    # -- reductions --------------------------------------------------------------------------
    def _reduce_into(self, work: np.ndarray, op: str, what: str) -> None:
        """Reduce the C-contiguous ``work`` in place (after the ranks agreed on it). While
        some ranks have joined (``dist.join``) they add neutral values, and an average counts
        only the ranks still stepping."""
        active = self._size - len(self._joined)
        wire = "sum" if op == "average" and self._joined else op
        if self._shm is not None and self._shm.eligible(work.nbytes, work.dtype):
            self._shm.allreduce_([work], wire)
        else:
            MPI = self._MPI
            acc = work.astype(np.float32) if work.dtype == np.float16 else work
            if acc.size:
                req = self._comm.Iallreduce(MPI.IN_PLACE, [acc, mpi_type(MPI, acc.dtype)],
                                            op=mpi_op(MPI, wire))
                self._wait(req, what)
            if wire == "average":
                np.multiply(acc, acc.dtype.type(1.0 / self._size), out=acc)
            if acc is not work:
                np.copyto(work, acc, casting="unsafe")
        if op == "average" and self._joined:
            np.multiply(work, work.dtype.type(1.0 / active), out=work)

    def _allreduce(self, arr: np.ndarray, op: str) -> np.ndarray:
        def body():
            problem = check_op(op, arr.dtype, "allreduce")
            self._agree(Signature("allreduce", op if op in _OPS else None, arr.dtype,
                                  tuple(arr.shape)), _error(problem))
            out = self._result_buffer(arr)
            np.copyto(out, arr)
            self._reduce_into(out.reshape(-1), op, "allreduce")
            return out

        return self._collective("allreduce", body)

    def _result_buffer(self, arr: np.ndarray) -> np.ndarray:
        """Where a reduction of ``arr`` runs and its result stays: this rank's shared slot when
        the result takes the shared-memory path and the slot is free (the reduction then runs
        where the values lie, with one copy in and the others' slices copied back), else a
        pooled lease. Either way a lease: reused only once the caller dropped the result."""
        if (self._shm is not None and not self._joined and arr.dtype != np.float16
                and self._shm.eligible(arr.nbytes, arr.dtype)):
            whole = self._shm.lend(arr.nbytes)
            if whole is not None:
                return whole.view(arr.dtype).reshape(arr.shape)
        return self._pool.take(arr.nbytes).view(arr.dtype).reshape(arr.shape)

    def _grouped_allreduce(self, arrs: list, op: str) -> list:
        def body():
            problem = next((p for a in arrs if (p := check_op(op, a.dtype,
                                                              "grouped_allreduce"))), None)
            layout = repr([(a.dtype.str, a.shape) for a in arrs])
            self._agree(Signature("grouped_allreduce", op if op in _OPS else None,
                                  count=sum(a.size for a in arrs), crc=text_crc(layout)),
                        _error(problem))
            out: list = [None] * len(arrs)
            for dtype in sorted({a.dtype for a in arrs}, key=str):
                members = [i for i, a in enumerate(arrs) if a.dtype == dtype]
                total = sum(arrs[i].size for i in members)
                flat = self._pool.take(total * dtype.itemsize).view(dtype)
                off = 0
                for i in members:
                    flat[off:off + arrs[i].size] = arrs[i].reshape(-1)
                    off += arrs[i].size
                self._reduce_into(flat, op, "grouped_allreduce")
                off = 0
                for i in members:
                    out[i] = flat[off:off + arrs[i].size].reshape(arrs[i].shape)
                    off += arrs[i].size
            return out

        return self._collective("grouped_allreduce", body)

    def _reducescatter(self, arr: np.ndarray, op: str) -> np.ndarray:
        from .collectives import scatter_rows

        def body():
            problem = check_op(op, arr.dtype, "reducescatter")
            if not problem and op not in ("sum", "average"):
                problem = f"reducescatter: op must be 'sum' or 'average', got {op!r}"
            if not problem and arr.ndim == 0:
                problem = "reducescatter: needs at least one dimension to split, got a scalar"
            self._agree(Signature("reducescatter", op if op in _OPS else None, arr.dtype,
                                  tuple(arr.shape)), _error(problem))
            out = self._pool.take(arr.nbytes).view(arr.dtype).reshape(arr.shape)
            np.copyto(out, arr)
            self._reduce_into(out.reshape(-1), op, "reducescatter")
            rows = scatter_rows(arr.shape[0], self._size)
            start = sum(rows[:self._rank])
            return out[start:start + rows[self._rank]].copy()

        return self._collective("reducescatter", body)

    # -- gathers and broadcasts ------------------------------------------------------------------
    def _allgather(self, arr: np.ndarray) -> list:
        MPI = self._MPI
        arr = np.ascontiguousarray(arr)

        def body():
            problem = check_dtype(arr.dtype, "allgather")
            self._agree(Signature("allgather", None, arr.dtype, tuple(arr.shape),
                                  ragged=arr.ndim > 0), _error(problem))
            rows = arr.shape[0] if arr.ndim else 1
            mine = np.array([rows, arr.nbytes], dtype=np.int64)   # rows and bytes
            pairs = np.empty((self._size, 2), dtype=np.int64)
            self._wait(self._comm.Iallgather([mine, MPI.INT64_T], [pairs, MPI.INT64_T]),
                       "allgather")
            firsts = pairs[:, 0]
            counts = [int(n) for n in pairs[:, 1]]
            displs = [int(d) for d in np.cumsum([0] + counts[:-1])]
            recv = np.empty(sum(counts), dtype=np.uint8)
            self._wait(self._comm.Iallgatherv([arr.reshape(-1).view(np.uint8), MPI.BYTE],
                                              [recv, (counts, displs), MPI.BYTE]), "allgather")
            live = [r for r in range(self._size) if r not in self._joined]
            firsts = [firsts[r] for r in live]
            displs = [displs[r] for r in live]
            counts = [counts[r] for r in live]
            shapes = [(int(n), *arr.shape[1:]) if arr.ndim else () for n in firsts]
            return [recv[d:d + c].view(arr.dtype).reshape(s)
                    for d, c, s in zip(displs, counts, shapes)]

        return self._collective("allgather", body)

    def _broadcast(self, arr: np.ndarray | None, root: int) -> np.ndarray:
        MPI = self._MPI
        root = check_root(root, self._size)

        def body():
            error = None
            if arr is None and self._rank == root:
                error = ValueError(f"broadcast: the root rank {root} must pass an array, got None")
            elif arr is not None and check_dtype(arr.dtype, "broadcast"):
                error = TypeError(check_dtype(arr.dtype, "broadcast"))
            sig = Signature("broadcast", None, None if arr is None else arr.dtype,
                            None if arr is None else tuple(arr.shape), root=root)
            self._agree(sig, error)
            header = np.zeros(66, dtype=np.int64)
            if self._rank == root:
                header[0] = list(_DTYPE_LIST).index(arr.dtype)
                header[1] = arr.ndim
                header[2:2 + arr.ndim] = arr.shape
            self._wait(self._comm.Ibcast([header, MPI.INT64_T], root=root), "broadcast")
            dtype, shape = _DTYPE_LIST[int(header[0])], tuple(int(d) for d in
                                                             header[2:2 + header[1]])
            data = (np.array(arr, order="C", copy=True) if self._rank == root
                    else np.empty(shape, dtype))
            if data.nbytes:
                self._wait(self._comm.Ibcast([data.reshape(-1).view(np.uint8), MPI.BYTE],
                                             root=root), "broadcast")
            return data

        return self._collective("broadcast", body)

    def _alltoall(self, arr: np.ndarray, splits: list | None) -> tuple[np.ndarray, list]:
        MPI = self._MPI
        arr = np.ascontiguousarray(arr)

        def body():
            problem = check_dtype(arr.dtype, "alltoall")
            send = None
            if not problem and arr.ndim == 0:
                problem = "alltoall: needs at least one dimension to split, got a scalar"
            if not problem:
                try:
                    send = (even_splits(arr.shape[0], self._size, "alltoall") if splits is None
                            else [int(s) for s in splits])
                except ValueError as exc:
                    problem = str(exc)
            if send is not None and not problem and (
                    len(send) != self._size or min(send) < 0 or sum(send) != arr.shape[0]):
                problem = (f"alltoall: splits must be {self._size} non-negative row counts "
                           f"summing to the first dimension {arr.shape[0]}, got {send}")
            tail = tuple(arr.shape[1:])
            self._agree(Signature("alltoall", None, arr.dtype,
                                  crc=shape_crc((arr.ndim, *tail))), _error(problem))
            sendcounts = np.array(send, dtype=np.int64)
            recvcounts = np.empty(self._size, dtype=np.int64)
            self._wait(self._comm.Ialltoall([sendcounts, MPI.INT64_T],
                                            [recvcounts, MPI.INT64_T]), "alltoall")
            row = int(np.prod(tail, dtype=np.int64)) * arr.dtype.itemsize
            scounts = [int(n) * row for n in sendcounts]
            rcounts = [int(n) * row for n in recvcounts]
            sdispls = [int(d) for d in np.cumsum([0] + scounts[:-1])]
            rdispls = [int(d) for d in np.cumsum([0] + rcounts[:-1])]
            recv = np.empty(sum(rcounts), dtype=np.uint8)
            self._wait(self._comm.Ialltoallv(
                [arr.reshape(-1).view(np.uint8), (scounts, sdispls), MPI.BYTE],
                [recv, (rcounts, rdispls), MPI.BYTE]), "alltoall")
            out = recv.view(arr.dtype).reshape((int(recvcounts.sum()), *tail))
            return out, [int(n) for n in recvcounts]

        return self._collective("alltoall", body)

    def allgather_object(self, obj: Any) -> list:
        MPI = self._MPI

        def body():
            try:
                data, error = json_bytes(obj), None
            except (TypeError, ValueError) as exc:  # still take part, so no rank hangs
                data, error = np.zeros(0, dtype=np.uint8), TypeError(
                    f"allgather_object: the object is not JSON-serialisable: {exc}")
            self._agree(Signature("allgather_object"), error)
            length = np.array([data.size], dtype=np.int64)
            lengths = np.empty(self._size, dtype=np.int64)
            self._wait(self._comm.Iallgather([length, MPI.INT64_T], [lengths, MPI.INT64_T]),
                       "allgather_object")
            counts = [int(n) for n in lengths]
            displs = [int(d) for d in np.cumsum([0] + counts[:-1])]
            recv = np.empty(sum(counts), dtype=np.uint8)
            self._wait(self._comm.Iallgatherv([data, MPI.BYTE], [recv, (counts, displs),
                                                                 MPI.BYTE]), "allgather_object")
            return [json_load(recv[d:d + c]) for d, c in zip(displs, counts)]

        return self._collective("allgather_object", body)

    def broadcast_object(self, obj: Any = None, root: int = 0) -> Any:
        MPI = self._MPI
        root = check_root(root, self._size)

        def body():
            data, error = np.zeros(0, dtype=np.uint8), None
            if self._rank == root:
                try:
                    data = json_bytes(obj)
                except (TypeError, ValueError) as exc:
                    error = TypeError(f"broadcast_object: the root's object is not "
                                      f"JSON-serialisable: {exc}")
            self._agree(Signature("broadcast_object", root=root), error)
            length = np.array([data.size], dtype=np.int64)
            self._wait(self._comm.Ibcast([length, MPI.INT64_T], root=root), "broadcast_object")
            if self._rank != root:
                data = np.empty(int(length[0]), dtype=np.uint8)
            self._wait(self._comm.Ibcast([data, MPI.BYTE], root=root), "broadcast_object")
            return json_load(data)

        return self._collective("broadcast_object", body)

    def barrier(self) -> None:
        # the signature exchange is an all-to-all synchronisation: it is the barrier
        def body() -> None:
            self._agree(Signature("barrier"))

        self._collective("barrier", body)

    # -- gradient reduction ------------------------------------------------------------------
    def reducer(self, layout: Layout, op: str = "average", *,
                check_finite: bool = False) -> Reducer:
        check_layout_op(layout, op)
        dtypes = {np.dtype(d) for d, _ in layout.buckets}
        if (self._shm is not None and len(dtypes) == 1
                and self._shm.eligible(sum(layout.nbytes), dtypes.pop())):
            return SharedMemoryReducer(self, layout, op, check_finite)
        return BucketReducer(self, layout, op, check_finite)

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the windows and the duplicated communicator (collective)."""
        if self._comm is None:
            return
        self._free()
        if self in _OPEN:
            _OPEN.remove(self)
        # the exit protocol runs on another open communicator over the same ranks, if any
        faults.forget(self, next((c for c in _OPEN if c._size == self._size), None))

    def _free(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        self._board.close()
        self._pool.clear()
        comm, self._comm = self._comm, None
        comm.Free()

    def _exit_rendezvous(self) -> None:
        """Every rank's last collective: the ranks agree that they all finished, then every
        open communicator is freed (safe: every rank is here). A rank still calling another
        collective makes this a MismatchError (the caller aborts the job)."""
        if self._comm is None:
            return
        self._owner = threading.get_ident()  # the exit runs on the main thread
        self._board.publish(self._seq + 1, _KIND_CODE["exit"], EXITING)
        self._agree_finish(self._agree_start(Signature("exit")), may_abort=False)
        _close_all_open()

    def _exit_close(self, clean: bool) -> None:
        if clean:
            _close_all_open()


def _close_all_open() -> None:
    for c in list(_OPEN):
        if c._comm is not None:
            c._free()
    _OPEN.clear()
