"""Keras's functional API: keras.Input, layers called on symbolic tensors, keras.Model(inputs,
outputs), as TensorFlow's guides write it ("The Functional API", "Writing a training loop from
scratch"); the model trains, summarizes, saves and loads back."""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import keras


def get_model():  # TensorFlow's "training loop from scratch" model, verbatim
    inputs = keras.Input(shape=(784,), name="digits")
    x1 = keras.layers.Dense(64, activation="relu")(inputs)
    x2 = keras.layers.Dense(64, activation="relu")(x1)
    outputs = keras.layers.Dense(10, name="predictions")(x2)
    model = keras.Model(inputs=inputs, outputs=outputs)
    return model


def test_symbolic_tensors_have_keras_shapes_and_the_model_computes_the_layers():
    inputs = keras.Input(shape=(784,), name="digits")
    dense = keras.layers.Dense(64, activation="relu")
    hidden = dense(inputs)
    assert tuple(hidden.shape) == (None, 64) and hidden.dtype == np.float32
    out_layer = keras.layers.Dense(10)
    model = keras.Model(inputs=inputs, outputs=out_layer(hidden))
    assert isinstance(model, keras.Model) and len(model.layers) == 3
    x = np.random.default_rng(0).random((5, 784)).astype("f4")
    by_hand = out_layer(tp.nn.relu(tp.constant(x) @ dense.kernel + dense.bias))
    np.testing.assert_allclose(model(x).numpy(), by_hand.numpy(), rtol=1e-6)
    assert [n for n, _ in model.named_variables()] == [
        "layers.1.kernel", "layers.1.bias", "layers.2.kernel", "layers.2.bias"]
    with pytest.raises(TypeError, match="symbolic Keras tensor"):
        tp.reduce_sum(hidden)


def test_tensorflows_training_loop_from_scratch_runs_as_written():
    model = get_model()
    optimizer = keras.optimizers.SGD(learning_rate=1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(1)
    x_train = rng.random((256, 784)).astype("f4")
    y_train = (x_train[:, :392].sum(1) > x_train[:, 392:].sum(1)).astype("int64")
    train_dataset = tp.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
        buffer_size=1024).batch(64)
    train_acc_metric = keras.metrics.SparseCategoricalAccuracy()

    @tp.function
    def train_step(x, y):
        with tp.GradientTape() as tape:
            logits = model(x, training=True)
            loss_value = loss_fn(y, logits)
        grads = tape.gradient(loss_value, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        train_acc_metric.update_state(y, logits)
        return loss_value

    first = last = None
    for epoch in range(4):
        for step, (x_batch_train, y_batch_train) in enumerate(train_dataset):
            loss_value = train_step(x_batch_train, y_batch_train)
            first = float(loss_value) if first is None else first
        last = float(loss_value)
        train_acc_metric.reset_state()
    assert last < first
    assert train_step.experimental_get_tracing_count() == 1


def test_multi_input_graphs_with_merges_ops_and_a_shared_layer(tmp_path):
    a, b = keras.Input(shape=(8,), name="a"), keras.Input(shape=(8,), name="b")
    shared = keras.layers.Dense(8, seed=0)
    residual = keras.layers.Add()([shared(a), a])
    joined = keras.layers.Concatenate()([residual, shared(b)])
    out = keras.layers.Dense(1, seed=1)(joined * 2.0 - 1.0)
    model = keras.Model([a, b], out)
    xa, xb = np.ones((2, 8), "f4"), np.full((2, 8), 2.0, "f4")
    ka, kb = shared(tp.constant(xa)), shared(tp.constant(xb))
    want = model.layers[-1](tp.concat([ka + xa, kb], axis=-1) * 2.0 - 1.0)
    np.testing.assert_allclose(model([xa, xb]).numpy(), want.numpy(), rtol=1e-6)
    assert sum(layer is shared for layer in model.layers) == 1  # one layer, called twice
    model.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(back([xa, xb]).numpy(), model([xa, xb]).numpy())
    with pytest.raises(ValueError, match="graph disconnected"):
        keras.Model(inputs=a, outputs=out)
    with pytest.raises(ValueError, match="must be keras.Input"):
        keras.Model(inputs=residual, outputs=out)


def test_fit_summary_save_and_load_of_a_functional_model(tmp_path):
    model = get_model()
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "digits (InputLayer)" in text and "(None, 784)" in text and "(None, 10)" in text
    assert "Total params: 55,050" in text  # 784*64+64 + 64*64+64 + 64*10+10
    x = np.random.default_rng(2).random((128, 784)).astype("f4")
    y = np.random.default_rng(3).integers(0, 10, 128)
    model.compile(optimizer=keras.optimizers.RMSprop(), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0).history["loss"]
    assert history[-1] < history[0]
    model.save(tmp_path / "model.keras")
    back = keras.models.load_model(tmp_path / "model.keras")
    assert type(back).__name__ == "Functional"
    np.testing.assert_array_equal(back.predict(x, verbose=0), model.predict(x, verbose=0))
    assert back.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0))


def test_sequential_takes_keras_input_first_and_is_a_keras_model():
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2, seed=0)])
    assert model(tp.ones((3, 4))).shape == (3, 2) and len(model.variables) == 2
    assert isinstance(model, keras.Model)

    class Sub(keras.Model):
        def call(self, x):
            return x * 2.0
    assert type(Sub()) is Sub and float(Sub()(tp.constant(1.0))) == 2.0
