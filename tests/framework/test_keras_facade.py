"""``tp.keras``: re-exports of tapeflow's own objects, Keras defaults for losses and metrics,
initializer classes, the layers TF tutorials use, and the datasets tuple."""
import math
import os
from pathlib import Path

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.testing import check_grads

keras = tp.keras
R = np.random.default_rng(3)


def test_one_implementation_each():
    assert keras.Sequential is tp.nn.Sequential
    assert keras.layers.Dense is tp.nn.Dense and keras.layers.Conv2D is tp.nn.Conv2D
    assert keras.layers.MaxPooling2D is tp.nn.MaxPool2D
    assert keras.optimizers.Adam is tp.optimizers.Adam
    assert keras.optimizers.schedules.CosineDecayRestarts is \
        tp.optimizers.schedules.CosineDecayRestarts
    assert keras.initializers.GlorotUniform is tp.nn.init.GlorotUniform


def test_tutorial_model_builds_trains_and_round_trips_weights():
    tp.random.set_seed(0)
    model = keras.Sequential([
        keras.layers.Flatten(input_shape=(28, 28)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10),
    ])
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(784, 32), (32,), (32, 10), (10,)]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = keras.optimizers.Adam(0.01)
    x = R.uniform(0, 1, (16, 28, 28)).astype(np.float32)
    y = R.integers(0, 10, 16)
    first = None
    for _ in range(30):
        with tp.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        first = float(loss) if first is None else first
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
    assert float(loss) < 0.5 * first
    model.set_weights(weights)
    np.testing.assert_array_equal(model.get_weights()[0], weights[0])
    with pytest.raises(ValueError, match="4 variables"):
        model.set_weights(weights[:2])
    with pytest.raises(ValueError, match="shape"):
        model.set_weights([w.T for w in weights])


def test_dense_casts_float64_input_to_its_kernel_dtype():
    layer = keras.layers.Dense(3, input_shape=(2,))
    out = layer(tp.constant(np.ones((4, 2))))
    assert out.dtype == np.float32 and out.shape == (4, 3)


def test_conv_embedding_batchnorm_pooling_layers():
    model = keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", dilation_rate=2),
        keras.layers.BatchNormalization(),
        keras.layers.AveragePooling2D(2),
        keras.layers.MaxPooling2D(2),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    names = [n for n, _ in model.named_variables()]
    assert len(names) == 8  # conv kernel+bias, BN gamma/beta/moving mean/variance, dense k+b
    x = R.normal(size=(5, 8, 8, 1)).astype(np.float32)
    probs = model(x, training=True)
    np.testing.assert_allclose(probs.numpy().sum(-1), np.ones(5), rtol=1e-5)
    bn = model.layers[2]
    assert not np.allclose(bn.moving_mean.numpy(), 0.0)  # training moved the statistics
    assert [v.trainable for v in bn.variables] == [True, True, False, False]
    emb = keras.layers.Embedding(6, 2, seed=0)
    table = emb.embeddings.numpy()
    assert np.abs(table).max() <= 0.05  # Keras's uniform(-0.05, 0.05) default
    np.testing.assert_array_equal(emb(np.array([[5, 0]])).numpy(), table[[[5, 0]]])


def test_batch_normalization_inference_uses_moving_statistics():
    bn = keras.layers.BatchNormalization(momentum=0.5, epsilon=0.0, input_shape=(2,))
    x = np.array([[1.0, 10.0], [3.0, 30.0]], np.float32)
    y = bn(x, training=True).numpy()
    np.testing.assert_allclose(y, [[-1, -1], [1, 1]], rtol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), [1.0, 10.0])
    np.testing.assert_allclose(bn.moving_variance.numpy(), [1.0, 50.5])
    y = bn(x, training=False).numpy()
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - 1.0) / 1.0, rtol=1e-6)


# ---------------------------------------------------------------- losses
def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_loss_functions_are_per_example_with_keras_defaults():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 2])
    per = keras.losses.sparse_categorical_crossentropy(labels, probs)
    np.testing.assert_allclose(per.numpy(), -np.log([0.7, 0.8]), rtol=1e-6)
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(keras.losses.categorical_crossentropy(onehot, probs).numpy(),
                               -np.log([0.7, 0.8]), rtol=1e-6)
    logits = R.normal(size=(2, 3))
    np.testing.assert_allclose(
        keras.losses.categorical_crossentropy(onehot, logits, from_logits=True).numpy(),
        -np_log_softmax(logits)[[0, 1], labels], rtol=1e-6)
    y_true, y_pred = np.array([[0.0, 1.0], [1.0, 1.0]]), np.array([[0.2, 0.6], [0.9, 0.5]])
    np.testing.assert_allclose(keras.losses.mean_squared_error(y_true, y_pred).numpy(),
                               ((y_true - y_pred) ** 2).mean(-1))
    bce = -(y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred)).mean(-1)
    np.testing.assert_allclose(keras.losses.binary_crossentropy(y_true, y_pred).numpy(), bce,
                               rtol=1e-6)
    z = np.log(y_pred / (1 - y_pred))
    np.testing.assert_allclose(
        keras.losses.binary_crossentropy(y_true, z, from_logits=True).numpy(), bce, rtol=1e-6)


def test_loss_classes_reduce_by_sum_over_batch_size():
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    labels = np.array([0, 1, 1])
    per = -np.log([0.7, 0.6, 0.5])
    loss = keras.losses.SparseCategoricalCrossentropy()
    assert float(loss(labels, probs)) == pytest.approx(per.mean(), rel=1e-6)
    w = np.array([1.0, 0.0, 2.0])
    assert float(loss(labels, probs, sample_weight=w)) == pytest.approx((per * w).sum() / 3,
                                                                        rel=1e-6)
    total = keras.losses.SparseCategoricalCrossentropy(reduction="sum")
    assert float(total(labels, probs)) == pytest.approx(per.sum(), rel=1e-6)
    none = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    np.testing.assert_allclose(none(labels, probs).numpy(), per, rtol=1e-6)
    mse = keras.losses.MeanSquaredError()
    y = np.array([1.0, 2.0, 3.0])  # (N,) targets against (N, 1) predictions
    assert float(mse(y, np.array([[1.5], [2.0], [2.0]]))) == pytest.approx((0.25 + 1.0) / 3)
    assert keras.losses.get("mse") is keras.losses.mean_squared_error
    assert isinstance(keras.losses.get("BinaryCrossentropy"), keras.losses.BinaryCrossentropy)
    with pytest.raises(ValueError, match="reduction"):
        keras.losses.MeanSquaredError(reduction="mean_of_everything")


@pytest.mark.parametrize("fn,args", [
    (lambda p, t: keras.losses.categorical_crossentropy(t, p, from_logits=True,
                                                       label_smoothing=0.1),
     [R.normal(size=(3, 4)), np.eye(4)[[0, 3, 1]]]),
    (lambda p, t: keras.losses.binary_crossentropy(t, p, from_logits=True),
     [R.normal(size=(3, 2)), R.uniform(0, 1, (3, 2))]),
    (lambda p: keras.losses.CategoricalCrossentropy()(np.eye(3)[[0, 2]], p),
     [R.uniform(0.2, 0.9, (2, 3))]),
    (lambda p, t: keras.losses.Huber(delta=0.7)(t, p),  # errors on both sides of delta
     [np.array([[0.1, 2.0, -1.5], [0.4, -0.2, 3.0]]), np.zeros((2, 3))]),
])
def test_loss_gradients(fn, args):
    check_grads(fn, args, order=2, wrt=[0])


def test_huber_is_quadratic_inside_delta_and_linear_outside_like_keras():
    # Keras's docstring example: y_true [[0, 1], [0, 0]], y_pred [[0.6, 0.4], [0.4, 0.6]]
    # gives 0.155.
    got = keras.losses.Huber()([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]])
    assert float(got) == pytest.approx(0.155, rel=1e-6)
    err = np.array([0.5, 3.0])
    want = np.mean(np.where(err <= 2.0, 0.5 * err ** 2, 2.0 * err - 2.0))
    assert float(keras.losses.huber([[0.0, 0.0]], [err], delta=2.0)[0]) == \
        pytest.approx(want, rel=1e-6)
    assert keras.losses.get("huber") is keras.losses.huber


# ---------------------------------------------------------------- metrics
def test_accuracy_functions_and_stateful_metrics():
    pred = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    acc = keras.metrics.sparse_categorical_accuracy(np.array([[1], [1], [1]]), pred)
    assert acc.numpy().tolist() == [1.0, 0.0, 1.0] and acc.dtype == np.float32
    assert keras.metrics.categorical_accuracy(np.eye(2)[[1, 0, 0]], pred).numpy().tolist() == \
        [1.0, 1.0, 0.0]
    m = keras.metrics.SparseCategoricalAccuracy()
    m.update_state([1, 1, 1], pred)
    m.update_state([0], [[0.6, 0.4]])
    assert float(m.result()) == pytest.approx(0.75)
    m.reset_state()
    assert float(m.result()) == 0.0
    mean = keras.metrics.Mean()
    mean.update_state([1.0, 2.0])
    assert float(mean(6.0)) == pytest.approx(3.0)
    mean.update_state([10.0], sample_weight=[0.0])
    assert float(mean.result()) == pytest.approx(3.0)
    assert float(keras.metrics.BinaryAccuracy()([1, 0], [[0.8], [0.7]])) == pytest.approx(0.5)


# ---------------------------------------------------------------- initializers
def test_initializer_classes():
    a = keras.initializers.GlorotUniform(seed=4)((30, 20))
    b = keras.initializers.GlorotUniform(seed=4)((30, 20))
    assert isinstance(a, tp.Tensor) and a.shape == (30, 20)
    np.testing.assert_array_equal(a.numpy(), b.numpy())  # seeded: the same every call
    assert np.abs(a.numpy()).max() <= math.sqrt(6 / 50)
    h = keras.initializers.HeNormal(seed=1)((400, 300)).numpy()
    assert h.std() == pytest.approx(math.sqrt(2 / 400), rel=0.05)
    assert keras.initializers.Constant(3.0)((2,)).numpy().tolist() == [3.0, 3.0]
    r = keras.initializers.RandomNormal(mean=1.0, stddev=0.1, seed=0)((2000,)).numpy()
    assert r.mean() == pytest.approx(1.0, abs=0.01)
    layer = keras.layers.Dense(5, kernel_initializer=keras.initializers.Ones(), input_shape=(2,))
    assert layer.kernel.numpy().tolist() == [[1.0] * 5] * 2
    layer = keras.layers.Dense(3, kernel_initializer="HeUniform", input_shape=(4,))
    assert np.abs(layer.kernel.numpy()).max() <= math.sqrt(6 / 4)


# ---------------------------------------------------------------- datasets
def _real_data_dir():
    d = Path(os.environ.get("TAPEFLOW_DATA_DIR", "/work/shared/data"))
    return d if (d / "mnist" / "train-images-idx3-ubyte.gz").exists() else None


def test_datasets_return_keras_tuple_from_the_verified_loader():
    d = _real_data_dir()
    if d is None:
        pytest.skip("real mnist not available: set TAPEFLOW_DATA_DIR")
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data(str(d), download=False)
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert y_train.shape == (60000,) and y_train.dtype == np.uint8 and y_test.shape == (10000,)
    (a, b), (c, e) = tp.data.load_mnist(str(d), download=False)
    np.testing.assert_array_equal(a, x_train)
    np.testing.assert_array_equal(b, y_train)
    # Keras's path= (its cached .npz name, as Horovod's examples pass per rank) changes nothing
    (k, _), _ = keras.datasets.mnist.load_data(path="mnist-1.npz", data_dir=str(d),
                                               download=False)
    np.testing.assert_array_equal(k, x_train)


def test_load_mnist_splits_unpack_like_keras():
    arrays = [np.zeros((2, 28, 28), np.uint8), np.array([3, 4]), np.ones((1, 28, 28), np.uint8),
              np.array([5])]
    (x_train, y_train), (x_test, y_test) = tp.data.Splits(*arrays)
    assert x_train is arrays[0] and y_train is arrays[1]
    assert x_test is arrays[2] and y_test is arrays[3]


def test_import_tapeflow_does_not_load_the_keras_facade():
    import subprocess
    import sys
    code = ("import sys, tapeflow as tp; assert 'tapeflow.keras' not in sys.modules; "
            "assert 'tapeflow.optimizers' not in sys.modules; tp.keras.layers.Dense; "
            "assert 'tapeflow.optimizers' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_utils_to_categorical_and_seed():
    out = keras.utils.to_categorical([[2], [0]], num_classes=3)
    assert out.dtype == np.float32 and out.tolist() == [[0, 0, 1], [1, 0, 0]]
    assert keras.utils.to_categorical(np.array([1, 3])).shape == (2, 4)
    with pytest.raises(ValueError, match="lie in"):
        keras.utils.to_categorical([5], num_classes=3)
    keras.utils.set_random_seed(7)
    a = tp.random.uniform((3,)).numpy()
    keras.utils.set_random_seed(7)
    np.testing.assert_array_equal(a, tp.random.uniform((3,)).numpy())


def test_layer_normalization_normalises_each_example():
    ln = keras.layers.LayerNormalization(epsilon=0.0, input_shape=(4,))
    assert [n for n, _ in ln.named_variables()] == ["gamma", "beta"]
    x = R.normal(3.0, 2.0, (5, 4))
    y = ln(x).numpy()
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(-1), 1.0, rtol=1e-4)
    ln64 = keras.layers.LayerNormalization(dtype="float64")
    check_grads(lambda t: ln64(t), [R.normal(size=(2, 3))])
    bn64 = keras.layers.BatchNormalization(dtype="float64")
    check_grads(lambda t: bn64(t, training=True), [R.normal(size=(4, 3))])
