"""The ``nccl`` communicator: MPI for everything, NCCL for the gradient reduction.

``dist.init("nccl")`` (under ``mpiexec``, one GPU per rank) creates an
:class:`~tapeflow.distributed.mpi.MPICommunicator`, makes GPU ``local_rank`` (modulo the GPUs
visible) this process's device, and bootstraps one NCCL communicator over MPI: rank 0 makes the
unique id and broadcasts it as 128 bytes (no pickle). Its :meth:`NCCLCommunicator.reducer`
hands the distributed tape :class:`NCCLReducer`: device buckets, one in-place NCCL all-reduce
per bucket launched on a dedicated stream as soon as the bucket is packed, after the same
layout check as the MPI reducers (a mismatch is a ``MismatchError`` on every rank, before any
data moves). Every other collective stays on MPI with its explicit host staging.

The reducer talks to NCCL through a small engine (``allreduce(buf, op)``, ``synchronize()``):
:class:`NcclEngine` on CuPy; the ``device`` tests drive the same reducer with an engine that
reduces through MPI, so the protocol is tested without a GPU.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tapeflow import devices, timeline
from tapeflow._backend import array_module

from .base import Layout, Reducer, check_layout_op
from .mpi import MPICommunicator
from .reducers import InOrderReducer, joined_reduce
from .registry import register_backend

__all__ = ["NCCLCommunicator", "NCCLReducer", "NcclEngine"]


class NcclEngine:
    """In-place all-reduce of CuPy arrays over one NCCL communicator, on its own stream."""

    def __init__(self, comm: MPICommunicator):
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as exc:
            raise RuntimeError(f"the nccl backend needs CuPy with NCCL (pip install "
                               f"'tapeflow[gpu]'): {exc}") from None
        n_gpus = cupy.cuda.runtime.getDeviceCount()
        if n_gpus == 0:
            raise RuntimeError("the nccl backend needs a GPU; none is visible")
        self.device = comm.local_rank % n_gpus
        cupy.cuda.Device(self.device).use()
        self._cupy, self._nccl = cupy, nccl
        uid = np.zeros(128, np.int8)  # the unique id, as bytes (broadcast without pickle)
        if comm.rank == 0:
            uid[:] = np.asarray(nccl.get_unique_id(), np.int64).astype(np.int8)
        comm._comm.Bcast(uid, root=0)
        self._comm = nccl.NcclCommunicator(comm.size, tuple(int(b) for b in uid), comm.rank)
        self._stream = cupy.cuda.Stream(non_blocking=True)
        self._types = {np.dtype(np.float16): nccl.NCCL_FLOAT16,
                       np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): nccl.NCCL_FLOAT64,
                       np.dtype(np.int32): nccl.NCCL_INT32,
                       np.dtype(np.int64): nccl.NCCL_INT64}
        self._ops = {"max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN, "product": nccl.NCCL_PROD}
        self._sum = nccl.NCCL_SUM

    def empty(self, dtype, n: int):
        with self._cupy.cuda.Device(self.device):
            return self._cupy.empty(n, dtype=dtype)

    def allreduce(self, buf, op: str) -> None:
        """Launch the in-place reduction of ``buf`` (``average`` is a sum, scaled later)."""
        # the bucket was packed on the current stream: the NCCL stream waits for it
        self._stream.wait_event(self._cupy.cuda.get_current_stream().record())
        self._comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._types[buf.dtype],
                             self._ops.get(op, self._sum), self._stream.ptr)

    def synchronize(self) -> None:
        self._stream.synchronize()
        self._comm.check_async_error()

    def close(self) -> None:
        if self._comm is not None:
            self._comm.destroy()
            self._comm = None


class NCCLReducer(InOrderReducer):
    """Device buckets reduced by NCCL, one in-place all-reduce per bucket in bucket order,
    launched once the layout check has completed. Fresh buckets every step: the gradients the
    tape hands out are views of them, and the reducer never writes them after ``finish``."""

    path = "nccl"

    def __init__(self, comm: "NCCLCommunicator", layout: Layout, op: str, check_finite: bool):
        super().__init__(comm, layout, op, check_finite)
        self._engine = comm.engine

    def _device_buffers(self) -> list:
        return [self._engine.empty(np.dtype(d), int(n)) for d, n in self.layout.buckets]

    def start(self, tag: int = 0) -> list:
        return self._begin_in_order(tag, self._device_buffers)

    def _may_launch(self) -> bool:
        return not self._comm._joined  # some ranks joined: one host-staged reduction in finish

    def _finish_joined(self) -> bool | None:
        """While ranks are inside ``dist.join`` they answer over MPI (they hold no NCCL
        buckets): stage the device buckets to the host explicitly, reduce them as the MPI
        reducer does then, and copy the results back to the device."""
        bufs, self._bufs = self._bufs, []
        try:
            host = [devices.to_device(b, "cpu") for b in bufs]  # MPI staging, device -> host
            joined_reduce(self._comm, host, self.op)
            for b, h in zip(bufs, host):
                b[...] = devices.to_device(h, devices.device_of(b))  # MPI staging, back
        finally:
            self._comm._joined = []
            self._comm._leave()
        return _finite_on_device(bufs) if self.check_finite else None

    def _launch(self, i: int) -> None:
        buf = self._bufs[i]
        if buf.size:
            timeline.instant("bucket launched", "reduce", bucket=i, bytes=buf.nbytes)
            self._engine.allreduce(buf, self.op)

    def finish(self) -> bool | None:
        self._ready = [True] * len(self._bufs)
        self._launch_ready()
        if self._comm._joined:
            return self._finish_joined()
        try:
            with timeline.span("wait for buckets", "reduce", buckets=len(self._bufs)):
                self._engine.synchronize()
        except BaseException:
            self.cancel()
            raise
        bufs, self._bufs = self._bufs, []
        if self.op == "average":
            for b in bufs:
                b *= b.dtype.type(1.0 / self._comm.size)
        self._comm._leave()
        if not self.check_finite:
            return None
        return _finite_on_device(bufs)


def _finite_on_device(bufs: list) -> bool:
    """Whether every reduced value is finite (one explicit host read per bucket)."""
    return all(bool(array_module(b).isfinite(b).all()) for b in bufs if b.dtype.kind == "f")


class NCCLCommunicator(MPICommunicator):
    """:class:`MPICommunicator` whose gradient reducer runs on NCCL (see the module docstring).

    ``engine`` replaces NCCL (the device tests' MPI-backed engine); other options go to
    :class:`MPICommunicator`."""

    backend = property(lambda self: "nccl", doc='``"nccl"``.')

    def __init__(self, *, engine: Any = None, **options: Any):
        super().__init__(**options)
        try:
            self.engine = NcclEngine(self) if engine is None else engine
        except BaseException:
            self.close()
            raise

    def reducer(self, layout: Layout, op: str = "average", *,
                check_finite: bool = False) -> Reducer:
        check_layout_op(layout, op)
        return NCCLReducer(self, layout, op, check_finite)

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None and hasattr(engine, "close"):
            engine.close()
        super().close()


register_backend("nccl", NCCLCommunicator)
