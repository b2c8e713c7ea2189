"""One copy of the training data per node: read once by the node's first rank, shared by all.

Under ``mpiexec -n N`` every rank used to read and decompress the dataset and hold its own
float32 copy (188 MB for MNIST's training images). :func:`load_on_node` has the first rank of
each node run the loader, puts the arrays into an MPI-3 shared-memory window of that node, and
gives every rank of the node read-only NumPy views of it. Errors are agreed on: if the loader
fails on any node, every rank raises the same :class:`~tapeflow.data.DatasetError`.

Array shapes and dtypes travel as integers (``Bcast`` of an int64 header), never pickled.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["load_on_node"]

_DTYPES = (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64,
           np.bool_)
_MAX_NDIM = 6
_windows: list = []  # the shared windows live as long as the process (views point into them)


def _header(arrays: Sequence[np.ndarray]) -> np.ndarray:
    header = np.zeros((len(arrays), 2 + _MAX_NDIM), np.int64)
    for i, a in enumerate(arrays):
        codes = [j for j, d in enumerate(_DTYPES) if np.dtype(d) == a.dtype]
        if not codes or a.ndim > _MAX_NDIM:
            raise TypeError(f"cannot share an array of dtype {a.dtype} and rank {a.ndim}")
        header[i, 0], header[i, 1] = codes[0], a.ndim
        header[i, 2:2 + a.ndim] = a.shape
    return header


def load_on_node(load: Callable[[], Sequence[np.ndarray]], comm: Any, count: int
                 ) -> tuple[np.ndarray, ...]:
    """``load()``'s ``count`` arrays on every rank, loaded once per node and shared.

    With one rank (or no MPI) it is just ``load()``. ``load`` raising
    :class:`~tapeflow.data.DatasetError` makes every rank raise it (the first failing
    node's message).
    """
    from tapeflow import data

    if comm.size == 1:
        return tuple(load())
    from mpi4py import MPI

    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    leader = node.Get_rank() == 0
    arrays = None
    # Two rounds: the node of rank 0 first (a download then lands in a cache that other nodes
    # may share, so they do not fetch the same file at the same time), then the other nodes.
    for round_ in (0, 1):
        mine = leader and ((comm.rank == 0) if round_ == 0 else (comm.rank != 0))
        error = None
        if mine:
            try:
                arrays = [np.ascontiguousarray(a) for a in load()]
            except data.DatasetError as e:
                error = str(e)
        failed = next((e for e in comm.allgather_object(error) if e is not None), None)
        if failed is not None:
            node.Free()
            raise data.DatasetError(failed)
    header = _header(arrays) if leader else np.zeros((count, 2 + _MAX_NDIM), np.int64)
    node.Bcast(header, root=0)
    specs = [(np.dtype(_DTYPES[int(h[0])]), tuple(int(d) for d in h[2:2 + int(h[1])]))
             for h in header]
    sizes = [dtype.itemsize * int(np.prod(shape)) for dtype, shape in specs]
    offsets = np.concatenate([[0], np.cumsum([(s + 63) // 64 * 64 for s in sizes])])
    total = int(offsets[-1])
    win = MPI.Win.Allocate_shared(total if leader else 0, 1, comm=node)
    _windows.append((win, node))
    buf, _ = win.Shared_query(0)
    memory = np.frombuffer(buf, np.uint8, count=total)
    views = []
    for (dtype, shape), size, start in zip(specs, sizes, offsets):
        view = memory[start:start + size].view(dtype).reshape(shape)
        views.append(view)
    if leader:
        for view, a in zip(views, arrays):
            view[...] = a
    node.Barrier()  # the copies are visible once every rank passed it (unified memory model)
    for view in views:
        view.flags.writeable = False
    return tuple(views)
