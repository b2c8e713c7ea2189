"""Lion, the PolynomialDecay / InverseTimeDecay / CosineDecayRestarts schedules, Keras 3's clip
option exclusivity and the clipping functions as differentiable ops (TensorFlow semantics)."""
import math

import numpy as np
import pytest

import tapeflow as tp
import tapeflow.optimizers as optim
from tapeflow.testing import check_grads


def test_lion_matches_numpy_reference_step_by_step():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(4)]
    v = tp.Variable(w0, dtype="float64")
    opt = optim.Lion(learning_rate=0.01, beta_1=0.8, beta_2=0.95)
    w, m = w0.copy(), np.zeros(5)
    for g in grads:
        opt.apply_gradients([(g, v)])
        w = w - 0.01 * np.sign(0.8 * m + 0.2 * g)
        m = 0.95 * m + 0.05 * g
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-12)
    assert opt.get_state()["0/momentum"] == pytest.approx(m)


def test_lion_converges_on_a_parabola_and_checks_beta_1():
    v = tp.Variable([3.0, -2.0])
    opt = optim.get("lion", learning_rate=0.05)
    for _ in range(200):
        with tp.GradientTape() as tape:
            loss = tp.reduce_sum(tp.square(v))
        opt.apply_gradients([(tape.gradient(loss, v), v)])
    assert np.abs(v.numpy()).max() < 0.1
    with pytest.raises(ValueError, match="beta_1"):
        optim.Lion(beta_1=0.0)


@pytest.mark.parametrize("schedule,steps,expected", [
    (optim.PolynomialDecay(1.0, 10, end_learning_rate=0.1), [0, 5, 10, 20],
     [1.0, 0.55, 0.1, 0.1]),
    (optim.PolynomialDecay(1.0, 10, end_learning_rate=0.0, power=2.0, cycle=True),
     [0, 5, 10, 15, 20], [1.0, 0.25, 0.0, 0.0625, 0.0]),
    (optim.InverseTimeDecay(1.0, 10, 0.5), [0, 10, 15], [1.0, 1 / 1.5, 1 / 1.75]),
    (optim.InverseTimeDecay(1.0, 10, 0.5, staircase=True), [9, 10, 19], [1.0, 1 / 1.5, 1 / 1.5]),
    # periods of 10, 20, 40 steps starting at 0, 10, 30; m_mul halves each restart's peak
    (optim.CosineDecayRestarts(1.0, 10, t_mul=2.0, m_mul=0.5), [0, 5, 10, 20, 30, 50],
     [1.0, 0.5, 0.5, 0.25, 0.25, 0.125]),
    (optim.CosineDecayRestarts(2.0, 4, t_mul=1.0, alpha=0.5), [0, 2, 4, 6],
     [2.0, 2.0 * (0.5 * 0.5 + 0.5), 2.0, 1.5]),
])
def test_new_schedules(schedule, steps, expected):
    assert [schedule(s) for s in steps] == pytest.approx(expected)
    again = optim.schedules.deserialize(optim.schedules.serialize(schedule))
    assert [again(s) for s in steps] == pytest.approx(expected)


def test_cosine_decay_restarts_is_the_cosine_within_a_period():
    s = optim.CosineDecayRestarts(1.0, 8, t_mul=3.0)
    for step in range(8):
        assert s(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * step / 8)))
    assert s(8) == pytest.approx(1.0)  # a warm restart
    assert s(8 + 12) == pytest.approx(0.5)  # half way through the 24-step second period


@pytest.mark.parametrize("kwargs", [dict(clipnorm=1.0, clipvalue=1.0),
                                    dict(clipvalue=1.0, global_clipnorm=1.0),
                                    dict(clipnorm=1.0, global_clipnorm=1.0)])
def test_only_one_clip_option(kwargs):
    with pytest.raises(ValueError, match="only one of clipnorm, clipvalue and global_clipnorm"):
        optim.SGD(**kwargs)


def test_clip_by_norm_is_differentiable_through_the_norm():
    x = tp.constant([3.0, 4.0], dtype="float64")
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = tp.reduce_sum(optim.clip_by_norm(x, 1.0) * tp.constant([1.0, 0.0], "float64"))
    g = tape.gradient(y, x).numpy()
    # y = x0 / |x|: dy/dx = (|x|^2 e0 - x0 x) / |x|^3
    np.testing.assert_allclose(g, (25 * np.array([1, 0]) - 3 * np.array([3, 4])) / 125)
    check_grads(lambda t: optim.clip_by_norm(t, 1.0), [np.array([0.3, -2.0, 1.0])])
    check_grads(lambda t: optim.clip_by_norm(t, 10.0), [np.array([0.3, -2.0, 1.0])])


def test_clip_by_norm_of_zero_has_a_finite_gradient():
    x = tp.zeros(3, dtype="float64")
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = tp.reduce_sum(optim.clip_by_norm(x, 1.0))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), np.ones(3))


def test_global_norm_is_a_tensor_and_clip_by_global_norm_is_differentiable():
    assert isinstance(optim.global_norm([np.array([3.0]), np.array([4.0])]), tp.Tensor)
    a, b = tp.constant([3.0], "float64"), tp.constant([4.0], "float64")
    norm = optim.global_norm([a, None, b])
    assert isinstance(norm, tp.Tensor) and float(norm) == pytest.approx(5.0)
    check_grads(lambda x, y: tp.concat(optim.clip_by_global_norm([x, y], 1.0)[0], axis=0),
                [np.array([3.0, 1.0]), np.array([4.0])])
    check_grads(lambda x, y: optim.global_norm([x, y]), [np.array([3.0, 1.0]), np.array([4.0])])


def test_clip_by_value_is_differentiable_inside_the_range():
    x = tp.constant([-2.0, 0.5, 3.0])
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = tp.reduce_sum(optim.clip_by_value(x, -1.0, 1.0))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0.0, 1.0, 0.0])
