"""What a Horovod or DDP user reaches for, checked in terms of ``rank`` and ``size``.

Runs alone (size 1) and under ``mpiexec -n 2 python -m pytest --with-mpi``: module-level
collectives against NumPy, their gradients against central finite differences of the total
loss, ``DistributedOptimizer`` against ``DistributedGradientTape``, process sets, ``join``
with uneven step counts, and the timeline file.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import optimizers, timeline
from tapeflow import distributed as dist

@pytest.fixture(scope="module")
def comm():
    return dist.init()


def _data(r: int, shape, salt: int = 0) -> np.ndarray:
    return np.random.default_rng([r, salt]).standard_normal(shape)


# -- module-level collectives against NumPy -------------------------------------------------------

def test_identity_functions(comm):
    assert (dist.rank(), dist.size()) == (comm.rank, comm.size)
    assert 0 <= dist.local_rank() < dist.local_size() <= dist.size()
    assert 0 <= dist.cross_rank() < dist.cross_size()
    assert dist.local_size() * dist.cross_size() == dist.size()


@pytest.mark.parametrize("op", ["average", "sum", "min", "max", "product"])
def test_allreduce_ops_against_numpy(comm, op):
    parts = [_data(r, (3, 4), 1) for r in range(comm.size)]
    got = dist.allreduce(parts[comm.rank], op=op)
    want = {"average": np.mean, "sum": np.sum, "min": np.min, "max": np.max,
            "product": np.prod}[op](parts, axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    t = dist.allreduce(tp.constant(parts[comm.rank]), op=op)  # Tensors in, Tensors out
    assert isinstance(t, tp.Tensor)
    np.testing.assert_allclose(t.numpy(), want, rtol=1e-12)


def test_grouped_allreduce_and_allgather_and_broadcast(comm):
    a = [np.full(2, comm.rank, np.float32), np.arange(3) * (comm.rank + 1)]
    s = dist.grouped_allreduce(a, op="sum")
    n = comm.size
    np.testing.assert_array_equal(s[0], np.full(2, n * (n - 1) / 2))
    np.testing.assert_array_equal(s[1], np.arange(3) * n * (n + 1) // 2)
    assert s[1].dtype == a[1].dtype
    ragged = dist.allgather(np.full((comm.rank + 1, 2), comm.rank))
    want = np.concatenate([np.full((r + 1, 2), r) for r in range(n)])
    np.testing.assert_array_equal(ragged, want)
    np.testing.assert_array_equal(dist.allgather(np.float64(comm.rank)), np.arange(n))
    root = n - 1
    got = dist.broadcast(np.arange(4.0) + comm.rank, root=root)
    np.testing.assert_array_equal(got, np.arange(4.0) + root)
    assert dist.broadcast_object({"r": comm.rank}, root=root) == {"r": root}
    assert dist.allgather_object(comm.rank) == list(range(n))


def test_alltoall_even_and_with_splits(comm):
    n, r = comm.size, comm.rank
    x = np.arange(2 * n) + 100 * r
    got = dist.alltoall(x)
    want = np.concatenate([np.arange(2 * n)[2 * r:2 * r + 2] + 100 * q for q in range(n)])
    np.testing.assert_array_equal(got, want)
    # rank q sends q+1 rows to every rank
    rows = (r + 1) * n
    y = np.arange(rows * 2).reshape(rows, 2) + 1000 * r
    out, received = dist.alltoall(y, splits=[r + 1] * n)
    np.testing.assert_array_equal(received, [q + 1 for q in range(n)])
    expect = []
    for q in range(n):
        yq = np.arange((q + 1) * n * 2).reshape((q + 1) * n, 2) + 1000 * q
        expect.append(yq[r * (q + 1):(r + 1) * (q + 1)])
    np.testing.assert_array_equal(out, np.concatenate(expect))
    with pytest.raises(ValueError, match="splits must be"):
        dist.alltoall(y, splits=[rows + 1] + [0] * (n - 1))


@pytest.mark.parametrize("op", ["sum", "average"])
def test_reducescatter_against_numpy(comm, op):
    n, r = comm.size, comm.rank
    rows = 2 * n + 1
    parts = [_data(q, (rows, 3), 2) for q in range(n)]
    got = dist.reducescatter(parts[r], op=op)
    total = np.sum(parts, 0) / (n if op == "average" else 1)
    counts = [rows // n + (1 if q < rows % n else 0) for q in range(n)]
    start = sum(counts[:r])
    np.testing.assert_allclose(got, total[start:start + counts[r]], rtol=1e-12)


def test_mismatched_collectives_are_named_errors(comm):
    if comm.size == 1:
        pytest.skip("needs two ranks")
    with pytest.raises(dist.MismatchError, match="called different collectives"):
        if comm.rank == 0:
            dist.alltoall(np.arange(2 * comm.size))
        else:
            dist.reducescatter(np.arange(2.0 * comm.size))
    dist.barrier()  # still usable


# -- gradients of collectives against finite differences ------------------------------------------

def _total_loss_fd(comm, f, x0: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of L = sum over ranks of sum(w * f(x)) w.r.t. this rank's x, where
    every rank perturbs in turn (each perturbation is a collective step on every rank)."""
    grads = np.zeros_like(x0)
    for owner in range(comm.size):
        n = comm.allreduce(np.array([x0.size], np.int64), op="max")[0]
        for i in range(int(n)):
            vals = []
            for sign in (1.0, -1.0):
                x = x0.copy()
                if comm.rank == owner and i < x.size:
                    x.reshape(-1)[i] += sign * eps
                local = f(tp.constant(x))
                vals.append(comm.allreduce(np.array([float(tp.reduce_sum(local).numpy())]),
                                           op="sum")[0])
            if comm.rank == owner and i < x0.size:
                grads.reshape(-1)[i] = (vals[0] - vals[1]) / (2 * eps)
    return grads


def _w(comm, shape, salt):
    return tp.constant(_data(comm.rank + 10, shape, salt))


@pytest.mark.parametrize("name", ["allreduce sum", "allreduce average", "allreduce max",
                                  "allreduce product", "allgather", "broadcast", "alltoall",
                                  "reducescatter", "grouped"])
def test_collective_gradients_match_finite_differences(comm, name):
    n = comm.size
    x0 = _data(comm.rank, (2 * n, 2), 3) + 3.0  # away from 0 (product) and ties (max)
    w = _w(comm, (2 * n, 2), 4)
    wide = _w(comm, (2 * n * n, 2), 5)
    fns = {
        "allreduce sum": lambda x: dist.allreduce(x * x, op="sum") * w,
        "allreduce average": lambda x: dist.allreduce(tp.sin(x), op="average") * w,
        "allreduce max": lambda x: dist.allreduce(x, op="max") * w,
        "allreduce product": lambda x: dist.allreduce(x, op="product") * w,
        "allgather": lambda x: dist.allgather(x * x) * wide,
        "broadcast": lambda x: dist.broadcast(x * 2.0, root=n - 1) ** 2 * w,
        "alltoall": lambda x: dist.alltoall(x ** 3) * w,
        "reducescatter": lambda x: dist.reducescatter(tp.exp(x / 4.0), op="average")
        * _w(comm, (2, 2), 6),
        "grouped": lambda x: dist.grouped_allreduce([x, x * x], op="sum")[1] * w,
    }
    f = fns[name]
    xv = tp.Variable(x0)
    with tp.GradientTape() as tape:
        loss = tp.reduce_sum(f(xv))
    got = tape.gradient(loss, xv).numpy()
    want = _total_loss_fd(comm, f, x0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# -- DistributedOptimizer == DistributedGradientTape ----------------------------------------------

def _model_and_data(comm, seed=0):
    model = tp.nn.mlp([6, 5, 3], seed=seed)
    dist.broadcast_variables(model.variables, root=0)
    x = tp.constant(_data(comm.rank, (4, 6), 7).astype(np.float32))
    return model, x


@pytest.mark.parametrize("passes", [1, 2])
def test_distributed_optimizer_equals_distributed_gradient_tape(comm, passes):
    m1, x = _model_and_data(comm)
    m2, _ = _model_and_data(comm)
    opt1 = optimizers.SGD(learning_rate=0.1, momentum=0.9)
    opt2 = dist.DistributedOptimizer(optimizers.SGD(learning_rate=0.1, momentum=0.9),
                                     backward_passes_per_step=passes)
    acc = dist.GradientAccumulation(passes)
    for _ in range(3 * passes):
        with dist.DistributedGradientTape(tp.GradientTape(), accumulation=acc) as tape:
            loss = tp.reduce_sum(m1(x) ** 2)
        grads = tape.gradient(loss, m1.trainable_variables)
        if tape.reduced:
            opt1.apply_gradients(zip(grads, m1.trainable_variables))
        with tp.GradientTape() as tape2:
            loss2 = tp.reduce_sum(m2(x) ** 2)
        opt2.apply_gradients(zip(tape2.gradient(loss2, m2.trainable_variables),
                                 m2.trainable_variables))
    for a, b in zip(m1.trainable_variables, m2.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert opt2.iterations == opt1.iterations  # delegation to the wrapped optimizer


# -- process sets ---------------------------------------------------------------------------------

def test_new_group_numbers_ranks_in_the_order_given(comm):
    order = list(reversed(range(comm.size)))
    g = dist.new_group(order)
    assert g is not None and g.size == comm.size and g.rank == order.index(comm.rank)
    np.testing.assert_array_equal(g.allreduce(np.array([comm.rank]), op="sum"),
                                  [comm.size * (comm.size - 1) // 2])
    solo = dist.new_group([0])
    if comm.rank == 0:
        assert solo is not None and solo.size == 1
        np.testing.assert_array_equal(solo.allreduce(np.array([5.0]), op="sum"), [5.0])
    else:
        assert solo is None
    with pytest.raises(ValueError, match="distinct ranks"):
        dist.new_group([0, 0])


def test_distributed_tape_over_a_group(comm):
    g = dist.new_group(list(range(comm.size)))
    model, x = _model_and_data(comm)
    with dist.DistributedGradientTape(tp.GradientTape(), comm=g, op="sum") as tape:
        loss = tp.reduce_sum(model(x))
    grads = tape.gradient(loss, model.trainable_variables)
    with tp.GradientTape() as local_tape:
        local = tp.reduce_sum(model(x))
    mine = local_tape.gradient(local, model.trainable_variables)
    for gr, lo in zip(grads, mine):
        np.testing.assert_allclose(gr.numpy(), comm.allreduce(lo.numpy(), op="sum"),
                                   rtol=1e-5, atol=1e-6)


# -- join: uneven inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("shared_memory", [True, False])
def test_join_with_uneven_step_counts(comm, shared_memory):
    c = dist.MPICommunicator(shared_memory=shared_memory) if comm.size > 1 else comm
    big = tp.nn.mlp([784, 64, 10], seed=0)  # 200 KB of gradients: the shared-memory path
    c.broadcast_variables(big.variables)
    opt = optimizers.SGD(learning_rate=0.05)
    x = tp.constant(_data(comm.rank, (4, 784), 8).astype(np.float32))
    steps = 5 if comm.rank == 0 else 3  # rank 0 takes more steps than the others
    seen = []
    with dist.join(comm=c, variables=big.variables) as j:
        for _ in range(steps):
            with dist.DistributedGradientTape(tp.GradientTape(), comm=c) as tape:
                loss = tp.reduce_mean(big(x) ** 2)
            grads = tape.gradient(loss, big.trainable_variables)
            opt.apply_gradients(zip(grads, big.trainable_variables))
            seen.append(c.allreduce(np.array([1.0]), op="sum")[0])  # ranks still stepping
    assert j.last_rank == 0
    want = [float(comm.size)] * 3 + [1.0] * (steps - 3)
    assert seen == want
    every = c.allgather(np.concatenate([v.numpy().reshape(-1) for v in big.variables])[None])
    for row in every[1:]:
        np.testing.assert_array_equal(row, every[0])  # every rank ends with the same weights
    if c is not comm:
        c.close()


def test_join_gradient_average_counts_only_active_ranks(comm):
    if comm.size == 1:
        pytest.skip("needs two ranks")
    w = tp.Variable(np.zeros(3))
    with dist.join():
        if comm.rank == 0:
            with dist.DistributedGradientTape(tp.GradientTape()) as tape:
                loss = tp.reduce_sum(w * 2.0)
            g = tape.gradient(loss, w)
            np.testing.assert_allclose(g.numpy(), [2.0, 2.0, 2.0])  # not 2 / size


# -- timeline -------------------------------------------------------------------------------------

def test_timeline_records_the_phases_of_a_step(comm, tmp_path):
    root = comm.broadcast_object(str(tmp_path), root=0)
    path = timeline.start(f"{root}/trace.json", comm.rank, comm.size)
    model, x = _model_and_data(comm)
    for _ in range(2):
        with timeline.span("forward"):
            with dist.DistributedGradientTape(tp.GradientTape()) as tape:
                loss = tp.reduce_sum(model(x))
        tape.gradient(loss, model.trainable_variables)
    timeline.stop()
    events = json.loads(path.read_text())
    names = {e["name"] for e in events}
    assert {"forward", "backward", "bucket ready", "reduce (finish)"} <= names
    assert all(e["pid"] == comm.rank for e in events)
    spans = [e for e in events if e.get("ph") == "X"]
    assert spans and all(e["dur"] >= 0 for e in spans)


def test_horovod_spellings(comm):
    root = comm.size - 1
    got = dist.broadcast(np.array([float(comm.rank)]), root_rank=root)
    np.testing.assert_array_equal(got, [float(root)])
    assert dist.broadcast_object(comm.rank, root_rank=root) == root
    np.testing.assert_array_equal(dist.allreduce(np.ones(2), op=dist.Sum), np.full(2, comm.size))
    assert (dist.Average, dist.Min, dist.Max, dist.Product) == ("average", "min", "max",
                                                                 "product")
    v = tp.Variable(np.full(2, float(comm.rank)))
    dist.broadcast_variables([v], root_rank=root)
    np.testing.assert_array_equal(v.numpy(), [root, root])
    with pytest.raises(TypeError, match="root or root_rank"):
        dist.broadcast(np.ones(1), root=1, root_rank=2)
