"""``DistributedGradientTape`` inside ``tp.function`` across ranks.

    OMP_NUM_THREADS=1 mpiexec -n 2 python -m pytest --with-mpi -q tests/distributed

The reduction is part of the replay (start, a pack after each gradient's last op, finish): a
traced step must give every rank exactly what the eager distributed step gives, on the
shared-memory and the plain MPI path, with buckets going out during the replayed sweep; a
layout mismatch is a ``MismatchError`` on every rank, as eagerly.
"""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
import tapeflow.distributed as dist
from tapeflow.distributed import DistributedGradientTape, MismatchError
from tapeflow.optimizers import SGD, Adam


def _model(seed=3):
    rng = np.random.default_rng(seed)
    return [tp.Variable(rng.normal(size=s).astype("f4") * 0.3, name=f"v{i}")
            for i, s in enumerate([(8, 16), (16,), (16, 4), (4,)])]


def _batch(rank: int, step: int):
    rng = np.random.default_rng([rank, step, 5])
    return (tp.constant(rng.normal(size=(6, 8)).astype("f4")),
            tp.constant(rng.integers(0, 4, 6).astype("i4")))


def _loss(vs, x, y):
    w1, b1, w2, b2 = vs
    h = tp.nn.relu(x @ w1 + b1)
    return tp.reduce_mean(tp.nn.sparse_softmax_cross_entropy_with_logits(y, h @ w2 + b2))


def _run(comm, traced: bool, make_opt, bucket_bytes: int, steps: int = 4):
    vs, opt, tapes = _model(), make_opt(), []

    def step(x, y):
        tape = DistributedGradientTape(tp.GradientTape(), comm, bucket_bytes=bucket_bytes)
        tapes.append(tape)
        with tape:
            loss = _loss(vs, x, y)
        grads = tape.gradient(loss, vs)
        opt.apply_gradients(zip(grads, vs))
        return loss, grads
    fn = tp.function(step) if traced else step
    out = [fn(*_batch(comm.rank, i)) for i in range(steps)]
    return ([float(loss) for loss, _ in out], [g.numpy() for g in out[-1][1]],
            [v.numpy() for v in vs], tapes[-1].stats)


@pytest.mark.mpi
@pytest.mark.parametrize("bucket_bytes", [1 << 20, 64])
@pytest.mark.parametrize("make_opt", [lambda: SGD(0.1, momentum=0.9), lambda: Adam(0.01)])
def test_a_traced_distributed_step_equals_the_eager_one(either, bucket_bytes, make_opt):
    eager = _run(either, False, make_opt, bucket_bytes)
    traced = _run(either, True, make_opt, bucket_bytes)
    assert traced[0] == eager[0]  # each rank's local loss, step by step
    for a, b in zip(eager[1] + eager[2], traced[1] + traced[2]):
        np.testing.assert_array_equal(a, b)
    # the weights are the same on every rank: the reduction happened in every replay
    for v in traced[2]:
        rows = either.allgather(np.ascontiguousarray(v)[None])
        for r in range(either.size):
            np.testing.assert_array_equal(rows[r], rows[0], err_msg=f"rank {r}")
    if bucket_bytes == 64:
        assert traced[3]["buckets"] == 4 and traced[3]["launched_during_backward"] == 4


@pytest.mark.mpi
def test_traced_gradients_are_the_mean_over_ranks(comm):
    vs = _model()

    @tp.function
    def grads(x, y):
        with DistributedGradientTape(tp.GradientTape(), comm) as tape:
            loss = _loss(vs, x, y)
        return tape.gradient(loss, vs)

    got = [g.numpy() for g in grads(*_batch(comm.rank, 0))]
    per_rank = []
    for r in range(comm.size):
        with tp.GradientTape() as tape:
            loss = _loss(vs, *_batch(r, 0))
        per_rank.append([g.numpy() for g in tape.gradient(loss, vs)])
    for k, g in enumerate(got):
        np.testing.assert_allclose(g, np.mean([p[k] for p in per_rank], axis=0), rtol=1e-5,
                                   atol=1e-7)


@pytest.mark.mpi(min_size=2)
def test_a_traced_layout_mismatch_raises_on_every_rank(comm):
    w = tp.Variable(np.ones((3, 3 if comm.rank == 1 else 2), np.float32), name="kernel_w")

    @tp.function
    def grad(x):
        with DistributedGradientTape(tp.GradientTape(), comm) as tape:
            loss = tp.reduce_sum(w * w * x)
        return tape.gradient(loss, [w])

    with pytest.raises(MismatchError,
                       match=r"tensor #0 \(kernel_w\): rank 0 \(3, 2\) float32, rank 1 \(3, 3\)"):
        grad(tp.constant(2.0))
    # nothing left half-done: the next (eager) reduction on these ranks works
    v = tp.Variable(np.full(2, comm.rank + 1.0, np.float32))
    with DistributedGradientTape(tp.GradientTape(), comm, op="sum") as tape:
        loss = tp.reduce_sum(v * v)
    expected = sum(2.0 * (r + 1) for r in range(comm.size))
    np.testing.assert_allclose(tape.gradient(loss, v).numpy(), [expected] * 2, rtol=1e-6)


@pytest.mark.mpi
def test_a_distributed_optimizer_inside_a_trace_equals_the_eager_one(comm):
    from tapeflow.distributed import DistributedOptimizer

    runs = []
    for traced in (False, True):
        vs = _model()
        opt = DistributedOptimizer(SGD(0.1), comm=comm)

        def step(x, y):
            with tp.GradientTape() as tape:
                loss = _loss(vs, x, y)
            opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
            return loss
        fn = tp.function(step) if traced else step
        losses = [float(fn(*_batch(comm.rank, i))) for i in range(4)]
        runs.append((losses, [v.numpy() for v in vs]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
    for v in runs[1][1]:  # reduced on every replay: the same weights on every rank
        rows = comm.allgather(np.ascontiguousarray(v)[None])
        for r in range(comm.size):
            np.testing.assert_array_equal(rows[r], rows[0], err_msg=f"rank {r}")


@pytest.mark.mpi
def test_broadcast_variables_inside_a_traced_step_runs_after_the_update(comm):
    # Horovod's TF2 example broadcasts the weights after the first step, inside tf.function:
    # the broadcast is part of the replay (rank 0's updated weights), not frozen at trace time.
    def make(seed):
        v = tp.Variable(np.full(3, float(seed + 1), np.float32))
        return v, SGD(0.5)

    def step(v, opt, x, first):
        with tp.GradientTape() as tape:
            loss = tp.reduce_sum(v * x)
        tape = dist.DistributedGradientTape(tape, comm)
        opt.apply_gradients([(tape.gradient(loss, v), v)])
        if first:
            dist.broadcast_variables([v], root_rank=0, comm=comm)
        return loss

    v1, o1 = make(comm.rank)
    v2, o2 = make(comm.rank)
    traced = tp.function(lambda x, first: step(v1, o1, x, first))
    x = tp.constant(np.arange(3, dtype=np.float32) + comm.rank)
    for k in range(3):
        traced(x, k == 0)
        step(v2, o2, x, k == 0)
        np.testing.assert_array_equal(v1.numpy(), v2.numpy())
    # rank 0's start (1.0) minus 0.5 * the mean gradient, then two more such steps
    mean_grad = np.arange(3) + (comm.size - 1) / 2
    np.testing.assert_allclose(v1.numpy(), 1.0 - 3 * 0.5 * mean_grad, rtol=1e-6)


@pytest.mark.mpi
@pytest.mark.parametrize("make_opt", [lambda: SGD(0.1, momentum=0.9), lambda: Adam(0.01)])
def test_a_none_batch_is_traced_once_with_uneven_batches_across_ranks(comm, make_opt):
    # Horovod's TF2 loop with input_signature=[TensorSpec([None, ...])]: every rank's batches
    # differ in size from step to step and from the other ranks'; one trace serves them all.
    spec = [tp.TensorSpec([None, 8]), tp.TensorSpec([None], tp.int32)]

    def batch(step):
        n = 3 + (5 * step + 2 * comm.rank) % 7
        rng = np.random.default_rng([comm.rank, step, 9])
        return (tp.constant(rng.normal(size=(n, 8)).astype("f4")),
                tp.constant(rng.integers(0, 4, n).astype("i4")))

    runs = []
    for traced in (False, True):
        vs, opt = _model(), make_opt()

        def step(x, y):
            with DistributedGradientTape(tp.GradientTape(), comm, bucket_bytes=64) as tape:
                loss = _loss(vs, x, y)
            grads = tape.gradient(loss, vs)
            opt.apply_gradients(zip(grads, vs))
            return loss
        fn = tp.function(step, input_signature=spec) if traced else step
        losses = [float(fn(*batch(i))) for i in range(6)]
        runs.append((losses, [v.numpy() for v in vs], fn))
    assert runs[1][2].experimental_get_tracing_count() == 1
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
    for v in runs[1][1]:
        rows = comm.allgather(np.ascontiguousarray(v)[None])
        for r in range(comm.size):
            np.testing.assert_array_equal(rows[r], rows[0], err_msg=f"rank {r}")
