"""Checked collectives under misuse: mismatched calls, threads, and communicator lifetimes.

Every case runs identically on every rank (a rank raising alone would leave the others in the
next collective): each rank records what it raised, the records are gathered with
``allgather_object`` and every rank asserts on all of them.

    OMP_NUM_THREADS=1 mpiexec -n 2 python -m pytest --with-mpi -q tests/distributed
"""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.distributed import MismatchError, broadcast_variables

pytestmark = pytest.mark.mpi

THRESHOLD = 64 << 10  # bytes: the shared-memory path starts here (shm.DEFAULT_MIN_BYTES)
BIG = 40_000          # float32 elements: 160 KB, above the threshold


def _outcome(comm, call) -> str:
    """What ``call`` raised on this rank, gathered from every rank."""
    try:
        call()
    except MismatchError as exc:
        mine = f"MismatchError: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported to every rank, asserted there
        mine = f"{type(exc).__name__}: {exc}"
    else:
        mine = "no error"
    return comm.allgather_object(mine)


def _still_in_step(comm) -> None:
    """A small and a large reduction after a mismatch give the right sums on every rank."""
    np.testing.assert_array_equal(comm.allreduce(np.ones(3, np.float32), "sum"), comm.size)
    big = comm.allreduce(np.full(BIG, comm.rank + 1.0, np.float32), "sum")
    np.testing.assert_array_equal(big, comm.size * (comm.size + 1) / 2)


def _by_rank(rank: int, first, other):
    return first if rank == 0 else other


# -- mismatched raw collectives, on both paths ---------------------------------------------------

CASES = {
    # name: rank 0's (elements, dtype, op), the other ranks'
    "3-vs-5-elements": ((3, np.float32, "sum"), (5, np.float32, "sum")),
    "large-sizes": ((BIG + 3, np.float32, "sum"), (BIG + 5, np.float32, "sum")),
    "float32-vs-float64": ((7, np.float32, "sum"), (7, np.float64, "sum")),
    "large-float32-vs-float64": ((BIG, np.float32, "sum"), (BIG, np.float64, "sum")),
    "sum-vs-max": ((7, np.float32, "sum"), (7, np.float32, "max")),
    "large-average-vs-product": ((BIG, np.float32, "average"), (BIG, np.float32, "product")),
    # one rank just below the shared-memory threshold, one just above
    "straddling-64KiB": ((THRESHOLD // 4 + 1, np.float32, "sum"),
                         (THRESHOLD // 4 - 1, np.float32, "sum")),
}


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", list(CASES))
def test_mismatched_allreduce_raises_on_every_rank(either, case):
    n, dtype, op = _by_rank(either.rank, *CASES[case])
    x = np.ones(n, dtype)
    outcomes = _outcome(either, lambda: either.allreduce(x, op))
    assert all(o.startswith("MismatchError: allreduce") for o in outcomes), outcomes
    assert all("nothing was combined" in o for o in outcomes), outcomes
    np.testing.assert_array_equal(x, 1)  # the input is untouched
    _still_in_step(either)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", list(CASES))
def test_mismatched_grouped_allreduce_raises_on_every_rank(either, case):
    n, dtype, op = _by_rank(either.rank, *CASES[case])
    xs = [np.ones(n, dtype), np.ones(5, np.float32)]
    outcomes = _outcome(either, lambda: either.grouped_allreduce(xs, op))
    assert all(o.startswith("MismatchError: grouped_allreduce") for o in outcomes), outcomes
    _still_in_step(either)


@pytest.mark.mpi(min_size=2)
def test_mismatch_messages_name_both_calls(either):
    outcomes = _outcome(either, lambda: either.allreduce(
        np.ones(3 + 2 * (either.rank > 0), np.float32), "sum"))
    for o in outcomes:
        assert "allreduce(op='sum', float32, shape (3,))" in o, outcomes
        assert "allreduce(op='sum', float32, shape (5,))" in o, outcomes
    outcomes = _outcome(either, lambda: either.allreduce(
        np.ones(4, np.float64 if either.rank else np.float32), "sum"))
    assert all("float32" in o and "float64" in o for o in outcomes), outcomes
    outcomes = _outcome(either, lambda: either.allreduce(
        np.ones(4, np.float32), "max" if either.rank else "sum"))
    assert all("op='sum'" in o and "op='max'" in o for o in outcomes), outcomes
    _still_in_step(either)


@pytest.mark.mpi(min_size=2)
def test_different_collectives_raise_on_every_rank(either):
    rank = either.rank
    calls = {
        "allreduce-vs-barrier": lambda: (either.allreduce(np.ones(2), "sum") if rank == 0
                                         else either.barrier()),
        "broadcast-roots": lambda: either.broadcast(np.ones(2), root=min(rank, 1)),
        "allreduce-vs-broadcast": lambda: (either.allreduce(np.ones(BIG, np.float32), "sum")
                                           if rank == 0 else either.broadcast(
                                               np.ones(BIG, np.float32), root=0)),
        "object-vs-array": lambda: (either.allgather_object([rank]) if rank == 0
                                    else either.allgather(np.ones(1))),
    }
    for name, call in calls.items():
        outcomes = _outcome(either, call)
        assert all(o.startswith("MismatchError") for o in outcomes), (name, outcomes)
        _still_in_step(either)


@pytest.mark.mpi(min_size=2)
def test_a_tape_step_on_one_rank_and_an_allreduce_on_another(either):
    from tapeflow.distributed import DistributedGradientTape

    w = tp.Variable(np.ones((300, 100), np.float32))  # 120 KB: shared memory on comm

    def call():
        if either.rank == 0:
            with DistributedGradientTape(tp.GradientTape(), either) as tape:
                loss = tp.reduce_sum(w * w)
            return tape.gradient(loss, w)
        return either.allreduce(np.ones((300, 100), np.float32), "sum")

    outcomes = _outcome(either, call)
    assert all(o.startswith("MismatchError") and "reduce_gradients" in o and "allreduce" in o
               for o in outcomes), outcomes
    _still_in_step(either)
    with DistributedGradientTape(tp.GradientTape(), either, op="sum") as tape:
        loss = tp.reduce_sum(w * float(either.rank + 1))
    np.testing.assert_array_equal(tape.gradient(loss, w).numpy(),
                                  either.size * (either.size + 1) / 2)


# -- broadcast_variables checks every rank's list first -----------------------------------------


def _broadcast_messages(comm, variables) -> list:
    try:
        broadcast_variables(variables, root=0, comm=comm)
    except MismatchError as exc:
        mine = str(exc)
    else:
        mine = "no error"
    return comm.allgather_object(mine)


@pytest.mark.mpi(min_size=2)
def test_broadcast_variables_with_an_extra_variable_on_one_rank(comm):
    a = tp.Variable(np.full(3, comm.rank + 1.0, np.float32), name="a")
    b = tp.Variable(np.full(2, comm.rank + 1.0, np.float32), name="b")
    extra = tp.Variable(np.zeros(4, np.float32), name="extra")
    mine = [a, b, extra] if comm.rank == comm.size - 1 else [a, b]
    msgs = _broadcast_messages(comm, mine)
    last = comm.size - 1
    for m in msgs:  # the same message on every rank, naming both counts
        assert m.startswith("broadcast_variables: rank 0 has 2 variables, "
                            f"rank {last} has 3 (nothing was broadcast)"), msgs
    np.testing.assert_array_equal(a.numpy(), comm.rank + 1.0)  # nothing was assigned
    # the next broadcast of agreeing lists works
    broadcast_variables([a, b], root=0, comm=comm)
    np.testing.assert_array_equal(a.numpy(), 1.0)


@pytest.mark.mpi(min_size=2)
def test_broadcast_variables_with_a_differently_shaped_variable_on_one_rank(comm):
    a = tp.Variable(np.full(3, comm.rank + 1.0, np.float32), name="a")
    b = tp.Variable(np.full(2 + (comm.rank == 1), comm.rank + 1.0, np.float32), name="b")
    c = tp.Variable(np.full((2, 2), comm.rank + 1.0, np.float64 if comm.rank == 1
                            else np.float32), name="c")
    msgs = _broadcast_messages(comm, [a, b, c])
    for m in msgs:  # the first difference (b's shape), not c's dtype
        assert ("variable #1 differs (nothing was broadcast): rank 0 has 'b' shape (2,) "
                "float32, rank 1 has 'b' shape (3,) float32") in m, msgs
    assert msgs == [msgs[0]] * comm.size
    np.testing.assert_array_equal(a.numpy(), comm.rank + 1.0)
    np.testing.assert_array_equal(b.numpy(), comm.rank + 1.0)


# -- threads ----------------------------------------------------------------------------------

def _start(fn) -> tuple[threading.Thread, dict]:
    """Run ``fn`` in a worker thread that hands back what it returned or raised (an uncaught
    error in a thread would end the whole job)."""
    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the main thread
            out["error"] = exc

    t = threading.Thread(target=body, name="tapeflow-test-worker")
    t.start()
    return t, out


def _join(t: threading.Thread, out: dict) -> dict:
    t.join(timeout=60)  # a deadlock guard, not a timing assertion
    assert not t.is_alive(), "the worker thread is stuck in a collective"
    return out


def _in_thread(fn) -> dict:
    return _join(*_start(fn))


@pytest.mark.parametrize("kind", ["allreduce", "barrier", "broadcast", "allgather_object",
                                  "grouped_allreduce", "reducer"])
def test_a_second_thread_is_refused_at_once(either, kind):
    from tapeflow.distributed import Layout

    either.barrier()  # the main thread uses the communicator
    calls = {
        "allreduce": lambda: either.allreduce(np.ones(3), "sum"),
        "barrier": either.barrier,
        "broadcast": lambda: either.broadcast(np.ones(3), root=0),
        "allgather_object": lambda: either.allgather_object(1),
        "grouped_allreduce": lambda: either.grouped_allreduce([np.ones(3)], "sum"),
        "reducer": lambda: either.reducer(Layout(((np.dtype(np.float32), 4),), crc=5)).start(1),
    }
    out = _in_thread(calls[kind])
    assert isinstance(out.get("error"), RuntimeError), out
    message = str(out["error"])
    assert "tapeflow-test-worker" in message and "dup()" in message
    _still_in_step(either)  # the refused call left nothing behind


def test_dup_gives_a_worker_thread_its_own_communicator(either):
    d = either.dup()  # collective, from the main thread
    try:
        assert (d.rank, d.size) == (either.rank, either.size)
        assert getattr(d, "shared_memory", None) == getattr(either, "shared_memory", None)

        def work():
            small = d.allreduce(np.arange(3.0) * (d.rank + 1), "sum")
            big = d.allreduce(np.full(BIG, d.rank + 1.0, np.float32), "sum")
            return small, big, d.allgather_object(d.rank)

        out = _in_thread(work)
        assert "error" not in out, out
        small, big, ranks = out["value"]
        np.testing.assert_array_equal(small, np.arange(3.0) * either.size * (either.size + 1) / 2)
        np.testing.assert_array_equal(big, either.size * (either.size + 1) / 2)
        assert ranks == list(range(either.size))
        # the main thread's communicator is unaffected, and the dup refuses the main thread now
        _still_in_step(either)
        with pytest.raises(RuntimeError, match="dup()"):
            d.barrier()
    finally:
        d.close()


def test_dup_and_the_original_run_concurrently(comm):
    d = comm.dup()
    try:
        worker = _start(lambda: d.allreduce(np.full(BIG, 2.0, np.float32), "sum"))
        main = comm.allreduce(np.full(BIG, 3.0, np.float32), "sum")
        out = _join(*worker)
        assert "error" not in out, out
        np.testing.assert_array_equal(main, 3.0 * comm.size)
        np.testing.assert_array_equal(out["value"], 2.0 * comm.size)
    finally:
        d.close()


# -- lifetimes --------------------------------------------------------------------------------

def _mapped_regions() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_repeated_creation_and_close_does_not_grow_the_mappings(comm):
    if comm.backend != "mpi":
        pytest.skip("MPI only")
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("no /proc on this system")
    from tapeflow.distributed import MPICommunicator

    def cycle():
        c = MPICommunicator(stall_timeout=60)
        out = c.allreduce(np.full(BIG, 1.0, np.float32), "sum")  # grows a shared window
        np.testing.assert_array_equal(out, c.size)
        del out
        c.close()

    cycle()
    cycle()
    before = _mapped_regions()
    for _ in range(20):
        cycle()
    after = _mapped_regions()
    assert after - before <= 8, f"{after - before} more mapped regions after 20 communicators"
    _still_in_step(comm)


def test_a_closed_communicator_says_so(comm):
    if comm.backend != "mpi":
        pytest.skip("MPI only")
    from tapeflow.distributed import MPICommunicator

    c = MPICommunicator(stall_timeout=60)
    c.close()
    c.close()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        c.allreduce(np.ones(2), "sum")
