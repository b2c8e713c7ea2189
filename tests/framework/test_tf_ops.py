"""The TensorFlow-named ops added for parity: values against NumPy / closed forms, gradients
against finite differences (float64, first and second order)."""
import math

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.testing import check_grads

R = np.random.default_rng(7)


def rand(*shape):
    return R.uniform(-1.0, 1.0, size=shape)


def close(t, expected, **kw):
    np.testing.assert_allclose(t.numpy() if isinstance(t, tp.Tensor) else t, expected,
                               rtol=kw.pop("rtol", 1e-6), **kw)


# ---------------------------------------------------------------- tp.math
def test_math_namespace_holds_core_and_new_ops():
    assert tp.math.add is tp.add and tp.math.reduce_sum is tp.reduce_sum
    assert tp.math.reduce_prod is tp.reduce_prod and tp.linalg.matmul is tp.matmul
    for name in ["reduce_logsumexp", "reduce_std", "reduce_variance", "reduce_any", "reduce_all",
                 "count_nonzero", "cumsum", "cumprod", "top_k", "rsqrt", "reciprocal",
                 "squared_difference", "divide_no_nan", "truediv", "softplus", "log_sigmoid",
                 "erf", "expm1", "ceil", "tan", "atan", "sinh", "cosh", "is_nan", "is_finite",
                 "is_inf", "l2_normalize"]:
        assert callable(getattr(tp.math, name)), name


def test_reductions_match_numpy():
    x = rand(3, 4)
    close(tp.math.reduce_logsumexp(x, axis=1), np.log(np.exp(x).sum(1)))
    close(tp.math.reduce_logsumexp(tp.constant([1000.0, 1000.0])), 1000 + math.log(2))
    close(tp.math.reduce_prod(x, axis=0, keepdims=True), x.prod(0, keepdims=True))
    close(tp.math.reduce_variance(x, axis=1), x.var(1))
    close(tp.math.reduce_std(x), x.std())
    b = tp.constant([[True, False], [True, True]])
    assert tp.math.reduce_any(b, axis=1).numpy().tolist() == [True, True]
    assert tp.math.reduce_all(b, axis=1).numpy().tolist() == [False, True]
    assert tp.math.count_nonzero(tp.constant([[0, 1], [2, 0]])).numpy() == 2
    assert tp.math.reduce_prod(tp.constant([2, 3])).dtype == np.int32


@pytest.mark.parametrize("fn,args", [
    (lambda x: tp.math.reduce_logsumexp(x, axis=1), [rand(3, 4)]),
    (lambda x: tp.math.reduce_variance(x, axis=0), [rand(3, 4)]),
    (lambda x: tp.math.reduce_std(x, axis=1, keepdims=True), [rand(3, 4)]),
    (lambda x: tp.math.rsqrt(x), [R.uniform(0.5, 2, 4)]),
    (lambda x: tp.math.reciprocal(x), [R.uniform(0.5, 2, 4)]),
    (lambda x, y: tp.math.squared_difference(x, y), [rand(3, 1), rand(4)]),
    (lambda x, y: tp.math.divide_no_nan(x, y), [rand(2, 3), R.uniform(0.5, 2, 3)]),
    (lambda x: tp.math.log_sigmoid(x), [rand(5) * 5]),
    (lambda x: tp.math.l2_normalize(x, axis=1), [rand(2, 3)]),
])
def test_composite_math_gradients(fn, args):
    check_grads(fn, args, order=2)


def test_reduce_prod_gradient_is_exact_with_a_zero():
    x = tp.constant([2.0, 0.0, 3.0])
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = tp.math.reduce_prod(x)
    assert tape.gradient(y, x).numpy().tolist() == [0.0, 6.0, 0.0]


def test_scans_match_numpy():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    close(tp.math.cumsum(x, axis=1), np.cumsum(x, 1))
    close(tp.math.cumsum(x, axis=1, exclusive=True), [[0, 1, 3], [0, 4, 9]])
    close(tp.math.cumsum(x, axis=1, reverse=True), [[6, 5, 3], [15, 11, 6]])
    close(tp.math.cumprod(x, axis=1, exclusive=True, reverse=True), [[6, 3, 1], [30, 6, 1]])
    assert tp.math.cumsum(tp.constant([1, 2, 3])).numpy().tolist() == [1, 3, 6]


def test_elementwise_special_functions():
    x = np.array([-1.5, -0.2, 0.0, 0.7, 2.0])
    close(tp.math.erf(x), [math.erf(v) for v in x])
    close(tp.math.expm1(x), np.expm1(x))
    close(tp.math.softplus(tp.constant([-100.0, 0.0, 100.0])), [0.0, math.log(2), 100.0],
          atol=1e-30)
    close(tp.math.tan(x), np.tan(x))
    close(tp.math.atan(x), np.arctan(x))
    close(tp.math.sinh(x), np.sinh(x))
    close(tp.math.cosh(x), np.cosh(x))
    assert tp.math.ceil(tp.constant([0.2, -0.2])).numpy().tolist() == [1.0, -0.0]
    y = tp.constant([np.nan, np.inf, 1.0])
    assert tp.math.is_nan(y).numpy().tolist() == [True, False, False]
    assert tp.math.is_inf(y).numpy().tolist() == [False, True, False]
    assert tp.math.is_finite(y).numpy().tolist() == [False, False, True]
    assert tp.math.truediv(tp.constant([3]), tp.constant([2])).dtype == np.float64
    close(tp.math.divide_no_nan(tp.constant([1.0, 2.0]), tp.constant([0.0, 4.0])), [0.0, 0.5])


def test_top_k_values_indices_and_gradient():
    x = tp.constant([[1.0, 5.0, 3.0, 5.0], [0.0, -1.0, 2.0, 1.0]])
    values, indices = tp.math.top_k(x, k=2)
    assert values.numpy().tolist() == [[5.0, 5.0], [2.0, 1.0]]
    assert indices.numpy().tolist() == [[1, 3], [2, 3]] and indices.dtype == np.int32
    check_grads(lambda t: tp.math.top_k(t, 2).values, [rand(3, 5)], order=2)


# ---------------------------------------------------------------- array ops
def test_split_tile_repeat_unstack():
    x = np.arange(12.0).reshape(6, 2)
    parts = tp.split(x, 3)
    assert [p.shape for p in parts] == [(2, 2)] * 3
    assert tp.split(x, [1, -1, 2], axis=0)[2].numpy().tolist() == [[8.0, 9.0], [10.0, 11.0]]
    with pytest.raises(tp.errors.InvalidArgumentError, match="evenly divide"):
        tp.split(x, 4)
    close(tp.tile(tp.constant([[1.0, 2.0]]), [2, 3]), np.tile([[1.0, 2.0]], (2, 3)))
    close(tp.repeat(tp.constant([[1.0, 2.0], [3.0, 4.0]]), [1, 2], axis=0),
          [[1, 2], [3, 4], [3, 4]])
    close(tp.repeat(tp.constant([1.0, 2.0]), 2), [1, 1, 2, 2])
    rows = tp.unstack(tp.constant(x), axis=1)
    assert len(rows) == 2 and rows[1].numpy().tolist() == x[:, 1].tolist()


@pytest.mark.parametrize("fn,args", [
    (lambda x: tp.concat(tp.split(x, [1, 2], axis=1)[::-1], axis=1), [rand(2, 3)]),
    (lambda x: tp.tile(x, [2, 1, 3]), [rand(2, 1, 2)]),
    (lambda x: tp.repeat(x, [2, 0, 1], axis=1), [rand(2, 3)]),
    (lambda x: tp.stack(tp.unstack(x, axis=1)[::-1]), [rand(2, 3)]),
    (lambda a, b: tp.tensordot(a, b, axes=[[1, 2], [0, 1]]), [rand(2, 3, 4), rand(3, 4, 2)]),
    (lambda a, b: tp.tensordot(a, b, axes=1), [rand(2, 3), rand(3, 2)]),
    (lambda x: tp.gather_nd(x, np.array([[0, 1], [1, 0], [0, 1]])), [rand(2, 2, 3)]),
    (lambda x: tp.boolean_mask(x, np.array([True, False, True])), [rand(3, 2)]),
    (lambda x: tp.sort(x, axis=0, direction="DESCENDING"), [rand(4, 3)]),
    (lambda x: tp.reverse(x, [0, 1]), [rand(2, 3)]),
    (lambda x: tp.pad(x, [[1, 2], [2, 1]], mode="REFLECT"), [rand(3, 4)]),
    (lambda x: tp.pad(x, [[2, 3], [0, 1]], mode="SYMMETRIC"), [rand(3, 2)]),
    (lambda x: tp.norm(x), [rand(3, 2)]),
    (lambda x: tp.norm(x, ord=1, axis=1), [rand(3, 2)]),
    (lambda x: tp.norm(x, ord=3, axis=0), [rand(3, 2)]),
    (lambda x: tp.norm(x, ord="fro", axis=(0, 1)), [rand(3, 2)]),
    (lambda x: tp.linalg.trace(x), [rand(3, 3)]),
])
def test_array_op_gradients(fn, args):
    check_grads(fn, args, order=2)


def test_array_op_values():
    x = np.arange(24.0).reshape(2, 3, 4)
    close(tp.einsum("ijk->kj", x), np.einsum("ijk->kj", x))
    close(tp.einsum("...k,k", x, np.ones(4)), x.sum(-1))
    close(tp.einsum("ij,jk", x[0], x[1].T), x[0] @ x[1].T)
    close(tp.tensordot(x, np.ones((4, 2)), 1), x @ np.ones((4, 2)))
    close(tp.gather_nd(x, [[1, 2], [0, 0]]), [x[1, 2], x[0, 0]])
    close(tp.boolean_mask(x, np.array([[True, False, True], [False, False, True]])),
          x[np.array([[True, False, True], [False, False, True]])])
    close(tp.sort(tp.constant([3.0, 1.0, 2.0])), [1.0, 2.0, 3.0])
    assert tp.argsort(tp.constant([3, 1, 2]), direction="DESCENDING").numpy().tolist() == [0, 2, 1]
    close(tp.reverse(x, [2]), x[:, :, ::-1])
    close(tp.eye(2, 3), np.eye(2, 3))
    assert tp.eye(2, batch_shape=[3]).shape == (3, 2, 2)
    f = tp.fill([2, 2], 7)
    assert f.dtype == np.int32 and f.numpy().tolist() == [[7, 7], [7, 7]]
    assert tp.fill(3, 1.5).dtype == np.float32
    close(tp.pad(tp.constant([[1.0, 2.0, 3.0]]), [[0, 0], [2, 2]], mode="REFLECT"),
          [[3, 2, 1, 2, 3, 2, 1]])
    close(tp.pad(tp.constant([[1.0, 2.0, 3.0]]), [[0, 0], [2, 2]], mode="SYMMETRIC"),
          [[2, 1, 1, 2, 3, 3, 2]])
    with pytest.raises(tp.errors.InvalidArgumentError, match="REFLECT"):
        tp.pad(tp.ones((1, 2)), [[0, 0], [2, 0]], mode="REFLECT")
    m = np.array([[1.0, -2.0], [3.0, 4.0]])
    close(tp.norm(m), np.linalg.norm(m))
    close(tp.norm(m, ord=np.inf, axis=(0, 1)), np.linalg.norm(m, np.inf))
    close(tp.norm(m, ord=1, axis=(0, 1)), np.linalg.norm(m, 1))
    close(tp.norm(m, ord=1, axis=0), np.abs(m).sum(0))
    assert tp.where(tp.constant([[True, False], [False, True]])).numpy().tolist() == \
        [[0, 0], [1, 1]]


def test_linalg_inv_det_closed_forms():
    a = np.array([[4.0, 7.0], [2.0, 6.0]])
    close(tp.linalg.inv(a), np.linalg.inv(a))
    close(tp.linalg.det(a), 10.0)
    close(tp.linalg.matrix_transpose(tp.ones((2, 3, 4))).shape, (2, 4, 3))
    x = tp.constant(a)
    with tp.GradientTape() as tape:
        tape.watch(x)
        d = tp.linalg.det(x)
    close(tape.gradient(d, x), 10.0 * np.linalg.inv(a).T)  # Jacobi's formula
    with pytest.raises(tp.errors.InvalidArgumentError, match="square"):
        tp.linalg.inv(tp.ones((2, 3)))


# ---------------------------------------------------------------- tp.nn
def test_activation_values():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 7.0])
    close(tp.nn.leaky_relu(x), np.where(x > 0, x, 0.2 * x))
    close(tp.nn.leaky_relu(x, alpha=0.1), np.where(x > 0, x, 0.1 * x))
    close(tp.nn.elu(x), np.where(x > 0, x, np.expm1(x)))
    close(tp.nn.selu(x), 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772
                                                       * np.expm1(x)))
    close(tp.nn.silu(x), x / (1 + np.exp(-x)))
    assert tp.nn.swish is tp.nn.silu
    close(tp.nn.relu6(x), np.clip(x, 0, 6))
    close(tp.nn.softsign(x), x / (1 + np.abs(x)))
    close(tp.nn.softplus(x), np.log1p(np.exp(x)))
    cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    close(tp.nn.gelu(x), x * cdf)
    close(tp.nn.gelu(x, approximate=True),
          0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))))
    assert tp.nn.tanh is tp.tanh


def test_activation_derivatives_at_kinks_follow_tf():
    x = tp.constant([0.0, 6.0, -1.0])
    for fn, expected in [(tp.nn.leaky_relu, [0.2, 1.0, 0.2]), (tp.nn.relu6, [0.0, 0.0, 0.0]),
                         (tp.nn.elu, [1.0, 1.0, math.exp(-1)]),
                         (tp.nn.selu, [1.0507009873554805, 1.0507009873554805,
                                       1.0507009873554805 * 1.6732632423543772 * math.exp(-1)])]:
        with tp.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        close(tape.gradient(y, x), expected)
    big = tp.constant([1000.0])
    with tp.GradientTape() as tape:
        tape.watch(big)
        y = tp.nn.elu(big) + tp.nn.selu(big)
    assert np.isfinite(tape.gradient(y, big).numpy()).all()


@pytest.mark.parametrize("fn", [
    tp.nn.leaky_relu, tp.nn.elu, tp.nn.selu, tp.nn.silu, tp.nn.softsign, tp.nn.softplus,
    tp.nn.gelu, lambda x: tp.nn.gelu(x, approximate=True), lambda x: tp.nn.silu(x, beta=2.0),
    lambda x: tp.nn.relu6(x * 8.0)])
def test_activation_gradients(fn):
    x = np.array([-1.7, -0.6, 0.35, 0.9, 1.4])
    check_grads(fn, [x], order=2)


def test_sigmoid_cross_entropy_with_logits():
    x, z = np.array([-3.0, 0.0, 2.5]), np.array([0.0, 0.3, 1.0])
    s = 1 / (1 + np.exp(-x))
    loss = tp.nn.sigmoid_cross_entropy_with_logits(labels=z, logits=x)
    close(loss, -z * np.log(s) - (1 - z) * np.log(1 - s))
    xt = tp.constant(x)
    with tp.GradientTape() as tape:
        tape.watch(xt)
        y = tp.nn.sigmoid_cross_entropy_with_logits(labels=z, logits=xt)
    close(tape.gradient(y, xt), s - z)  # 0.5 - z at x = 0
    check_grads(lambda a, b: tp.nn.sigmoid_cross_entropy_with_logits(labels=b, logits=a),
                [rand(4) * 3, R.uniform(0, 1, 4)])


def test_bias_add_moments_batch_norm_l2():
    x = rand(4, 3)
    close(tp.nn.bias_add(x, [1.0, 2.0, 3.0]), x + [1, 2, 3])
    with pytest.raises(tp.errors.InvalidArgumentError):
        tp.nn.bias_add(x, [1.0, 2.0])
    mean, var = tp.nn.moments(x, axes=[0])
    close(mean, x.mean(0))
    close(var, x.var(0))
    y = tp.nn.batch_normalization(x, mean, var, offset=0.5, scale=2.0, variance_epsilon=1e-3)
    close(y, 2 * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3) + 0.5)
    close(tp.nn.l2_loss(x), (x ** 2).sum() / 2)
    close(tp.nn.l2_normalize(x, axis=1), x / np.linalg.norm(x, axis=1, keepdims=True))
    # First order only: moments' variance is taken around stop_gradient(mean), as in
    # TensorFlow, which is exact for the gradient but not for the Hessian.
    check_grads(lambda t: tp.nn.batch_normalization(t, *tp.nn.moments(t, [0]), None, None, 1e-3),
                [x], order=1)
    table = rand(5, 2)
    close(tp.nn.embedding_lookup(table, [[4, 0], [1, 1]]), table[[[4, 0], [1, 1]]])


def test_avg_pool_same_counts_only_real_pixels():
    x = np.arange(9.0).reshape(1, 3, 3, 1)
    out = tp.nn.avg_pool2d(x, 2, 2, "SAME").numpy().reshape(2, 2)
    # windows: [0,1,3,4], [2,5], [6,7], [8]
    close(out, [[2.0, 3.5], [6.5, 8.0]])
    close(tp.nn.avg_pool2d(x, 2, 1, "VALID").numpy().reshape(2, 2), [[2, 3], [5, 6]])
    check_grads(lambda t: tp.nn.avg_pool2d(t, 2, 2, "SAME"), [rand(1, 3, 3, 2)])


def test_conv2d_dilations():
    x = rand(1, 5, 5, 1)
    w = rand(2, 2, 1, 1)
    out = tp.nn.conv2d(x, w, dilations=2).numpy()
    ref = np.zeros((1, 3, 3, 1))
    for i in range(3):
        for j in range(3):
            ref[0, i, j, 0] = sum(x[0, i + 2 * a, j + 2 * b, 0] * w[a, b, 0, 0]
                                  for a in range(2) for b in range(2))
    close(out, ref)
    assert tp.nn.conv2d(x, w, padding="SAME", dilations=2).shape == (1, 5, 5, 1)
    check_grads(lambda a, b: tp.nn.conv2d(a, b, padding="SAME", dilations=(2, 1)),
                [rand(1, 4, 4, 2), rand(2, 2, 2, 3)])


def test_clip_functions_at_top_level_are_the_optimizers_ones():
    x = tp.constant([3.0, 4.0])
    np.testing.assert_allclose(tp.clip_by_norm(x, 1.0).numpy(), [0.6, 0.8], rtol=1e-6)
    clipped, norm = tp.clip_by_global_norm([x, None], 2.5)
    assert float(norm) == pytest.approx(5.0) and clipped[1] is None
    assert float(tp.linalg.global_norm([x])) == pytest.approx(5.0)
    np.testing.assert_allclose(tp.optimizers.clip_by_norm(x, 1.0).numpy(),
                               tp.clip_by_norm(x, 1.0).numpy())
    check_grads(lambda t: tp.clip_by_norm(t, 1.0, axes=[1]), [rand(2, 3)])


def test_more_tf_names():
    close(tp.math.add_n([np.ones(2), 2 * np.ones(2), 3 * np.ones(2)]), [6.0, 6.0])
    with pytest.raises(tp.errors.InvalidArgumentError):
        tp.math.add_n([tp.ones(2), tp.ones(3)])
    close(tp.math.multiply_no_nan(tp.constant([np.inf, 2.0]), tp.constant([0.0, 3.0])), [0, 6])
    check_grads(lambda a, b: tp.math.multiply_no_nan(a, b), [rand(2, 3), rand(3)])
    x = rand(1, 4, 4, 2)
    close(tp.nn.max_pool(x, 2, 2, "VALID"), tp.nn.max_pool2d(x, 2, 2).numpy())
    close(tp.nn.avg_pool(x, 2, 2, "SAME"), tp.nn.avg_pool2d(x, 2, 2, "SAME").numpy())
    assert tp.nn.top_k is tp.math.top_k
    close(tp.nn.compute_average_loss(tp.constant([1.0, 3.0]), sample_weight=[1.0, 0.5],
                                     global_batch_size=5), 2.5 / 5)


@pytest.mark.parametrize("fn,derivative", [
    (tp.math.erf, lambda x: 2 / np.sqrt(np.pi) * np.exp(-x ** 2)),
    (tp.math.expm1, np.exp),
    (tp.math.tan, lambda x: 1 / np.cos(x) ** 2),
    (tp.math.atan, lambda x: 1 / (1 + x ** 2)),
    (tp.math.sinh, np.cosh),
    (tp.math.cosh, np.sinh),
    (tp.math.softplus, lambda x: 1 / (1 + np.exp(-x))),
    (tp.math.log_sigmoid, lambda x: 1 / (1 + np.exp(x))),
    (tp.math.rsqrt, lambda x: -0.5 * x ** -1.5),
    (tp.nn.silu, lambda x: (1 + np.exp(-x) + x * np.exp(-x)) / (1 + np.exp(-x)) ** 2),
    (tp.nn.softsign, lambda x: 1 / (1 + np.abs(x)) ** 2),
    (lambda t: tp.math.cumprod(t, axis=0), None),
])
def test_gradients_against_closed_forms(fn, derivative):
    x = np.array([0.3, 0.8, 1.2, 0.55])
    xt = tp.constant(x)
    with tp.GradientTape() as tape:
        tape.watch(xt)
        y = fn(xt)
    g = tape.gradient(y, xt).numpy()
    if derivative is None:  # d/dx_j sum_i prod_{k<=i} x_k = sum_{i>=j} prod_{k<=i, k!=j} x_k
        derivative = lambda v: np.array([sum(np.prod(np.delete(v[:i + 1], j))
                                             for i in range(j, len(v))) for j in range(len(v))])
    np.testing.assert_allclose(g, derivative(x), rtol=1e-10)
