"""tp.function over dimensions of any size: an input_signature's ``None`` and reduce_retracing.

TensorFlow (tf.function API docs, "Better performance with tf.function"): with
``input_signature=[tf.TensorSpec([None], ...)]`` calls of every length run one function
without a new trace per length; ``reduce_retracing=True`` (formerly
``experimental_relax_shapes``) retraces once with the changed dimensions relaxed and then
replays for every size. Here the first two sizes are traced and the two traces are
generalized over the size (tapeflow.generalize); every later size runs the same computation
without running the Python function. Each check compares with the eager step, bit for bit.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import generalize as G
from tapeflow import keras
from tapeflow.optimizers import SGD, Adam
from tapeflow.traced_function import _MAX_SIZES

SIZES = [32, 32, 10, 7, 32, 19, 5, 3, 2]


def test_a_none_dimension_runs_every_length_without_tracing_each():
    traces = []

    @tp.function(input_signature=[tp.TensorSpec([None], tp.float32)])
    def f(x):
        traces.append(1)  # a Python side effect: only while tracing
        return tp.reduce_mean(x) * 2.0, x * 3.0, tp.reduce_sum(x) / x.shape[0]

    for n in (3, 5, 7, 11, 2, 64):
        a = np.arange(n, dtype="f4") ** 2
        mean2, triple, mean = f(tp.constant(a))
        assert float(mean2) == pytest.approx(a.mean() * 2, rel=1e-6)
        np.testing.assert_array_equal(triple.numpy(), a * 3)
        assert float(mean) == pytest.approx(a.mean(), rel=1e-6)
    assert len(traces) == f.experimental_get_tracing_count() == 2


def _dense_model(seed):
    model = keras.Sequential([keras.layers.Dense(16, activation="relu", seed=seed),
                              keras.layers.Dense(3, seed=seed + 1)])
    model.build((None, 8))
    return model


@pytest.mark.parametrize("make_opt", [lambda: SGD(0.1, momentum=0.9), lambda: Adam(0.01)])
def test_a_training_step_with_a_none_batch_equals_eager_bit_for_bit(make_opt):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    models, opts = [_dense_model(0), _dense_model(0)], [make_opt(), make_opt()]

    def step(model, opt, x, y):
        with tp.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    traced = tp.function(lambda x, y: step(models[0], opts[0], x, y),
                         input_signature=[tp.TensorSpec([None, 8]),
                                          tp.TensorSpec([None], tp.int64)])
    rng = np.random.default_rng(0)
    for n in SIZES:
        x, y = rng.normal(size=(n, 8)).astype("f4"), rng.integers(0, 3, n)
        a = traced(tp.constant(x), tp.constant(y))
        b = step(models[1], opts[1], tp.constant(x), tp.constant(y))
        assert float(a) == float(b), n
    assert traced.experimental_get_tracing_count() == 2
    for u, v in zip(models[0].variables, models[1].variables):
        np.testing.assert_array_equal(u.numpy(), v.numpy())


@pytest.mark.parametrize("flag", ["reduce_retracing", "experimental_relax_shapes"])
def test_reduce_retracing_traces_twice_then_replays_every_size(flag):
    # A CNN with batch normalization and a Keras metric, as Keras's train_function runs it.
    def make():
        m = keras.Sequential([
            keras.layers.Conv2D(4, 3, activation="relu", padding="same", seed=3),
            keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
            keras.layers.BatchNormalization(), keras.layers.Dense(3, seed=4)])
        m.build((None, 8, 8, 1))
        return m
    lf = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sides = [(make(), SGD(0.1, momentum=0.9), keras.metrics.SparseCategoricalAccuracy())
             for _ in range(2)]

    def body(side, x, y):
        model, opt, acc = side
        with tp.GradientTape() as tape:
            out = model(x, training=True)
            loss = lf(y, out)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        acc.update_state(y, out)
        return loss, acc.result()

    step = tp.function(lambda x, y: body(sides[0], x, y), **{flag: True})
    rng = np.random.default_rng(1)
    for n in [16, 16, 6, 9, 16, 4, 2, 13]:
        x, y = rng.normal(size=(n, 8, 8, 1)).astype("f4"), rng.integers(0, 3, n)
        a = step(tp.constant(x), tp.constant(y))
        b = body(sides[1], tp.constant(x), tp.constant(y))
        assert (float(a[0]), float(a[1])) == (float(b[0]), float(b[1])), n
    assert step.experimental_get_tracing_count() == 2
    for u, v in zip(sides[0][0].variables, sides[1][0].variables):
        np.testing.assert_array_equal(u.numpy(), v.numpy())


def test_without_relaxation_every_new_shape_traces():
    f = tp.function(lambda x: tp.reduce_mean(x))
    for n in (3, 4, 5, 4):
        assert float(f(tp.ones((n,)))) == 1.0
    assert f.experimental_get_tracing_count() == 3


def test_traces_that_are_not_one_computation_at_two_sizes_are_traced_per_size():
    # 1/(n-1) is neither k*n nor k/n; a Python branch on the size differs between the two
    # traced sizes: each size is traced (and right), as without relaxation.
    spec = [tp.TensorSpec([None], tp.float64)]

    @tp.function(input_signature=spec)
    def unbiased_var(x):
        d = x - tp.reduce_mean(x)
        return tp.reduce_sum(d * d) * (1.0 / (x.shape[0] - 1))

    @tp.function(input_signature=spec)
    def branch(x):
        return x * 2.0 if x.shape[0] > 4 else x * 3.0

    for n in (3, 6, 9, 12):
        a = np.random.default_rng(n).normal(size=n)
        assert float(unbiased_var(tp.constant(a))) == pytest.approx(a.var(ddof=1), rel=1e-12)
    for n in (3, 6, 9):
        np.testing.assert_array_equal(branch(tp.ones((n,), "float64")).numpy(),
                                      np.full(n, 3.0 if n <= 4 else 2.0))
    assert unbiased_var.experimental_get_tracing_count() == 4
    assert branch.experimental_get_tracing_count() == 3


def test_dropout_masks_follow_the_batch_size():
    model = keras.Sequential([keras.layers.Dense(5, seed=0), keras.layers.Dropout(0.5)])
    model.build((None, 4))
    f = tp.function(lambda x: model(x, training=True),
                    input_signature=[tp.TensorSpec([None, 4])])
    dense = model.layers[0](tp.ones((1, 4))).numpy()[0]
    for n in (3, 6, 40, 400):
        out = f(tp.ones((n, 4))).numpy()
        assert out.shape == (n, 5)
        kept = out != 0
        np.testing.assert_allclose(out[kept], np.broadcast_to(dense * 2, out.shape)[kept],
                                   rtol=1e-6)
        if n == 400:
            assert 0.4 < kept.mean() < 0.6
    assert f.experimental_get_tracing_count() == 2


def test_a_concrete_function_of_a_none_dimension_takes_any_size():
    f = tp.function(lambda x: x * 2.0 + tp.reduce_mean(x))
    cf = f.get_concrete_function(tp.TensorSpec([None], tp.float32))
    for n in (2, 5, 9):
        a = np.arange(n, dtype="f4")
        np.testing.assert_allclose(cf(tp.constant(a)).numpy(), a * 2 + a.mean(), rtol=1e-6)
    with pytest.raises(TypeError, match="traced for"):
        cf(tp.ones((2, 2)))


def test_size_one_and_mixed_sizes_are_traced_exactly():
    f = tp.function(lambda x, y: tp.reduce_sum(x) + tp.reduce_mean(y),
                    input_signature=[tp.TensorSpec([None]), tp.TensorSpec([None])])
    assert float(f(tp.ones((1,)), tp.ones((1,)))) == 2.0   # size 1: no point to fit from
    assert float(f(tp.ones((3,)), tp.ones((5,)))) == 4.0   # two sizes at once: exact
    for n in (4, 6, 8):
        assert float(f(tp.ones((n,)), tp.ones((n,)))) == n + 1.0
    assert f.experimental_get_tracing_count() == 4


def test_plans_made_for_new_sizes_allocate_nothing_and_are_bounded():
    vs = [tp.Variable(np.full((6, 3), 0.1, "f4")), tp.Variable(np.zeros(3, "f4"))]
    opt = SGD(0.1)

    @tp.function(input_signature=[tp.TensorSpec([None, 6]), tp.TensorSpec([None], tp.int32)])
    def step(x, y):
        with tp.GradientTape() as tape:
            logits = x @ vs[0] + vs[1]
            loss = tp.reduce_mean(tp.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return loss

    for n in range(2, 20):
        step(tp.ones((n, 6)), tp.zeros((n,), tp.int32))
    assert step.experimental_get_tracing_count() == 2
    made = step.get_concrete_function(tp.ones((19, 6)), tp.zeros((19,), tp.int32))
    assert not [s for s in made.plan.steps if s[0] == "alloc"], made.plan.source
    assert len(step._cache) <= _MAX_SIZES + 2


@pytest.mark.parametrize("a, b, n, want", [
    (64, 20, 48, 96),                                           # a size: 2n
    (np.float32(1 / 32), np.float32(1 / 10), 7, np.float32(1 / 7)),  # a mean's scale
    (1.0 / 96, 1.0 / 30, 5, 1.0 / 15),                          # 1/(3n)
    (np.int64(784 * 32), np.int64(784 * 10), 3, np.int64(784 * 3)),  # an element count
])
def test_numbers_are_fitted_as_k_times_n_or_k_over_n_exactly(a, b, n, want):
    got = G._number(a, b, 32, 10).make(n, {})
    assert type(got) is type(want) and got == want


@pytest.mark.parametrize("a, b", [(3, 7), (1.0 / 31, 1.0 / 9), (np.float32(0.5),
                                                                np.float32(0.7))])
def test_numbers_that_fit_neither_form_are_refused(a, b):
    with pytest.raises(G._Mismatch):
        G._number(a, b, 32, 10)


def test_tp_print_prints_every_size_with_a_none_dimension(capsys):
    f = tp.function(lambda x: tp.print("sum", tp.reduce_sum(x), output_stream=sys.stdout),
                    input_signature=[tp.TensorSpec([None])])
    for n in (2, 3, 4, 5):
        f(tp.ones((n,)))
    assert capsys.readouterr().out.split("\n")[:-1] == [f"sum {n}" for n in (2, 3, 4, 5)]
    assert f.experimental_get_tracing_count() == 2
