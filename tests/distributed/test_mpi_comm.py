"""Communicator semantics, asserted in terms of ``rank`` and ``size`` (like mpi4jax's tests).

``python -m pytest tests/distributed`` runs the local-communicator tests (MPI ones skip);
``mpiexec -n 2 python -m pytest --with-mpi tests/distributed`` runs everything on every rank.
Tests marked ``mpi`` must raise or pass identically on all ranks, or the next collective fails.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.distributed import (
    REDUCE_OPS, Communicator, Layout, LocalCommunicator, MismatchError, available_backends,
    faults, get_comm, init, register_backend, registry,
)

FLOATS = [np.float16, np.float32, np.float64]
INTS = [np.int32, np.int64]


def _close(a, b, dtype):
    tol = 1e-2 if np.dtype(dtype) == np.float16 else 1e-6
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), b, rtol=tol)


def _reduced(op: str, parts: list) -> np.ndarray:
    """``op`` over the ranks' ``parts``, computed locally in float64."""
    stack = np.stack([np.asarray(p, np.float64) for p in parts])
    return {"sum": stack.sum(0), "average": stack.mean(0), "max": stack.max(0),
            "min": stack.min(0), "product": stack.prod(0)}[op]


# -- local communicator (no MPI; always run) ------------------------------------------------------

def test_local_identity():
    c = LocalCommunicator()
    assert (c.rank, c.size, c.local_rank, c.local_size, c.backend) == (0, 1, 0, 1, "local")
    assert (c.cross_rank, c.cross_size) == (0, 1)
    assert isinstance(c, Communicator) and isinstance(c.dup(), LocalCommunicator)
    assert "rank 0/1" in repr(c)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_local_allreduce_is_a_copy(op):
    c = LocalCommunicator()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = c.allreduce(x, op=op)
    assert out is not x and not np.shares_memory(out, x)
    np.testing.assert_array_equal(out, x)
    assert out.dtype == x.dtype and out.shape == x.shape


def test_local_grouped_allreduce_and_reducer():
    c = LocalCommunicator()
    xs = [np.arange(4, dtype=np.float32), np.ones((2, 2))]
    out = c.grouped_allreduce(xs, "average")
    for o, x in zip(out, xs):
        assert not np.shares_memory(o, x) and o.dtype == x.dtype
        np.testing.assert_array_equal(o, x)
    layout = Layout(buckets=((np.dtype(np.float32), 5), (np.dtype(np.float64), 3)), crc=1)
    red = c.reducer(layout, "sum", check_finite=True)
    bufs = red.start(tag=1)
    assert [(b.dtype, b.size) for b in bufs] == [(np.float32, 5), (np.float64, 3)]
    bufs[0][:], bufs[1][:] = 2.0, 3.0
    red.ready(1)
    red.ready(0)
    assert red.finish() is True
    np.testing.assert_array_equal(bufs[0], 2.0)
    again = red.start(tag=2)  # the held buffers are not handed out again
    assert not any(np.shares_memory(a, b) for a in again for b in bufs)
    again[0][:], again[1][:] = 1.0, np.nan
    assert red.finish() is False
    np.testing.assert_array_equal(bufs[1], 3.0)
    plain = c.reducer(layout, "average")
    plain.start()
    assert plain.finish() is None  # not asked to check
    with pytest.raises(TypeError, match="int32"):
        c.reducer(Layout(buckets=((np.dtype(np.int32), 2),), crc=0), "average")


def test_local_broadcast_allgather_objects():
    c = LocalCommunicator()
    x = np.arange(3.0)
    out = c.broadcast(x, root=0)
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 1\)"):
        c.broadcast(x, root=1)
    with pytest.raises(ValueError, match="must pass an array"):
        c.broadcast(None, root=0)
    out = c.allgather(x)  # the concatenation of one rank's x
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(c.allgather(np.float32(2.0)), [2.0])  # a scalar: a vector
    assert c.allgather_object({"a": (1, 2)}) == [{"a": [1, 2]}]  # round-tripped like MPI
    assert c.broadcast_object([1, "x"]) == [1, "x"]
    assert c.barrier() is None


def test_local_errors_match_mpi():
    c = LocalCommunicator()
    with pytest.raises(TypeError, match="int32"):
        c.allreduce(np.arange(3, dtype=np.int32), op="average")
    with pytest.raises(TypeError, match="complex128"):
        c.allreduce(np.ones(2, dtype=np.complex128), op="sum")
    with pytest.raises(ValueError, match="op must be one of"):
        c.allreduce(np.ones(2), op="prod")
    with pytest.raises(TypeError, match="complex64"):
        c.allgather(np.ones(2, dtype=np.complex64))
    with pytest.raises(TypeError, match="not JSON serializable"):
        c.allgather_object({1, 2})


def test_local_tensor_in_tensor_out():
    c = LocalCommunicator()
    out = c.allreduce(tp.constant(np.array([1.0, 2.0], dtype=np.float32)), op="average")
    assert isinstance(out, tp.Tensor)
    np.testing.assert_array_equal(out.numpy(), [1.0, 2.0])


@pytest.fixture
def saved_registry():
    """Restore the default communicator and the failure handling's communicator afterwards."""
    current = registry._current
    installed, enabled = faults._state.get("comm"), faults._state.get("enabled", False)
    yield
    registry._current = current
    if installed is not None:
        faults.install(installed, enabled)
    else:
        faults.uninstall()


def test_registry_unknown_backend_lists_names(saved_registry):
    with pytest.raises(ValueError) as info:
        init("gloo")
    for name in ("auto", "mpi", "local"):
        assert repr(name) in str(info.value)


def test_registry_is_open(saved_registry):
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
        registry._FACTORIES.pop("test-fake")
    with pytest.raises(ValueError, match="reserved"):
        register_backend("auto", factory)


@pytest.mark.skipif(registry._under_launcher(), reason="runs only outside mpiexec")
def test_auto_is_local_outside_a_launcher(saved_registry):
    registry._current = None
    c = init()
    assert c.backend == "local" and init() is c and get_comm() is c


# -- MPI (every rank runs each test; assertions in terms of rank and size) ------------------------

@pytest.mark.mpi
def test_identity(comm):
    assert 0 <= comm.rank < comm.size and 0 <= comm.local_rank < comm.local_size <= comm.size
    assert comm.allgather_object(comm.rank) == list(range(comm.size))
    assert comm.backend in available_backends()
    assert 0 <= comm.cross_rank < comm.cross_size


@pytest.mark.mpi
def test_auto_picks_mpi_under_mpiexec(comm):
    if not registry._under_launcher():
        pytest.skip("not started by mpiexec")
    assert registry._auto_backend() == "mpi"


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
@pytest.mark.parametrize("op", ["max", "min", "product"])
@pytest.mark.parametrize("dtype", FLOATS + INTS)
def test_allreduce_max_min_product(either, dtype, op):
    def part(r):
        return np.arange(5) * (r + 1) - r

    out = either.allreduce(part(either.rank).astype(dtype), op=op)
    assert out.dtype == np.dtype(dtype) and out.shape == (5,)
    _close(out, _reduced(op, [part(r) for r in range(either.size)]), dtype)


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
    out = comm.allreduce(tp.constant(np.full(3, comm.rank + 1.0, dtype=np.float32)), "average")
    assert isinstance(out, tp.Tensor) and out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), np.full(3, (comm.size + 1) / 2))


@pytest.mark.mpi
@pytest.mark.parametrize("op", REDUCE_OPS)
def test_allreduce_returns_fresh_arrays(either, op):
    x = np.arange(650, dtype=np.float32) * (either.rank + 1) + 1
    first = either.allreduce(x, op)
    kept = first.copy()
    second = either.allreduce(x * 2, op)
    assert not np.shares_memory(first, x) and not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)  # the next call did not write the first result
    np.testing.assert_array_equal(x, np.arange(650, dtype=np.float32) * (either.rank + 1) + 1)
    parts = [np.arange(650, dtype=np.float32) * (r + 1) + 1 for r in range(either.size)]
    np.testing.assert_allclose(first, _reduced(op, parts), rtol=1e-5)


@pytest.mark.mpi
def test_allreduce_float16_and_strided(comm):
    half = comm.allreduce(np.full(4, comm.rank + 1, dtype=np.float16), "sum")
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, np.full(4, comm.size * (comm.size + 1) / 2))
    grid = np.zeros((3, 4), dtype=np.float64)
    grid[:, ::2] = comm.rank + 1
    out = comm.allreduce(grid[:, ::2], "sum")
    assert out.shape == (3, 2)
    np.testing.assert_array_equal(out, comm.size * (comm.size + 1) / 2)
    np.testing.assert_array_equal(grid[:, 1::2], 0)


@pytest.mark.mpi
def test_reducer_buckets_overlap_compute(either):
    # one reduction per bucket, launched as each is ready, while this rank keeps computing
    sizes = [1000, 25_000, 7]
    layout = Layout(buckets=tuple((np.dtype(np.float32), n) for n in sizes), crc=11)
    red = either.reducer(layout, "sum")
    bufs = red.start(tag=1)
    a = np.random.default_rng(either.rank).standard_normal((100, 100))
    for i in reversed(range(len(sizes))):
        bufs[i][:] = np.arange(sizes[i]) * (either.rank + 1) + i
        red.ready(i)
        a = np.tanh(a @ a.T / 100)  # compute while the bucket is in flight
    assert red.finish() is None
    for i, (buf, n) in enumerate(zip(bufs, sizes)):
        want = _reduced("sum", [np.arange(n) * (r + 1) + i for r in range(either.size)])
        np.testing.assert_allclose(buf, want, rtol=1e-6)


@pytest.mark.mpi
def test_grouped_allreduce_many_buffers(either):
    xs = [np.full(1000 * (i + 1), either.rank + i, dtype=np.float64) for i in range(4)]
    xs.append(np.full((2, 3), either.rank, dtype=np.float32))
    out = either.grouped_allreduce(xs, "average")
    assert [o.shape for o in out] == [x.shape for x in xs]
    assert [o.dtype for o in out] == [x.dtype for x in xs]
    for i, o in enumerate(out[:4]):
        np.testing.assert_allclose(o, (either.size - 1) / 2 + i)
    np.testing.assert_allclose(out[4], (either.size - 1) / 2)
    np.testing.assert_array_equal(xs[0], either.rank)  # inputs untouched
    kept = [o.copy() for o in out]
    again = either.grouped_allreduce([x * 2 for x in xs], "sum")  # same sizes: buffers reused
    for o, k in zip(out, kept):  # ... but never the ones still held
        np.testing.assert_array_equal(o, k)
    np.testing.assert_allclose(again[1], 2 * sum(r + 1 for r in range(either.size)))


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
    out = comm.broadcast(tp.constant(np.full(2, comm.rank, dtype=np.float64)), root=0)
    assert isinstance(out, tp.Tensor)
    np.testing.assert_array_equal(out.numpy(), [0.0, 0.0])


@pytest.mark.mpi
def test_allgather_concatenates_uneven_first_dims(comm):
    mine = np.full((comm.rank + 1, 2), comm.rank, dtype=np.int64)
    flat = comm.allgather(mine)
    assert flat.shape == (comm.size * (comm.size + 1) // 2, 2) and flat.dtype == np.int64
    np.testing.assert_array_equal(flat[:, 0], np.repeat(np.arange(comm.size),
                                                        np.arange(1, comm.size + 1)))
    np.testing.assert_array_equal(flat[:, 0], flat[:, 1])
    # a rank may contribute nothing
    empty = comm.allgather(np.ones((0 if comm.rank == 0 else 3, 4), dtype=np.float32))
    assert empty.shape == (3 * (comm.size - 1), 4)
    np.testing.assert_array_equal(empty, 1)


@pytest.mark.mpi
def test_allgather_scalars_and_tensors(comm):
    scalars = comm.allgather(np.float32(comm.rank))  # a scalar per rank: a vector of size
    assert scalars.shape == (comm.size,) and scalars.dtype == np.float32
    np.testing.assert_array_equal(scalars, np.arange(comm.size))
    out = comm.allgather(tp.constant(np.full((1, 2), comm.rank, dtype=np.float32)))
    assert isinstance(out, tp.Tensor) and out.shape == (comm.size, 2)
    np.testing.assert_array_equal(out.numpy()[:, 0], np.arange(comm.size))


def _messages(comm, call) -> list:
    """Every rank's error message from ``call`` (raised on every rank), gathered on every rank."""
    try:
        call()
    except (TypeError, ValueError) as exc:
        mine = f"{type(exc).__name__}: {exc}"
    else:
        mine = "no error"
    return comm.allgather_object(mine)


@pytest.mark.mpi(min_size=2)
def test_allgather_mismatch_raises_on_every_rank(comm):
    with pytest.raises(MismatchError, match=r"allgather.*rank [01] called allgather\(float32"):
        comm.allgather(np.zeros((1, 2 + comm.rank), dtype=np.float32))
    with pytest.raises(MismatchError, match=r"rank 1 called allgather\(float64"):
        comm.allgather(np.zeros(2, dtype=np.float64 if comm.rank else np.float32))
    with pytest.raises(MismatchError, match=r"allgather"):  # different numbers of dimensions
        comm.allgather(np.zeros((2, 3) + (1,) * comm.rank, dtype=np.int32))
    np.testing.assert_array_equal(comm.allgather(np.int64(comm.rank)), np.arange(comm.size))


@pytest.mark.mpi(min_size=2)
def test_allgather_mismatch_names_the_shapes(comm):
    msgs = _messages(comm, lambda: comm.allgather(np.zeros((1, 2 + comm.rank), np.float32)))
    assert all(m.startswith("MismatchError") for m in msgs)
    assert all("(1, 2)" in m and "(1, 3)" in m for m in msgs), msgs


@pytest.mark.mpi
def test_object_collectives(comm):
    meta = {"rank": comm.rank, "shapes": [[comm.rank, 3]], "name": "w\u00e9"}
    gathered = comm.allgather_object(meta)
    assert gathered == [{"rank": r, "shapes": [[r, 3]], "name": "w\u00e9"}
                        for r in range(comm.size)]
    root = comm.size - 1
    sent = {"step": 7, "lr": 0.1} if comm.rank == root else None
    assert comm.broadcast_object(sent, root=root) == {"step": 7, "lr": 0.1}
    assert comm.broadcast_object(None) is None


def _one_rank_invalid(msgs: list, rank0: str) -> None:
    """Rank 0 raised its own reason; every other rank a MismatchError naming rank 0."""
    assert msgs[0].startswith(rank0), msgs
    for m in msgs[1:]:
        assert m.startswith("MismatchError") and "rank 0" in m and "invalid arguments" in m, msgs


@pytest.mark.mpi(min_size=2)
def test_object_errors_raise_on_every_rank(comm):
    bad = {1, 2} if comm.rank == 0 else {"ok": True}
    gathered = _messages(comm, lambda: comm.allgather_object(bad))
    broadcast = _messages(comm, lambda: comm.broadcast_object(bad, root=0))
    # a non-root's unserialisable object is never sent: not an error
    assert comm.broadcast_object(bad if comm.rank else [1], root=0) == [1]
    _one_rank_invalid(gathered, "TypeError: allgather_object: the object is not JSON-serialisable")
    _one_rank_invalid(broadcast, "TypeError: broadcast_object: the root's object is not JSON")


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
    with pytest.raises(ValueError, match="op must be one of"):
        comm.reducer(Layout(buckets=((np.dtype(np.float32), 4),), crc=0), "prod")
    comm.barrier()  # still in step


def _bad_on_rank_0(comm) -> dict:
    return {
        "broadcast dtype": _messages(comm, lambda: comm.broadcast(
            np.ones(2, dtype=np.complex64) if comm.rank == 0 else None, root=0)),
        "allgather dtype": _messages(comm, lambda: comm.allgather(
            np.ones(2, dtype=np.complex64 if comm.rank == 0 else np.float32))),
        "broadcast None": _messages(comm, lambda: comm.broadcast(
            None if comm.rank == 0 else np.ones(2), root=0)),
        "allgather_object": _messages(comm, lambda: comm.allgather_object(
            {1, 2} if comm.rank == 0 else [])),
    }


@pytest.mark.mpi(min_size=2)
def test_one_ranks_bad_argument_is_announced_to_every_rank(comm):
    # the root's bad dtype is announced to every rank, so none is left waiting
    msgs = _bad_on_rank_0(comm)
    comm.barrier()  # still in step
    _one_rank_invalid(msgs["broadcast dtype"], "TypeError: broadcast: dtype complex64 has no MPI")
    _one_rank_invalid(msgs["allgather dtype"], "TypeError: allgather: dtype complex64 has no MPI")
    _one_rank_invalid(msgs["broadcast None"], "ValueError: broadcast: the root rank 0 must pass")
    _one_rank_invalid(msgs["allgather_object"], "TypeError: allgather_object: the object is not")


@pytest.mark.mpi(min_size=2)
def test_one_ranks_bad_argument_is_named_as_such(comm):
    for what, msgs in _bad_on_rank_0(comm).items():
        for m in msgs[1:]:
            assert "rank 0 passed invalid arguments" in m, (what, m)
            assert "different collectives" not in m, (what, m)


@pytest.mark.mpi
def test_barrier_and_stall_settings(comm):
    comm.barrier()
    assert comm.waiter.timeout > 0 and comm.waiter.warn >= 0
    assert faults.stall_settings(1.5, 0) == (1.5, 0.0)
    with pytest.raises(ValueError, match=">= 0 seconds"):
        faults.stall_settings(-1, None)


@pytest.mark.mpi
def test_library_traffic_is_separate_from_comm_world(comm):
    if comm.backend != "mpi":
        pytest.skip("MPI only")
    from mpi4py import MPI

    assert MPI.Comm.Compare(comm._comm, MPI.COMM_WORLD) == MPI.CONGRUENT
    assert int(os.environ.get("PMI_SIZE", comm.size)) == comm.size
