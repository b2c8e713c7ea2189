"""Gradient reducers of the MPI communicator: bucketed non-blocking MPI, and shared memory.

Both follow :class:`~tapeflow.distributed.base.Reducer`'s protocol (start, ready, finish) and
both check the layout first: ``start`` posts the signature exchange without blocking, and it is
completed before the first byte of gradient data is combined, so ranks reducing different
layouts (or at different steps, or one rank reducing while another does something else) get a
``MismatchError`` on every rank, never garbage.

The arrays ``start`` hands out are the caller's: leases from the communicator's pool (reused at
the same address only once the caller dropped them) or, on the shared-memory path, a lease of
this rank's shared slot when the previous one is no longer held.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from tapeflow import timeline

from .base import Layout, Reducer, all_finite
from .signature import Signature

__all__ = ["BucketReducer", "SharedMemoryReducer", "InOrderReducer", "joined_reduce"]


def mpi_type(MPI, dtype: np.dtype):
    """The MPI datatype that reduces ``dtype``."""
    return {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE,
            np.dtype(np.int32): MPI.INT32_T, np.dtype(np.int64): MPI.INT64_T}[np.dtype(dtype)]


def mpi_op(MPI, op: str):
    """The MPI reduction for ``op`` (``average`` is a sum, scaled afterwards)."""
    return {"max": MPI.MAX, "min": MPI.MIN, "product": MPI.PROD}.get(op, MPI.SUM)


def _check_signature(layout: Layout, op: str, tag: int) -> Signature:
    dtypes = {np.dtype(d) for d, _ in layout.buckets}
    dtype = dtypes.pop() if len(dtypes) == 1 else None  # a joined rank needs it (dist.join)
    return Signature("reduce_gradients", op, dtype, count=layout.count, crc=layout.crc,
                     tag=tag)


def joined_reduce(comm: Any, bufs: list, op: str) -> None:
    """Reduce every bucket as one fused buffer while some ranks have joined (they contribute
    zeros of the same length); an average counts only the ranks still stepping."""
    if len({b.dtype for b in bufs}) != 1:
        raise ValueError("dist.join: gradients of several dtypes cannot be reduced while a "
                         "rank has joined; use one dtype")
    flat = np.concatenate([b.reshape(-1) for b in bufs])
    comm._reduce_into(flat, "sum" if op == "average" else op, "reduce_gradients")
    if op == "average":
        flat *= flat.dtype.type(1.0 / (comm.size - len(comm._joined)))
    off = 0
    for b in bufs:
        b.reshape(-1)[:] = flat[off:off + b.size]
        off += b.size


def _finite(bufs: list) -> bool:
    return all(all_finite(b) for b in bufs)


class _CheckedReducer(Reducer):
    """What both MPI reducers share: the communicator's entry guard, the signature exchange
    posted by ``start``, pool-leased buffers, and giving the communicator back on failure."""

    def __init__(self, comm: Any, layout: Layout, op: str, check_finite: bool):
        super().__init__(layout, op, check_finite)
        self._comm = comm
        self._bufs: list = []
        self._agreement = None

    def _begin(self, tag: int, buffers) -> list:
        c = self._comm
        c._enter("reduce_gradients")
        try:
            self._agreement = c._agree_start(_check_signature(self.layout, self.op, tag))
            self._bufs = buffers()
        except BaseException:
            c._leave()
            raise
        return self._bufs

    def _leases(self) -> list:
        return [self._comm._pool.take(n).view(d)
                for (d, _), n in zip(self.layout.buckets, self.layout.nbytes)]

    def cancel(self) -> None:
        if self._bufs:
            self._bufs, self._agreement = [], None
            self._comm._leave()


class InOrderReducer(_CheckedReducer):
    """Buckets launched strictly in bucket order as each becomes ready, every rank in the same
    sequence; the layout check completes before the first bucket moves. Subclasses launch one
    bucket (:meth:`_launch`) and may hold launches back (:meth:`_may_launch`)."""

    def _begin_in_order(self, tag: int, buffers) -> list:
        self._begin(tag, buffers)
        self._ready = [False] * len(self._bufs)
        self._launched = 0
        return self._bufs

    def ready(self, bucket: int) -> None:
        self._ready[bucket] = True
        self._launch_ready()

    def _launch_ready(self) -> None:
        while self._launched < len(self._bufs) and self._ready[self._launched]:
            if self._agreement is not None:  # the check completes before any data moves
                agreement, self._agreement = self._agreement, None
                self._fail_safe(self._comm._agree_finish, agreement)
            if not self._may_launch():
                return
            self._launch(self._launched)
            self._launched += 1

    def _may_launch(self) -> bool:
        return True

    @abstractmethod
    def _launch(self, i: int) -> None:
        """Start reducing bucket ``i`` (its values are final)."""

    def _fail_safe(self, fn, *args):
        try:
            return fn(*args)
        except BaseException:
            self.cancel()
            raise


class BucketReducer(InOrderReducer):
    """One non-blocking ``Iallreduce`` per bucket, launched in bucket order as soon as the
    bucket is ready, so communication can overlap the rest of the backward sweep (how much
    MPI advances meanwhile is the library's business: MPICH on CPUs advances it only inside
    MPI calls). float16 buckets are reduced in float32 (MPI has no float16 arithmetic)."""

    path = "mpi"

    def start(self, tag: int = 0) -> list:
        self._begin_in_order(tag, self._leases)
        self._work: list = [None] * len(self._bufs)
        self._requests: list = []
        return self._bufs

    def _may_launch(self) -> bool:
        return not self._comm._joined  # some ranks joined: one fused reduction in finish()

    def _launch(self, i: int) -> None:
        c = self._comm
        MPI = c._MPI
        buf = self._bufs[i]
        work = buf.astype(np.float32) if buf.dtype == np.float16 else buf
        self._work[i] = work
        if work.size:
            timeline.instant("bucket launched", "reduce", bucket=i, bytes=work.nbytes)
            self._requests.append(c._comm.Iallreduce(
                MPI.IN_PLACE, [work, mpi_type(MPI, work.dtype)], op=mpi_op(MPI, self.op)))

    def cancel(self) -> None:
        self._work = []
        super().cancel()

    def _fail_safe_joined(self, bufs: list) -> None:
        try:
            joined_reduce(self._comm, bufs, self.op)
        finally:
            self._comm._joined = []
            self._comm._leave()

    def finish(self) -> bool | None:
        c = self._comm
        self._ready = [True] * len(self._bufs)
        self._launch_ready()
        if c._joined:
            bufs, self._bufs, self._work = self._bufs, [], []
            self._fail_safe_joined(bufs)
            return _finite(bufs) if self.check_finite else None
        requests = self._requests
        MPI = c._MPI
        if requests:
            with timeline.span("wait for buckets", "reduce", buckets=len(requests)):
                self._fail_safe(c.waiter.wait, lambda: MPI.Request.Testall(requests),
                                "reduce_gradients", c.seq)
        self._requests = []
        scale = 1.0 / c.size
        for buf, work in zip(self._bufs, self._work):
            if self.op == "average":
                np.multiply(work, work.dtype.type(scale), out=work)
            if work is not buf:
                np.copyto(buf, work, casting="unsafe")
        c._leave()
        bufs, self._bufs, self._work = self._bufs, [], []
        return _finite(bufs) if self.check_finite else None


class SharedMemoryReducer(_CheckedReducer):
    """All buckets in one blocking reduction through the node's shared-memory window, after
    the sweep: a shared-memory reduction is CPU work that would only compete with the sweep.
    When this rank's shared slot is free the buckets are packed straight into it (no copy in,
    results read back in place); averaging and the finiteness test happen while reducing."""

    path = "shared-memory"

    def start(self, tag: int = 0) -> list:
        return self._begin(tag, self._buffers)

    def _buffers(self) -> list:
        nbytes = self.layout.nbytes
        whole = self._comm._shm.lend(sum(nbytes))
        if whole is None:  # the slot is still held (or too small): private leases
            return self._leases()
        bufs, off = [], 0
        for (d, _), n in zip(self.layout.buckets, nbytes):
            bufs.append(whole[off:off + n].view(d))
            off += n
        return bufs

    def finish(self) -> bool | None:
        c = self._comm
        try:
            agreement, self._agreement = self._agreement, None
            c._agree_finish(agreement)
            if c._joined:
                joined_reduce(c, self._bufs, self.op)
                finite = _finite(self._bufs) if self.check_finite else None
            else:
                finite = c._shm.allreduce_(self._bufs, self.op, check_finite=self.check_finite)
        finally:
            c._leave()
            self._bufs = []
        return finite
