"""The shared-memory reduction path of ``MPICommunicator`` (``tapeflow.distributed.shm``).

Blocking in-place reductions of at least 64 KiB between ranks of one node go through a shared
window instead of MPI. These tests use buffers above that size and check the results against
a local computation of every rank's data, in terms of ``rank`` and ``size``.

    OPENBLAS_NUM_THREADS=1 mpiexec -n 2 python -m pytest --with-mpi -q tests/distributed
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.distributed import DistributedGradientTape
from tapeflow.distributed.comm import MismatchError

pytestmark = pytest.mark.mpi

BIG = 40_000  # elements: above the 64 KiB threshold for every dtype but float16 (80 KB: also)


def _shm(comm):
    if not comm.reduces_in_shared_memory(1 << 20, np.float32):
        pytest.skip("no shared-memory path (one rank per node, or disabled)")
    return comm


def _data(r: int, n: int, dtype, salt: int = 0) -> np.ndarray:
    rng = np.random.default_rng([r, n, salt])
    if np.dtype(dtype).kind == "i":
        return rng.integers(-1000, 1000, n).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def _expected(size: int, n: int, dtype, op: str, salt: int = 0) -> np.ndarray:
    parts = [_data(r, n, dtype, salt).astype(np.float64) for r in range(size)]
    if op == "max":
        return np.max(parts, axis=0)
    total = np.sum(parts, axis=0)
    return total / size if op == "average" else total


def _check(got, want, dtype):
    tol = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-5}.get(np.dtype(dtype), 1e-12)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)


def test_one_node_takes_the_shared_memory_path(comm):
    if comm.size == 1:
        assert not comm.reduces_in_shared_memory(1 << 20, np.float32)
        return
    # CI and the benchmark machine run every rank on one host
    assert comm.local_size == comm.size
    assert comm.reduces_in_shared_memory(1 << 20, np.float32)
    assert not comm.reduces_in_shared_memory(1 << 10, np.float32)  # small: MPI's fast path


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.int64])
@pytest.mark.parametrize("op", ["sum", "average", "max"])
def test_allreduce_in_place(comm, dtype, op):
    _shm(comm)
    if op == "average" and np.dtype(dtype).kind == "i":
        pytest.skip("average is for float dtypes")
    n = BIG + 13  # not a multiple of the slice alignment
    buf = _data(comm.rank, n, dtype)
    out = comm.allreduce_(buf, op=op)
    assert out is buf
    _check(buf, _expected(comm.size, n, dtype, op), dtype)


def test_allreduce_many_fuses_buffers_of_any_size(comm):
    _shm(comm)
    sizes = [3, BIG, 1, 17, 2 * BIG]
    bufs = [_data(comm.rank, n, np.float32, salt=k).reshape(-1, 1) for k, n in enumerate(sizes)]
    assert comm.allreduce_many_(bufs, op="average") is None
    for k, (n, b) in enumerate(zip(sizes, bufs)):
        assert b.shape == (n, 1)
        _check(b.ravel(), _expected(comm.size, n, np.float32, "average", salt=k), np.float32)


def test_finite_check_agrees_on_every_rank(comm):
    _shm(comm)
    bufs = [np.ones(BIG, np.float32), np.ones(BIG, np.float32)]
    assert comm.allreduce_many_(bufs, op="sum", check_finite=True) is True
    np.testing.assert_array_equal(bufs[1], comm.size)
    # a NaN on the last rank only: every rank learns the reduction is not finite
    bufs = [np.ones(BIG, np.float32), np.ones(BIG, np.float32)]
    if comm.rank == comm.size - 1:
        bufs[1][BIG // 2] = np.nan
    assert comm.allreduce_many_(bufs, op="sum", check_finite=True) is False
    # +inf on rank 0 and -inf elsewhere sum to NaN; a lone +inf stays inf: both are caught
    buf = np.zeros(BIG, np.float32)
    buf[7] = np.inf if comm.rank == 0 else -np.inf
    assert comm.allreduce_many_([buf], op="sum", check_finite=True) is False


def test_mismatched_sizes_raise_on_every_rank_and_the_next_call_works(comm):
    _shm(comm)
    buf = np.ones(BIG + comm.rank, np.float32)
    with pytest.raises(MismatchError, match=r"different buffers.*rank 0: 160000 bytes.*rank 1: "
                                         r"160004 bytes"):
        comm.allreduce_(buf, op="sum")
    np.testing.assert_array_equal(buf, 1)  # nothing was reduced
    ok = np.full(BIG, comm.rank + 1.0, np.float32)
    comm.allreduce_(ok, op="sum")
    np.testing.assert_array_equal(ok, comm.size * (comm.size + 1) / 2)


def test_mismatched_dtypes_raise_on_every_rank(comm):
    _shm(comm)
    dtype = np.float32 if comm.rank == 0 else np.int32
    with pytest.raises(MismatchError, match=r"rank 0: 160000 bytes of float32.*int32"):
        comm.allreduce_(np.ones(BIG, dtype), op="sum")


def test_the_window_grows_for_larger_buffers(comm):
    _shm(comm)
    for n in (BIG, 3_000_000, BIG):  # 12 MB: past the first window's slots
        buf = _data(comm.rank, n, np.float32)
        comm.allreduce_(buf, op="sum")
        _check(buf, _expected(comm.size, n, np.float32, "sum"), np.float32)


def test_lent_buffers_are_reduced_where_they_lie(comm):
    _shm(comm)
    nbytes = 4 * (BIG + 16)
    whole = comm.shared_buffer(nbytes)
    if whole is None:  # not yet grown to this size on this communicator: one reduction grows it
        comm.allreduce_(np.zeros(BIG + 16, np.float32), op="sum")
        whole = comm.shared_buffer(nbytes)
    assert whole is not None and whole.dtype == np.uint8 and whole.size == nbytes
    a, b = whole[:4 * BIG].view(np.float32), whole[4 * BIG:].view(np.float32)
    a[:], b[:] = _data(comm.rank, BIG, np.float32), comm.rank + 1
    del whole
    comm.allreduce_many_([a, b], op="sum")
    _check(a, _expected(comm.size, BIG, np.float32, "sum"), np.float32)
    np.testing.assert_array_equal(b, comm.size * (comm.size + 1) / 2)
    # while a result is still alive, the slot is not lent again (it would be overwritten)
    assert comm.shared_buffer(nbytes) is None
    kept = a.copy()
    c = np.full(BIG, 5.0, np.float32)
    comm.allreduce_(c, op="sum")  # a private buffer: the held results stay as they were
    np.testing.assert_array_equal(a, kept)
    del a, b
    assert comm.shared_buffer(nbytes) is not None


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
        assert not tape.skipped
    kept = [[g.numpy().copy() for g in r] for r in results]
    for s, (got, held) in enumerate(zip(results, kept)):
        want = [np.mean([local(r, s)[k] for r in range(comm.size)], axis=0) for k in range(2)]
        for g, h, w in zip(got, held, want):
            np.testing.assert_array_equal(g.numpy(), h)  # held results were never overwritten
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-5)


def test_distributed_tape_skips_a_nonfinite_step_in_shared_memory(comm):
    _shm(comm)
    w = tp.Variable(np.ones((300, 100), np.float32))
    scale = np.float32(np.nan) if comm.rank == comm.size - 1 else np.float32(1.0)
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = tp.reduce_sum(w * tp.constant(scale))
    assert tape.gradient(loss, w) is None
    assert tape.skipped and tape.nonfinite_ranks == [comm.size - 1]


def test_a_late_rank_is_reported_by_the_ranks_waiting_for_it(comm, capfd):
    _shm(comm)
    before = comm.stall_timeout
    comm.stall_timeout = 0.3
    try:
        if comm.rank == comm.size - 1:
            time.sleep(1.0)
        comm.allreduce_(np.ones(BIG, np.float32), op="sum")
    finally:
        comm.stall_timeout = before
    err = capfd.readouterr().err
    if comm.rank != comm.size - 1:
        assert f"ranks not arrived: [{comm.size - 1}]" in err
        assert "shared-memory all-reduce" in err
    else:
        assert "not arrived" not in err


def test_distributed_tape_names_mismatched_large_tensors(comm):
    _shm(comm)
    # the same number of bytes on every rank, different shapes: the signature check catches it
    shape = (300, 100) if comm.rank == 0 else (100, 300)
    w = tp.Variable(np.ones(shape, np.float32), name="w")
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = tp.reduce_sum(w * w)
    with pytest.raises(ValueError, match=r"tensor #0 \(w\): rank 0 \(300, 100\) float32, "
                                         r"rank 1 \(100, 300\) float32"):
        tape.gradient(loss, w)


def test_without_shared_memory_the_tape_overlaps_mpi_buckets_with_the_same_result(comm):
    _shm(comm)
    from tapeflow.distributed.comm import MPICommunicator

    mpi_only = MPICommunicator(shared_memory=False, stall_timeout=30)
    try:
        assert not mpi_only.reduces_in_shared_memory(1 << 20, np.float32)
        w = tp.Variable(np.linspace(-1, 1, 300 * 200, dtype=np.float32).reshape(300, 200))
        x = np.random.default_rng([comm.rank, 5]).standard_normal((4, 300)).astype(np.float32)
        grads = {}
        for name, c in (("shm", comm), ("mpi", mpi_only)):
            with DistributedGradientTape(tp.GradientTape(), c, bucket_bytes=64 << 10) as tape:
                loss = tp.reduce_sum(tp.square(tp.matmul(tp.constant(x), w)))
            grads[name] = tape.gradient(loss, w).numpy()
            assert tape.stats["shared_memory"] is (name == "shm")
            # MPI buckets start during the sweep; the shared-memory reduction runs after it
            assert (tape.stats["launched_during_backward"] >= 1) is (name == "mpi")
        # the same sums in another order (float32): equal to rounding
        scale = float(np.abs(grads["mpi"]).max())
        np.testing.assert_allclose(grads["shm"], grads["mpi"], rtol=1e-5, atol=1e-6 * scale)
    finally:
        mpi_only.close()
