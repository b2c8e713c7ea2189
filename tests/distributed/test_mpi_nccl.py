"""The ``nccl`` communicator's reducer, without a GPU: NCCL's part is played by an engine that
reduces through MPI (explicit host staging), the buckets live on the strict device of
:mod:`tapeflow.strict_device`. What is tested is the reducer protocol around NCCL: device
buckets, the layout check before data moves, bucket order, average scaling, the finite check,
gradients handed back on the device. ``tests/test_gpu.py`` runs real NCCL on a GPU machine.

    mpiexec -n 2 python -m pytest --with-mpi tests/distributed/test_mpi_nccl.py
"""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import devices
from tapeflow import strict_device as sd
from tapeflow.distributed import DistributedGradientTape, available_backends

pytestmark = [pytest.mark.device, pytest.mark.mpi]


class StagedEngine:
    """NCCL's role, played by MPI: each launched bucket is copied to the host explicitly,
    reduced with ``Allreduce`` at ``synchronize`` and copied back to the device."""

    def __init__(self):
        self.comm, self.pending, self.launched = None, [], []

    def empty(self, dtype, n):
        return sd.xp.empty(n, dtype=dtype)

    def allreduce(self, buf, op):
        self.pending.append((buf, op))
        self.launched.append(buf.size)

    def synchronize(self):
        from mpi4py import MPI

        ops = {"max": MPI.MAX, "min": MPI.MIN, "product": MPI.PROD}
        for buf, op in self.pending:
            host = buf.get()
            self.comm._comm.Allreduce(MPI.IN_PLACE, host, op=ops.get(op, MPI.SUM))
            buf[...] = sd.xp.asarray(host)
        self.pending = []


@pytest.fixture(scope="module")
def nccl_comm(request):
    if not request.config.getoption("--with-mpi", default=False):
        pytest.skip("run under mpiexec with --with-mpi")
    from tapeflow.distributed.nccl import NCCLCommunicator

    engine = StagedEngine()
    c = NCCLCommunicator(engine=engine, stall_timeout=60)
    engine.comm = c
    yield c
    c.close()


@pytest.fixture(autouse=True)
def strict_gpu():
    prev = devices.set_gpu_module(sd.xp)
    yield
    devices.set_gpu_module(prev)


def _grads(r, where, comm=None, op="average", bucket_bytes=1 << 20):
    model = tp.nn.mlp([8, 6, 4], seed=2).to(where)
    with tp.device(where):
        x = tp.constant(np.random.default_rng([r, 9]).standard_normal((5, 8)).astype(np.float32))
    tape = tp.GradientTape() if comm is None else DistributedGradientTape(
        tp.GradientTape(), comm, op=op, bucket_bytes=bucket_bytes)
    with tape:
        loss = tp.reduce_sum(tp.square(model(x)))
    return tape, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("op,reduce", [("average", np.mean), ("sum", np.sum)])
@pytest.mark.parametrize("bucket_bytes", [1 << 20, 64])
def test_nccl_reducer_on_device_buckets(nccl_comm, op, reduce, bucket_bytes):
    assert "nccl" in available_backends() and nccl_comm.backend == "nccl"
    engine = nccl_comm.engine
    engine.launched = []
    tape, grads = _grads(nccl_comm.rank, "/GPU:0", nccl_comm, op, bucket_bytes)
    assert tape.stats["reduction"] == "nccl"
    assert len(engine.launched) == tape.stats["buckets"] >= (2 if bucket_bytes == 64 else 1)
    per_rank = [[g.numpy() for g in _grads(r, "cpu")[1]] for r in range(nccl_comm.size)]
    for k, g in enumerate(grads):
        assert type(g._value) is sd.StrictArray
        np.testing.assert_allclose(g.numpy(), reduce([p[k] for p in per_rank], axis=0),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_nccl_reducer_reports_non_finite_gradients(nccl_comm):
    model = tp.nn.mlp([3, 2], seed=0).to("/GPU:0")
    with tp.device("/GPU:0"):
        x = tp.constant(np.full((2, 3), np.inf if nccl_comm.rank == 0 else 1.0, np.float32))
    tape = DistributedGradientTape(tp.GradientTape(), nccl_comm, nonfinite="skip")
    with tape:
        loss = tp.reduce_sum(model(x))
    grads = tape.gradient(loss, model.trainable_variables)
    assert tape.skipped and grads == [None] * len(grads)
    assert tape.nonfinite_ranks == [0]


def test_nccl_reducer_under_join_counts_only_active_ranks(nccl_comm):
    from tapeflow import distributed as dist

    with tp.device("/GPU:0"):
        w = tp.Variable(np.zeros(3, np.float32))
    steps = 2 if nccl_comm.rank == 0 else 1  # rank 0 takes one step more
    got = []
    with dist.join(comm=nccl_comm):
        for _ in range(steps):
            with DistributedGradientTape(tp.GradientTape(), nccl_comm) as tape:
                loss = tp.reduce_sum(w * float(nccl_comm.rank + 1))
            g = tape.gradient(loss, w)
            assert "GPU" in g.device
            got.append(tp.to_device(g, "cpu").numpy().tolist())
    n = nccl_comm.size
    if n == 1:
        want = [[1.0] * 3, [1.0] * 3]
    else:  # both ranks step first (the average of 1..n), then rank 0 alone (its own 1.0)
        want = [[sum(range(1, n + 1)) / n] * 3] + ([[1.0] * 3] if nccl_comm.rank == 0 else [])
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-6)
