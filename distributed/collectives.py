"""The collectives on Tensors and arrays, each with its derivative rule beside it (mpi4jax style).

Every :class:`~tapeflow.distributed.base.Communicator` method (and the module-level
``dist.allreduce``...) comes here: arrays go straight to the implementation's array-level
method (``comm._allreduce`` ...); Tensors go through ``tp.custom_gradient``, so a tape records
the collective and its rule, written with these same differentiable collectives (a nested tape
differentiates it again). With ``L = sum over ranks of each rank's loss`` (what data-parallel
training minimises), the rules are Horovod's:

* ``allreduce`` sum / average: the same reduction of the upstream gradient; ``max``/``min``:
  the summed upstream gradient where this rank held the extremum; ``product``: the summed
  upstream gradient times ``y / x``;
* ``allgather``: this rank's slice of the summed upstream gradient;
* ``broadcast``: the summed upstream gradient on the root, zeros elsewhere;
* ``alltoall``: an ``alltoall`` of the upstream gradient back along the received splits;
* ``reducescatter``: an ``allgather`` of the upstream gradient (divided by ``size`` for
  ``average``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .signature import unwrap

__all__ = ["allreduce", "grouped_allreduce", "allgather", "broadcast", "alltoall",
           "reducescatter"]


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "_value") and hasattr(x, "_id")


def _tp():
    import tapeflow as tp

    return tp


def _host(t: Any) -> np.ndarray:
    """MPI staging: a Tensor's values in host memory, where MPI reads them."""
    return t.numpy()


def _like(arr: np.ndarray, t: Any) -> Any:
    """A collective's result as a Tensor on ``t``'s device (MPI staging, back)."""
    tp = _tp()
    y = tp.constant(arr)
    return y if y.device == t.device else tp.to_device(y, t.device)


def _collective(name: str, x: Any, forward, rule) -> Any:
    """``forward(array) -> array`` applied to ``x``. For a Tensor it is an op a tape records
    (named ``name``), run on the host and returned on ``x``'s device, whose gradient is
    ``rule(g, t, y)``, written with these same collectives (so a nested tape differentiates it
    again)."""
    if not _is_tensor(x):
        arr, rewrap = unwrap(x)
        return rewrap(forward(arr))
    tp = _tp()

    def collective(t):
        y = _like(forward(_host(t)), t)
        return y, lambda g: rule(g, t, y)
    collective.__name__ = collective.__qualname__ = name
    return tp.custom_gradient(collective)(x)


# -- allreduce ------------------------------------------------------------------------------------

def allreduce(comm: Any, x: Any, op: str = "average") -> Any:
    """``x`` reduced over the ranks of ``comm``; differentiable for Tensors."""
    def rule(g, t, y):
        if op in ("sum", "average"):
            return allreduce(comm, g, op)
        total = allreduce(comm, g, "sum")
        if op in ("max", "min"):  # where this rank held the extremum
            return total * _tp().cast(t == y, g.dtype)
        return total * y / t  # product: d(prod)/dx = prod / x

    return _collective("_allreduce", x, lambda a: comm._allreduce(a, op), rule)


def grouped_allreduce(comm: Any, xs: Sequence, op: str = "average") -> list:
    """Several tensors reduced as one checked, fused collective."""
    xs = list(xs)
    if not any(_is_tensor(x) for x in xs):
        pairs = [unwrap(x) for x in xs]
        out = comm._grouped_allreduce([a for a, _ in pairs], op)
        return [rewrap(a) for a, (_, rewrap) in zip(out, pairs)]
    if op not in ("sum", "average"):
        return [allreduce(comm, x, op) for x in xs]
    tp = _tp()
    ts = [tp.convert_to_tensor(x) for x in xs]

    @tp.custom_gradient
    def _grouped(*args):
        ys = [_like(a, t) for a, t in zip(comm._grouped_allreduce([_host(t) for t in args], op),
                                          args)]
        return (ys if len(ys) > 1 else ys[0]), lambda *gs: grouped_allreduce(comm, gs, op)

    out = _grouped(*ts)
    return list(out) if isinstance(out, (list, tuple)) else [out]


# -- allgather ------------------------------------------------------------------------------------

def allgather(comm: Any, x: Any) -> Any:
    """Every rank's ``x`` concatenated along axis 0, in rank order (first dimensions may
    differ; a scalar gives a vector of ``size``); differentiable for Tensors."""
    rows: list[int] = []  # each rank's rows, known once gathered

    def forward(arr):
        parts = [np.atleast_1d(p) for p in comm._allgather(arr)]
        rows[:] = [int(p.shape[0]) for p in parts]
        return np.concatenate(parts, 0)

    def rule(g, t, y):
        total = allreduce(comm, g, "sum")
        start = sum(rows[:comm.rank])
        return _tp().reshape(total[start:start + rows[comm.rank]], t.shape)

    return _collective("_allgather", x, forward, rule)


# -- broadcast ------------------------------------------------------------------------------------

def broadcast(comm: Any, x: Any = None, root: int = 0) -> Any:
    """Root's ``x`` on every rank; differentiable for Tensors (the root's input gets the
    summed upstream gradient)."""
    if x is None:  # a rank that only receives
        return comm._broadcast(None, root)

    def rule(g, t, y):
        total = allreduce(comm, g, "sum")
        return total if comm.rank == root else total * 0.0

    return _collective("_broadcast", x, lambda a: comm._broadcast(a, root), rule)


# -- alltoall -------------------------------------------------------------------------------------

def alltoall(comm: Any, x: Any, splits: Any = None) -> Any:
    """Scatter slices of ``x``'s first dimension to the ranks and gather theirs, in rank order.

    ``splits[r]`` rows go to rank ``r`` (default: ``len(x) // size`` each, which must divide
    evenly). Returns the gathered tensor, or ``(gathered, received_splits)`` when ``splits`` is
    given (Horovod). Differentiable for Tensors."""
    want_splits = splits is not None
    if splits is not None:
        splits = [int(s) for s in np.asarray(unwrap(splits)[0]).reshape(-1)]
    if not _is_tensor(x):
        arr, rewrap = unwrap(x)
        out, received = comm._alltoall(arr, splits)
        return (rewrap(out), np.asarray(received, np.int64)) if want_splits else rewrap(out)
    tp = _tp()
    got: dict = {}

    @tp.custom_gradient
    def _alltoall(t):
        out, received = comm._alltoall(_host(t), splits)
        got["received"] = received

        def grad(g):
            back = alltoall(comm, g, splits=received)
            return back[0]

        return _like(out, t), grad

    y = _alltoall(x)
    return (y, np.asarray(got["received"], np.int64)) if want_splits else y


# -- reducescatter --------------------------------------------------------------------------------

def reducescatter(comm: Any, x: Any, op: str = "sum") -> Any:
    """``x`` reduced over the ranks, and split along axis 0: rank ``r`` gets the ``r``-th part
    (the first ``len(x) % size`` ranks get one row more). ``op``: sum or average.
    Differentiable for Tensors."""
    def rule(g, t, y):
        full = allgather(comm, g)
        return full / float(comm.size) if op == "average" else full

    return _collective("_reducescatter", x, lambda a: comm._reducescatter(a, op), rule)


def scatter_rows(n: int, size: int) -> list[int]:
    """Rows of an ``n``-row tensor each rank gets from ``reducescatter``."""
    base, extra = divmod(n, size)
    return [base + (1 if r < extra else 0) for r in range(size)]
