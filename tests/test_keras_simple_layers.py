"""Keras's parameter-free layers (Softmax, ReLU, LeakyReLU, ELU, Rescaling, Identity, Permute,
RepeatVector, ZeroPadding2D, Cropping2D, UpSampling2D, GaussianNoise): values against NumPy
written from Keras's documented behaviour, gradients against finite differences, traced with
a None batch, and saved with their model."""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.testing import check_grads

L = tp.keras.layers
X = np.random.default_rng(0).normal(size=(2, 3, 4, 2))


def _np(layer, x):
    return layer(tp.constant(x)).numpy()


def test_activation_layers_follow_keras():
    v = np.array([[-2.0, -0.5, 0.0, 0.5, 4.0]], "f4")
    np.testing.assert_allclose(_np(L.Softmax(), v), np.exp(v) / np.exp(v).sum(), rtol=1e-6)
    np.testing.assert_allclose(_np(L.Softmax(axis=0), v), np.ones_like(v))
    np.testing.assert_array_equal(_np(L.ReLU(), v), np.maximum(v, 0))
    np.testing.assert_array_equal(_np(L.ReLU(max_value=1.0), v), np.clip(v, 0, 1))
    relu = L.ReLU(negative_slope=0.1, threshold=0.5)
    np.testing.assert_allclose(_np(relu, v), np.where(v >= 0.5, v, 0.1 * (v - 0.5)), rtol=1e-6)
    np.testing.assert_allclose(_np(L.LeakyReLU(), v), np.where(v > 0, v, 0.3 * v), rtol=1e-6)
    np.testing.assert_allclose(_np(L.LeakyReLU(negative_slope=0.2), v),
                               np.where(v > 0, v, 0.2 * v), rtol=1e-6)
    np.testing.assert_allclose(_np(L.LeakyReLU(alpha=0.2), v), np.where(v > 0, v, 0.2 * v),
                               rtol=1e-6)
    np.testing.assert_allclose(_np(L.ELU(alpha=0.5), v),
                               np.where(v > 0, v, 0.5 * np.expm1(v)), rtol=1e-6)
    for bad in (lambda: L.ReLU(max_value=-1.0), lambda: L.LeakyReLU(0.1, alpha=0.2)):
        with pytest.raises(ValueError):
            bad()


def test_shape_and_value_layers_follow_keras():
    np.testing.assert_allclose(_np(L.Rescaling(1 / 255, offset=-1.0),
                                   np.array([0, 255], np.uint8)), [-1.0, 0.0], atol=1e-7)
    x = tp.constant(X)
    assert L.Identity()(x) is x
    np.testing.assert_array_equal(_np(L.Permute((3, 1, 2)), X), X.transpose(0, 3, 1, 2))
    v = X[:, 0, 0, :]
    np.testing.assert_array_equal(_np(L.RepeatVector(3), v), np.repeat(v[:, None], 3, axis=1))
    np.testing.assert_array_equal(_np(L.ZeroPadding2D(((1, 0), (2, 1))), X),
                                  np.pad(X, ((0, 0), (1, 0), (2, 1), (0, 0))))
    np.testing.assert_array_equal(_np(L.ZeroPadding2D(), X),
                                  np.pad(X, ((0, 0), (1, 1), (1, 1), (0, 0))))
    np.testing.assert_array_equal(_np(L.Cropping2D(((1, 0), (1, 2))), X), X[:, 1:, 1:2, :])
    np.testing.assert_array_equal(_np(L.UpSampling2D((2, 3)), X),
                                  X.repeat(2, axis=1).repeat(3, axis=2))
    noise = L.GaussianNoise(0.5, seed=3)
    assert noise(x) is x  # the identity at inference
    drawn = noise(tp.constant(np.zeros((400, 50))), training=True).numpy()
    assert abs(drawn.std() - 0.5) < 0.02 and abs(drawn.mean()) < 0.02
    for bad in (lambda: L.Permute((1, 1)), lambda: L.Cropping2D(2)(x),
                lambda: L.RepeatVector(2)(x), lambda: L.UpSampling2D(interpolation="bilinear")):
        with pytest.raises(ValueError):
            bad()


@pytest.mark.parametrize("layer", [L.Softmax(), L.ReLU(negative_slope=0.1, threshold=0.3),
                                   L.ELU(0.7), L.Permute((2, 3, 1)), L.ZeroPadding2D(1),
                                   L.Cropping2D(((1, 1), (0, 1))), L.UpSampling2D(2),
                                   L.Rescaling(0.5, 1.0)], ids=lambda l: type(l).__name__)
def test_gradients_match_finite_differences(layer):
    w = np.random.default_rng(1).normal(size=layer(tp.constant(X)).shape)
    check_grads(lambda x: layer(x) * tp.constant(w), [X + 0.05], order=2)


def test_they_trace_with_a_none_batch_and_save_with_their_model(tmp_path):
    model = tp.keras.Sequential([
        L.Rescaling(1 / 255, input_shape=(4, 4, 1)), L.ZeroPadding2D(), L.Conv2D(2, 3, seed=0),
        L.ReLU(max_value=6.0), L.UpSampling2D(), L.Cropping2D(1), L.Flatten(),
        L.RepeatVector(2), L.Permute((2, 1)), L.Flatten(), L.Dense(3, seed=1), L.LeakyReLU(),
        L.Softmax()])
    f = tp.function(model, input_signature=[tp.TensorSpec([None, 4, 4, 1])])
    for n in (3, 5, 8):
        x = tp.constant(np.random.default_rng(n).integers(0, 256, (n, 4, 4, 1)).astype("f4"))
        np.testing.assert_array_equal(f(x).numpy(), model(x).numpy())
    assert f.experimental_get_tracing_count() == 1
    model.save(tmp_path / "m.keras")
    loaded = tp.keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
