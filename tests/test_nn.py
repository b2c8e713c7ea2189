"""tapeflow.nn modules, layers, builders, initializers and losses: tracking with exact names,
forward passes against NumPy, layer gradients against finite differences, seeding, and a tiny
end-to-end training run."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import nn
from tapeflow.nn import init
from tapeflow.testing import check_grads

# ------------------------------------------------------------------------------------------
# NumPy references, written independently of the library.


def np_conv2d(x, w, stride, padding):
    """NHWC cross-correlation with TensorFlow's SAME/VALID padding, by explicit loops."""
    n, h, wd, cin = x.shape
    kh, kw, _, cout = w.shape
    if padding == "SAME":
        oh, ow = -(-h // stride), -(-wd // stride)
        ph = max((oh - 1) * stride + kh - h, 0)
        pw = max((ow - 1) * stride + kw - wd, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return out


def np_max_pool(x, k, s):
    n, h, w, c = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.empty((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = x[:, i * s:i * s + k, j * s:j * s + k].max(axis=(1, 2))
    return out


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def layer_fn(layer):
    """``f(x, *params)`` running ``layer`` with ``params`` standing in for its Variables.

    Lets ``check_grads`` differentiate a layer's own ``call`` with respect to its weights.
    """
    names = [name for name, _ in layer.named_variables()]

    def f(x, *params):
        saved = {name: getattr(layer, name) for name in names}
        try:
            for name, p in zip(names, params):
                setattr(layer, name, p)
            return layer(x)
        finally:
            for name, v in saved.items():
                setattr(layer, name, v)
    return f


# ------------------------------------------------------------------------------------------
# Module: tracking, names, order.


class Leaf(nn.Module):
    def __init__(self, n):
        self.w = tp.Variable(np.ones((n,), np.float32))
        self.stats = tp.Variable(0.0, trainable=False)

    def call(self, x):  # no `training` argument: the base class must cope
        return x * self.w


class Tree(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = tp.Variable(2.0)
        self.blocks = [Leaf(1), Leaf(2)]
        self.table = {"zeta": tp.Variable(1.0), "alpha": (tp.Variable(3.0), [Leaf(3)])}
        self.ignored = [1, "two", tp.constant(3.0), np.ones(2)]
        self.child = Leaf(4)
        self.alias = self.child.w  # the same Variable again: listed once, first path wins


TREE_NAMES = ["scale", "blocks.0.w", "blocks.0.stats", "blocks.1.w", "blocks.1.stats",
              "table.alpha.0", "table.alpha.1.0.w", "table.alpha.1.0.stats", "table.zeta",
              "child.w", "child.stats"]


def test_named_variables_exact_names_and_order():
    t = Tree()
    assert [n for n, _ in t.named_variables()] == TREE_NAMES
    assert [v for _, v in t.named_variables()] == t.variables
    assert t.named_variables()[0][1] is t.scale
    assert dict(t.named_variables())["table.alpha.1.0.w"] is t.table["alpha"][1][0].w
    assert len({id(v) for v in t.variables}) == len(TREE_NAMES)
    # Stable: a second instance (a "second run") gives the same names and shapes.
    again = Tree()
    assert [(n, v.shape) for n, v in again.named_variables()] == \
        [(n, v.shape) for n, v in t.named_variables()]


def test_trainable_and_non_trainable():
    t = Tree()
    stats = {"blocks.0.stats", "blocks.1.stats", "table.alpha.1.0.stats", "child.stats"}
    named = dict(t.named_variables())
    assert t.trainable_variables == [named[n] for n in TREE_NAMES if n not in stats]
    assert t.non_trainable_variables == [named[n] for n in TREE_NAMES if n in stats]
    assert t.count_params() == 1 + (1 + 1) + (2 + 1) + 1 + 1 + (3 + 1) + (4 + 1)


def test_submodules_and_call_without_training_argument():
    t = Tree()
    names = [n for n, _ in t.named_modules()]
    assert names == ["", "blocks.0", "blocks.1", "table.alpha.1.0", "child"]
    assert t.submodules[0] is t.blocks[0]
    np.testing.assert_allclose(t.child(np.ones(4, np.float32), training=True).numpy(), 1.0)


def test_cycles_and_name_collisions():
    parent = nn.Module()
    parent.kid = Leaf(1)
    parent.kid.parent = parent  # a back-reference must not loop forever
    assert [n for n, _ in parent.named_variables()] == ["kid.w", "kid.stats"]
    clash = nn.Module()
    clash.kid = Leaf(1)
    setattr(clash, "kid.w", tp.Variable(1.0))
    with pytest.raises(ValueError, match="kid.w"):
        clash.named_variables()


def test_lazy_dense_builds_on_first_call():
    layer = nn.Dense(3)
    assert layer.variables == [] and not layer.built
    y = layer(np.ones((2, 5), np.float32))
    assert y.shape == (2, 3)
    assert [(n, v.shape) for n, v in layer.named_variables()] == [("kernel", (5, 3)),
                                                                  ("bias", (3,))]
    model = nn.Sequential([nn.Dense(4), nn.Dense(2)])
    model.build((6,))
    assert [v.shape for v in model.variables] == [(6, 4), (4,), (4, 2), (2,)]
    keras_way = nn.Sequential([nn.Dense(4), nn.Dense(2)])
    keras_way.build((None, 6))  # Keras's spelling: the batch dimension first, as None
    assert [v.shape for v in keras_way.variables] == [(6, 4), (4,), (4, 2), (2,)]
    with pytest.raises(ValueError, match=r"None only as its first \(batch\) dimension"):
        nn.Sequential([nn.Dense(4)]).build((None, None))


def test_state_dict_round_trip():
    a, b = nn.mlp([3, 4, 2], seed=0), nn.mlp([3, 4, 2], seed=1)
    b.load_state_dict(a.state_dict())
    for (na, va), (nb, vb) in zip(a.named_variables(), b.named_variables()):
        assert na == nb
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict({"layers.1.kernel": np.zeros((3, 4))})
    bad = a.state_dict()
    bad["layers.1.bias"] = np.zeros(5)
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict(bad)


# ------------------------------------------------------------------------------------------
# Layers: forward against NumPy.


@pytest.mark.parametrize("activation, ref", [
    (None, lambda z: z),
    ("relu", lambda z: np.maximum(z, 0)),
    ("sigmoid", lambda z: 1 / (1 + np.exp(-z))),
    ("tanh", np.tanh),
    ("softmax", lambda z: np.exp(np_log_softmax(z))),
])
def test_dense_forward(activation, ref):
    rng = np.random.default_rng(0)
    layer = nn.Dense(4, activation=activation, input_dim=3, seed=0)
    layer.bias.assign(rng.standard_normal(4))
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and y.shape == (5, 4)
    expected = ref(x.astype(np.float64) @ layer.kernel.numpy() + layer.bias.numpy())
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_dense_options_and_errors():
    layer = nn.Dense(2, use_bias=False, input_dim=3, kernel_initializer="zeros")
    assert [n for n, _ in layer.named_variables()] == ["kernel"]
    np.testing.assert_array_equal(layer(np.ones((1, 3))).numpy(), 0.0)
    with pytest.raises(ValueError, match=r"last axis 3.*\(1, 4\)"):
        layer(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="unknown activation"):
        nn.Dense(2, activation="swishy")
    with pytest.raises(ValueError, match="unknown initializer"):
        nn.Dense(2, kernel_initializer="nope")


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_forward(padding, stride):
    rng = np.random.default_rng(1)
    layer = nn.Conv2D(4, 3, strides=stride, padding=padding, input_channels=3, seed=0)
    layer.bias.assign(rng.standard_normal(4))
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    y = layer(x)
    expected = np_conv2d(x.astype(np.float64), layer.kernel.numpy().astype(np.float64), stride,
                         padding.upper()) + layer.bias.numpy()
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_conv2d_lazy_build_and_errors():
    layer = nn.Conv2D(5, (3, 2), activation="relu")
    assert layer.variables == []
    y = layer(np.ones((1, 6, 6, 2), np.float32))
    assert y.shape == (1, 4, 5, 5) and layer.kernel.shape == (3, 2, 2, 5)
    assert float(tp.reduce_min(y)) >= 0
    with pytest.raises(ValueError, match="rank 4"):
        layer(np.ones((6, 6, 2), np.float32))
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2D(1, 3, padding="full")


def test_pool_flatten_reshape_forward():
    x = np.random.default_rng(2).standard_normal((2, 6, 6, 3))
    np.testing.assert_array_equal(nn.MaxPool2D(2)(x).numpy(), np_max_pool(x, 2, 2))
    np.testing.assert_array_equal(nn.MaxPool2D(3, strides=1)(x).numpy(), np_max_pool(x, 3, 1))
    assert nn.MaxPool2D(2, padding="same")(x[:, :5, :5]).shape == (2, 3, 3, 3)
    assert nn.Flatten()(tp.constant(x)).shape == (2, 108)
    assert nn.Flatten()(x).shape == (2, 108)
    assert nn.Reshape((9, 12))(x).shape == (2, 9, 12)
    # Keras: one entry of target_shape may be -1, inferred from the rest
    assert nn.Reshape((-1,))(x).shape == (2, 108)
    np.testing.assert_array_equal(np.asarray(nn.Reshape((9, -1))(x)), x.reshape(2, 9, 12))
    for bad in ((5, 5), (5, -1), (-1, -1)):
        with pytest.raises(ValueError, match="cannot become"):
            nn.Reshape(bad)(x)


# ------------------------------------------------------------------------------------------
# Layers: gradients against central finite differences (float64).


def test_dense_gradients():
    layer = nn.Dense(4, activation="tanh", input_dim=3, dtype="float64", seed=0)
    rng = np.random.default_rng(3)
    args = [rng.standard_normal((5, 3)), layer.kernel.numpy(), rng.standard_normal(4)]
    check_grads(layer_fn(layer), args)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_gradients(padding, stride):
    layer = nn.Conv2D(4, 3, strides=stride, padding=padding, input_channels=3, dtype="float64",
                      seed=0)
    rng = np.random.default_rng(4)
    args = [rng.standard_normal((2, 5, 5, 3)), rng.standard_normal((3, 3, 3, 4)),
            rng.standard_normal(4)]
    check_grads(layer_fn(layer), args)


@pytest.mark.parametrize("pool, stride, padding", [(2, None, "valid"), (3, 2, "valid"),
                                                   (2, None, "same"), (3, 2, "same")])
def test_max_pool_gradients(pool, stride, padding):
    layer = nn.MaxPool2D(pool, strides=stride, padding=padding)
    x = np.random.default_rng(5).permutation(2 * 5 * 5 * 3).reshape(2, 5, 5, 3) / 7.0  # no ties
    check_grads(layer, [x])


def test_tape_watches_layer_variables():
    """Gradients w.r.t. the Variables themselves match the functional path."""
    layer = nn.Conv2D(2, 2, padding="same", activation="relu", input_channels=3,
                      dtype="float64", seed=1)
    x = tp.constant(np.random.default_rng(6).standard_normal((2, 4, 4, 3)))
    with tp.GradientTape() as tape:
        loss = tp.reduce_sum(layer(x) ** 2)
    gk, gb = tape.gradient(loss, layer.trainable_variables)
    assert gk.shape == layer.kernel.shape and gb.shape == layer.bias.shape
    w, b = tp.constant(layer.kernel.numpy()), tp.constant(layer.bias.numpy())
    with tp.GradientTape() as tape:
        tape.watch([w, b])
        loss2 = tp.reduce_sum(tp.nn.relu(tp.nn.conv2d(x, w, 1, "SAME") + b) ** 2)
    rk, rb = tape.gradient(loss2, [w, b])
    np.testing.assert_allclose(gk.numpy(), rk.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gb.numpy(), rb.numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Dropout.


def test_dropout_train_vs_eval():
    layer = nn.Dropout(0.25)
    x = tp.ones((200, 100))
    assert layer(x) is x and layer(x, training=False) is x
    y = layer(x, training=True).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    tp.random.set_seed(7)
    a = layer(x, training=True).numpy()
    tp.random.set_seed(7)
    b = layer(x, training=True).numpy()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="rate"):
        nn.Dropout(1.0)


def test_sequential_passes_training():
    model = nn.Sequential([nn.Dense(50, input_dim=10, seed=0), nn.Dropout(0.5)])
    x = np.ones((8, 10), np.float32)
    np.testing.assert_array_equal(model(x).numpy(), model(x, training=False).numpy())
    assert (model(x, training=True).numpy() == 0).mean() > 0.3


# ------------------------------------------------------------------------------------------
# Builders.


def test_mlp_shapes_and_params():
    model = nn.mlp([784, 512, 512, 10], seed=0)
    assert [(n, v.shape) for n, v in model.named_variables()] == [
        ("layers.1.kernel", (784, 512)), ("layers.1.bias", (512,)),
        ("layers.2.kernel", (512, 512)), ("layers.2.bias", (512,)),
        ("layers.3.kernel", (512, 10)), ("layers.3.bias", (10,))]
    assert model.count_params() == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    x = np.random.default_rng(0).random((3, 784), np.float32)
    y = model(x)
    assert y.shape == (3, 10) and y.dtype == np.float32
    np.testing.assert_allclose(model(x.reshape(3, 28, 28)).numpy(), y.numpy())
    assert model.layers[-1].activation is None and model.layers[1].activation is nn.relu
    with pytest.raises(ValueError, match="sizes"):
        nn.mlp([10])


def test_mnist_cnn_shapes_and_params():
    model = nn.mnist_cnn(seed=0)
    per_layer = [sum(v.size for v in layer.variables) for layer in model.layers]
    assert [p for p in per_layer if p] == [320, 18496, 1179776, 1290]
    assert model.count_params() == 1_199_882
    assert len(model.trainable_variables) == 8 and model.non_trainable_variables == []
    x = np.random.default_rng(1).random((2, 28, 28, 1), np.float32)
    y = model(x)
    assert y.shape == (2, 10) and y.dtype == np.float32
    np.testing.assert_allclose(model(x.reshape(2, 784)).numpy(), y.numpy(), rtol=1e-6)
    np.testing.assert_allclose(model(tp.constant(x.reshape(2, 28, 28))).numpy(), y.numpy(),
                               rtol=1e-6)


def test_seeded_construction_is_reproducible():
    def values(m):
        return [v.numpy() for v in m.variables]

    for build in (lambda s: nn.mlp([20, 16, 3], seed=s), lambda s: nn.mnist_cnn(seed=s)):
        a, b, c = values(build(5)), values(build(5)), values(build(6))
        assert all(np.array_equal(u, v) for u, v in zip(a, b))
        assert not np.array_equal(a[0], c[0])
    tp.random.set_seed(11)
    a = values(nn.mlp([20, 16, 3]))
    tp.random.set_seed(11)
    b = values(nn.mlp([20, 16, 3]))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert all(v.dtype == np.float32 for v in a)


# ------------------------------------------------------------------------------------------
# Initializers.


def test_fans():
    assert init.compute_fans((784, 512)) == (784, 512)
    assert init.compute_fans((3, 3, 32, 64)) == (9 * 32, 9 * 64)
    assert init.compute_fans((7,)) == (7, 7)


def test_glorot_uniform_statistics():
    w = init.glorot_uniform((400, 300), rng=0)
    limit = math.sqrt(6 / 700)
    assert w.dtype == np.float32 and w.shape == (400, 300)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert abs(w.std() - limit / math.sqrt(3)) < 0.01 * limit
    assert abs(w.mean()) < 0.01 * limit
    conv = init.glorot_uniform((3, 3, 32, 64), rng=0)
    assert np.abs(conv).max() <= math.sqrt(6 / (9 * 32 + 9 * 64))


@pytest.mark.parametrize("fn", [init.he_normal, init.he_uniform])
def test_he_statistics(fn):
    w = fn((3, 3, 64, 128), rng=1)
    std = math.sqrt(2 / (9 * 64))
    assert w.dtype == np.float32
    assert abs(w.std() / std - 1) < 0.02 and abs(w.mean()) < 0.02 * std
    if fn is init.he_normal:
        assert np.abs(w).max() <= 2 * std / 0.87962566103423978 + 1e-7  # truncated at 2 sigma
    else:
        assert np.abs(w).max() <= math.sqrt(6 / (9 * 64))


def test_initializers_are_seeded():
    np.testing.assert_array_equal(init.he_normal((5, 5), rng=3), init.he_normal((5, 5), rng=3))
    tp.random.set_seed(4)
    a = init.glorot_uniform((5, 5))
    tp.random.set_seed(4)
    np.testing.assert_array_equal(a, init.glorot_uniform((5, 5)))
    np.testing.assert_array_equal(init.zeros((2, 3)), np.zeros((2, 3), np.float32))
    assert init.zeros((2,), dtype="float64").dtype == np.float64
    with pytest.raises(TypeError, match="rng"):
        init.glorot_uniform((2, 2), rng="seed")


# ------------------------------------------------------------------------------------------
# Losses and metrics.


def test_sparse_categorical_crossentropy_vs_numpy():
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 6)
    per = -np_log_softmax(logits.astype(np.float64))[np.arange(6), labels]
    loss = nn.sparse_categorical_crossentropy
    np.testing.assert_allclose(float(loss(labels, logits)), per.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(loss(labels, logits, reduction="sum")), per.sum(),
                               rtol=1e-5)
    np.testing.assert_allclose(loss(labels, logits, reduction="none").numpy(), per, rtol=1e-5)
    np.testing.assert_allclose(float(loss(labels[:, None], logits)), per.mean(), rtol=1e-5)
    probs = np.exp(np_log_softmax(logits.astype(np.float64)))
    np.testing.assert_allclose(float(loss(labels, probs, from_logits=False)), per.mean(),
                               rtol=1e-5)


def test_crossentropy_gradient():
    rng = np.random.default_rng(9)
    logits = tp.constant(rng.standard_normal((5, 3)))
    labels = np.array([0, 2, 1, 1, 0])
    with tp.GradientTape() as tape:
        tape.watch(logits)
        loss = nn.sparse_categorical_crossentropy(labels, logits)
    expected = (np.exp(np_log_softmax(logits.numpy())) - np.eye(3)[labels]) / 5
    np.testing.assert_allclose(tape.gradient(loss, logits).numpy(), expected, rtol=1e-10)
    check_grads(lambda z: nn.sparse_categorical_crossentropy(labels, z, reduction="sum"),
                [logits.numpy()])


def test_loss_errors():
    loss = nn.sparse_categorical_crossentropy
    with pytest.raises(ValueError, match=r"labels of shape \(4,\).*\(5, 3\)"):
        loss(np.zeros(4, np.int64), np.zeros((5, 3), np.float32))
    with pytest.raises(TypeError, match="integer"):
        loss(np.zeros(5), np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="reduction"):
        loss(np.zeros(5, np.int64), np.zeros((5, 3), np.float32), reduction="avg")
    with pytest.raises(ValueError, match=r"\(5,\).*\(5, 1\)"):
        nn.mean_squared_error(np.zeros(5), np.zeros((5, 1), np.float32))
    with pytest.raises(ValueError, match="labels"):
        nn.accuracy(np.zeros(4, np.int64), np.zeros((5, 3)))


def test_mean_squared_error_vs_numpy():
    rng = np.random.default_rng(10)
    y_true, y_pred = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    mse = nn.mean_squared_error
    np.testing.assert_allclose(float(mse(y_true, y_pred)), ((y_pred - y_true) ** 2).mean())
    np.testing.assert_allclose(mse(y_true, y_pred, reduction="none").numpy(),
                               ((y_pred - y_true) ** 2).mean(axis=1))
    np.testing.assert_allclose(float(mse(y_true, y_pred, reduction="sum")),
                               ((y_pred - y_true) ** 2).mean(axis=1).sum())
    assert mse(y_true, tp.constant(y_pred, "float32")).dtype == np.float32
    check_grads(lambda p: mse(y_true, p), [y_pred])


def test_accuracy():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [0.0, 1.0]])
    assert nn.accuracy(np.array([0, 1, 1, 1]), logits) == 0.75
    assert nn.accuracy(tp.constant([[0], [1], [0], [1]]), tp.constant(logits)) == 1.0
    assert nn.accuracy(np.eye(2)[[0, 0, 0, 1]], logits) == 0.75
    assert isinstance(nn.accuracy([0, 1, 0, 1], logits), float)


# ------------------------------------------------------------------------------------------
# End to end.


def test_small_mlp_learns_separable_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 2)).astype(np.float32)
    labels = (x[:, 0] + 2 * x[:, 1] > 0.3).astype(np.int64)
    model = nn.mlp([2, 16, 2], seed=0)
    for _ in range(100):
        with tp.GradientTape() as tape:
            loss = nn.sparse_categorical_crossentropy(labels, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        for p, g in zip(model.trainable_variables, grads):
            p.assign_sub(0.5 * g)
    assert nn.accuracy(labels, model(x)) > 0.95
    assert float(loss) < 0.3
