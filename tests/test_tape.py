"""GradientTape against TensorFlow's semantics (DESIGN.md, "GradientTape").

Every expected value is worked out by hand or with a few lines of independent NumPy; the
TensorFlow behaviour each test pins (which cases give ``None``, what raises) follows the
``tf.GradientTape`` API reference and the "Introduction to gradients" / "Advanced automatic
differentiation" guides.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.testing import check_grads


def f64(x):
    return tp.constant(np.asarray(x, dtype=np.float64))


def close(t, expected, rtol=1e-6, atol=1e-9):
    assert t is not None, "expected a gradient, got None"
    np.testing.assert_allclose(t.numpy(), expected, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# What is watched


def test_trainable_variable_is_watched_automatically():
    x = tp.Variable(3.0)
    with tp.GradientTape() as tape:
        y = x * x
    g = tape.gradient(y, x)
    assert g.dtype == np.float32 and g.shape == ()
    assert float(g) == 6.0
    assert tape.watched_variables() == (x,)


@pytest.mark.parametrize("make", [
    lambda: tp.constant(3.0),
    lambda: tp.constant(3.0) * 1.0,                 # a Tensor produced by an op
    lambda: tp.Variable(3.0, trainable=False),
], ids=["constant", "tensor", "non-trainable-variable"])
def test_unwatched_sources_give_none_until_watched(make):
    x = make()
    with tp.GradientTape() as tape:
        y = x * x
    assert tape.gradient(y, x) is None

    with tp.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    assert float(tape.gradient(y, x)) == 6.0


def test_non_trainable_variable_is_not_listed_as_watched():
    v = tp.Variable(1.0, trainable=False)
    with tp.GradientTape() as tape:
        _ = v * 2.0
    assert tape.watched_variables() == ()


def test_watch_accessed_variables_false_only_explicit():
    a, b = tp.Variable(2.0), tp.Variable(5.0)
    with tp.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(a)
        y = a * a * b          # dy/da = 2ab = 20; b is not watched
    ga, gb = tape.gradient(y, [a, b])
    assert float(ga) == 20.0
    assert gb is None
    assert tape.watched_variables() == (a,)


def test_watched_variables_first_watch_order_and_no_duplicates():
    a, b, c = tp.Variable(1.0), tp.Variable(2.0), tp.Variable(3.0)
    with tp.GradientTape() as tape:
        assert tape.watched_variables() == ()
        y = a * b
        y = y + a + c + b      # re-reads do not duplicate
    assert tape.watched_variables() == (a, b, c)
    gs = tape.gradient(y, [a, b, c])
    assert [float(g) for g in gs] == [2.0 + 1.0, 1.0 + 1.0, 1.0]


def test_watch_nested_structure():
    x, y = tp.constant(1.5), tp.constant(-2.0)
    with tp.GradientTape() as tape:
        tape.watch({"x": x, "rest": [y]})
        z = x * y
    gx, gy = tape.gradient(z, (x, y))
    assert float(gx) == -2.0 and float(gy) == 1.5


@pytest.mark.parametrize("bad, name", [(1.0, "float"), ([1.0, 2.0], "float"), ("a", "str"),
                                       (np.float64(1.0), "float64")])
def test_watch_of_non_tensor_raises_type_error_naming_the_type(bad, name):
    with tp.GradientTape() as tape:
        with pytest.raises(TypeError, match=name):
            tape.watch(bad)


# ------------------------------------------------------------------------------------------
# Tape lifetime


def test_persistent_tape_allows_several_gradients():
    x = tp.constant(3.0)
    with tp.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = x * x
        z = y * y
    assert float(tape.gradient(z, x)) == 108.0          # 4 x^3
    assert float(tape.gradient(y, x)) == 6.0            # 2 x
    assert float(tape.gradient(z, y)) == 18.0           # 2 y
    jac = tape.jacobian(z, x)
    assert float(jac) == 108.0
    del tape


def test_non_persistent_second_gradient_raises():
    x = tp.constant(3.0)
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    assert float(tape.gradient(y, x)) == 6.0
    with pytest.raises(RuntimeError, match=r"persistent=True"):
        tape.gradient(y, x)


def test_non_persistent_gradient_inside_the_block_stops_recording():
    x = tp.Variable(2.0)
    with tp.GradientTape() as tape:
        y = x * x
        assert float(tape.gradient(y, x)) == 4.0
        _ = y * 3.0            # the record is released: nothing more is recorded
    with pytest.raises(RuntimeError, match="persistent=True"):
        tape.gradient(y, x)


def test_stop_recording():
    x = tp.constant(4.0)
    with tp.GradientTape(persistent=True) as tape:
        tape.watch(x)
        with tape.stop_recording():
            y = x * x * x
        z = x * x
    assert tape.gradient(y, x) is None
    assert float(tape.gradient(z, x)) == 8.0


def test_stop_recording_only_pauses_its_own_tape():
    x = tp.constant(2.0)
    with tp.GradientTape() as outer:
        outer.watch(x)
        with tp.GradientTape() as inner:
            inner.watch(x)
            with inner.stop_recording():
                y = x * x * x
        assert inner.gradient(y, x) is None
    assert float(outer.gradient(y, x)) == 12.0


def test_reset_forgets_the_record_and_the_watched_variables():
    v = tp.Variable(2.0)
    with tp.GradientTape() as tape:
        y = v * v                         # forgotten by reset
        assert tape.watched_variables() == (v,)
        tape.reset()
        assert tape.watched_variables() == ()
        z = y + v * 3.0                   # only the 3v term is on the tape
    assert tape.watched_variables() == (v,)
    assert float(tape.gradient(z, v)) == 3.0


# ------------------------------------------------------------------------------------------
# gradient(): targets, sources, output_gradients, unconnected_gradients


def test_nested_sources_return_the_same_structure():
    a, b, c, d = (tp.Variable(float(i)) for i in (1, 2, 3, 4))
    with tp.GradientTape() as tape:
        y = a * b * c * d                # dy/da = bcd = 24, /db = 12, /dc = 8, /dd = 6
    out = tape.gradient(y, {"w": [a, (b, c)], "u": d})
    assert isinstance(out, dict) and list(out) == ["w", "u"]
    assert isinstance(out["w"], list) and isinstance(out["w"][1], tuple)
    assert float(out["w"][0]) == 24.0
    assert [float(g) for g in out["w"][1]] == [12.0, 8.0]
    assert float(out["u"]) == 6.0


def test_list_of_targets_is_summed():
    x = tp.Variable(3.0)
    with tp.GradientTape() as tape:
        y1 = x * x          # 2x = 6
        y2 = x * 5.0        # 5
    assert float(tape.gradient([y1, y2], x)) == 11.0


def test_non_scalar_target_is_summed():
    x = tp.Variable([1.0, 2.0, 3.0])
    with tp.GradientTape() as tape:
        y = x * x           # d sum(x^2) = 2x
    close(tape.gradient(y, x), [2.0, 4.0, 6.0])


def test_output_gradients_weight_the_target():
    x = tp.Variable([1.0, 2.0, 3.0])
    w = np.array([1.0, 10.0, 100.0], np.float32)
    with tp.GradientTape() as tape:
        y = x * x
    close(tape.gradient(y, x, output_gradients=tp.constant(w)), 2 * np.array([1, 2, 3]) * w)


def test_output_gradients_for_a_list_of_targets():
    x = tp.Variable(2.0)
    with tp.GradientTape() as tape:
        y1, y2 = x * x, x * x * x             # 2x = 4, 3x^2 = 12
    g = tape.gradient([y1, y2], x, output_gradients=[tp.constant(1.0), tp.constant(0.5)])
    assert float(g) == 4.0 + 0.5 * 12.0


@pytest.mark.parametrize("mode", ["none", tp.UnconnectedGradients.NONE])
def test_unconnected_gives_none(mode):
    x, z = tp.Variable(2.0), tp.Variable([1.0, 2.0])
    with tp.GradientTape() as tape:
        y = x * 3.0
        _ = z * 2.0                       # z is watched but y does not depend on it
    gx, gz = tape.gradient(y, [x, z], unconnected_gradients=mode)
    assert float(gx) == 3.0 and gz is None


@pytest.mark.parametrize("mode", ["zero", tp.UnconnectedGradients.ZERO])
def test_unconnected_zero_gives_zeros_of_the_source_shape_and_dtype(mode):
    x = tp.Variable(2.0)
    z = tp.Variable(np.ones((2, 3), np.float64))
    unwatched = tp.constant([1.0, 2.0])
    with tp.GradientTape() as tape:
        y = x * 3.0
    gx, gz, gu = tape.gradient(y, [x, z, unwatched], unconnected_gradients=mode)
    assert float(gx) == 3.0
    assert gz.shape == (2, 3) and gz.dtype == np.float64 and not gz.numpy().any()
    assert gu.shape == (2,) and gu.dtype == np.float32 and not gu.numpy().any()


def test_gradient_with_respect_to_intermediate_tensors():
    x = tp.Variable(3.0)
    with tp.GradientTape(persistent=True) as tape:
        y = x * 2.0                   # 6
        z = y * y + x                 # 39
    gy, gx = tape.gradient(z, [y, x])
    assert float(gy) == 12.0          # 2y
    assert float(gx) == 25.0          # 2y * 2 + 1: sources get the total derivative
    assert float(tape.gradient(z, z)) == 1.0


# ------------------------------------------------------------------------------------------
# Cases where TensorFlow returns None


def test_none_for_integer_paths():
    x = tp.Variable(2.0)
    with tp.GradientTape() as tape:
        y = tp.cast(tp.cast(x, "int32"), "float32") * 3.0
    assert tape.gradient(y, x) is None

    k = tp.constant(10)                     # int32
    assert k.dtype == np.int32
    with tp.GradientTape() as tape:
        tape.watch(k)                       # accepted, but integers are not differentiable
        y = k * k
    assert tape.gradient(y, k) is None


def test_none_for_values_computed_outside_tapeflow():
    x = tp.Variable([[1.0, 2.0], [3.0, 4.0]])
    with tp.GradientTape() as tape:
        x2 = x ** 2
        y = tp.constant(x2.numpy() * 2)      # NumPy round trip: not traced
        y = tp.reduce_sum(y)
    assert tape.gradient(y, x) is None


def test_variable_rebound_to_a_tensor_is_not_watched():
    # The guide's loop that writes `x = x + 1` instead of x.assign_add(1).
    x = tp.Variable(2.0)
    seen = []
    for _ in range(2):
        with tp.GradientTape() as tape:
            y = x + 1
        seen.append((type(x).__name__, tape.gradient(y, x)))
        x = x + 1
    assert seen[0][0] == "Variable" and float(seen[0][1]) == 1.0
    assert seen[1][0] == "Tensor" and seen[1][1] is None


def test_assign_add_does_not_carry_gradient():
    x0 = tp.Variable(3.0)
    x1 = tp.Variable(0.0)
    with tp.GradientTape() as tape:
        x1.assign_add(x0)         # x1 = 3, but the update is not recorded
        y = x1 ** 2
    g0, g1 = tape.gradient(y, [x0, x1])
    assert g0 is None
    assert float(g1) == 6.0       # 2 * x1 at the updated value


def test_stop_gradient_blocks():
    x = tp.Variable(3.0)
    with tp.GradientTape() as tape:
        y = x * x + tp.stop_gradient(x * x) * 10.0      # only 2x flows
        z = tp.stop_gradient(x)
    assert float(tape.gradient([y], x)) == 6.0
    x = tp.Variable(3.0)
    with tp.GradientTape() as tape:
        z = tp.stop_gradient(x) * 2.0
    assert tape.gradient(z, x) is None
    assert float(z) == 6.0


@pytest.mark.parametrize("op", ["floor", "round", "ceil"])
def test_piecewise_constant_ops_have_no_gradient(op):
    # TensorFlow: floor/round/ceil give a None gradient (not an error): their result is a
    # constant to the tape.
    x = tp.Variable([0.4, 1.6])
    with tp.GradientTape(persistent=True) as tape:
        r = getattr(tp, op)(x)
        y = r * x
    assert tape.gradient(r, x) is None
    close(tape.gradient(y, x), getattr(np, op)([0.4, 1.6]))


def test_primitive_without_rule_raises_lookup_error():
    prim = tp.recording.Primitive("no_rule_here", lambda a: a * 2)
    x = tp.Variable([0.4, 1.6])
    with tp.GradientTape() as tape:
        y = prim(x) * x
    with pytest.raises(LookupError, match="no_rule_here"):
        tape.gradient(y, x)


def test_op_without_rule_is_fine_behind_stop_gradient():
    x = tp.Variable([0.4, 1.6])
    with tp.GradientTape() as tape:
        y = tp.floor(tp.stop_gradient(x)) * x        # floor(x) = [0, 1]
    close(tape.gradient(y, x), [0.0, 1.0])


# ------------------------------------------------------------------------------------------
# Broadcasting, dtypes, saved values


def test_bias_add_gradient_is_reduced_to_the_bias_shape():
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((4, 3)).astype(np.float32)
    wv = rng.standard_normal((4, 3)).astype(np.float32)
    x, b = tp.Variable(xv), tp.Variable([0.1, 0.2, 0.3])
    with tp.GradientTape() as tape:
        y = tp.reduce_sum((x + b) * tp.constant(wv))
    gx, gb = tape.gradient(y, [x, b])
    assert gx.shape == (4, 3) and gb.shape == (3,)
    close(gx, wv)
    close(gb, wv.sum(axis=0), rtol=1e-5)


def test_outer_product_broadcast_gradients():
    a = tp.Variable([[1.0], [2.0], [3.0]])            # (3, 1)
    b = tp.Variable([[1.0, 10.0, 100.0, 1000.0]])     # (1, 4)
    with tp.GradientTape() as tape:
        y = a * b                                      # (3, 4), summed
    ga, gb = tape.gradient(y, [a, b])
    assert ga.shape == (3, 1) and gb.shape == (1, 4)
    close(ga, np.full((3, 1), 1111.0))
    close(gb, np.full((1, 4), 6.0))


def test_scalar_times_matrix_gradient():
    s = tp.Variable(2.0)
    m = tp.Variable([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with tp.GradientTape() as tape:
        y = s * m
    gs, gm = tape.gradient(y, [s, m], output_gradients=tp.constant([[1.0, 0, 0], [0, 0, 2.0]]))
    assert gs.shape == () and float(gs) == 1.0 + 12.0
    close(gm, [[2.0, 0, 0], [0, 0, 4.0]])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_gradient_dtype_equals_source_dtype(dtype):
    x = tp.Variable(np.array([1.0, 2.0]), dtype=dtype)
    c = tp.constant(np.array([3.0, 4.0]), dtype=dtype)
    with tp.GradientTape() as tape:
        tape.watch(c)
        y = tp.reduce_sum(tp.exp(x) * c + x * 2.0)
    gx, gc = tape.gradient(y, [x, c])
    assert gx.dtype == np.dtype(dtype) and gc.dtype == np.dtype(dtype)
    rtol = 1e-2 if dtype == "float16" else 1e-6
    close(gx, np.exp([1.0, 2.0]) * [3.0, 4.0] + 2.0, rtol=rtol)
    close(gc, np.exp([1.0, 2.0]), rtol=rtol)


def test_gradient_through_float_cast_returns_to_source_dtype():
    x = tp.Variable(np.array([1.5, -2.0]), dtype="float64")
    with tp.GradientTape() as tape:
        y = tp.cast(x, "float32") ** 2
    g = tape.gradient(y, x)
    assert g.dtype == np.float64
    close(g, [3.0, -4.0])


def test_variable_assigned_after_the_forward_pass_keeps_the_recorded_value():
    v = tp.Variable(3.0)
    with tp.GradientTape() as tape:
        y = v * v * v          # 3 v^2 = 27 at the recorded value
    v.assign(10.0)
    assert float(tape.gradient(y, v)) == 27.0
    assert float(v) == 10.0

    w = tp.Variable([1.0, 2.0])
    with tp.GradientTape() as tape:
        y = tp.reduce_sum(tp.sin(w) * w)
        w.assign_add([100.0, 100.0])          # also inside the block
    close(tape.gradient(y, w), np.cos([1.0, 2.0]) * [1.0, 2.0] + np.sin([1.0, 2.0]),
          rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Higher order


def test_second_and_third_derivative_of_cube():
    x = tp.constant(1.5)
    with tp.GradientTape() as t3:
        t3.watch(x)
        with tp.GradientTape() as t2:
            t2.watch(x)
            with tp.GradientTape() as t1:
                t1.watch(x)
                y = x ** 3
            d1 = t1.gradient(y, x)
        d2 = t2.gradient(d1, x)
    d3 = t3.gradient(d2, x)
    assert float(d1) == pytest.approx(3 * 1.5 ** 2)
    assert float(d2) == pytest.approx(6 * 1.5)
    assert float(d3) == pytest.approx(6.0)


def test_second_derivative_with_variable():
    x = tp.Variable(1.0)
    with tp.GradientTape() as t2:
        with tp.GradientTape() as t1:
            y = x * x * x
        dy_dx = t1.gradient(y, x)
    d2y_dx2 = t2.gradient(dy_dx, x)
    assert float(dy_dx) == 3.0 and float(d2y_dx2) == 6.0


def test_hessian_is_jacobian_of_gradient_under_nested_tape():
    # f(x) = x0^2 x1 + x0 sin(x1) + x1^3
    xv = np.array([0.7, -1.3])
    x = f64(xv)
    with tp.GradientTape() as outer:
        outer.watch(x)
        with tp.GradientTape() as inner:
            inner.watch(x)
            y = x[0] ** 2 * x[1] + x[0] * tp.sin(x[1]) + x[1] ** 3
        g = inner.gradient(y, x)
    h = outer.jacobian(g, x)
    x0, x1 = xv
    close(g, [2 * x0 * x1 + math.sin(x1), x0 ** 2 + x0 * math.cos(x1) + 3 * x1 ** 2])
    off = 2 * x0 + math.cos(x1)
    expected = np.array([[2 * x1, off], [off, -x0 * math.sin(x1) + 6 * x1]])
    assert h.shape == (2, 2) and h.dtype == np.float64
    close(h, expected)


def test_hessian_of_a_small_mlp_loss_matches_finite_differences():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 3))
    t = rng.standard_normal(5)

    def loss(w):
        return tp.reduce_sum((tp.tanh(tp.constant(a) @ tp.reshape(w, (3, 1))) - t[:, None]) ** 2)

    w0 = rng.standard_normal(3)
    check_grads(loss, [w0], order=2)
    x = f64(w0)
    with tp.GradientTape() as outer:
        outer.watch(x)
        with tp.GradientTape() as inner:
            inner.watch(x)
            y = loss(x)
        g = inner.gradient(y, x)
    h = outer.jacobian(g, x).numpy()

    def num_grad(w):
        with tp.GradientTape() as tape:
            wt = f64(w)
            tape.watch(wt)
            y = loss(wt)
        return tape.gradient(y, wt).numpy()

    eps = 1e-6
    fd = np.stack([(num_grad(w0 + eps * e) - num_grad(w0 - eps * e)) / (2 * eps)
                   for e in np.eye(3)], axis=1)
    np.testing.assert_allclose(h, fd, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(h, h.T, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# jacobian / batch_jacobian


def test_jacobian_of_matrix_vector_function():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 4))
    xv = rng.standard_normal(4)
    x = f64(xv)
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = tp.tanh(tp.reshape(tp.constant(w) @ tp.reshape(x, (4, 1)), (3,)))
    j = tape.jacobian(y, x)
    assert j.shape == (3, 4)
    expected = (1 - np.tanh(w @ xv) ** 2)[:, None] * w
    close(j, expected)


def test_jacobian_shape_is_target_shape_plus_source_shape():
    a = np.arange(6.0).reshape(2, 3)
    xv = np.array([[1.0, -1.0], [2.0, 0.5], [0.0, 3.0]])         # (3, 2)
    x, b = f64(xv), f64([1.0, 2.0, 3.0])
    with tp.GradientTape(persistent=True) as tape:
        tape.watch([x, b])
        y = tp.constant(a) @ x                                      # (2, 2)
        z = tp.reduce_sum(x * x)                                    # scalar
    jx, jb = tape.jacobian(y, [x, b])
    assert jx.shape == (2, 2, 3, 2)
    # d y[i, j] / d x[k, l] = a[i, k] delta(j, l)
    expected = np.einsum("ik,jl->ijkl", a, np.eye(2))
    close(jx, expected)
    assert jb is None
    jb0 = tape.jacobian(y, b, unconnected_gradients="zero")
    assert jb0.shape == (2, 2, 3) and not jb0.numpy().any()
    jz = tape.jacobian(z, x)
    assert jz.shape == (3, 2)
    close(jz, 2 * xv)


def test_jacobian_of_scalar_source():
    s = f64(2.0)
    with tp.GradientTape() as tape:
        tape.watch(s)
        y = s * f64([1.0, 2.0, 3.0]) + s * s      # dy_i/ds = c_i + 2s
    j = tape.jacobian(y, s)
    assert j.shape == (3,)
    close(j, [5.0, 6.0, 7.0])


def test_batch_jacobian_per_example():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((2, 3))      # maps 3 inputs to 2 outputs
    xv = rng.standard_normal((4, 3))     # batch of 4
    x = f64(xv)
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = tp.sigmoid(x @ tp.constant(w.T)) * tp.reduce_sum(x * x, axis=1, keepdims=True)
    bj = tape.batch_jacobian(y, x)
    assert bj.shape == (4, 2, 3)
    expected = np.empty((4, 2, 3))
    for n in range(4):
        u = w @ xv[n]
        s = 1 / (1 + np.exp(-u))
        q = xv[n] @ xv[n]
        expected[n] = (s * (1 - s))[:, None] * w * q + np.outer(s, 2 * xv[n])
    close(bj, expected)


def test_batch_jacobian_unconnected():
    x, z = f64(np.ones((2, 3))), f64(np.ones((2, 4)))
    with tp.GradientTape(persistent=True) as tape:
        tape.watch([x, z])
        y = x * 2.0
    assert tape.batch_jacobian(y, z) is None
    zero = tape.batch_jacobian(y, z, unconnected_gradients="zero")
    assert zero.shape == (2, 3, 4) and not zero.numpy().any()


# ------------------------------------------------------------------------------------------
# custom_gradient


@tp.custom_gradient
def clip_gradients(y):
    def backward(dy):
        return tp.clip_by_value(dy, -0.5, 0.5)
    return tp.identity(y), backward


def test_custom_gradient_clipping():
    x = tp.Variable([1.0, -2.0, 0.01])
    with tp.GradientTape() as tape:
        y = clip_gradients(x) * tp.constant([10.0, -10.0, 0.1])
    close(tape.gradient(y, x), [0.5, -0.5, 0.1])
    close(y, [10.0, 20.0, 0.001])


def log1pexp_naive(x):
    return tp.log(1 + tp.exp(x))


@tp.custom_gradient
def log1pexp(x):
    e = tp.exp(x)

    def grad(upstream):
        return upstream * (1 - 1 / (1 + e))
    return tp.log(1 + e), grad


def test_custom_gradient_log1pexp_is_stable():
    x = tp.constant(100.0)
    with tp.GradientTape(persistent=True) as tape:
        tape.watch(x)
        with np.errstate(over="ignore", invalid="ignore"):
            naive = log1pexp_naive(x)
            stable = log1pexp(x)
    with np.errstate(over="ignore", invalid="ignore"):
        assert math.isnan(float(tape.gradient(naive, x)))   # inf / inf
    assert float(tape.gradient(stable, x)) == 1.0
    x0 = tp.constant(0.0)
    with tp.GradientTape() as tape:
        tape.watch(x0)
        y = log1pexp(x0)
    assert float(y) == pytest.approx(math.log(2.0))
    assert float(tape.gradient(y, x0)) == pytest.approx(0.5)


def test_second_order_through_custom_gradient_closure():
    # d2/dx2 log(1 + e^x) = sigmoid(x) (1 - sigmoid(x)): needs e = exp(x), computed inside
    # the decorated function, to stay connected to x on the outer tape (TensorFlow does this).
    xv = 1.5
    x = f64(xv)
    with tp.GradientTape() as t2:
        t2.watch(x)
        with tp.GradientTape() as t1:
            t1.watch(x)
            y = log1pexp(x)
        g = t1.gradient(y, x)
    h = t2.gradient(g, x)
    s = 1 / (1 + math.exp(-xv))
    assert float(g) == pytest.approx(s, rel=1e-12)
    assert h is not None
    assert float(h) == pytest.approx(s * (1 - s), rel=1e-12)


def test_second_order_through_custom_gradient_of_input():
    @tp.custom_gradient
    def cube(x):
        return x * x * x, lambda dy: dy * 3.0 * x * x

    x = f64(2.0)
    with tp.GradientTape() as t2:
        t2.watch(x)
        with tp.GradientTape() as t1:
            t1.watch(x)
            y = cube(x)
        g = t1.gradient(y, x)
    assert float(g) == 12.0
    assert float(t2.gradient(g, x)) == 12.0        # 6x


def test_custom_gradient_replaces_internal_gradient():
    @tp.custom_gradient
    def fake(x):
        return tp.sin(x), lambda dy: dy * 100.0      # deliberately not cos(x)

    x = tp.Variable(0.3)
    with tp.GradientTape() as tape:
        y = fake(x) * 2.0
    assert float(tape.gradient(y, x)) == pytest.approx(200.0)
    assert float(y) == pytest.approx(2 * math.sin(0.3))


def test_custom_gradient_with_several_inputs():
    @tp.custom_gradient
    def mul(a, b):
        return a * b, lambda dy: (dy * b * 2.0, dy * a * 3.0)   # scaled to prove use

    a, b = tp.Variable(2.0), tp.Variable(5.0)
    with tp.GradientTape() as tape:
        y = mul(a, b)
    ga, gb = tape.gradient(y, [a, b])
    assert float(ga) == 10.0 and float(gb) == 6.0


def test_custom_gradient_with_variables_keyword():
    w = tp.Variable(3.0)

    @tp.custom_gradient
    def scale(x):
        def grad_fn(upstream, variables=None):
            assert variables is not None and len(variables) == 1 and variables[0] is w
            return upstream * w, [upstream * x * 100.0]      # custom: 100 x for w
        return x * w, grad_fn

    x = tp.constant(2.0)
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = scale(x) * 1.5
    gx, gw = tape.gradient(y, [x, w])
    assert float(gx) == 4.5            # 1.5 * w
    assert float(gw) == 300.0          # 1.5 * 100 * x
    assert float(y) == 9.0


def test_custom_gradient_reading_variable_without_keyword_raises():
    w = tp.Variable(3.0)

    @tp.custom_gradient
    def scale(x):
        return x * w, lambda dy: dy * w

    with tp.GradientTape() as tape:
        with pytest.raises(TypeError, match="variables"):
            scale(tp.constant(1.0))


def test_custom_gradient_with_variable_as_input_needs_no_keyword():
    @tp.custom_gradient
    def square(a):
        return a * a, lambda dy: dy * 2.0 * a

    v = tp.Variable(4.0)
    with tp.GradientTape() as tape:
        y = square(v)
    assert float(tape.gradient(y, v)) == 8.0


def test_custom_gradient_outside_a_tape_is_just_the_function():
    y = log1pexp(tp.constant(1.0))
    assert float(y) == pytest.approx(math.log1p(math.e))


def test_a_target_that_is_a_source_has_its_output_gradient_like_tensorflow():
    # TensorFlow's autodiff guide: `result = v0` under the tape, then
    # tape.gradient(result, [v0, v1]) is [1.0, None] although no op read v0.
    v0, v1 = tp.Variable(2.0), tp.Variable(2.0)
    with tp.GradientTape(persistent=True) as tape:
        result = v0
    d0, d1 = tape.gradient(result, [v0, v1])
    assert float(d0) == 1.0 and d1 is None
    np.testing.assert_array_equal(
        tape.gradient(result, v0, output_gradients=tp.constant(3.0)).numpy(), 3.0)
    with tp.GradientTape() as tape:  # read by an op too: both paths count once each
        r = v0 * 3.0
    assert float(tape.gradient([r, v0], v0)) == 4.0
