"""Keras's model.summary(): rows of layer name (type), output shape and parameter count, and
the totals, as tf.keras prints them; default layer names as Keras makes them."""
from __future__ import annotations

import pytest

import tapeflow as tp
from tapeflow import keras


def _cnn():
    return keras.Sequential([
        keras.layers.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
        keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"), keras.layers.BatchNormalization(),
        keras.layers.Dense(10)])


def test_summary_lists_layers_shapes_params_and_totals():
    lines: list[str] = []
    keras.backend.clear_session()  # default names afresh: conv2d, ..., dense, dense_1
    _cnn().summary(print_fn=lines.append)
    text = "\n".join(lines)
    rows = [line.split() for line in lines if "(" in line and ")" in line
            and not line.startswith(("Model", "Layer", "Total", "Trainable", "Non"))]
    # name (Type) | output shape | params: 3*3*1*32+32, 0, 0, 13*13*32*128+128, 4*128, 129*10
    assert [r[0] for r in rows] == ["conv2d", "max_pooling2d", "flatten", "dense",
                                    "batch_normalization", "dense_1"]
    assert [r[-1] for r in rows] == ["320", "0", "0", "692,352", "512", "1,290"]
    assert "(None, 26, 26, 32)" in text and "(None, 5408)" in text and "(None, 10)" in text
    total = 320 + 692352 + 512 + 1290
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {total - 256:,}" in text  # moving mean and variance: 2*128
    assert "Non-trainable params: 256" in text


def test_summary_of_an_unbuilt_model_says_to_build_it_and_printing_goes_to_stdout(capsys):
    model = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not been built"):
        model.summary()
    model.build((None, 3))
    model.summary()
    out = capsys.readouterr().out
    assert f'Model: "{model.name}"' in out and "Total params: 26" in out


def test_a_subclassed_model_lists_its_layers_without_shapes():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, input_dim=4)
            self.out = keras.layers.Dense(2, input_dim=8)

        def call(self, x):
            return self.out(self.hidden(x))
    lines: list[str] = []
    Net().summary(print_fn=lines.append)
    net = Net()
    lines = []
    net.summary(print_fn=lines.append)
    assert any(line.startswith(f"{net.hidden.name} (Dense)") and "?" in line
               and line.endswith("40") for line in lines)
    assert "Total params: 58 (232.00 B)" in lines


def test_default_layer_names_are_keras_names():
    keras.backend.clear_session()
    assert [layer(**args).name for layer, args in [
        (keras.layers.Conv2D, {"filters": 1, "kernel_size": 1}),
        (keras.layers.MaxPooling2D, {}), (keras.layers.BatchNormalization, {}),
        (keras.layers.GlobalAveragePooling2D, {})]] == [
        "conv2d", "max_pooling2d", "batch_normalization", "global_average_pooling2d"]
    assert [tp.nn.Dense(3).name for _ in range(3)] == ["dense", "dense_1", "dense_2"]
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,)), keras.layers.Dense(1)])
    assert model.get_layer("dense_4") is model.layers[1] and model.get_layer(index=0).name \
        == "dense_3"
    with pytest.raises(ValueError, match="no layer named 'x'"):
        model.get_layer("x")
