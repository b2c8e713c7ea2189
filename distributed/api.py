"""Module-level collectives on the default communicator (Horovod's names).

``dist.allreduce(x)`` is ``dist.get_comm().allreduce(x)``, and so on; :func:`init` (or the
first use) picks the communicator.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import Communicator
from .registry import get_comm

__all__ = ["rank", "size", "local_rank", "local_size", "cross_rank", "cross_size",
           "allreduce", "grouped_allreduce", "allgather", "broadcast", "broadcast_object",
           "allgather_object", "barrier", "alltoall", "reducescatter", "new_group",
           "broadcast_variables", "broadcast_optimizer_state", "average_metrics",
           "Average", "Sum", "Min", "Max", "Product"]


def _c(comm: Communicator | None) -> Communicator:
    return comm if comm is not None else get_comm()


def _root(root: int, root_rank: int | None) -> int:
    """``root``, or Horovod's spelling ``root_rank=`` (one of the two)."""
    if root_rank is None:
        return root
    if root not in (0, root_rank):
        raise TypeError(f"pass root or root_rank, not both (got root={root}, "
                        f"root_rank={root_rank})")
    return root_rank


# Horovod's op constants (hvd.Average ...): the strings every collective takes
Average, Sum, Min, Max, Product = "average", "sum", "min", "max", "product"


def rank() -> int:
    """This process's rank in the default communicator."""
    return get_comm().rank


def size() -> int:
    """Number of ranks in the default communicator."""
    return get_comm().size


def local_rank() -> int:
    """Rank among the ranks on this node."""
    return get_comm().local_rank


def local_size() -> int:
    """Number of ranks on this node."""
    return get_comm().local_size


def cross_rank() -> int:
    """Index of this node."""
    return get_comm().cross_rank


def cross_size() -> int:
    """Number of nodes."""
    return get_comm().cross_size


def allreduce(x: Any, op: str = "average", comm: Communicator | None = None) -> Any:
    """``x`` reduced over the ranks (``op``: average, sum, min, max, product)."""
    return _c(comm).allreduce(x, op)


def grouped_allreduce(xs: Sequence, op: str = "average", comm: Communicator | None = None) -> list:
    """Several tensors reduced as one checked, fused collective."""
    return _c(comm).grouped_allreduce(list(xs), op)


def allgather(x: Any, comm: Communicator | None = None) -> Any:
    """Every rank's ``x`` concatenated along axis 0 (first dimensions may differ)."""
    return _c(comm).allgather(x)


def broadcast(x: Any = None, root: int = 0, comm: Communicator | None = None, *,
              root_rank: int | None = None) -> Any:
    """Root's ``x`` on every rank (``root_rank=`` is accepted, Horovod's spelling)."""
    return _c(comm).broadcast(x, _root(root, root_rank))


def broadcast_object(obj: Any = None, root: int = 0, comm: Communicator | None = None, *,
                     root_rank: int | None = None) -> Any:
    """Root's JSON-serialisable ``obj`` on every rank (no pickle)."""
    return _c(comm).broadcast_object(obj, _root(root, root_rank))


def allgather_object(obj: Any, comm: Communicator | None = None) -> list:
    """Every rank's JSON-serialisable ``obj``."""
    return _c(comm).allgather_object(obj)


def alltoall(x: Any, splits: Any = None, comm: Communicator | None = None) -> Any:
    """``splits[r]`` rows of ``x`` to rank ``r``, the rows every rank sent here gathered;
    ``(gathered, received_splits)`` when ``splits`` is given (Horovod)."""
    return _c(comm).alltoall(x, splits)


def reducescatter(x: Any, op: str = "sum", comm: Communicator | None = None) -> Any:
    """``x`` reduced over the ranks, this rank's part of axis 0 (the first ``len % size``
    ranks get one row more)."""
    return _c(comm).reducescatter(x, op)


def new_group(ranks: Sequence[int], comm: Communicator | None = None) -> Communicator | None:
    """A communicator over ``ranks`` (a process set). Every rank of ``comm`` calls it with the
    same list; members get the group (ranks numbered in the order given), others ``None``."""
    return _c(comm).new_group(ranks)


def barrier(comm: Communicator | None = None) -> None:
    """Return once every rank arrived."""
    _c(comm).barrier()


def broadcast_variables(variables, root: int = 0, comm: Communicator | None = None, *,
                        root_rank: int | None = None) -> None:
    """Give every rank ``root``'s values (call at start and after restoring a checkpoint);
    every rank must pass the same count, names, shapes and dtypes (checked first)."""
    _c(comm).broadcast_variables(list(variables), _root(root, root_rank))


def broadcast_optimizer_state(optimizer, root: int = 0, comm: Communicator | None = None, *,
                              root_rank: int | None = None) -> None:
    """Give every rank ``root``'s optimizer state (after a restore on ``root``)."""
    _c(comm).broadcast_optimizer_state(optimizer, _root(root, root_rank))


def average_metrics(metrics: dict, comm: Communicator | None = None) -> dict:
    """Average float metrics over ranks (for logs), in one reduction."""
    comm = _c(comm)
    keys = sorted(metrics)
    vals = comm.allreduce(np.array([float(metrics[k]) for k in keys]), op="average")
    return dict(zip(keys, (float(v) for v in vals)))
