"""The shared-memory reduction path of ``MPICommunicator`` (``tapeflow.distributed.shm``).

Reductions of at least 64 KiB between ranks of one node go through a shared window instead of
MPI. These tests use buffers above that size and check the results against a local
computation of every rank's data, in terms of ``rank`` and ``size``: through the communicator
(``allreduce``, ``grouped_allreduce``, its reducers, the distributed tape) on both paths, and
through the ``SharedMemoryEngine`` itself.

    OMP_NUM_THREADS=1 mpiexec -n 2 python -m pytest --with-mpi -q tests/distributed
"""
from __future__ import annotations

import os

import time

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.distributed import DistributedGradientTape, Layout, MismatchError

pytestmark = pytest.mark.mpi

BIG = 40_000  # elements: above the 64 KiB threshold for every dtype but float16 (80 KB: also)
OPS = ["sum", "average", "max", "min", "product"]
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64]


def _shm(comm):
    if comm.backend != "mpi" or not comm.shared_memory:
        pytest.skip("no shared-memory path (one rank per node, or disabled)")
    return comm


def _data(r: int, n: int, dtype, salt: int = 0) -> np.ndarray:
    rng = np.random.default_rng([r, n, salt])
    if np.dtype(dtype).kind == "i":  # small: a product over 4 ranks stays within int32
        return rng.integers(-30, 30, n).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def _expected(size: int, n: int, dtype, op: str, salt: int = 0) -> np.ndarray:
    parts = np.stack([_data(r, n, dtype, salt).astype(np.float64) for r in range(size)])
    return {"sum": parts.sum(0), "average": parts.mean(0), "max": parts.max(0),
            "min": parts.min(0), "product": parts.prod(0)}[op]


def _check(got, want, dtype):
    tol = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-5}.get(np.dtype(dtype), 1e-12)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.fixture(scope="module")
def engine(comm):
    """A ``SharedMemoryEngine`` of its own, over a duplicate of ``COMM_WORLD``."""
    _shm(comm)
    from mpi4py import MPI

    from tapeflow.distributed.shm import SharedMemoryEngine

    world = MPI.COMM_WORLD.Dup()
    e = SharedMemoryEngine(world, comm.waiter)
    assert e.enabled
    yield e
    e.close()
    world.Free()


# -- which path ------------------------------------------------------------------------------

def test_one_node_takes_the_shared_memory_path(comm, mpi_only):
    if os.environ.get("TAPEFLOW_SHARED_MEMORY", "1") in ("0", "false", "no", "off"):
        pytest.skip("TAPEFLOW_SHARED_MEMORY turns the shared-memory path off in this run")
    f32 = np.dtype(np.float32)
    big = Layout(buckets=((f32, 1 << 18),), crc=1)           # 1 MiB
    small = Layout(buckets=((f32, 256),), crc=2)             # 1 KiB: MPI's fast path
    mixed = Layout(buckets=((f32, 1 << 18), (np.dtype(np.float64), 4)), crc=3)
    assert mpi_only.reducer(big).path in ("mpi", "local")
    if comm.size == 1:
        assert comm.reducer(big).path in ("mpi", "local") and not getattr(
            comm, "shared_memory", False)
        return
    # CI and the benchmark machine run every rank on one host
    assert comm.local_size == comm.size and comm.shared_memory and not mpi_only.shared_memory
    assert comm.reducer(big).path == "shared-memory"
    assert comm.reducer(small).path == "mpi"
    assert comm.reducer(mixed).path == "mpi"  # one window reduces one dtype


# -- through the communicator, on both paths ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_large_allreduce(either, dtype, op):
    if op == "average" and np.dtype(dtype).kind == "i":
        pytest.skip("average is for float dtypes")
    n = BIG + 13  # not a multiple of the slice alignment
    x = _data(either.rank, n, dtype)
    out = either.allreduce(x, op=op)
    assert out.dtype == np.dtype(dtype) and out.shape == (n,) and not np.shares_memory(out, x)
    _check(out, _expected(either.size, n, dtype, op), dtype)
    np.testing.assert_array_equal(x, _data(either.rank, n, dtype))  # input untouched


def test_grouped_allreduce_fuses_buffers_of_any_size(either):
    sizes = [3, BIG, 1, 17, 2 * BIG]
    xs = [_data(either.rank, n, np.float32, salt=k).reshape(-1, 1) for k, n in enumerate(sizes)]
    out = either.grouped_allreduce(xs, op="average")
    for k, (n, o) in enumerate(zip(sizes, out)):
        assert o.shape == (n, 1) and o.dtype == np.float32
        _check(o.ravel(), _expected(either.size, n, np.float32, "average", salt=k), np.float32)


def test_the_window_grows_for_larger_buffers(comm):
    _shm(comm)
    for n in (BIG, 3_000_000, BIG):  # 12 MB: past the first window's slots
        out = comm.allreduce(_data(comm.rank, n, np.float32), op="sum")
        _check(out, _expected(comm.size, n, np.float32, "sum"), np.float32)


def test_reducer_finite_check_agrees_on_every_rank(either):
    layout = Layout(buckets=((np.dtype(np.float32), BIG), (np.dtype(np.float32), BIG)), crc=7)
    red = either.reducer(layout, "sum", check_finite=True)
    bufs = red.start(tag=1)
    for i, b in enumerate(bufs):
        b[:] = 1
        red.ready(i)
    assert red.finish() is True
    np.testing.assert_array_equal(bufs[1], either.size)
    # a NaN on the last rank only: every rank learns the reduction is not finite
    bufs = red.start(tag=2)
    for i, b in enumerate(bufs):
        b[:] = 1
        if i == 1 and either.rank == either.size - 1:
            b[BIG // 2] = np.nan
        red.ready(i)
    assert red.finish() is False
    # +inf on rank 0 and -inf elsewhere sum to NaN; a lone +inf stays inf: both are caught
    bufs = red.start(tag=3)
    for i, b in enumerate(bufs):
        b[:] = 0
        b[7] = np.inf if either.rank == 0 else -np.inf
        red.ready(i)
    assert red.finish() is False


def test_reducer_buffers_are_reused_only_when_dropped(either):
    """Buffers come back at the same address once the caller dropped them (MPI registers
    memory by address), and never while the caller still holds them."""
    layout = Layout(buckets=((np.dtype(np.float32), BIG + 16),), crc=9)
    red = either.reducer(layout, "sum")
    addresses = []
    for step in range(3):  # the first step may grow the window; then the slot is reused
        (buf,) = red.start(tag=step + 1)
        buf[:] = either.rank + 1
        red.ready(0)
        red.finish()
        np.testing.assert_array_equal(buf, either.size * (either.size + 1) / 2)
        addresses.append(_address(buf))
        del buf
    assert addresses[1] == addresses[2]
    (held,) = red.start(tag=4)
    held[:] = _data(either.rank, BIG + 16, np.float32)
    red.ready(0)
    red.finish()
    _check(held, _expected(either.size, BIG + 16, np.float32, "sum"), np.float32)
    kept = held.copy()
    (other,) = red.start(tag=5)  # held is alive: the next step gets another buffer
    assert not np.shares_memory(other, held)
    other[:] = 5.0
    red.ready(0)
    red.finish()
    np.testing.assert_array_equal(held, kept)
    np.testing.assert_array_equal(other, 5.0 * either.size)


# -- the engine itself -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_engine_allreduce_in_place(engine, comm, dtype, op):
    if op == "average" and np.dtype(dtype).kind == "i":
        pytest.skip("average is for float dtypes")
    n = BIG + 13
    buf = _data(comm.rank, n, dtype)
    assert engine.allreduce_([buf], op) is None
    _check(buf, _expected(comm.size, n, dtype, op), dtype)


def test_engine_fuses_buffers_and_checks_finiteness(engine, comm):
    sizes = [3, BIG, 1, 17, 2 * BIG]
    bufs = [_data(comm.rank, n, np.float32, salt=k).reshape(-1, 1) for k, n in enumerate(sizes)]
    assert engine.allreduce_(bufs, "average", check_finite=True) is True
    for k, (n, b) in enumerate(zip(sizes, bufs)):
        _check(b.ravel(), _expected(comm.size, n, np.float32, "average", salt=k), np.float32)
    bufs = [np.ones(BIG, np.float32), np.ones(BIG, np.float32)]
    if comm.rank == comm.size - 1:
        bufs[1][BIG // 2] = np.nan
    assert engine.allreduce_(bufs, "sum", check_finite=True) is False


def test_engine_mismatched_sizes_raise_on_every_rank_and_the_next_call_works(engine, comm):
    buf = np.ones(BIG + comm.rank, np.float32)
    with pytest.raises(MismatchError, match=r"different buffers.*rank 0: 160000 bytes.*rank 1: "
                                         r"160004 bytes"):
        engine.allreduce_([buf], "sum")
    np.testing.assert_array_equal(buf, 1)  # nothing was reduced
    ok = np.full(BIG, comm.rank + 1.0, np.float32)
    engine.allreduce_([ok], "sum")
    np.testing.assert_array_equal(ok, comm.size * (comm.size + 1) / 2)


def test_engine_mismatched_dtypes_and_ops_raise_on_every_rank(engine, comm):
    dtype = np.float32 if comm.rank == 0 else np.int32
    with pytest.raises(MismatchError, match=r"rank 0: 160000 bytes of float32.*int32"):
        engine.allreduce_([np.ones(BIG, dtype)], "sum")
    with pytest.raises(MismatchError, match=r"op sum.*op max"):
        engine.allreduce_([np.ones(BIG, np.float32)], "sum" if comm.rank == 0 else "max")


def test_engine_lent_buffers_are_reduced_where_they_lie(engine, comm):
    nbytes = 4 * (BIG + 16)
    whole = engine.lend(nbytes)
    if whole is None:  # not yet grown to this size: one reduction grows it
        engine.allreduce_([np.zeros(BIG + 16, np.float32)], "sum")
        whole = engine.lend(nbytes)
    assert whole is not None and whole.dtype == np.uint8 and whole.size == nbytes
    a, b = whole[:4 * BIG].view(np.float32), whole[4 * BIG:].view(np.float32)
    a[:], b[:] = _data(comm.rank, BIG, np.float32), comm.rank + 1
    del whole
    engine.allreduce_([a, b], "sum")
    _check(a, _expected(comm.size, BIG, np.float32, "sum"), np.float32)
    np.testing.assert_array_equal(b, comm.size * (comm.size + 1) / 2)
    # while a result is still alive, the slot is not lent again (it would be overwritten)
    assert engine.lend(nbytes) is None
    kept = a.copy()
    c = np.full(BIG, 5.0, np.float32)
    engine.allreduce_([c], "sum")  # a private buffer: the held results stay as they were
    np.testing.assert_array_equal(a, kept)
    del a, b
    assert engine.lend(nbytes) is not None


def test_a_late_rank_is_reported_by_the_ranks_waiting_for_it(engine, comm, capfd):
    before = comm.waiter.warn
    comm.waiter.warn = 0.3
    try:
        if comm.rank == comm.size - 1:
            time.sleep(1.0)
        engine.allreduce_([np.ones(BIG, np.float32)], "sum")
        if comm.rank == comm.size - 1:
            time.sleep(1.0)
        comm.allreduce(np.ones(BIG, np.float32), "sum")  # the signature exchange waits
    finally:
        comm.waiter.warn = before
    err = capfd.readouterr().err
    if comm.rank != comm.size - 1:
        assert "shared-memory all-reduce" in err and "allreduce" in err
        assert f"not arrived: rank {comm.size - 1}" in err
    else:  # the late rank never waits for itself (under load it may wait for the others)
        assert f"not arrived: rank {comm.size - 1} " not in err


# -- the distributed tape ---------------------------------------------------------------------

def test_distributed_tape_reduces_a_large_model_in_shared_memory(comm):
    _shm(comm)
    rng = np.random.default_rng(0)
    w1 = tp.Variable(rng.standard_normal((200, 100)).astype(np.float32), name="w1")
    w2 = tp.Variable(rng.standard_normal((100, 10)).astype(np.float32), name="w2")

    def x(r, s):
        return np.random.default_rng([r, s]).standard_normal((8, 200)).astype(np.float32)

    def loss_of(xv):
        h = tp.tanh(tp.matmul(tp.constant(xv), w1))
        return tp.reduce_sum(tp.square(tp.matmul(h, w2)))

    def local(r, s):
        with tp.GradientTape() as t:
            loss = loss_of(x(r, s))
        return [g.numpy() for g in t.gradient(loss, [w1, w2])]

    results = []
    for s in range(3):
        with DistributedGradientTape(tp.GradientTape(), comm, op="average") as tape:
            loss = loss_of(x(comm.rank, s))
        results.append(tape.gradient(loss, [w1, w2]))
        assert tape.stats["shared_memory"] is True
        assert tape.stats["reduction"] == "shared-memory"
        assert not tape.skipped
    kept = [[g.numpy().copy() for g in r] for r in results]
    for s, (got, held) in enumerate(zip(results, kept)):
        want = [np.mean([local(r, s)[k] for r in range(comm.size)], axis=0) for k in range(2)]
        for g, h, w in zip(got, held, want):
            np.testing.assert_array_equal(g.numpy(), h)  # held results were never overwritten
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-5)


def test_distributed_tape_names_mismatched_large_tensors(comm):
    _shm(comm)
    # the same number of bytes on every rank, different shapes: the signature check catches it
    shape = (300, 100) if comm.rank == 0 else (100, 300)
    w = tp.Variable(np.ones(shape, np.float32), name="w")
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = tp.reduce_sum(w * w)
    with pytest.raises(MismatchError,
                       match=r"ranks disagree on the gradients.*nothing was reduced"):
        tape.gradient(loss, w)


def test_without_shared_memory_the_tape_overlaps_mpi_buckets_with_the_same_result(
        comm, mpi_only):
    _shm(comm)
    w = tp.Variable(np.linspace(-1, 1, 300 * 200, dtype=np.float32).reshape(300, 200))
    x = np.random.default_rng([comm.rank, 5]).standard_normal((4, 300)).astype(np.float32)
    grads = {}
    for name, c in (("shm", comm), ("mpi", mpi_only)):
        with DistributedGradientTape(tp.GradientTape(), c, bucket_bytes=64 << 10) as tape:
            loss = tp.reduce_sum(tp.square(tp.matmul(tp.constant(x), w)))
        grads[name] = tape.gradient(loss, w).numpy()
        assert tape.stats["shared_memory"] is (name == "shm")
        assert tape.stats["reduction"] == ("shared-memory" if name == "shm" else "mpi")
        # buckets become ready during the sweep (MPI launches them there; the shared-memory
        # reducer runs after the sweep, in finish)
        assert tape.stats["launched_during_backward"] >= 1
    # the same sums in another order (float32): equal to rounding
    scale = float(np.abs(grads["mpi"]).max())
    np.testing.assert_allclose(grads["shm"], grads["mpi"], rtol=1e-5, atol=1e-6 * scale)
