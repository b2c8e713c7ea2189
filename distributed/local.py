"""``LocalCommunicator``: one process, no MPI import; collectives return fresh copies.

Arguments are checked as on MPI (a bad dtype or op is the same error), so code written for
``mpiexec -n 8`` runs unchanged, and fails the same way, as a plain ``python`` process.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Communicator, Layout, LeasePool, Reducer, all_finite
from .signature import check_dtype, check_op, check_root, json_bytes, json_load

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
        return all(all_finite(b) for b in bufs)


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

    def new_group(self, ranks) -> "LocalCommunicator":
        if [int(r) for r in ranks] != [0]:
            raise ValueError(f"new_group: ranks must be distinct ranks in [0, 1), got "
                             f"{list(ranks)}")
        return LocalCommunicator()

    def _join(self) -> int:
        return 0

    def _allreduce(self, arr: np.ndarray, op: str) -> np.ndarray:
        _fail(check_op(op, arr.dtype, "allreduce"))
        return np.array(arr, order="C", copy=True)

    def _grouped_allreduce(self, arrs: list, op: str) -> list:
        return [self._allreduce(a, op) for a in arrs]

    def _allgather(self, arr: np.ndarray) -> list:
        _fail(check_dtype(arr.dtype, "allgather"))
        return [np.array(arr, order="C", copy=True)]

    def _broadcast(self, arr: np.ndarray | None, root: int) -> np.ndarray:
        check_root(root, 1)
        if arr is None:
            raise ValueError("broadcast: the root rank 0 must pass an array, got None")
        _fail(check_dtype(arr.dtype, "broadcast"))
        return np.array(arr, order="C", copy=True)

    def _alltoall(self, arr: np.ndarray, splits: list | None) -> tuple[np.ndarray, list]:
        _fail(check_dtype(arr.dtype, "alltoall"))
        if arr.ndim == 0:
            raise ValueError("alltoall: needs at least one dimension to split, got a scalar")
        if splits is not None and list(splits) != [arr.shape[0]]:
            raise ValueError(f"alltoall: splits must be 1 row count summing to the first "
                             f"dimension {arr.shape[0]}, got {list(splits)}")
        return np.array(arr, order="C", copy=True), [int(arr.shape[0])]

    def _reducescatter(self, arr: np.ndarray, op: str) -> np.ndarray:
        _fail(check_op(op, arr.dtype, "reducescatter"))
        if op not in ("sum", "average"):
            raise ValueError(f"reducescatter: op must be 'sum' or 'average', got {op!r}")
        if arr.ndim == 0:
            raise ValueError("reducescatter: needs at least one dimension to split, got a scalar")
        return np.array(arr, order="C", copy=True)

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
