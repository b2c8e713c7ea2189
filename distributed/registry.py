"""Choosing and creating the communicator: ``init``, ``get_comm`` and the backend registry."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Callable

from tapeflow import timeline

from . import faults
from .base import Communicator
from .launcher import inside_mpi_job, job_place
from .local import LocalCommunicator

__all__ = ["init", "get_comm", "register_backend", "available_backends"]

_BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _mpi(**options: Any) -> Communicator:
    from .mpi import MPICommunicator

    return MPICommunicator(**options)


def _nccl(**options: Any) -> Communicator:
    from .nccl import NCCLCommunicator  # imports CuPy: only when asked for

    return NCCLCommunicator(**options)


_FACTORIES: dict[str, Callable[..., Communicator]] = {"mpi": _mpi, "nccl": _nccl,
                                                      "local": LocalCommunicator}
_current: Communicator | None = None


def register_backend(name: str, factory: Callable[..., Communicator]) -> None:
    """Make ``init(name)`` call ``factory(**options)`` (e.g. the GPU work's ``"nccl"``)."""
    if name == "auto":
        raise ValueError('"auto" is reserved for backend selection')
    _FACTORIES[name] = factory


def available_backends() -> list[str]:
    """The names :func:`init` accepts."""
    return ["auto", *sorted(_FACTORIES)]


def _under_launcher() -> bool:
    return inside_mpi_job()


def _auto_backend() -> str:
    """``"mpi"`` under a launcher (or when MPI is already up with several ranks), else local."""
    if _under_launcher():
        try:
            from mpi4py import MPI  # noqa: F401
        except ImportError as exc:
            size = job_place()[1]
            warnings.warn(f"running under an MPI launcher (world size {size}) but mpi4py does "
                          f"not import ({exc}); every process runs alone as rank 0 of 1",
                          RuntimeWarning, stacklevel=3)
            return "local"
        return "mpi"
    mpi = sys.modules.get("mpi4py.MPI")  # never import MPI (MPI_Init) just to find size 1
    if mpi is not None and mpi.Is_initialized() and mpi.COMM_WORLD.Get_size() > 1:
        return "mpi"
    return "local"


def init(backend: str = "auto", *, abort_on_failure: bool | None = None,
         **options: Any) -> Communicator:
    """Create (or return) the communicator for ``backend`` and make it :func:`get_comm`'s.

    ``"auto"`` picks ``"mpi"`` under ``mpiexec`` and ``"local"`` in a plain process. Called
    again without options for the same backend, it returns the existing communicator.
    ``options`` go to the backend (e.g. ``stall_timeout=30``, ``shared_memory=False``).

    ``$TAPEFLOW_TIMELINE`` (a path) starts this rank's phase timeline (:mod:`tapeflow.timeline`).

    From here on a failure on any rank ends the whole job (see
    :mod:`tapeflow.distributed.faults`); ``abort_on_failure=False`` (or
    ``$TAPEFLOW_ABORT_ON_FAILURE=0``) opts out, leaving other ranks to wait for a failed one.
    """
    global _current
    if backend != "auto" and backend not in _FACTORIES:
        raise ValueError(f"unknown communicator backend {backend!r}; "
                         f"valid names: {available_backends()}")
    name = _auto_backend() if backend == "auto" else backend
    if (_current is not None and _current.backend == name and not options
            and abort_on_failure is None and getattr(_current, "_comm", True) is not None):
        return _current
    _current = _FACTORIES[name](**options)
    faults.install(_current, faults.enabled_by_default() if abort_on_failure is None
                   else abort_on_failure)
    _limit_blas_threads(_current)
    path = os.environ.get(timeline.TIMELINE_ENV, "").strip()
    if path and not timeline.active():
        timeline.start(path, _current.rank, _current.size)
    return _current


def _limit_blas_threads(comm: Communicator) -> int | None:
    """With several ranks on a node, give each rank ``cores // ranks_on_node`` BLAS threads.

    Ranks that each start a full-size BLAS pool oversubscribe the cores, and a rank spinning in
    a collective then competes with its neighbour's BLAS threads (measured: 25x slower steps on
    two cores). A thread count the user set in the environment is left alone.
    """
    if comm.size == 1 or any(os.environ.get(v) for v in _BLAS_ENV):
        return None
    from threadpoolctl import threadpool_limits

    from .launcher import threads_per_rank

    n = threads_per_rank(max(comm.local_size, 1))
    threadpool_limits(limits=n, user_api="blas")
    return n


def get_comm() -> Communicator:
    """The communicator made by :func:`init` (``init("auto")`` on first use)."""
    return _current if _current is not None else init("auto")
