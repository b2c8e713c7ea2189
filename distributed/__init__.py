"""``tapeflow.distributed`` (imported as ``dist``): communicators, collectives, the distributed
tape, fault handling and launching.

>>> import tapeflow.distributed as dist
>>> comm = dist.init()          # "mpi" under mpiexec, "local" in a plain process
>>> comm.rank, comm.size
(0, 1)
>>> import numpy as np
>>> dist.allreduce(np.array([3.0]), op="sum")      # every rank's values summed
array([3.])

From ``init()`` on (for an uncaught exception: from this import on), a failure on any rank (an exception, ``sys.exit(n != 0)``, a termination
signal, a rank finishing while others wait for it) ends every rank with a message naming it;
every collective is checked across ranks first (a mismatch is a :class:`MismatchError` on every
rank); a stalled collective is reported after ``$TAPEFLOW_STALL_WARN`` s and aborts the job
after ``$TAPEFLOW_STALL_TIMEOUT`` s. See :mod:`tapeflow.distributed.faults`.
"""
from .api import (
    Average, Max, Min, Product, Sum, allgather, allgather_object, allreduce, alltoall,
    average_metrics, barrier, broadcast, broadcast_object, broadcast_optimizer_state,
    broadcast_variables, cross_rank, cross_size, grouped_allreduce, local_rank, local_size,
    new_group, rank, reducescatter, size,
)
from .base import REDUCE_OPS, Communicator, Layout, Reducer
from .faults import MismatchError
from .join import Join, join
from .launcher import find_mpiexec, mpiexec_argv, run_mpiexec, threads_per_rank
from .local import LocalCommunicator
from .registry import available_backends, get_comm, init, register_backend
from .optimizer import DistributedOptimizer
from .tape import DEFAULT_BUCKET_BYTES, DistributedGradientTape, GradientAccumulation, tape_factory
from . import faults as _faults

_faults.guard_startup()  # a rank failing before init() still ends the job (see faults)


def __getattr__(name: str):
    if name == "MPICommunicator":  # importing it imports mpi4py (and initialises MPI)
        from .mpi import MPICommunicator

        return MPICommunicator
    if name == "callbacks":  # Horovod's hvd.callbacks: the same classes as tp.keras.callbacks
        from .. import callbacks

        return callbacks
    raise AttributeError(f"module 'tapeflow.distributed' has no attribute {name!r}")


__all__ = [
    "init", "get_comm", "register_backend", "available_backends",
    "Communicator", "LocalCommunicator", "MPICommunicator", "Reducer", "Layout", "REDUCE_OPS",
    "MismatchError", "Average", "Sum", "Min", "Max", "Product",
    "rank", "size", "local_rank", "local_size", "cross_rank", "cross_size",
    "allreduce", "grouped_allreduce", "allgather", "broadcast", "broadcast_object",
    "allgather_object", "barrier", "alltoall", "reducescatter", "new_group", "join", "Join",
    "DistributedGradientTape", "DistributedOptimizer", "GradientAccumulation",
    "DEFAULT_BUCKET_BYTES", "tape_factory",
    "broadcast_variables", "broadcast_optimizer_state", "average_metrics",
    "find_mpiexec", "mpiexec_argv", "run_mpiexec", "threads_per_rank",
]
