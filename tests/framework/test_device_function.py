"""tp.function on a device (the strict stand-in): the plan runs there, equals eager, no host."""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import devices, optimizers
from tapeflow import strict_device as sd
from tapeflow.nn import functional as F

pytestmark = pytest.mark.device


@pytest.fixture(autouse=True)
def strict_gpu():
    prev = devices.set_gpu_module(sd.xp)
    yield
    devices.set_gpu_module(prev)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_traced_step_on_the_device_equals_eager_and_never_reads_the_host(kind):
    rng = np.random.default_rng(2)
    if kind == "mlp":
        make = lambda: tp.nn.mlp([12, 16, 5], seed=3)  # noqa: E731
        x_h = rng.standard_normal((8, 12)).astype(np.float32)
    else:
        make = lambda: tp.nn.mnist_cnn(seed=3, num_classes=5, input_shape=(8, 8, 1))  # noqa: E731
        x_h = rng.standard_normal((4, 8, 8, 1)).astype(np.float32)
    y_h = rng.integers(0, 5, len(x_h))
    out = []
    for traced in (False, True):
        model, opt = make().to("/GPU:0"), optimizers.SGD(learning_rate=0.1)

        def step(x, y):
            with tp.GradientTape() as tape:
                loss = tp.reduce_mean(F.sparse_softmax_cross_entropy_with_logits(
                    y, model(x, training=True)))
            opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                    model.trainable_variables))
            return loss
        fn = tp.function(step) if traced else step
        with tp.device("/GPU:0"):
            x, y = tp.constant(x_h), tp.constant(y_h)
        reads = sd.host_reads()
        losses = [fn(x, y) for _ in range(3)]
        assert sd.host_reads() == reads, "the step read a device value on the host"
        assert all(type(v._value) is sd.StrictArray for v in model.variables)
        assert type(losses[-1]._value) is sd.StrictArray
        out.append([l.numpy() for l in losses] + [v.numpy() for v in model.variables])
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
