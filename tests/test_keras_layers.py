"""Keras's custom-layer protocol on tapeflow modules, as TensorFlow's "Custom layers" guide
writes them: build(input_shape) on the first call, add_weight in tf.keras's and Keras 3's
argument orders, Layer(**kwargs), model.layers of a subclassed model, model.build((None, d));
and TensorFlow's ``name=`` on ops."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import keras


class MyDenseLayer(keras.layers.Layer):  # the guide's layer, verbatim but for the import
    def __init__(self, num_outputs):
        super(MyDenseLayer, self).__init__()
        self.num_outputs = num_outputs

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", shape=[int(input_shape[-1]),
                                                       self.num_outputs])

    def call(self, inputs):
        return tp.matmul(inputs, self.kernel)


def test_build_runs_once_with_the_input_shape_before_the_first_call():
    layer = MyDenseLayer(10)
    assert layer.variables == []
    out = layer(tp.ones([10, 5]))
    assert out.shape == (10, 10) and layer.built
    assert [v.name for v in layer.trainable_variables] == ["kernel"]
    kernel = layer.kernel
    np.testing.assert_allclose(out.numpy(), np.ones((10, 5)) @ kernel.numpy(), rtol=1e-5,
                               atol=1e-6)
    limit = np.sqrt(6 / (5 + 10))  # glorot_uniform, Keras's default for float weights
    assert np.all(np.abs(kernel.numpy()) <= limit) and kernel.numpy().std() > 0
    layer(tp.ones([2, 5]))
    assert layer.kernel is kernel and len(layer.variables) == 1


class Scale(keras.layers.Layer):
    """Keras 3's order, weights kept only by add_weight, kwargs to the base class."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.add_weight((input_shape[-1],), "ones", name="gamma")
        self.add_weight(shape=(), initializer=keras.initializers.Constant(2.0),
                        trainable=False, name="gamma")
        super().build(input_shape)

    def call(self, x):
        gamma, factor = self.variables
        return x * gamma * factor


def test_add_weight_tracks_weights_by_name_and_trainable_flag():
    layer = Scale(name="scale", input_shape=(3,))
    out = layer(tp.ones((2, 3)))
    np.testing.assert_array_equal(out.numpy(), np.full((2, 3), 2.0))
    assert [n for n, _ in layer.named_variables()] == ["gamma", "gamma_1"]
    assert [v.trainable for v in layer.variables] == [True, False]
    assert layer.name == "scale" and layer.count_params() == 4
    frozen = Scale(trainable=False)
    frozen(tp.ones((1, 2)))
    assert frozen.trainable_variables == []
    with pytest.raises(TypeError, match="not understood.*colour"):
        Scale(colour="red")


def test_a_subclassed_model_lists_layers_builds_and_trains():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.blocks = [keras.layers.Dense(8, activation="relu"), MyDenseLayer(2)]

        def call(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    net = Net()
    assert [type(m).__name__ for m in net.layers] == ["Dense", "MyDenseLayer"]
    net.build((None, 4))
    assert [v.shape for v in net.trainable_variables] == [(4, 8), (8,), (8, 2)]
    net.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("f4")
    y = x[:, :2] * 0.5
    history = net.fit(x, y, epochs=5, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < history[0]


def test_ops_take_tensorflows_name_argument():
    assert float(tp.constant(3.0, name="x3")) == 3.0
    assert float(tp.reduce_mean(tp.constant([1.0, 3.0]), name="mean")) == 2.0
    assert tp.matmul(tp.ones((2, 3)), tp.ones((3, 1)), name="mm").shape == (2, 1)
    assert float(tp.nn.relu(tp.constant(-1.0), name="r")) == 0.0
    assert tp.random.normal((2,), name="noise").shape == (2,)
    assert float(tp.math.add(1.0, 2.0, name="sum")) == 3.0
    assert tp.math.add is tp.add and keras.layers.Dense(2, activation="relu").activation \
        is tp.nn.relu
    assert "name" in inspect.signature(tp.reduce_sum).parameters
    with pytest.raises(TypeError, match="name must be a string"):
        tp.reduce_sum(tp.ones(2), name=3)


def test_normalization_adapts_to_feature_statistics_like_keras(tmp_path):
    data = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 80.0]], "f4")
    norm = keras.layers.Normalization(axis=-1)
    norm.adapt(data)
    np.testing.assert_allclose(norm.mean.numpy(), [[3.0, 40.0]], rtol=1e-6)
    np.testing.assert_allclose(norm.variance.numpy(), [data.var(0)], rtol=1e-6)
    out = norm(tp.constant(data)).numpy()
    np.testing.assert_allclose(out, (data - data.mean(0)) / data.std(0), rtol=1e-5)
    assert norm.trainable_variables == [] and len(norm.variables) == 2
    back = keras.layers.Normalization(axis=-1, invert=True)
    back.adapt(data)
    np.testing.assert_allclose(back(tp.constant(out)).numpy(), data, rtol=1e-5)
    scalar = keras.layers.Normalization(axis=None)  # one mean and variance for everything
    scalar.adapt(tp.data.Dataset.from_tensor_slices(data).batch(2))
    assert float(scalar.mean.numpy().ravel()[0]) == pytest.approx(data.mean(), rel=1e-6)
    given = keras.layers.Normalization(mean=2.0, variance=4.0)
    np.testing.assert_allclose(given(tp.constant([[4.0, 0.0]])).numpy(), [[1.0, -1.0]])
    with pytest.raises(ValueError, match="axis may not be 0"):
        keras.layers.Normalization(axis=0)
    # In a model: TensorFlow's regression tutorial, adapted statistics saved and loaded.
    model = keras.Sequential([norm, keras.layers.Dense(1, seed=0)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mean_absolute_error")
    model.fit(data, data[:, 0] * 2, epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(data, verbose=0), model.predict(data, verbose=0))


def test_tf_module_as_the_modules_guide_writes_it():
    class SimpleModule(tp.Module):  # TensorFlow's "Introduction to modules" example
        def __init__(self, name=None):
            super().__init__(name=name)
            self.a_variable = tp.Variable(5.0, name="train_me")
            self.non_trainable_variable = tp.Variable(5.0, trainable=False, name="do_not")

        def __call__(self, x):
            return self.a_variable * x + self.non_trainable_variable

    simple_module = SimpleModule(name="simple")
    assert float(simple_module(tp.constant(5.0))) == 30.0
    assert [v.name for v in simple_module.trainable_variables] == ["train_me"]
    assert sorted(v.name for v in simple_module.variables) == ["do_not", "train_me"]
    assert simple_module.name == "simple"
