"""The device API, and optimizers, clipping, losses, layers and training steps on a device.

The GPU is served by the strict stand-in of :mod:`tapeflow.strict_device` (refuses implicit
host conversion and mixing devices, as array-api-strict does); every result is compared with
the same computation on the CPU, and the training steps must make no host read at all.
"""
import numpy as np
import pytest

import tapeflow as tp
from tapeflow import devices, optimizers
from tapeflow import strict_device as sd
from tapeflow.device_ops import move_variables
from tapeflow.nn import functional as F
from tapeflow.nn import losses as L

pytestmark = pytest.mark.device

GPU = "/device:GPU:0"


@pytest.fixture(autouse=True)
def strict_gpu():
    prev = devices.set_gpu_module(sd.xp)
    yield
    devices.set_gpu_module(prev)


def on_gpu(t) -> bool:
    return type(t._value) is sd.StrictArray and t.device == GPU


# ---------------------------------------------------------------- the device API
@pytest.mark.parametrize("name,expected", [
    ("/GPU:0", ("GPU", 0)), ("gpu:1", ("GPU", 1)), ("GPU", ("GPU", 0)), ("cpu", ("CPU", 0)),
    ("/device:GPU:2", ("GPU", 2)), ("/job:localhost/replica:0/task:0/device:CPU:0", ("CPU", 0)),
    ("cuda:0", ("GPU", 0)), ("/cpu:0", ("CPU", 0))])
def test_device_names_parse_tensorflow_style(name, expected):
    assert tuple(devices.parse(name)) == expected


@pytest.mark.parametrize("bad", ["tpu:0", "/GPU:x", "cpu:1", "", 3])
def test_bad_device_name_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="invalid device"):
        devices.parse(bad)


def test_scope_places_new_tensors_and_variables():
    with tp.device("/GPU:0"):
        x = tp.constant([1.0, 2.0])
        v = tp.Variable(np.zeros((2, 3), np.float32))
        z = tp.zeros_like(x)
        with tp.device("cpu"):
            c = tp.constant(1.0)
    assert on_gpu(x) and on_gpu(v) and on_gpu(z)
    assert x.device == v.device == GPU
    assert c.device == tp.constant(1.0).device == "/device:CPU:0"
    assert type(c._value) is np.ndarray
    y = x * 3.0 + 1.0  # ops follow their inputs, Python scalars join them on the device
    assert on_gpu(y) and y.numpy().tolist() == [4.0, 7.0]


def test_explicit_copies_are_differentiable_and_come_back():
    x = tp.Variable([1.0, 2.0, 3.0])
    with tp.GradientTape() as tape:
        xg = x.to("/GPU:0")
        with tp.device("/GPU:0"):
            yg = tp.identity(x)  # TF: identity in a device scope copies there
        loss = tp.reduce_sum(tp.to_device(xg * yg, "cpu"))
    assert on_gpu(xg) and on_gpu(yg) and loss.device == "/device:CPU:0"
    g = tape.gradient(loss, x)
    assert g.device == "/device:CPU:0" and g.numpy().tolist() == [2.0, 4.0, 6.0]


def test_mixing_devices_or_the_host_is_refused():
    a = tp.constant([1.0, 2.0]).to("/GPU:0")
    b = tp.constant([1.0, 2.0]).to("/GPU:1")
    with pytest.raises(ValueError, match="different devices"):
        a + b
    with pytest.raises(ValueError, match="host NumPy array"):
        a + tp.constant([1.0, 2.0])
    with pytest.raises(RuntimeError, match="implicit conversion"):
        np.asarray(a._value)


def test_variable_assign_converts_host_values_and_refuses_other_devices():
    with tp.device("/GPU:0"):
        v = tp.Variable([1.0, 2.0])
    v.assign(np.array([5.0, 6.0], np.float32))
    v.assign_add([1.0, 1.0])
    v[0].assign(0.5)
    assert on_gpu(v) and v.numpy().tolist() == [0.5, 7.0]
    with pytest.raises(ValueError, match="copy it explicitly"):
        v.assign(tp.constant([1.0, 1.0]).to("/GPU:1"))


def test_module_moves_all_its_variables():
    model = tp.nn.mlp([4, 5, 3], seed=0)
    before = [v.numpy() for v in model.variables]
    assert model.to("/GPU:0") is model
    assert all(on_gpu(v) for v in model.variables)
    assert all(np.array_equal(v.numpy(), b) for v, b in zip(model.variables, before))
    model.to("cpu")
    assert all(type(v._value) is np.ndarray for v in model.variables)


def test_no_gpu_is_a_clear_error(monkeypatch):
    devices.set_gpu_module(None)
    monkeypatch.setattr(tp._backend, "cupy_or_none", lambda: None)
    with pytest.raises(RuntimeError, match="no GPU"):
        tp.device("/GPU:0")


# ---------------------------------------------------------------- optimizers, clipping, losses
def _opt_step(name, on_device):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    g0 = rng.standard_normal((3, 4)).astype(np.float32)
    w = tp.Variable(w0)
    opt = optimizers.get(name, learning_rate=0.1, clipnorm=1.0)
    if on_device:
        move_variables([w], "/GPU:0")
    for _ in range(3):
        g = tp.constant(g0)
        opt.apply_gradients([(g.to("/GPU:0") if on_device else g, w)])
    return w, opt


@pytest.mark.parametrize("name", optimizers.NAMES)
def test_optimizer_runs_on_the_device_with_slots_there(name):
    w_dev, opt = _opt_step(name, True)
    w_cpu, _ = _opt_step(name, False)
    assert on_gpu(w_dev)
    np.testing.assert_allclose(w_dev.numpy(), w_cpu.numpy(), rtol=1e-6, atol=1e-7)
    slots = [a for state in opt._slots for a in state.values() if a.shape == w_dev.shape]
    assert slots or name == "sgd"  # (plain SGD keeps no slot)
    assert all(type(a) is sd.StrictArray for a in slots)


def test_clipping_on_the_device():
    gs = [tp.constant([3.0, 0.0]).to("/GPU:0"), None, tp.constant([4.0]).to("/GPU:0")]
    clipped, norm = optimizers.clip_by_global_norm(gs, 1.0)
    assert on_gpu(clipped[0]) and clipped[1] is None and on_gpu(norm)
    np.testing.assert_allclose(float(norm.numpy()), 5.0)
    np.testing.assert_allclose(clipped[2].numpy(), [0.8], rtol=1e-6)
    c = optimizers.clip_by_norm(gs[0], 1.0)
    assert on_gpu(c) and np.allclose(c.numpy(), [1.0, 0.0])
    v = optimizers.clip_by_value(gs[0], 0.5, 2.0)
    assert on_gpu(v) and v.numpy().tolist() == [2.0, 0.5]


def test_losses_and_activations_on_the_device():
    rng = np.random.default_rng(1)
    logits_h = rng.standard_normal((5, 4)).astype(np.float32)
    labels_h = np.array([0, 3, 1, 1, 2])
    target_h = rng.random((5, 4)).astype(np.float32)
    results = {}
    for where in ("cpu", "/GPU:0"):
        with tp.device(where):
            logits, labels, target = (tp.constant(logits_h), tp.constant(labels_h),
                                      tp.constant(target_h))
        out = [L.sparse_categorical_crossentropy(labels, logits),
               L.mean_squared_error(target, logits),
               tp.reduce_mean(F.softmax_cross_entropy_with_logits(target, logits)),
               tp.reduce_mean(F.sigmoid_cross_entropy_with_logits(target, logits)),
               F.log_softmax(logits), F.softmax(logits), tp.nn.relu(logits)]
        if where != "cpu":
            assert all(on_gpu(t) for t in out)
        results[where] = [t.numpy() for t in out] + [L.accuracy(labels, logits)]
    for a, b in zip(results["cpu"], results["/GPU:0"]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_out_of_range_labels_give_nan_rows_on_the_device_like_tensorflow_on_a_gpu():
    with tp.device("/GPU:0"):
        loss = F.sparse_softmax_cross_entropy_with_logits(tp.constant([0, 3, -1, 2]),
                                                          tp.zeros((4, 3)))
    assert on_gpu(loss)
    np.testing.assert_allclose(loss.numpy(), [np.log(3), np.nan, np.nan, np.log(3)], rtol=1e-6)


# ---------------------------------------------------------------- whole training steps
def _step(model, opt, x, y):
    with tp.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tp.reduce_mean(F.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss, grads


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_training_step_on_the_device_matches_the_cpu_and_never_reads_the_host(kind):
    rng = np.random.default_rng(2)
    if kind == "mlp":
        make = lambda: tp.nn.mlp([12, 16, 5], seed=3)  # noqa: E731
        x_h = rng.standard_normal((8, 12)).astype(np.float32)
    else:
        make = lambda: tp.nn.mnist_cnn(seed=3, num_classes=5, input_shape=(8, 8, 1))  # noqa: E731
        x_h = rng.standard_normal((4, 8, 8, 1)).astype(np.float32)
    y_h = rng.integers(0, 5, len(x_h))
    out = {}
    for where in ("cpu", "/GPU:0"):
        model, opt = make().to(where), optimizers.Adam(learning_rate=0.01)
        with tp.device(where):
            x, y = tp.constant(x_h), tp.constant(y_h)
        reads = sd.host_reads()
        for _ in range(2):
            loss, grads = _step(model, opt, x, y)
        if where != "cpu":
            assert sd.host_reads() == reads, "the training step read a device value on the host"
            assert on_gpu(loss) and all(on_gpu(g) for g in grads)
            assert all(on_gpu(v) for v in model.variables)
        out[where] = [loss.numpy()] + [v.numpy() for v in model.variables]
    for a, b in zip(out["cpu"], out["/GPU:0"]):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_trainer_fits_checkpoints_and_resumes_on_the_device(tmp_path):
    from tapeflow.training import Trainer

    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = rng.integers(0, 3, 32)

    def make():
        model = tp.nn.mlp([6, 8, 3], seed=1).to("/GPU:0")
        return model, Trainer(model=model, optimizer=optimizers.Adam(learning_rate=0.1),
                              x_train=x, y_train=y, x_test=x, y_test=y, batch_size=8,
                              progress=False, log=lambda s: None, checkpoint_dir=str(tmp_path))
        # (no to_device: batches follow the model's variables to the device by default)

    model, trainer = make()
    results = trainer.fit(2)
    assert results[-1].train_loss < results[0].train_loss
    assert all(on_gpu(v) for v in model.variables)
    trainer.close()
    again, resumed = make()
    assert resumed.restore()
    for a, b in zip(model.variables, again.variables):
        assert on_gpu(b) and np.array_equal(a.numpy(), b.numpy())
    loss, correct = resumed.train_step(x[:8], y[:8], 8)
    assert np.isfinite(loss) and 0 <= correct <= 8
    slots = [a for state in resumed.optimizer._slots for a in state.values() if a.ndim]
    assert slots and all(type(a) is sd.StrictArray for a in slots)
    resumed.close()


@pytest.mark.parametrize("local_rank", [0, 3])
def test_tapeflow_train_gpu_placement_uses_the_local_rank(local_rank):
    from tapeflow.launch.train import place_on_gpu

    model = tp.nn.mlp([4, 3], seed=0)
    try:
        to_device = place_on_gpu(model, local_rank)
        want = f"/device:GPU:{local_rank % 2}"
        assert all(v.device == want for v in model.variables)
        batch = to_device(np.ones((2, 4), np.float32))
        assert type(batch) is sd.StrictArray and batch.device.id == local_rank % 2
        assert sd.StrictDevice.current().id == local_rank % 2  # made current, like cupy's use()
    finally:
        sd.StrictDevice(0).use()
