"""``tp.nn.conv2d_transpose`` and ``keras.layers.Conv2DTranspose`` (TensorFlow's and Keras's
transposed convolution): a direct NumPy scatter, the adjoint identity with ``conv2d``,
Keras's output sizes, finite differences, a traced None batch, save/load, and the DCGAN
tutorial's MNIST generator."""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.testing import check_grads

L = tp.keras.layers
R = np.random.default_rng(0)


def _scatter(x, w, stride):
    """VALID transposed convolution by definition: each input pixel adds w * x[n,i,j,c]."""
    n, h, wd, _ = x.shape
    kh, kw, co, _ = w.shape
    out = np.zeros((n, (h - 1) * stride + kh, (wd - 1) * stride + kw, co))
    for i in range(h):
        for j in range(wd):
            out[:, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
                "nc,hwoc->nhwo", x[:, i, j], w)
    return out


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_valid_transposed_convolution_is_the_scatter(stride):
    x, w = R.normal(size=(2, 3, 4, 3)), R.normal(size=(2, 3, 5, 3))
    want = _scatter(x, w, stride)
    got = tp.nn.conv2d_transpose(tp.constant(x), tp.constant(w), want.shape, stride, "VALID")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding,stride,size,k", [("SAME", 2, 4, 3), ("SAME", 1, 5, 3),
                                                   ("SAME", 3, 3, 2), ("VALID", 1, 5, 2)])
def test_it_is_the_adjoint_of_conv2d(padding, stride, size, k):
    x, w = R.normal(size=(2, size, size, 3)), R.normal(size=(k, k, 4, 3))
    out = size * stride if padding == "SAME" else (size - 1) * stride + k
    z = R.normal(size=(2, out, out, 4))
    y = tp.nn.conv2d_transpose(tp.constant(x), tp.constant(w), (2, out, out, 4), stride,
                               padding).numpy()
    lhs = np.sum(tp.nn.conv2d(tp.constant(z), tp.constant(w), stride, padding).numpy() * x)
    assert np.sum(z * y) == pytest.approx(lhs, rel=1e-10)
    with pytest.raises(ValueError, match="do not fit|transpose of"):
        tp.nn.conv2d_transpose(tp.constant(x), tp.constant(w), (2, out + 5, out, 4), stride,
                               padding)


def test_the_keras_layer_has_keras_s_shapes_and_gradients():
    for padding, stride, k, side in (("same", 2, 3, 14), ("valid", 2, 3, 15),
                                     ("valid", 2, 1, 14), ("same", 1, 5, 7)):
        layer = L.Conv2DTranspose(4, k, strides=stride, padding=padding, seed=0)
        assert layer(tp.ones((2, 7, 7, 3))).shape == (2, side, side, 4)
        assert layer.kernel.shape == (k, k, 4, 3) and layer.bias.shape == (4,)
    layer = L.Conv2DTranspose(2, 3, strides=2, padding="same", seed=1, dtype="float64")
    layer.build(3)
    x = R.normal(size=(1, 3, 3, 3))
    w = R.normal(size=(1, 6, 6, 2))
    check_grads(lambda x: layer(x) * tp.constant(w), [x], order=2)
    check_grads(lambda k: tp.nn.conv2d_transpose(tp.constant(x), k, (1, 6, 6, 2), 2, "SAME")
                * tp.constant(w), [layer.kernel.numpy()], order=2)


def test_the_dcgan_generator_traces_once_and_saves(tmp_path):
    # TensorFlow's DCGAN tutorial (MNIST): Dense -> Reshape -> three Conv2DTranspose.
    tp.random.set_seed(0)
    gen = tp.keras.Sequential([
        L.Dense(7 * 7 * 8, use_bias=False, input_shape=(10,)), L.BatchNormalization(),
        L.LeakyReLU(), L.Reshape((7, 7, 8)),
        L.Conv2DTranspose(4, 5, strides=1, padding="same", use_bias=False),
        L.BatchNormalization(), L.LeakyReLU(),
        L.Conv2DTranspose(2, 5, strides=2, padding="same", use_bias=False), L.LeakyReLU(),
        L.Conv2DTranspose(1, 5, strides=2, padding="same", use_bias=False,
                          activation="tanh")])
    f = tp.function(lambda z: gen(z, training=False),
                    input_signature=[tp.TensorSpec([None, 10])])
    for n in (3, 4, 7):
        z = tp.constant(R.normal(size=(n, 10)).astype("f4"))
        out = f(z)
        assert out.shape == (n, 28, 28, 1)
        np.testing.assert_array_equal(out.numpy(), gen(z, training=False).numpy())
    assert f.experimental_get_tracing_count() == 1
    gen.save(tmp_path / "gen.keras")
    loaded = tp.keras.models.load_model(tmp_path / "gen.keras")
    np.testing.assert_array_equal(loaded(z, training=False).numpy(),
                                  gen(z, training=False).numpy())
