"""Every registered primitive's derivative rule against central finite differences (float64).

One table row per primitive: a list of (function of Tensors, argument arrays). Each case is
checked to first and second order with ``tapeflow.testing.check_grads``. A primitive without a
row fails ``test_every_primitive_has_a_row``; primitives deliberately without a rule must be
listed in NO_RULE and must raise LookupError on a differentiated path.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapeflow as tp
from tapeflow import conv as CV
from tapeflow import primitives as P
from tapeflow import primitives_ext as PX
from tapeflow.testing import check_grads

R = np.random.default_rng(1234)


def rand(*shape, lo=-1.0, hi=1.0):
    return R.uniform(lo, hi, size=shape)


def pos(*shape):
    return R.uniform(0.5, 2.0, size=shape)


def weighted(fn, shape):
    """fn followed by a fixed random weighting (so linear maps get a non-trivial cotangent)."""
    w = rand(*shape)
    return lambda *xs: fn(*xs) * tp.constant(w)


def distinct(*shape):
    """Values far apart, so max/min/relu/abs/maximum are smooth inside the FD step."""
    n = int(np.prod(shape))
    return (R.permutation(n) * 0.37 - n * 0.15 + 0.05).reshape(shape)


# A first-maximum mask of 3x2 windows, stride (2, 1), of a 5x4 image: max_pool_grad's input.
_POOL_IMAGE = (np.random.default_rng(1).permutation(40) * 0.37).reshape(1, 5, 4, 2)
_POOL_FIRST = PX._pool_first_max(_POOL_IMAGE, PX._pool_max(_POOL_IMAGE, (3, 2), (2, 1)),
                                 (3, 2), (2, 1))


TABLE = {
    "add": [(tp.add, [rand(3, 4), rand(4)]), (tp.add, [rand(2, 1, 3), rand(4, 1)])],
    "subtract": [(tp.subtract, [rand(3, 4), rand(3, 1)])],
    "multiply": [(tp.multiply, [rand(3, 4), rand(3, 4)]), (tp.multiply, [rand(5), rand(2, 1)])],
    "divide": [(tp.divide, [rand(3, 4), pos(4)])],
    "pow": [(tp.pow, [pos(3, 2), rand(3, 2)]), (lambda x: x ** 3.0, [rand(4)])],
    "maximum": [(tp.maximum, [distinct(3, 4), distinct(4) + 0.11])],
    "minimum": [(tp.minimum, [distinct(3, 4), distinct(3, 1) + 0.11])],
    "negative": [(tp.negative, [rand(2, 3)])],
    "abs": [(tp.abs, [distinct(5)])],
    "square": [(tp.square, [rand(2, 3)])],
    "sqrt": [(tp.sqrt, [pos(2, 3)])],
    "exp": [(tp.exp, [rand(2, 3)])],
    "log": [(tp.log, [pos(2, 3)])],
    "log1p": [(tp.log1p, [pos(2, 3)])],
    "sin": [(tp.sin, [rand(4)])],
    "cos": [(tp.cos, [rand(4)])],
    "tanh": [(tp.tanh, [rand(4) * 2])],
    "sigmoid": [(tp.sigmoid, [rand(4) * 3])],
    "relu": [(tp.relu, [distinct(2, 5)])],
    # a copy to the host (and, on the strict device of the `device` tests, back by its rule)
    "to_device": [(lambda x: tp.to_device(tp.to_device(x, "/CPU:0") * 2.0, x.device) * x,
                   [rand(3)])],
    # float32 rounding would swamp a 1e-6 step: a large step is exact for this (bi)linear map.
    "cast": [(lambda x: tp.cast(tp.cast(x, "float32"), "float64") * x, [rand(3)],
              dict(eps=1e-2, rtol=1e-4))],
    "where": [(lambda x, y: tp.where(tp.constant(np.array([True, False, True])), x, y),
               [rand(2, 3), rand(3)])],
    "matmul": [(tp.matmul, [rand(3, 4), rand(4, 2)]), (tp.matmul, [rand(2, 3, 4), rand(4, 5)]),
               (lambda a, b: tp.matmul(a, b, transpose_b=True), [rand(3, 4), rand(2, 4)])],
    "reduce_sum": [(lambda x: tp.reduce_sum(x, axis=1), [rand(3, 4)]),
                   (lambda x: tp.reduce_sum(x * x), [rand(2, 3)]),
                   (lambda x: tp.reduce_sum(x, axis=(0, 2), keepdims=True), [rand(2, 3, 4)])],
    "reduce_max": [(lambda x: tp.reduce_max(x, axis=0), [distinct(3, 4)]),
                   (lambda x: tp.reduce_max(x), [distinct(5)])],
    "reduce_min": [(lambda x: tp.reduce_min(x, axis=-1, keepdims=True), [distinct(3, 4)])],
    "reshape": [(weighted(lambda x: tp.reshape(x, (4, 3)), (4, 3)), [rand(3, 4)])],
    "transpose": [(weighted(lambda x: tp.transpose(x, (2, 0, 1)), (4, 2, 3)),
                   [rand(2, 3, 4)])],
    "broadcast_to": [(weighted(lambda x: tp.broadcast_to(x, (3, 4)), (3, 4)), [rand(4)])],
    "getitem": [(lambda x: x[1:, ::2] * 2.0, [rand(3, 4)]),
                (lambda x: tp.gather(x, np.array([0, 2, 0]), axis=1), [rand(2, 3)])],
    "scatter_add": [(lambda g: P.scatter_add_p(g, index=(tp.to_device(tp.constant([0, 2, 0]),
                                                                      g.device)._value,),
                                               shape=(4, 2)),
                     [rand(3, 2)])],
    "take": [(lambda x: P.take_p(x, tp.constant([0, 2, 0, 1]), axis=1), [rand(2, 3)]),
             (lambda x: P.take_p(x, tp.constant([[1, 1], [0, 2]]), axis=0), [rand(3, 2)])],
    "take_grad": [(lambda g: P.take_grad_p(g, tp.constant([0, 2, 0]), shape=(4, 2), axis=0),
                   [rand(3, 2)])],
    "take_along": [(lambda x: tp.sort(x, axis=0), [distinct(3, 4)]),
                   (lambda x: tp.math.top_k(x, 2).values, [distinct(2, 5)])],
    "take_along_grad": [(lambda g: P.take_along_grad_p(g, tp.constant([[1, 1], [0, 2]]),
                                                       shape=(2, 3), axis=1), [rand(2, 2)])],
    "concat": [(lambda a, b: tp.concat([a, b, a], axis=1), [rand(2, 3), rand(2, 1)])],
    "pad": [(weighted(lambda x: tp.pad(x, ((1, 0), (0, 2))), (3, 5)), [rand(2, 3)])],
    "extract_patches": [(lambda x: P.extract_patches_p(x, ksize=(2, 3), strides=(1, 2)),
                         [rand(2, 4, 5, 2)])],
    "patches_transpose": [(lambda g: P.patches_transpose_p(g, shape=(1, 4, 5, 2), ksize=(2, 2),
                                                           strides=(2, 1)),
                           [rand(1, 2, 4, 2, 2, 2)])],
    "conv2d": [(lambda x, w: CV.conv2d_p(x, w, strides=(1, 2), dilations=(1, 1)),
                [rand(2, 4, 5, 2), rand(2, 2, 2, 3)]),
               (lambda x, w: CV.conv2d_p(x, w, strides=(1, 1), dilations=(2, 1)),
                [rand(1, 5, 4, 2), rand(2, 2, 2, 2)])],
    "conv2d_backprop_input": [
        (lambda g, w: CV.conv2d_backprop_input_p(g, w, shape=(2, 4, 5, 2), strides=(1, 2),
                                                 dilations=(1, 1)),
         [rand(2, 3, 2, 3), rand(2, 2, 2, 3)])],
    "conv2d_backprop_filter": [
        (lambda x, g: CV.conv2d_backprop_filter_p(x, g, ksize=(2, 2), strides=(1, 2),
                                                  dilations=(1, 1)),
         [rand(2, 4, 5, 2), rand(2, 3, 2, 3)]),
        (lambda x, g: CV.conv2d_backprop_filter_p(x, g, ksize=(2, 3), strides=(1, 1),
                                                  dilations=(1, 1)),  # per-tap GEMMs: K > 32
         [rand(1, 3, 4, 6), rand(1, 2, 2, 2)])],
    "sparse_softmax_cross_entropy": [
        (lambda z, y: tp.nn.sparse_softmax_cross_entropy_with_logits(y, z),
         [rand(4, 5) * 3, np.array([0, 4, 2, 2])])],
    # sign's derivative is zeros: the check sees a zero Jacobian, the tape a connected path.
    "sign": [(lambda x: tp.sign(x) * x, [distinct(5)])],
    "expm1": [(tp.math.expm1, [rand(2, 3)])],
    "tan": [(tp.math.tan, [rand(4)])],
    "atan": [(tp.math.atan, [rand(4) * 3])],
    "sinh": [(tp.math.sinh, [rand(4)])],
    "cosh": [(tp.math.cosh, [rand(4)])],
    "erf": [(tp.math.erf, [rand(3, 2) * 2])],
    "softplus": [(tp.math.softplus, [rand(6) * 4])],
    "cumsum": [(lambda x: tp.math.cumsum(x, axis=1), [rand(2, 4)]),
               (lambda x: tp.math.cumsum(x, axis=0, exclusive=True, reverse=True),
                [rand(4, 2)])],
    "cumprod": [(lambda x: tp.math.cumprod(x, axis=1), [pos(2, 4)]),
                (lambda x: tp.math.cumprod(x, axis=0, exclusive=True, reverse=True),
                 [pos(4, 2)])],
    "reduce_prod": [(lambda x: tp.math.reduce_prod(x, axis=1), [pos(3, 4)]),
                    (lambda x: tp.math.reduce_prod(x, axis=(0, 2), keepdims=True),
                     [pos(2, 3, 2)]),
                    (tp.math.reduce_prod, [pos(5)])],
    "einsum": [(lambda a, b: tp.einsum("ij,jk->ik", a, b), [rand(2, 3), rand(3, 4)]),
               (lambda a, b: tp.einsum("bij,j->bi", a, b), [rand(2, 3, 4), rand(4)]),
               (lambda a: tp.einsum("ijk->j", a), [rand(2, 3, 4)]),
               (lambda a: tp.einsum("ii->i", a), [rand(3, 3)]),
               (lambda a, b: tp.einsum("ii,ij->j", a, b), [rand(3, 3), rand(3, 2)]),
               (lambda a, b: tp.einsum("...i,...i", a, b), [rand(2, 3), rand(2, 3)])],
    "matrix_inverse": [(tp.linalg.inv, [rand(3, 3) + 3 * np.eye(3)]),
                       (tp.linalg.inv, [rand(2, 2, 2) + 2 * np.eye(2)])],
    "det": [(tp.linalg.det, [rand(3, 3) + 2 * np.eye(3)]),
            (tp.linalg.det, [rand(2, 2, 2) + np.eye(2)])],
    "window_max": [(lambda x: PX.window_max(x, axis=(1, 3)), [distinct(2, 3, 2, 2)]),
                   (lambda x: tp.nn.max_pool2d(x, 2), [distinct(1, 4, 6, 2)])],
    "max_pool": [(lambda x: tp.nn.max_pool2d(x, 2, 1), [distinct(1, 3, 3, 2)]),
                 (lambda x: tp.nn.max_pool2d(x, 3, 2, "SAME"), [distinct(2, 5, 4, 2)])],
    "max_pool_grad": [(lambda g: PX.max_pool_grad_p(g, tp.constant(_POOL_FIRST), shape=(1, 5, 4, 2),
                                                    ksize=(3, 2), strides=(2, 1)),
                       [rand(1, 2, 3, 2)])],
}

# Primitives deliberately without a rule (differentiating them is a LookupError): none today.
# floor/round/ceil are not primitives: like TensorFlow they give a None gradient.
NO_RULE: dict = {}


def test_every_primitive_has_a_row():
    registered = set(tp.PRIMITIVES)
    missing = registered - set(TABLE) - set(NO_RULE)
    assert not missing, f"primitives without a gradient-check row: {sorted(missing)}"
    assert not (set(TABLE) | set(NO_RULE)) - registered, "rows for unregistered primitives"
    for name in NO_RULE:
        assert tp.PRIMITIVES[name].vjp is None


CASES = [pytest.param(name, i, id=f"{name}-{i}") for name in TABLE for i in range(len(TABLE[name]))]


@pytest.mark.parametrize("name,i", CASES)
def test_rule_matches_finite_differences(name, i):
    fn, args, *opts = TABLE[name][i]
    check_grads(fn, args, order=2, **(opts[0] if opts else {}))


def test_check_grads_catches_a_wrong_rule():
    @tp.custom_gradient
    def wrong_square(x):
        return x * x, lambda g: g * 3.0 * x  # the true derivative is 2x
    with pytest.raises(AssertionError, match="gradient check failed"):
        check_grads(wrong_square, [rand(3)], order=1)


# Broadcasting: shapes drawn by hypothesis, every binary primitive, both inputs checked.
BINARY = {"add": tp.add, "subtract": tp.subtract, "multiply": tp.multiply,
          "divide": lambda x, y: tp.divide(x, tp.exp(y)),
          "pow": lambda x, y: tp.pow(tp.exp(x), y),
          "maximum": tp.maximum, "minimum": tp.minimum}


@settings(max_examples=25, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3,
                                                 max_side=3),
       name=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2**16))
def test_binary_broadcast_gradients(shapes, name, seed):
    rng = np.random.default_rng(seed)
    sx, sy = shapes.input_shapes
    x = rng.uniform(-1, 1, sx)
    # Separate x and y so maximum/minimum stay away from ties inside the finite-difference step.
    y = rng.uniform(-1, 1, sy) + (0.5 if name in ("maximum", "minimum") else 0.0)
    if name in ("maximum", "minimum"):
        x = x * 0.2
    check_grads(BINARY[name], [x, y], order=2)
    xt, yt = tp.constant(x), tp.constant(y)
    with tp.GradientTape() as tape:
        tape.watch([xt, yt])
        out = BINARY[name](xt, yt)
    gx, gy = tape.gradient(out, [xt, yt])
    assert gx.shape == sx and gy.shape == sy
