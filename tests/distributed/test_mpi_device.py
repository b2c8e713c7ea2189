"""``DistributedGradientTape`` with the model on a device: gradients are packed with an explicit
staging copy to the host buckets, reduced over MPI, and handed back on the source's device.

The GPU is the strict stand-in of :mod:`tapeflow.strict_device` (it refuses implicit host
conversion and mixing devices). Runs alone (local communicator) or under
``mpiexec -n 2 python -m pytest --with-mpi tests/distributed/test_mpi_device.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import devices, optimizers
from tapeflow import strict_device as sd
from tapeflow.distributed import DistributedGradientTape

pytestmark = pytest.mark.device


@pytest.fixture(autouse=True)
def strict_gpu():
    prev = devices.set_gpu_module(sd.xp)
    yield
    devices.set_gpu_module(prev)


def _x(r: int) -> np.ndarray:
    return np.random.default_rng([r, 5]).standard_normal((6, 8)).astype(np.float32)


def _grads(r: int, where: str, comm=None, bucket_bytes: int = 1 << 20):
    model = tp.nn.mlp([8, 6, 4], seed=2).to(where)
    with tp.device(where):
        x = tp.constant(_x(r))
    tape = tp.GradientTape() if comm is None else DistributedGradientTape(
        tp.GradientTape(), comm, bucket_bytes=bucket_bytes)
    with tape:
        loss = tp.reduce_mean(tp.square(model(x)))
    return model, tape.gradient(loss, model.trainable_variables)


@pytest.mark.mpi
@pytest.mark.parametrize("bucket_bytes", [1 << 20, 64])
def test_device_gradients_average_over_ranks_and_stay_on_the_device(comm, bucket_bytes):
    reads = sd.host_reads()
    model, grads = _grads(comm.rank, "/GPU:0", comm, bucket_bytes)
    assert all(type(g._value) is sd.StrictArray and g.device == "/device:GPU:0" for g in grads)
    per_rank = [[g.numpy() for g in _grads(r, "cpu")[1]] for r in range(comm.size)]
    for k, g in enumerate(grads):
        np.testing.assert_allclose(g.numpy(), np.mean([p[k] for p in per_rank], axis=0),
                                   rtol=1e-5, atol=1e-7)
    opt = optimizers.SGD(learning_rate=0.1, momentum=0.9)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    assert all(type(v._value) is sd.StrictArray for v in model.variables)
    assert sd.host_reads() == reads  # the staging copies are explicit, no value was read


@pytest.mark.mpi
def test_collectives_of_device_tensors_stay_on_the_device_and_differentiate(comm):
    from tapeflow import distributed as dist

    with tp.device("/GPU:0"):
        x = tp.Variable(_x(comm.rank)[0])
    n = comm.size
    with tp.GradientTape() as tape:
        y = dist.allreduce(x * x, op="sum", comm=comm)
        g = dist.allgather(x, comm=comm)
        b = dist.broadcast(x, root=0, comm=comm)
        loss = tp.reduce_sum(y) + tp.reduce_sum(g) + tp.reduce_sum(b)
    for t in (y, g, b):
        assert "GPU" in t.device
    grad = tape.gradient(loss, x)
    assert "GPU" in grad.device
    # d/dx of sum_r [sum(allreduce(x^2)) + sum(allgather(x)) + sum(broadcast(x))]
    want = 2 * n * _x(comm.rank)[0] + n + (n if comm.rank == 0 else 0)
    np.testing.assert_allclose(tp.to_device(grad, "cpu").numpy(), want, rtol=1e-5)
