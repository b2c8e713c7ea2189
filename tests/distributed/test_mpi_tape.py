"""``DistributedGradientTape`` and friends, asserted in terms of ``rank`` and ``size``.

Every rank builds its data from its rank, and every rank can rebuild any other rank's data, so
each test computes the expected reduction locally (plain ``GradientTape`` per rank, then the
mean or sum) and compares it with what the collective returned.

    python -m pytest tests/distributed/test_mpi_tape.py               # local tests; mpi skip
    OMP_NUM_THREADS=1 mpiexec -n 2 python -m pytest --with-mpi -q tests/distributed

Tests marked ``mpi`` must pass or raise identically on all ranks (a rank that stops early
leaves the others waiting in the next collective).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import optimizers
from tapeflow.distributed import (
    DistributedGradientTape, GradientAccumulation, LocalCommunicator, MismatchError,
    average_metrics, broadcast_optimizer_state, broadcast_variables, tape_factory,
)

# -- helpers: every rank can rebuild every rank's data ----------------------------------------


def _x(r: int, step: int = 0, n: int = 5, d: int = 3) -> np.ndarray:
    return np.random.default_rng([r, step, 7]).standard_normal((n, d)).astype(np.float32)


def _wb(d: int = 3, k: int = 2):
    w = tp.Variable(np.linspace(-1, 1, d * k, dtype=np.float32).reshape(d, k), name="w")
    b = tp.Variable(np.array([0.5, -0.25][:k] + [0.1] * (k - 2), np.float32), name="b")
    return w, b


def _loss(x, w, b, use_b=True):
    y = tp.matmul(tp.constant(x), w)
    if use_b:
        y = y + b
    return tp.reduce_sum(tp.square(tp.tanh(y)))


def _local_grads(r: int, step: int = 0, use_b=True) -> list:
    """Gradients of rank ``r``'s loss with a plain tape (``None`` where unconnected)."""
    w, b = _wb()
    with tp.GradientTape() as tape:
        loss = _loss(_x(r, step), w, b, use_b)
    return [None if g is None else g.numpy() for g in tape.gradient(loss, [w, b])]


def _mean(arrays):
    return np.mean(np.stack(arrays), axis=0)


def _mlp_grads(comm, bucket_bytes, op="average"):
    model = tp.nn.mlp([8, 6, 5, 4], seed=3)
    x = np.random.default_rng([comm.rank, 11]).standard_normal((6, 8)).astype(np.float32)
    tape = DistributedGradientTape(tp.GradientTape(), comm, op=op, bucket_bytes=bucket_bytes)
    with tape:
        loss = tp.reduce_mean(tp.square(model(tp.constant(x))))
    grads = tape.gradient(loss, model.trainable_variables)
    return [g.numpy().copy() for g in grads], dict(tape.stats)


def _same_on_all_ranks(comm, arr: np.ndarray) -> None:
    parts = comm.allgather(np.ascontiguousarray(arr)[None])  # one row per rank
    assert parts.shape == (comm.size, *arr.shape)
    for r, p in enumerate(parts):
        np.testing.assert_array_equal(p, parts[0], err_msg=f"rank {r} differs from rank 0")


# -- local communicator (plain pytest runs these too) -----------------------------------------


def test_local_tape_equals_plain_tape_and_keeps_structure():
    comm = LocalCommunicator()
    w, b = _wb()
    c = tp.Variable(np.ones(4, np.float32), name="c")
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = _loss(_x(0), w, b)
    got = tape.gradient(loss, {"layer": [w, b], "extra": {"c": c}})
    assert isinstance(got, dict) and list(got) == ["layer", "extra"]
    assert isinstance(got["layer"], list) and len(got["layer"]) == 2
    assert list(got["extra"]) == ["c"] and got["extra"]["c"] is None
    for g, ref in zip(got["layer"], _local_grads(0)):
        assert isinstance(g, tp.Tensor) and g.dtype == np.float32
        np.testing.assert_allclose(g.numpy(), ref, rtol=1e-6)
    assert tape.reduced and not tape.skipped
    assert tape.stats["buckets"] >= 1


def test_local_buckets_and_accumulation():
    comm = LocalCommunicator()
    big, _ = _mlp_grads(comm, 1 << 20)
    small, stats = _mlp_grads(comm, 64)
    assert stats["buckets"] > 1 and stats["launched_during_backward"] >= 1
    for a, b in zip(big, small):
        np.testing.assert_array_equal(a, b)
    acc = GradientAccumulation(2)
    out = []
    for step in range(2):
        w, b = _wb()
        tape = DistributedGradientTape(tp.GradientTape(), comm, accumulation=acc)
        with tape:
            loss = _loss(_x(0, step), w, b)
        out.append(tape.gradient(loss, [w, b]))
    assert out[0] == [None, None]
    expected = [g0 + g1 for g0, g1 in zip(_local_grads(0, 0), _local_grads(0, 1))]
    for g, ref in zip(out[1], expected):
        np.testing.assert_allclose(g.numpy(), ref, rtol=1e-5)


def test_local_tape_factory_and_option_errors():
    comm = LocalCommunicator()
    assert tape_factory(comm) is tp.GradientTape  # one rank: no reduction at all
    for bad in ({"op": "max"}, {"compression": "int8"}, {"nonfinite": "maybe"},
                {"bucket_bytes": 0}):
        with pytest.raises(ValueError):
            DistributedGradientTape(tp.GradientTape(), comm, **bad)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        GradientAccumulation(0)
    w = tp.Variable([1.0, 2.0])
    broadcast_variables([w], comm=comm)  # size 1: a no-op
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    assert average_metrics({"loss": 2.0, "acc": 0.5}, comm=comm) == {"acc": 0.5, "loss": 2.0}


# -- any number of ranks ------------------------------------------------------------------------


@pytest.mark.mpi
def test_average_is_mean_of_per_rank_gradients(comm):
    w, b = _wb()
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = _loss(_x(comm.rank), w, b)
    gw, gb = tape.gradient(loss, [w, b])
    per_rank = [_local_grads(r) for r in range(comm.size)]
    np.testing.assert_allclose(gw.numpy(), _mean([p[0] for p in per_rank]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gb.numpy(), _mean([p[1] for p in per_rank]), rtol=1e-5, atol=1e-7)
    assert gw.dtype == np.float32 and gw.shape == (3, 2)
    _same_on_all_ranks(comm, gw.numpy())
    assert tape.reduced and not tape.skipped and tape.nonfinite_ranks == []


@pytest.mark.mpi
def test_sum_is_sum_of_per_rank_gradients(comm):
    w, b = _wb()
    with DistributedGradientTape(tp.GradientTape(), comm, op="sum") as tape:
        loss = _loss(_x(comm.rank), w, b)
    gw, gb = tape.gradient(loss, [w, b])
    per_rank = [_local_grads(r) for r in range(comm.size)]
    np.testing.assert_allclose(gw.numpy(), np.sum([p[0] for p in per_rank], axis=0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(gb.numpy(), np.sum([p[1] for p in per_rank], axis=0), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.mpi
def test_nested_sources_keep_their_structure(comm):
    w, b = _wb()
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = _loss(_x(comm.rank), w, b)
    got = tape.gradient(loss, {"dense": [w, (b,)], "w_again": {"k": w}})
    assert list(got) == ["dense", "w_again"]
    assert isinstance(got["dense"], list) and isinstance(got["dense"][1], tuple)
    per_rank = [_local_grads(r) for r in range(comm.size)]
    np.testing.assert_allclose(got["dense"][0].numpy(), _mean([p[0] for p in per_rank]),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["dense"][1][0].numpy(), _mean([p[1] for p in per_rank]),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["w_again"]["k"].numpy(), got["dense"][0].numpy(), rtol=1e-6)


@pytest.mark.mpi
@pytest.mark.parametrize("op", ["sum", "average"])
def test_none_on_some_ranks_is_reduced_as_zeros(comm, op):
    # rank 0's loss does not use b: its b gradient is None there, a Tensor elsewhere
    w, b = _wb()
    c = tp.Variable(np.zeros(3, np.float32), name="c")  # used by no rank
    use_b = comm.rank != 0
    with DistributedGradientTape(tp.GradientTape(persistent=True), comm, op=op) as tape:
        loss = _loss(_x(comm.rank), w, b, use_b=use_b)
    gw, gb, gc = tape.gradient(loss, [w, b, c])
    gw0, gb0, gc0 = tape.gradient(loss, [w, b, c], unconnected_gradients="zero")
    scale = 1.0 if op == "sum" else 1.0 / comm.size
    per_rank = [_local_grads(r, use_b=r != 0) for r in range(comm.size)]
    assert per_rank[0][1] is None
    if comm.size == 1:
        assert gb is None  # None on every (the only) rank
        np.testing.assert_array_equal(gb0.numpy(), np.zeros(2, np.float32))
    else:
        assert isinstance(gb, tp.Tensor) and gb.shape == (2,)
        expected_b = scale * np.sum([p[1] for p in per_rank[1:]], axis=0)
        np.testing.assert_allclose(gb.numpy(), expected_b, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(gb0.numpy(), expected_b, rtol=1e-5, atol=1e-7)
    expected_w = scale * np.sum([p[0] for p in per_rank], axis=0)
    np.testing.assert_allclose(gw.numpy(), expected_w, rtol=1e-5, atol=1e-7)
    assert gc is None  # None on all ranks stays None
    assert isinstance(gc0, tp.Tensor) and gc0.dtype == np.float32
    np.testing.assert_array_equal(gc0.numpy(), np.zeros(3, np.float32))


def _mismatch_messages(comm, sources: list, loss_of) -> list:
    """Every rank's MismatchError message from one distributed gradient, gathered."""
    try:
        with DistributedGradientTape(tp.GradientTape(), comm) as tape:
            loss = loss_of()
        tape.gradient(loss, sources)
    except MismatchError as exc:
        mine = str(exc)
    else:
        mine = "no error"
    return comm.allgather_object(mine)


def _kernel(comm):
    return tp.Variable(np.ones((3, 3 if comm.rank == 1 else 2), np.float32), name="kernel_w")


@pytest.mark.mpi(min_size=2)
def test_mismatched_shapes_raise_on_every_rank(comm):
    w = _kernel(comm)
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = tp.reduce_sum(w * w)
    with pytest.raises(MismatchError,
                       match=r"tensor #0 \(kernel_w\): rank 0 \(3, 2\) float32, rank 1 \(3, 3\)"):
        tape.gradient(loss, [w])
    # nothing left half-done: the next reduction on these ranks works
    v = tp.Variable(np.full(2, comm.rank + 1.0, np.float32))
    with DistributedGradientTape(tp.GradientTape(), comm, op="sum") as tape:
        loss = tp.reduce_sum(v * v)
    expected = sum(2.0 * (r + 1) for r in range(comm.size))
    np.testing.assert_allclose(tape.gradient(loss, v).numpy(), [expected] * 2, rtol=1e-6)


@pytest.mark.mpi(min_size=2)
def test_mismatched_dtype_raises_on_every_rank(comm):
    dtype = np.float64 if comm.rank == 1 else np.float32
    w = tp.Variable(np.ones(4, dtype), name="mixed")
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = tp.reduce_sum(w * w)
    with pytest.raises(MismatchError,
                       match=r"tensor #0 \(mixed\): rank 0 \(4,\) float32, rank 1 \(4,\) float64"):
        tape.gradient(loss, [w])


@pytest.mark.mpi(min_size=2)
def test_mismatched_counts_raise_on_every_rank(comm):
    w, b = _wb()
    sources = [w, b] if comm.rank == 1 else [w]
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = _loss(_x(comm.rank), w, b)
    with pytest.raises(MismatchError,
                       match=r"nothing was reduced\): rank 0 has 1 gradients, rank 1 has 2"):
        tape.gradient(loss, sources)


@pytest.mark.mpi(min_size=2)
def test_mismatch_names_the_first_differing_tensor(comm):
    k = _kernel(comm)
    shapes = _mismatch_messages(comm, [k], lambda: tp.reduce_sum(k * k))
    v = tp.Variable(np.ones((300, 100) if comm.rank == 0 else (100, 300), np.float32), name="v")
    swapped = _mismatch_messages(comm, [v], lambda: tp.reduce_sum(v * v))
    w, b = _wb()
    counts = _mismatch_messages(comm, [w, b] if comm.rank == 1 else [w],
                                lambda: _loss(_x(comm.rank), w, b))
    for m in shapes:
        assert "kernel_w" in m and "(3, 3)" in m and "(3, 2)" in m, m
    for m in swapped:
        assert "(300, 100)" in m and "(100, 300)" in m, m
    for m in counts:
        assert re.search(r"rank 0 has 1 \w+, rank 1 has 2", m), m


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.mpi(min_size=2)
def test_nonfinite_on_rank_1_skips_the_step_everywhere(comm, capfd):
    w, b = _wb()
    x = _x(comm.rank)
    if comm.rank == 1:
        x[0, 0] = np.nan
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = _loss(x, w, b)
    grads = tape.gradient(loss, {"w": w, "b": b})
    assert grads == {"w": None, "b": None}
    assert tape.skipped and tape.nonfinite_ranks == [1]
    err = capfd.readouterr().err
    if comm.rank == 0:
        assert "non-finite gradient on rank(s) [1]" in err
    # the next step (finite everywhere) is reduced normally
    with DistributedGradientTape(tp.GradientTape(), comm) as tape:
        loss = _loss(_x(comm.rank), w, b)
    gw, _ = tape.gradient(loss, [w, b])
    assert not tape.skipped and np.isfinite(gw.numpy()).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.mpi(min_size=2)
def test_nonfinite_state_is_reset_by_the_next_gradient_call(comm):
    # one persistent tape, two targets: rank 1's first target is NaN, the second is finite
    w, b = _wb()
    bad_x = _x(comm.rank)
    if comm.rank == 1:
        bad_x[2, 1] = np.nan
    tape = DistributedGradientTape(tp.GradientTape(persistent=True), comm)
    with tape:
        bad = _loss(bad_x, w, b)
        good = _loss(_x(comm.rank), w, b)
    assert tape.gradient(bad, [w, b]) == [None, None]
    assert tape.skipped and tape.nonfinite_ranks == [1]
    gw, gb = tape.gradient(good, [w, b])
    assert not tape.skipped and tape.nonfinite_ranks == [] and tape.reduced
    per_rank = [_local_grads(r) for r in range(comm.size)]
    np.testing.assert_allclose(gw.numpy(), _mean([p[0] for p in per_rank]), rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.mpi(min_size=2)
def test_nonfinite_raise_on_every_rank(comm):
    w, b = _wb()
    x = _x(comm.rank)
    if comm.rank == 1:
        x[1, 2] = np.inf
    with DistributedGradientTape(tp.GradientTape(), comm, nonfinite="raise") as tape:
        loss = _loss(x, w, b)
    with pytest.raises(FloatingPointError, match=r"rank\(s\) \[1\]"):
        tape.gradient(loss, [w, b])


@pytest.mark.mpi
def test_mixed_dtypes_are_reduced_in_their_own_dtype(comm):
    w32 = tp.Variable(np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2))
    w64 = tp.Variable(np.linspace(1, 2, 2, dtype=np.float64))
    x = _x(comm.rank)
    with DistributedGradientTape(tp.GradientTape(), comm, op="sum") as tape:
        loss = tp.reduce_sum(tp.square(tp.matmul(tp.constant(x), w32)))
        loss64 = tp.reduce_sum(w64 * w64 * float(comm.rank + 1))
    g32, g64 = tape.gradient([loss, loss64], [w32, w64])
    assert g32.dtype == np.float32 and g64.dtype == np.float64
    assert tape.stats["buckets"] == 2  # one per dtype
    exp32 = sum(2 * _x(r).T @ (_x(r) @ w32.numpy()) for r in range(comm.size))
    np.testing.assert_allclose(g32.numpy(), exp32, rtol=1e-5, atol=1e-6)
    exp64 = sum(2 * w64.numpy() * (r + 1) for r in range(comm.size))
    np.testing.assert_allclose(g64.numpy(), exp64, rtol=1e-12)


@pytest.mark.mpi
def test_fp16_compression_close_to_float32(comm):
    w, b = _wb()
    results = {}
    for compression in (None, "fp16"):
        with DistributedGradientTape(tp.GradientTape(), comm,
                                     compression=compression) as tape:
            loss = _loss(_x(comm.rank), w, b)
        results[compression] = tape.gradient(loss, [w, b])
    for full, half in zip(results[None], results["fp16"]):
        assert half.dtype == np.float32
        np.testing.assert_allclose(half.numpy(), full.numpy(), rtol=1e-3,
                                   atol=1e-3 * float(np.abs(full.numpy()).max()))


@pytest.mark.mpi
@pytest.mark.parametrize("op", ["average", "sum"])
def test_small_buckets_overlap_and_match_one_bucket(comm, op):
    big, big_stats = _mlp_grads(comm, 1 << 20, op)
    small, stats = _mlp_grads(comm, 64, op)
    assert big_stats["buckets"] == 1
    assert stats["buckets"] > 1
    # overlap evidence: some bucket's all-reduce started before the backward sweep ended
    assert stats["launched_during_backward"] >= 1
    assert stats["backward_s"] >= 0 and stats["exposed_wait_s"] >= 0 and stats["bytes"] > 0
    for a, b in zip(big, small):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.mpi
def test_gradient_accumulation_reduces_once_every_n_steps(comm):
    acc = GradientAccumulation(3)
    outs = []
    for step in range(3):
        w, b = _wb()
        tape = DistributedGradientTape(tp.GradientTape(), comm, accumulation=acc)
        with tape:
            loss = _loss(_x(comm.rank, step), w, b)
        outs.append((tape.gradient(loss, [w, b]), tape.reduced))
    assert outs[0] == ([None, None], False) and outs[1] == ([None, None], False)
    (gw, gb), reduced = outs[2]
    assert reduced
    per_rank = [[_local_grads(r, s) for s in range(3)] for r in range(comm.size)]
    exp_w = _mean([sum(p[s][0] for s in range(3)) for p in per_rank])
    exp_b = _mean([sum(p[s][1] for s in range(3)) for p in per_rank])
    np.testing.assert_allclose(gw.numpy(), exp_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gb.numpy(), exp_b, rtol=1e-5, atol=1e-6)
    assert acc.count == 0  # ready for the next group


@pytest.mark.mpi
@pytest.mark.parametrize("op", ["sum", "average"])
def test_returned_gradients_survive_the_next_step(comm, op):
    # the bucket buffers are reused between steps: a result still held must not be overwritten
    def step(s):
        w, b = _wb()
        with DistributedGradientTape(tp.GradientTape(), comm, op=op) as tape:
            loss = _loss(_x(comm.rank, s), w, b)
        return tape.gradient(loss, [w, b])

    first = step(0)
    kept = [g.numpy().copy() for g in first]
    second = step(1)
    third = step(2)
    for g, ref in zip(first, kept):
        np.testing.assert_array_equal(g.numpy(), ref)
    scale = 1.0 if op == "sum" else 1.0 / comm.size
    for s, result in ((1, second), (2, third)):
        per_rank = [_local_grads(r, s) for r in range(comm.size)]
        for k, g in enumerate(result):
            np.testing.assert_allclose(g.numpy(), scale * np.sum([p[k] for p in per_rank], 0),
                                       rtol=1e-5, atol=1e-6)
    assert not np.allclose(second[0].numpy(), kept[0])


@pytest.mark.mpi
@pytest.mark.parametrize("root", ["first", "last"])
def test_broadcast_variables(comm, root):
    root = 0 if root == "first" else comm.size - 1

    def values(r):
        return (np.full((2, 3), r + 0.5, np.float32), np.arange(4, dtype=np.float64) * (r + 1))

    a0, b0 = values(comm.rank)
    a, b = tp.Variable(a0), tp.Variable(b0)
    broadcast_variables([a, b], root=root, comm=comm)
    ra, rb = values(root)
    np.testing.assert_array_equal(a.numpy(), ra)
    np.testing.assert_array_equal(b.numpy(), rb)
    assert a.dtype == np.float32 and b.dtype == np.float64 and isinstance(a, tp.Variable)


def _trained_optimizer(r: int):
    """An Adam optimizer after ``r + 1`` steps on rank ``r``'s gradients."""
    w, b = _wb()
    opt = optimizers.get("adam", learning_rate=0.01)
    for s in range(r + 1):
        with tp.GradientTape() as tape:
            loss = _loss(_x(r, s), w, b)
        opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
    return opt, (w, b)


@pytest.mark.mpi
def test_broadcast_optimizer_state(comm):
    opt, _ = _trained_optimizer(comm.rank)
    broadcast_optimizer_state(opt, root=0, comm=comm)
    expected = _trained_optimizer(0)[0].get_state()
    got = opt.get_state()
    assert set(got) == set(expected) and got["iterations"] == 1
    for k, v in expected.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        else:
            assert got[k] == v
    # a freshly built optimizer (no variables seen yet) receives the state too
    fresh = optimizers.get("adam", learning_rate=0.01)
    if comm.rank == 0:
        fresh = opt
    broadcast_optimizer_state(fresh, root=0, comm=comm)
    assert fresh.iterations == 1


@pytest.mark.mpi
def test_average_metrics(comm):
    out = average_metrics({"loss": comm.rank + 1.0, "accuracy": 0.25 * comm.rank}, comm=comm)
    assert list(out) == ["accuracy", "loss"]
    n = comm.size
    assert out["loss"] == pytest.approx(sum(r + 1.0 for r in range(n)) / n)
    assert out["accuracy"] == pytest.approx(sum(0.25 * r for r in range(n)) / n)
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.mpi
def test_tape_factory_sums_on_several_ranks(comm):
    make = tape_factory(comm)
    tape = make()
    if comm.size == 1:
        assert isinstance(tape, tp.GradientTape)
        return
    assert isinstance(tape, DistributedGradientTape) and tape.op == "sum"
    w, b = _wb()
    with tape:
        loss = _loss(_x(comm.rank), w, b)
    gw, _ = tape.gradient(loss, [w, b])
    per_rank = [_local_grads(r) for r in range(comm.size)]
    np.testing.assert_allclose(gw.numpy(), np.sum([p[0] for p in per_rank], 0), rtol=1e-5,
                               atol=1e-6)


# -- a non-finite gradient on one rank: every rank skips, on both paths -------------------------


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.mpi
def test_nan_on_one_rank_skips_everywhere_on_both_paths(either):
    w = tp.Variable(np.ones((300, 100), np.float32), name="w")  # 120 KB: shared memory on comm
    last = either.size - 1
    scale = np.float32(np.nan) if either.rank == last else np.float32(1.0)
    with DistributedGradientTape(tp.GradientTape(), either) as tape:
        loss = tp.reduce_sum(w * tp.constant(scale))
    assert tape.gradient(loss, [w]) == [None]
    assert tape.skipped and tape.nonfinite_ranks == [last]
    assert tape.stats["reduction"] == ("shared-memory" if getattr(either, "shared_memory", False)
                                       else "mpi")
    with DistributedGradientTape(tp.GradientTape(), either) as tape:
        loss = tp.reduce_sum(w * tp.constant(np.float32(either.rank + 1)))
    (g,) = tape.gradient(loss, [w])
    assert not tape.skipped
    np.testing.assert_allclose(g.numpy(), (either.size + 1) / 2)
