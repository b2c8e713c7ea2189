"""Fixtures for communicator tests: run alone, or under ``mpiexec -n N ... --with-mpi``.

Creating and closing an ``MPICommunicator`` is collective, so the MPI communicators are
session fixtures: every rank runs the same tests in the same order, hence creates and frees
them at the same points.
"""
from __future__ import annotations

import pytest

from tapeflow.distributed import LocalCommunicator

STALL_TIMEOUT_S = 60  # a test that deadlocks ends the job naming the missing rank


def _testing_mpi(config: pytest.Config) -> bool:
    return bool(config.getoption("--with-mpi", default=False)
                or config.getoption("--only-mpi", default=False))


@pytest.fixture(scope="session")
def comm(request: pytest.FixtureRequest):
    """The MPI communicator (large reductions in shared memory) with ``--with-mpi``, else a
    local one."""
    if not _testing_mpi(request.config):
        yield LocalCommunicator()
        return
    from tapeflow.distributed import MPICommunicator

    c = MPICommunicator(stall_timeout=STALL_TIMEOUT_S)
    yield c
    c.close()


@pytest.fixture(scope="session")
def mpi_only(request: pytest.FixtureRequest, comm):
    """A second communicator whose reductions all travel through MPI (``shared_memory=False``)."""
    if not _testing_mpi(request.config):
        yield LocalCommunicator()
        return
    from tapeflow.distributed import MPICommunicator

    c = MPICommunicator(shared_memory=False, stall_timeout=STALL_TIMEOUT_S)
    assert not c.shared_memory
    yield c
    c.close()


@pytest.fixture(params=["shared-memory", "mpi"])
def either(request: pytest.FixtureRequest, comm, mpi_only):
    """Each path in turn: ``comm`` (shared memory when it has it) and ``mpi_only``."""
    return comm if request.param == "shared-memory" else mpi_only
