"""TensorFlow's gradient and conversion semantics that tapeflow follows (issue 10's list)."""
import numpy as np
import pytest

import tapeflow as tp
from tapeflow.testing import check_grads


def test_variable_from_a_shape_given_as_an_int():
    v = tp.Variable(tp.zeros(2))
    assert v.shape == (2,) and v.numpy().tolist() == [0.0, 0.0]
    assert tp.ones(3, dtype="int32").numpy().tolist() == [1, 1, 1]


def test_tensor_shape_is_a_tuple_with_tf_methods():
    s = tp.zeros((2, 3)).shape
    assert s == (2, 3) and s == [2, 3] and isinstance(s, tuple)
    assert s.as_list() == [2, 3] and s.rank == 2 and s.num_elements() == 6
    assert s[1:].as_list() == [3] and s[0] == 2
    assert tp.shape(tp.zeros((2, 3))).numpy().tolist() == [2, 3]
    assert tp.shape(tp.zeros((2, 3))).dtype == np.int32
    assert int(tp.size(tp.zeros((2, 3)))) == 6 and int(tp.rank(tp.zeros((2, 3)))) == 2


def test_value_and_read_value_inside_a_tape_carry_gradient():
    v = tp.Variable(3.0)
    with tp.GradientTape() as tape:
        y = v.value() * v.read_value()  # v itself is never read directly
    assert float(tape.gradient(y, v)) == 6.0
    frozen = tp.Variable(2.0, trainable=False)
    with tp.GradientTape() as tape:
        y = frozen.read_value() * 2.0
    assert tape.gradient(y, frozen) is None


def test_sliced_assign():
    v = tp.Variable([1.0, 2.0, 3.0, 4.0])
    with tp.GradientTape() as tape:
        head = v[1:3] * 2.0
    v[0].assign(9.0)
    v[2:].assign_add([1.0, 1.0])
    v[1].assign_sub(0.5)
    assert v.numpy().tolist() == [9.0, 1.5, 4.0, 5.0]
    assert head.numpy().tolist() == [4.0, 6.0]  # computed before the assignment
    assert tape.gradient(head, v).numpy().tolist() == [0.0, 2.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="does not fit"):
        v[0:2].assign([1.0, 2.0, 3.0])


def test_gradient_inside_a_persistent_tape_is_recorded():
    x = tp.Variable(2.0)
    with tp.GradientTape(persistent=True) as tape:
        y = x ** 3
        dy = tape.gradient(y, x)
    assert float(dy) == 12.0
    assert float(tape.gradient(dy, x)) == 12.0  # 6x


@pytest.mark.parametrize("fn", [tp.nn.relu, tp.abs, tp.sign])
def test_second_derivatives_of_kinked_ops_are_zeros(fn):
    x = tp.Variable([-1.5, 2.0])
    with tp.GradientTape() as outer:
        with tp.GradientTape() as inner:
            y = fn(x)
        g = inner.gradient(y, x)
    gg = outer.gradient(g, x)
    assert gg is not None and gg.numpy().tolist() == [0.0, 0.0]


def test_batch_jacobian_of_a_relu_gradient_with_zero_mode():
    x = tp.Variable([[1.0, -2.0], [3.0, 4.0]])
    with tp.GradientTape() as outer:
        with tp.GradientTape() as inner:
            y = tp.nn.relu(x)
        g = inner.gradient(y, x)
    jac = outer.batch_jacobian(g, x, unconnected_gradients="zero")
    assert jac.shape == (2, 2, 2) and not jac.numpy().any()
    with tp.GradientTape() as tape:
        z = tp.constant([[1.0], [2.0]])
    assert tape.batch_jacobian(z, x, unconnected_gradients="zero").shape == (2, 1, 2)


def test_sign_gradient_is_zeros_not_none():
    x = tp.constant([-2.0, 3.0])
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = tp.sign(x)
    assert tape.gradient(y, x).numpy().tolist() == [0.0, 0.0]


@pytest.mark.parametrize("op", [tp.floor, tp.round, tp.math.ceil])
def test_rounding_gives_a_none_gradient(op):
    x = tp.Variable([0.4, 1.6])
    with tp.GradientTape() as tape:
        y = op(x)
    assert tape.gradient(y, x) is None


def test_custom_gradient_with_two_outputs():
    @tp.custom_gradient
    def sin_cos(x):
        def grad(g_sin, g_cos):
            return g_sin * tp.cos(x) - g_cos * tp.sin(x)
        return (tp.sin(x), tp.cos(x)), grad

    x = tp.constant([0.3, 1.2], dtype="float64")
    with tp.GradientTape(persistent=True) as tape:
        tape.watch(x)
        s, c = sin_cos(x)
        y = tp.reduce_sum(s * 2.0 + c)
    np.testing.assert_allclose(s.numpy(), np.sin([0.3, 1.2]))
    np.testing.assert_allclose(tape.gradient(y, x).numpy(),
                               2 * np.cos([0.3, 1.2]) - np.sin([0.3, 1.2]))
    # an output the target does not use gets a zero upstream
    np.testing.assert_allclose(tape.gradient(c, x).numpy(), -np.sin([0.3, 1.2]))
    check_grads(lambda t: sin_cos(t)[0] * sin_cos(t)[1], [np.array([0.1, 0.7])], order=2)


def test_float_to_int_conversion_is_refused():
    for value in (1.5, 2.0, [0.0, 1.0], np.array([1.5])):
        with pytest.raises(TypeError, match="not converted to integers"):
            tp.constant(value, dtype="int32")
    with pytest.raises(TypeError, match="not converted to integers"):
        tp.Variable(1.7, dtype="int32")
    assert tp.constant([1, 2], dtype="int64").dtype == np.int64
    assert tp.constant(np.array([True]), dtype="int32").numpy().tolist() == [1]
    assert tp.cast(tp.constant(1.7), "int32").numpy() == 1  # explicit truncation


def test_integer_reduce_sum_keeps_its_dtype():
    assert tp.reduce_sum(tp.constant([1, 2, 3])).dtype == np.int32
    assert int(tp.reduce_sum(tp.constant([[1, 2], [3, 4]]), axis=0)[1]) == 6


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # sqrt(-1) = NaN, as TF
def test_where_gradient_is_zero_off_the_taken_branch():
    x = tp.constant([-1.0, 0.0, 4.0])
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = tp.where(x > 0, tp.sqrt(x), tp.zeros_like(x))
    assert tape.gradient(y, x).numpy().tolist() == [0.0, 0.0, 0.25]


def test_max_pool_ties_send_the_whole_gradient_to_the_first_maximum():
    x = tp.constant(np.ones((1, 2, 2, 1), np.float32))
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = tp.nn.max_pool2d(x, 2, 2)
    g = tape.gradient(y, x).numpy().reshape(2, 2)
    assert g.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    x = tp.constant(np.array([[1, 3], [3, 2]], np.float32).reshape(1, 2, 2, 1))
    with tp.GradientTape() as tape:  # overlapping-window path, SAME padding
        tape.watch(x)
        y = tp.nn.max_pool2d(x, 2, 1, "SAME")
    assert tape.gradient(y, x).numpy().reshape(2, 2).tolist() == [[0.0, 2.0], [1.0, 1.0]]


def test_watched_variables_in_construction_order():
    a, b, c = tp.Variable(1.0), tp.Variable(2.0), tp.Variable(3.0)
    with tp.GradientTape() as tape:
        y = c * b * a
    assert [float(v) for v in tape.watched_variables()] == [1.0, 2.0, 3.0]


def test_invalid_argument_error_is_a_value_error_and_keeps_old_classes():
    assert issubclass(tp.errors.InvalidArgumentError, ValueError)
    with pytest.raises(tp.errors.InvalidArgumentError, match="broadcast"):
        tp.constant([1.0, 2.0]) + tp.constant([1.0, 2.0, 3.0])
    with pytest.raises(tp.errors.InvalidArgumentError, match="inner dimensions"):
        tp.matmul(tp.ones((2, 3)), tp.ones((2, 3)))
    with pytest.raises(tp.errors.InvalidArgumentError):
        tp.reshape(tp.ones(6), (4, 2))
    with pytest.raises(tp.errors.InvalidArgumentError) as info:
        tp.constant(1.0) + tp.constant(1)
    assert isinstance(info.value, TypeError)  # the dtype mix stays a TypeError too
    with pytest.raises(tp.errors.InvalidArgumentError) as info:
        tp.gather(tp.ones(3), [5])
    assert isinstance(info.value, IndexError)
    with pytest.raises(IndexError):
        tp.ones(3)[7]
    with pytest.raises(tp.errors.InvalidArgumentError, match="labels must lie"):
        tp.nn.sparse_softmax_cross_entropy_with_logits([3], tp.ones((1, 3)))


def test_python_formatting_and_dtype_names():
    assert f"{tp.constant(1.23456):.2f}" == "1.23"
    assert f"{tp.constant([1.0])}" == str(tp.constant([1.0]))
    with pytest.raises(TypeError, match="scalar"):
        f"{tp.constant([1.0]):.2f}"
    assert tp.constant(1, dtype=tp.bool).dtype == np.bool_
    assert tp.cast(tp.constant([3.0]), tp.uint8).dtype == np.uint8
    assert tp.zeros(2, dtype=tp.int8).dtype == np.int8 and tp.int16 == "int16"


def test_large_python_ints_become_int64_not_a_wrapped_int32():
    assert tp.constant(2 ** 40).dtype == np.int64 and int(tp.constant(2 ** 40)) == 2 ** 40
    assert tp.constant([1, -(2 ** 33)]).numpy().tolist() == [1, -(2 ** 33)]
    assert tp.constant([1, 2]).dtype == np.int32
