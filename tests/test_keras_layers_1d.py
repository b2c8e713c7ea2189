"""Keras's 1-D layers (Conv1D, MaxPooling1D, AveragePooling1D, global 1-D pooling): values
against NumPy written from Keras's definitions, gradients against finite differences, a
traced None batch, save/load, and a small text-classification model that trains."""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.testing import check_grads

L = tp.keras.layers
X = np.random.default_rng(0).normal(size=(2, 9, 3))


def _conv1d(x, k, stride=1, dilation=1):
    span = (k.shape[0] - 1) * dilation + 1
    out = [np.einsum("nkc,kcf->nf", x[:, i:i + span:dilation], k)
           for i in range(0, x.shape[1] - span + 1, stride)]
    return np.stack(out, 1)


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_conv1d_is_keras_s_convolution(stride, dilation):
    layer = L.Conv1D(4, 3, strides=stride, dilation_rate=dilation, activation="relu", seed=0,
                     dtype="float64")
    y = layer(tp.constant(X)).numpy()
    assert layer.kernel.shape == (3, 3, 4) and layer.bias.shape == (4,)
    want = np.maximum(_conv1d(X, layer.kernel.numpy(), stride, dilation) + layer.bias.numpy(), 0)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    same = L.Conv1D(2, 4, padding="same", seed=1)(tp.constant(X.astype("f4")))
    assert same.shape == (2, 9, 2)


def test_1d_pooling_follows_keras():
    np.testing.assert_array_equal(L.MaxPooling1D()(tp.constant(X)).numpy(),
                                  X[:, :8].reshape(2, 4, 2, 3).max(2))
    np.testing.assert_allclose(L.AveragePooling1D(3)(tp.constant(X)).numpy(),
                               X.reshape(2, 3, 3, 3).mean(2), rtol=1e-12)
    same = L.AveragePooling1D(2, strides=1, padding="same")(tp.constant(X)).numpy()
    np.testing.assert_allclose(same[:, -1], X[:, -1], rtol=1e-12)  # the edge window: 1 step
    np.testing.assert_allclose(L.GlobalAveragePooling1D()(tp.constant(X)).numpy(), X.mean(1),
                               rtol=1e-12)
    assert L.GlobalMaxPooling1D(keepdims=True)(tp.constant(X)).shape == (2, 1, 3)
    for bad in (lambda: L.Conv1D(2, 3)(tp.ones((2, 3))), lambda: L.MaxPooling1D(0),
                lambda: L.GlobalMaxPooling1D()(tp.ones((2, 3)))):
        with pytest.raises(ValueError):
            bad()


def test_conv1d_and_pooling_gradients_match_finite_differences():
    conv = L.Conv1D(2, 3, strides=2, seed=0, dtype="float64")
    conv.build(3)
    check_grads(lambda x: tp.reduce_sum(tp.square(conv(x))), [X], order=2)
    pool = L.AveragePooling1D(2)
    check_grads(lambda x: pool(x) * tp.constant(np.arange(24.0).reshape(2, 4, 3)), [X],
                order=2)


def test_a_text_classifier_trains_traces_once_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, (64, 12))
    labels = (tokens == 7).any(axis=1).astype("int32")  # "does word 7 occur?"
    tp.random.set_seed(0)
    model = tp.keras.Sequential([L.Embedding(20, 8), L.Conv1D(8, 3, activation="relu"),
                                 L.GlobalMaxPooling1D(), L.Dense(2)])
    model.compile(optimizer=tp.keras.optimizers.Adam(0.02),
                  loss=tp.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    hist = model.fit(tokens, labels, epochs=40, batch_size=16, verbose=0)
    assert hist.history["accuracy"][-1] >= 0.95 > hist.history["accuracy"][0]
    f = tp.function(model, input_signature=[tp.TensorSpec([None, 12], tp.int64)])
    for n in (5, 9, 3):
        np.testing.assert_array_equal(f(tp.constant(tokens[:n])).numpy(),
                                      model(tp.constant(tokens[:n])).numpy())
    assert f.experimental_get_tracing_count() == 1
    model.save(tmp_path / "text.keras")
    loaded = tp.keras.models.load_model(tmp_path / "text.keras")
    np.testing.assert_array_equal(loaded.predict(tokens), model.predict(tokens))
