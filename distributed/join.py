"""Uneven inputs: ``with dist.join(): ...`` (DDP's ``Join``, Horovod's ``join``).

A rank that runs out of batches leaves the block and keeps answering the other ranks'
collectives until every rank has left it: gradient reductions and ``allreduce`` with neutral
values (zeros for a sum or an average, whose divisor then counts only the ranks still stepping;
-inf for a max, +inf for a min, ones for a product), broadcasts by receiving, gathers with no
rows (``allgather_object`` gets ``None`` from it), barriers. Other collectives while a rank
has joined are a ``MismatchError`` on every rank. When all ranks are done, the variables (and
optimizer state) given to ``join`` are broadcast from the rank that joined last, so every rank
ends with the same weights.

>>> import tapeflow.distributed as dist
>>> with dist.join():            # one process: nothing to wait for
...     pass
"""
from __future__ import annotations

from typing import Any, Sequence

from .base import Communicator
from .registry import get_comm

__all__ = ["join", "Join"]


class Join:
    """The context manager :func:`join` returns; ``last_rank`` is the rank that joined last
    (set on leaving the block)."""

    def __init__(self, comm: Communicator | None = None, variables: Sequence | None = None,
                 optimizer: Any = None):
        self.comm = comm if comm is not None else get_comm()
        self.variables = list(variables) if variables is not None else None
        self.optimizer = optimizer
        self.last_rank: int | None = None

    def __enter__(self) -> "Join":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # a failing rank does not wait; the failure ends the job
            return
        served = self.comm._join()
        every = self.comm.allgather_object(served)
        self.last_rank = min(range(len(every)), key=lambda r: (every[r], r))
        if self.variables is not None:
            self.comm.broadcast_variables(self.variables, root=self.last_rank)
        if self.optimizer is not None:
            self.comm.broadcast_optimizer_state(self.optimizer, root=self.last_rank)


def join(comm: Communicator | None = None, variables: Sequence | None = None,
         optimizer: Any = None) -> Join:
    """A block within which ranks may take different numbers of steps (see the module doc)."""
    return Join(comm, variables, optimizer)
