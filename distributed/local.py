"""``LocalCommunicator``: one process, no MPI import; collectives return fresh copies.

Arguments are checked as on MPI (a bad dtype or op is the same error), so code written for
``mpiexec -n 8`` runs unchanged, and fails the same way, as a plain ``python`` process.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import (
    Communicator, Layout, LeasePool, Reducer, check_dtype, check_op, check_root, json_bytes,
    json_load, unwrap,
)

__all__ = ["LocalCommunicator", "LocalReducer"]


def _fail(problem: str | None) -> None:
    if problem:
        raise (TypeError if "dtype" in problem else ValueError)(problem)


class LocalReducer(Reducer):
    """Size 1: nothing travels; ``finish`` only tests finiteness. Buffers are pool leases."""

    path = "local"

    def __init__(self, pool: LeasePool, layout: Layout, op: str, check_finite: bool):
        super().__init__(layout, op, check_finite)
        self._pool = pool
        self._bufs: list = []

    def start(self, tag: int = 0) -> list:
        del tag
        self._bufs = [self._pool.take(n).view(d)
                      for (d, _), n in zip(self.layout.buckets, self.layout.nbytes)]
        return self._bufs

    def finish(self) -> bool | None:
        bufs, self._bufs = self._bufs, []
        if not self.check_finite:
            return None
        return all(bool(np.isfinite(b).all()) for b in bufs if b.dtype.kind == "f")


class LocalCommunicator(Communicator):
    """One process (rank 0 of 1). The MPI options of ``init`` are accepted and unused."""

    def __init__(self, **options: Any):
        del options
        self._pool = LeasePool()

    rank = property(lambda self: 0, doc="Always 0.")
    size = property(lambda self: 1, doc="Always 1.")
    local_rank = property(lambda self: 0, doc="Always 0.")
    local_size = property(lambda self: 1, doc="Always 1.")
    backend = property(lambda self: "local", doc='``"local"``.')

    def dup(self) -> "LocalCommunicator":
        return LocalCommunicator()

    def allreduce(self, x: Any, op: str = "average") -> Any:
        arr, rewrap = unwrap(x)
        _fail(check_op(op, arr.dtype, "allreduce"))
        return rewrap(np.array(arr, order="C", copy=True))

    def grouped_allreduce(self, xs: list, op: str = "average") -> list:
        return [self.allreduce(x, op) for x in xs]

    def allgather(self, x: Any) -> list:
        arr, rewrap = unwrap(x)
        _fail(check_dtype(arr.dtype, "allgather"))
        return [rewrap(np.array(arr, order="C", copy=True))]

    def broadcast(self, x: Any = None, root: int = 0) -> Any:
        check_root(root, 1)
        if x is None:
            raise ValueError("broadcast: the root rank 0 must pass an array, got None")
        arr, rewrap = unwrap(x)
        _fail(check_dtype(arr.dtype, "broadcast"))
        return rewrap(np.array(arr, order="C", copy=True))

    def allgather_object(self, obj: Any) -> list:
        return [json_load(json_bytes(obj))]

    def broadcast_object(self, obj: Any = None, root: int = 0) -> Any:
        check_root(root, 1)
        return json_load(json_bytes(obj))

    def barrier(self) -> None:
        return None

    def reducer(self, layout: Layout, op: str = "average", *,
                check_finite: bool = False) -> Reducer:
        for d, _ in layout.buckets:
            _fail(check_op(op, np.dtype(d), "reducer"))
        return LocalReducer(self._pool, layout, op, check_finite)
