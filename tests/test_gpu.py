"""The CuPy path on a real GPU: every primitive (forward, first- and second-order rules, finite
differences), optimizers, MLP and CNN steps against the CPU, the distributed tape over NCCL.

Skips, with the reason, where CuPy or a GPU is missing. On a GPU machine (with the `gpu` extra):

    python -m pytest tests/test_gpu.py -q && python benchmarks/gpu_bench.py --json gpu.json
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import optimizers
from tapeflow._backend import cupy_or_none
from tapeflow.nn import functional as F
from tapeflow.testing import check_grads

cp = cupy_or_none()
pytestmark = [pytest.mark.device, pytest.mark.skipif(
    cp is None, reason="needs CuPy (pip install 'tapeflow[gpu]') and a CUDA GPU")]

GPU = "/GPU:0"


def _table():
    spec = importlib.util.spec_from_file_location(
        "_tapeflow_primitive_table_gpu", Path(__file__).parent / "test_primitives.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TABLE


TABLE = _table() if cp is not None else {}
CASES = [pytest.param(n, i, id=f"{n}-{i}") for n in TABLE for i in range(len(TABLE[n]))]


@pytest.mark.parametrize("name,i", CASES)
def test_primitive_on_gpu(name, i):
    fn, args, *opts = TABLE[name][i]

    def on_gpu(*xs):
        out = fn(*xs)
        assert name == "to_device" or type(out._value).__module__.startswith("cupy")
        return out
    with tp.device(GPU):
        check_grads(on_gpu, args, order=2, **(opts[0] if opts else {}))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_step_on_gpu_matches_cpu(kind, opt):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        make = lambda: tp.nn.mlp([784, 128, 10], seed=1)  # noqa: E731
        x_h = rng.standard_normal((64, 784)).astype(np.float32)
    else:
        make = lambda: tp.nn.mnist_cnn(seed=1)  # noqa: E731
        x_h = rng.standard_normal((16, 28, 28, 1)).astype(np.float32)
    y_h = rng.integers(0, 10, len(x_h))
    out = {}
    for where in ("cpu", GPU):
        model, o = make().to(where), optimizers.get(opt, learning_rate=0.01)
        with tp.device(where):
            x, y = tp.constant(x_h), tp.constant(y_h)
        for _ in range(3):
            with tp.GradientTape() as tape:
                loss = tp.reduce_mean(F.sparse_softmax_cross_entropy_with_logits(
                    y, model(x, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            o.apply_gradients(zip(grads, model.trainable_variables))
        if where == GPU:
            assert all(isinstance(v._value, cp.ndarray) for v in model.variables)
            assert all(isinstance(g._value, cp.ndarray) for g in grads)
        out[where] = [v.numpy() for v in model.variables]
    for a, b in zip(out["cpu"], out[GPU]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)  # other kernels, other sums


def test_distributed_tape_over_nccl_on_one_rank():
    from tapeflow.distributed import DistributedGradientTape
    from tapeflow.distributed.nccl import NCCLCommunicator

    comm = NCCLCommunicator()
    try:
        model = tp.nn.mlp([8, 6, 4], seed=2).to(GPU)
        with tp.device(GPU):
            x = tp.constant(np.ones((5, 8), np.float32))
        tape = DistributedGradientTape(tp.GradientTape(), comm)
        with tape:
            loss = tp.reduce_sum(tp.square(model(x)))
        grads = tape.gradient(loss, model.trainable_variables)
        assert tape.stats["reduction"] == "nccl"
        with tp.GradientTape() as plain:
            ref = tp.reduce_sum(tp.square(model(x)))
        for g, r in zip(grads, plain.gradient(ref, model.trainable_variables)):
            assert isinstance(g._value, cp.ndarray)
            np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-5)
    finally:
        comm.close()
