"""Communicator semantics, asserted in terms of ``rank`` and ``size`` (like mpi4jax's tests).

``python -m pytest tests/distributed`` runs the local-communicator tests (MPI ones skip);
``mpiexec -n 2 python -m pytest --with-mpi tests/distributed`` runs everything on every rank.
Tests marked ``mpi`` must raise or pass identically on all ranks, or the next collective hangs.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from tapeflow.distributed import comm as comm_module
from tapeflow.distributed.comm import (
    REDUCE_OPS, Communicator, LocalCommunicator, available_backends, get_comm, init,
    register_backend,
)

FLOATS = [np.float16, np.float32, np.float64]
INTS = [np.int32, np.int64]


def _tapeflow():
    tp = pytest.importorskip("tapeflow")
    if not hasattr(tp, "constant"):
        pytest.skip("the tapeflow core (tapeflow.constant) is not importable yet")
    return tp


def _close(a, b, dtype):
    tol = 1e-2 if np.dtype(dtype) == np.float16 else 1e-6
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), b, rtol=tol)


# -- local communicator (no MPI; always run) ------------------------------------------------------

def test_local_identity():
    c = LocalCommunicator()
    assert (c.rank, c.size, c.local_rank, c.local_size, c.backend) == (0, 1, 0, 1, "local")
    assert isinstance(c, Communicator)
    assert "rank 0/1" in repr(c)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_local_allreduce_is_a_copy(op):
    c = LocalCommunicator()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = c.allreduce(x, op=op)
    assert out is not x and not np.shares_memory(out, x)
    np.testing.assert_array_equal(out, x)
    assert out.dtype == x.dtype and out.shape == x.shape


def test_local_inplace_and_handles():
    c = LocalCommunicator()
    buf = np.arange(4, dtype=np.float32)
    assert c.allreduce_(buf, "average") is buf
    np.testing.assert_array_equal(buf, np.arange(4))
    handle = c.iallreduce(np.ones(3), "sum")
    assert handle.test() and handle.wait() is handle.wait()
    assert c.iallreduce_(buf, "max").wait() is buf


def test_local_broadcast_allgather_json():
    c = LocalCommunicator()
    x = np.arange(3.0)
    np.testing.assert_array_equal(c.broadcast(x, root=0), x)
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 1\)"):
        c.broadcast(x, root=1)
    parts = c.allgather(x)
    assert len(parts) == 1 and parts[0] is not x
    np.testing.assert_array_equal(c.allgather_concat(np.float32(2.0)), [2.0])
    assert c.allgather_json({"a": (1, 2)}) == [{"a": [1, 2]}]  # round-tripped like MPI
    assert c.broadcast_json([1, "x"]) == [1, "x"]
    assert c.barrier() is None


def test_local_errors_match_mpi():
    c = LocalCommunicator()
    with pytest.raises(TypeError, match="int32"):
        c.allreduce(np.arange(3, dtype=np.int32), op="average")
    with pytest.raises(TypeError, match="complex128"):
        c.allreduce(np.ones(2, dtype=np.complex128), op="sum")
    with pytest.raises(ValueError, match="op must be one of"):
        c.allreduce(np.ones(2), op="min")
    with pytest.raises(TypeError, match="not JSON serializable"):
        c.allgather_json({1, 2})


def test_local_tensor_in_tensor_out():
    tp = _tapeflow()
    c = LocalCommunicator()
    out = c.allreduce(tp.constant(np.array([1.0, 2.0], dtype=np.float32)), op="average")
    assert isinstance(out, tp.Tensor)
    np.testing.assert_array_equal(out.numpy(), [1.0, 2.0])


def test_registry_unknown_backend_lists_names():
    with pytest.raises(ValueError) as info:
        init("gloo")
    for name in ("auto", "mpi", "local"):
        assert repr(name) in str(info.value)


def test_registry_is_open():
    made = []

    def factory(**options):
        made.append(options)
        return LocalCommunicator()

    register_backend("test-fake", factory)
    try:
        assert "test-fake" in available_backends()
        c = init("test-fake", stall_timeout=5)
        assert made == [{"stall_timeout": 5}] and get_comm() is c
    finally:
        comm_module._FACTORIES.pop("test-fake")
        comm_module._current = None
    with pytest.raises(ValueError, match="reserved"):
        register_backend("auto", factory)


@pytest.mark.skipif(comm_module._under_launcher(), reason="runs only outside mpiexec")
def test_auto_is_local_outside_a_launcher():
    saved = comm_module._current
    comm_module._current = None
    try:
        c = init()
        assert c.backend == "local" and init() is c and get_comm() is c
    finally:
        comm_module._current = saved


# -- MPI (every rank runs each test; assertions in terms of rank and size) ------------------------

@pytest.mark.mpi
def test_identity(comm):
    assert 0 <= comm.rank < comm.size and 0 <= comm.local_rank < comm.local_size <= comm.size
    assert comm.allgather_json(comm.rank) == list(range(comm.size))
    assert comm.backend in available_backends()


@pytest.mark.mpi
def test_auto_picks_mpi_under_mpiexec(comm):
    if not comm_module._under_launcher():
        pytest.skip("not started by mpiexec")
    assert comm_module._auto_backend() == "mpi"


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", FLOATS + INTS)
def test_allreduce_sum(comm, dtype):
    x = np.arange(6).reshape(2, 3).astype(dtype) * (comm.rank + 1)
    out = comm.allreduce(x, op="sum")
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 3)
    _close(out, np.arange(6).reshape(2, 3) * comm.size * (comm.size + 1) / 2, dtype)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", FLOATS)
def test_allreduce_average(comm, dtype):
    out = comm.allreduce(np.arange(5).astype(dtype) * (comm.rank + 1), op="average")
    assert out.dtype == np.dtype(dtype)
    _close(out, np.arange(5) * (comm.size + 1) / 2, dtype)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", FLOATS + INTS)
def test_allreduce_max(comm, dtype):
    out = comm.allreduce(np.arange(5).astype(dtype) * (comm.rank + 1) - comm.rank, op="max")
    expected = np.maximum.reduce([np.arange(5) * (r + 1) - r for r in range(comm.size)])
    _close(out, expected, dtype)


@pytest.mark.mpi
def test_allreduce_scalar_noncontiguous_and_input_untouched(comm):
    assert comm.allreduce(np.float64(comm.rank), op="sum").shape == ()
    assert float(comm.allreduce(2.0, op="sum")) == 2.0 * comm.size
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = base[:, ::2]
    out = comm.allreduce(view, op="sum")
    np.testing.assert_array_equal(out, view * comm.size)
    np.testing.assert_array_equal(base, np.arange(12).reshape(3, 4))


@pytest.mark.mpi
def test_allreduce_tensor(comm):
    tp = _tapeflow()
    out = comm.allreduce(tp.constant(np.full(3, comm.rank + 1.0, dtype=np.float32)), "average")
    assert isinstance(out, tp.Tensor) and out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), np.full(3, (comm.size + 1) / 2))


@pytest.mark.mpi
@pytest.mark.parametrize("op", REDUCE_OPS)
def test_allreduce_inplace_float32(comm, op):
    buf = np.arange(650, dtype=np.float32) * (comm.rank + 1)
    expected = {"sum": np.arange(650) * comm.size * (comm.size + 1) / 2,
                "average": np.arange(650) * (comm.size + 1) / 2,
                "max": np.arange(650) * comm.size}[op]
    assert comm.allreduce_(buf, op) is buf
    np.testing.assert_allclose(buf, expected, rtol=1e-6)


@pytest.mark.mpi
def test_allreduce_inplace_float16_and_strided(comm):
    half = np.full(4, comm.rank + 1, dtype=np.float16)
    comm.allreduce_(half, "sum")
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, np.full(4, comm.size * (comm.size + 1) / 2))
    grid = np.zeros((3, 4), dtype=np.float64)
    grid[:, ::2] = comm.rank + 1
    comm.allreduce_(grid[:, ::2], "sum")
    np.testing.assert_array_equal(grid[:, ::2], comm.size * (comm.size + 1) / 2)
    np.testing.assert_array_equal(grid[:, 1::2], 0)


@pytest.mark.mpi
def test_iallreduce_overlaps_compute(comm):
    x = np.arange(100_000, dtype=np.float32) * (comm.rank + 1)
    handle = comm.iallreduce(x, op="sum")
    x[:] = -1  # the input was copied when the collective started
    a = np.random.default_rng(comm.rank).standard_normal((200, 200))
    for _ in range(5):  # compute while the reduction is in flight
        a = np.tanh(a @ a.T / 200)
    result = handle.wait()
    assert handle.test() and handle.wait() is result
    np.testing.assert_allclose(result, np.arange(100_000) * comm.size * (comm.size + 1) / 2,
                               rtol=1e-6)


@pytest.mark.mpi
def test_iallreduce_inplace_many_in_flight(comm):
    bufs = [np.full(1000 * (i + 1), comm.rank + i, dtype=np.float64) for i in range(4)]
    handles = [comm.iallreduce_(b, "average") for b in bufs]
    while not all(h.test() for h in handles):
        time.sleep(1e-4)
    for i, (b, h) in enumerate(zip(bufs, handles)):
        assert h.wait() is b
        np.testing.assert_allclose(b, (comm.size - 1) / 2 + i)


@pytest.mark.mpi
@pytest.mark.parametrize("which", ["first", "last"])
def test_broadcast(comm, which):
    root = 0 if which == "first" else comm.size - 1
    mine = np.full((2, 3), 10.0 + comm.rank, dtype=np.float32)
    out = comm.broadcast(mine, root=root)
    np.testing.assert_array_equal(out, np.full((2, 3), 10.0 + root))
    assert out.dtype == np.float32 and out is not mine
    # non-root ranks need not know the shape: they may pass None
    out = comm.broadcast(np.arange(root + 2, dtype=np.int64) if comm.rank == root else None,
                         root=root)
    np.testing.assert_array_equal(out, np.arange(root + 2))
    assert comm.broadcast(np.float64(7.0) if comm.rank == root else None, root=root).shape == ()
    assert comm.broadcast(np.zeros((0, 3)) if comm.rank == root else None,
                          root=root).shape == (0, 3)


@pytest.mark.mpi
def test_broadcast_tensor(comm):
    tp = _tapeflow()
    out = comm.broadcast(tp.constant(np.full(2, comm.rank, dtype=np.float64)), root=0)
    assert isinstance(out, tp.Tensor)
    np.testing.assert_array_equal(out.numpy(), [0.0, 0.0])


@pytest.mark.mpi
def test_allgather_uneven_first_dims(comm):
    mine = np.full((comm.rank + 1, 2), comm.rank, dtype=np.int64)
    parts = comm.allgather(mine)
    assert [p.shape for p in parts] == [(r + 1, 2) for r in range(comm.size)]
    for r, p in enumerate(parts):
        np.testing.assert_array_equal(p, r)
    flat = comm.allgather_concat(mine)
    assert flat.shape == (comm.size * (comm.size + 1) // 2, 2)
    np.testing.assert_array_equal(flat[:, 0], np.repeat(np.arange(comm.size),
                                                        np.arange(1, comm.size + 1)))
    # a rank may contribute nothing
    empty = comm.allgather(np.ones((0 if comm.rank == 0 else 3, 4), dtype=np.float32))
    assert [p.shape[0] for p in empty] == [0] + [3] * (comm.size - 1)


@pytest.mark.mpi
def test_allgather_scalars_and_tensors(comm):
    np.testing.assert_array_equal(comm.allgather_concat(np.float32(comm.rank)),
                                  np.arange(comm.size))
    tp = _tapeflow()
    parts = comm.allgather(tp.constant(np.full(2, comm.rank, dtype=np.float32)))
    assert all(isinstance(p, tp.Tensor) for p in parts)
    assert [float(p.numpy()[0]) for p in parts] == list(range(comm.size))


@pytest.mark.mpi(min_size=2)
def test_allgather_mismatch_raises_on_every_rank(comm):
    with pytest.raises(ValueError, match=r"rank 0: float32 \(1, 2\).*rank 1: float32 \(1, 3\)"):
        comm.allgather(np.zeros((1, 2 + comm.rank), dtype=np.float32))
    with pytest.raises(ValueError, match="rank 1: float64"):
        comm.allgather(np.zeros(2, dtype=np.float64 if comm.rank else np.float32))


@pytest.mark.mpi
def test_json_collectives(comm):
    meta = {"rank": comm.rank, "shapes": [[comm.rank, 3]], "name": "w\u00e9"}
    gathered = comm.allgather_json(meta)
    assert gathered == [{"rank": r, "shapes": [[r, 3]], "name": "w\u00e9"}
                        for r in range(comm.size)]
    root = comm.size - 1
    sent = {"step": 7, "lr": 0.1} if comm.rank == root else None
    assert comm.broadcast_json(sent, root=root) == {"step": 7, "lr": 0.1}
    assert json.dumps(comm.broadcast_json(None)) == "null"


@pytest.mark.mpi
def test_json_errors_raise_on_every_rank(comm):
    bad = {1, 2} if comm.rank == 0 else {"ok": True}
    with pytest.raises(TypeError, match=r"ranks \[0\] passed objects that are not JSON"):
        comm.allgather_json(bad)
    with pytest.raises(TypeError, match="root rank 0's object is not JSON"):
        comm.broadcast_json(bad, root=0)


@pytest.mark.mpi
def test_dtype_and_argument_errors(comm):
    with pytest.raises(TypeError, match="int64"):
        comm.allreduce(np.arange(3), op="average")
    for bad in (np.ones(2, dtype=bool), np.ones(2, dtype=np.complex64), np.ones(2, np.uint8)):
        with pytest.raises(TypeError, match=str(bad.dtype)):
            comm.allreduce(bad, op="sum")
    with pytest.raises(ValueError, match="op must be one of"):
        comm.allreduce(np.ones(2), op="prod")
    with pytest.raises(ValueError, match="root must be a rank"):
        comm.broadcast(np.ones(2), root=comm.size)
    with pytest.raises(TypeError, match="numpy.ndarray in place"):
        comm.allreduce_([1.0, 2.0], op="sum")
    frozen = np.ones(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        comm.allreduce_(frozen, op="sum")
    # the root's bad dtype is announced to every rank, so none is left waiting
    with pytest.raises(TypeError, match="no MPI mapping"):
        comm.broadcast(np.ones(2, dtype=bool) if comm.rank == 0 else None, root=0)
    with pytest.raises(TypeError, match="no MPI mapping"):
        comm.allgather(np.ones(2, dtype=np.complex64 if comm.rank == 0 else np.float32))
    comm.barrier()  # still in step


@pytest.mark.mpi
def test_barrier_and_stall_timeout_setting(comm):
    comm.barrier()
    if hasattr(comm, "stall_timeout"):
        old = comm.stall_timeout
        comm.stall_timeout = 0
        assert comm.stall_timeout == 0.0
        comm.stall_timeout = old
        with pytest.raises(ValueError):
            comm.stall_timeout = -1


@pytest.mark.mpi
def test_library_traffic_is_separate_from_comm_world(comm):
    if comm.backend != "mpi":
        pytest.skip("MPI only")
    from mpi4py import MPI

    assert MPI.Comm.Compare(comm._comm, MPI.COMM_WORLD) == MPI.CONGRUENT
    assert int(os.environ.get("PMI_SIZE", comm.size)) == comm.size
