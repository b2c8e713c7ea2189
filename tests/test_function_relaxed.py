"""tp.function over dimensions of any size: an input_signature's ``None`` and reduce_retracing.

TensorFlow (tf.function API docs, "Better performance with tf.function"): with
``input_signature=[tf.TensorSpec([None], ...)]`` the function is traced once, with ``x.shape``
``(None,)``, and calls of every length run it; ``reduce_retracing=True`` (formerly
``experimental_relax_shapes``) retraces once with the changed dimensions relaxed and then
replays for every size. Here a ``None`` dimension is traced symbolically (tapeflow.symdim):
the Python function runs once, every op at the call's size and at a shadow size, and the two
are generalized over the size (tapeflow.generalize). A function that needs the size as a
number (TF: ``x.shape[0]`` is None there) is traced at its first two sizes instead; so is
``reduce_retracing``. Each check compares with the eager step, bit for bit.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import generalize as G
from tapeflow import keras
from tapeflow.optimizers import SGD, Adam
from tapeflow.trace import TraceError
from tapeflow.traced_function import _MAX_SIZES

SIZES = [32, 32, 10, 7, 32, 19, 5, 3, 2]


def test_a_none_dimension_is_traced_once_for_every_length():
    traces = []

    @tp.function(input_signature=[tp.TensorSpec([None], tp.float32)])
    def f(x):
        traces.append(str(x.shape))  # a Python side effect: only while tracing
        n = tp.cast(tp.shape(x)[0], tp.float32)
        return tp.reduce_mean(x) * 2.0, x * 3.0, tp.reduce_sum(x) / n, tp.size(x)

    for n in (3, 5, 7, 11, 2, 64):
        a = np.arange(n, dtype="f4") ** 2
        mean2, triple, mean, size = f(tp.constant(a))
        assert float(mean2) == pytest.approx(a.mean() * 2, rel=1e-6)
        np.testing.assert_array_equal(triple.numpy(), a * 3)
        assert float(mean) == pytest.approx(a.mean(), rel=1e-6)
        assert int(size) == n
    assert traces == ["(None,)"] and f.experimental_get_tracing_count() == 1


def test_tensorflow_s_collatz_example_traces_once():
    # "Better performance with tf.function", input_signature: one trace, shape (None,).
    printed = []

    @tp.function(input_signature=(tp.TensorSpec(shape=[None], dtype=tp.int32),))
    def next_collatz(x):
        printed.append(f"Tracing with {x}")
        return tp.where(x % 2 == 0, x // 2, 3 * x + 1)

    np.testing.assert_array_equal(next_collatz(tp.constant([1, 2])).numpy(), [4, 1])
    plain = tp.function(lambda x: printed.append(f"{x}, {x * 2}") or x)  # (no None)
    plain(tp.constant([1, 2]))
    assert printed.pop() == ('Tensor("<lambda>", shape=(2,), dtype=int32), '
                             'Tensor("<lambda>", shape=(2,), dtype=int32)')
    np.testing.assert_array_equal(next_collatz(tp.constant([1, 2, 3, 4, 5])).numpy(),
                                  [4, 1, 10, 2, 16])
    assert printed == ['Tracing with Tensor("next_collatz", shape=(None,), dtype=int32)']


def test_the_none_size_is_symbolic_and_never_a_number():
    seen = {}

    @tp.function(input_signature=[tp.TensorSpec([None, 3, 4])])
    def f(x):
        d = x.shape[0]
        seen["shape"], seen["rank"] = x.shape, x.shape.rank
        seen["defined"] = x.shape.is_fully_defined()
        seen["flat"] = tp.reshape(x, (d * 3, 4)).shape  # arithmetic on it stays symbolic
        seen["equal"] = d == x.shape[0] and d != 1 and d == None  # noqa: E711 (TF's None)
        seen["d"] = d
        return tp.reduce_sum(tp.reshape(x, (-1, 12)), axis=1)

    np.testing.assert_array_equal(f(tp.ones((5, 3, 4))).numpy(), np.full(5, 12.0))
    assert str(seen["shape"]) == "(None, 3, 4)" and seen["rank"] == 3
    assert seen["defined"] is False and str(seen["flat"]) == "(None, 4)" and seen["equal"]
    assert f.experimental_get_tracing_count() == 1
    for use in (int, float, range, bool, lambda v: 1.0 / v, lambda v: np.zeros((v, 2)),
                lambda v: v * v, lambda v: v // 7, lambda v: v > 3):
        with pytest.raises(TypeError, match="None dimension"):
            use(seen["d"])


def test_a_function_that_needs_the_size_as_a_number_is_traced_per_size():
    # TensorFlow: x.shape[0] is None in the trace, so 1 / x.shape[0] raises there. Here the
    # symbolic trace gives up and the first two sizes are traced (three runs of the Python
    # function), then every size replays; the values are right.
    traces = []

    @tp.function(input_signature=[tp.TensorSpec([None], tp.float32)])
    def f(x):
        traces.append(1)
        return tp.reduce_sum(x) / x.shape[0]

    for n in (3, 5, 7, 11, 2, 64):
        a = np.arange(n, dtype="f4") ** 2
        assert float(f(tp.constant(a))) == pytest.approx(a.mean(), rel=1e-6)
    assert len(traces) == f.experimental_get_tracing_count() == 3


def test_variables_created_in_a_symbolic_trace_that_gives_up_are_created_once():
    made = []

    class Scale(tp.Module):
        def __init__(self):
            super().__init__()
            self.w = None

        @tp.function(input_signature=[tp.TensorSpec([None, 2])])
        def __call__(self, x):
            if self.w is None:
                self.w = tp.Variable(tp.ones((2,)) * 3.0)
                made.append(self.w)
            return tp.reduce_sum(x * self.w) / x.shape[0]  # (needs the size: per size)

    s = Scale()
    for n in (2, 4, 6):
        assert float(s(tp.ones((n, 2)))) == 6.0
    assert len(made) == 1


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
    assert traced.experimental_get_tracing_count() == 1
    for u, v in zip(models[0].variables, models[1].variables):
        np.testing.assert_array_equal(u.numpy(), v.numpy())


_XENT = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _train_step(side, x, y):
    """One step of a (model, optimizer, metric) side, as Keras's train_function runs it:
    ``(loss, logits, metric result)``; a Mean metric tracks the loss, another the logits."""
    model, opt, metric = side
    with tp.GradientTape() as tape:
        out = model(x, training=True)
        loss = _XENT(y, out)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    if type(metric) is keras.metrics.Mean:
        metric.update_state(loss)
    else:
        metric.update_state(y, out)
    return loss, out, metric.result()


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
    sides = [(make(), SGD(0.1, momentum=0.9), keras.metrics.SparseCategoricalAccuracy())
             for _ in range(2)]
    step = tp.function(lambda x, y: _train_step(sides[0], x, y), **{flag: True})
    rng = np.random.default_rng(1)
    for n in [16, 16, 6, 9, 16, 4, 2, 13]:
        x, y = rng.normal(size=(n, 8, 8, 1)).astype("f4"), rng.integers(0, 3, n)
        a = step(tp.constant(x), tp.constant(y))
        b = _train_step(sides[1], tp.constant(x), tp.constant(y))
        assert (float(a[0]), float(a[2])) == (float(b[0]), float(b[2])), n
    assert step.experimental_get_tracing_count() == 2
    for u, v in zip(sides[0][0].variables, sides[1][0].variables):
        np.testing.assert_array_equal(u.numpy(), v.numpy())


def test_a_cnn_step_with_a_none_batch_is_traced_once_and_equals_eager_bit_for_bit():
    def make():
        m = keras.Sequential([
            keras.layers.Conv2D(4, 3, activation="relu", seed=3),
            keras.layers.BatchNormalization(), keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(), keras.layers.Dense(3, seed=4)])
        m.build((None, 8, 8, 1))
        return m
    sides = [(make(), Adam(0.01), keras.metrics.Mean()) for _ in range(2)]
    printed = []

    def traced_body(x, y):
        printed.append(out := _train_step(sides[0], x, y))
        return out

    step = tp.function(traced_body, input_signature=[tp.TensorSpec([None, 8, 8, 1]),
                                                     tp.TensorSpec([None], tp.int64)])
    rng = np.random.default_rng(1)
    for n in [16, 16, 6, 9, 16, 4, 2, 13, 33]:
        x, y = rng.normal(size=(n, 8, 8, 1)).astype("f4"), rng.integers(0, 3, n)
        a = step(tp.constant(x), tp.constant(y))
        b = _train_step(sides[1], tp.constant(x), tp.constant(y))
        assert float(a[0]) == float(b[0]), n
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert step.experimental_get_tracing_count() == len(printed) == 1
    assert str(printed[0][1].shape) == "(None, 3)"
    assert float(sides[0][2].result()) == float(sides[1][2].result())
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
    # (one symbolic trace that gives up on the size as a number, then one per size)
    assert unbiased_var.experimental_get_tracing_count() == 5
    assert branch.experimental_get_tracing_count() == 4


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
    assert f.experimental_get_tracing_count() == 1


def test_a_concrete_function_of_a_none_dimension_takes_any_size():
    f = tp.function(lambda x: x * 2.0 + tp.reduce_mean(x))
    cf = f.get_concrete_function(tp.TensorSpec([None], tp.float32))
    for n in (2, 5, 9):
        a = np.arange(n, dtype="f4")
        np.testing.assert_allclose(cf(tp.constant(a)).numpy(), a * 2 + a.mean(), rtol=1e-6)
    with pytest.raises(TypeError, match="traced for"):
        cf(tp.ones((2, 2)))
    # traced once, symbolically (TF: one concrete function for TensorSpec([None])); its
    # signature keeps the None, and direct calls of that rank and dtype reuse it
    assert [str(s.shape) for s in cf.structured_input_signature] == ["(None,)"]
    np.testing.assert_allclose(f(tp.constant([1.0, 3.0, 5.0])).numpy(), [5.0, 9.0, 13.0])
    assert f.experimental_get_tracing_count() == 1


def test_size_one_and_mixed_sizes_are_traced_exactly():
    f = tp.function(lambda x, y: tp.reduce_sum(x) + tp.reduce_mean(y),
                    input_signature=[tp.TensorSpec([None]), tp.TensorSpec([None])])
    assert float(f(tp.ones((1,)), tp.ones((1,)))) == 2.0   # size 1: no point to fit from
    assert float(f(tp.ones((3,)), tp.ones((5,)))) == 4.0   # two sizes at once: exact
    for n in (4, 6, 8):
        assert float(f(tp.ones((n,)), tp.ones((n,)))) == n + 1.0
    assert f.experimental_get_tracing_count() == 3  # 1, (3, 5), then n symbolically


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
    assert step.experimental_get_tracing_count() == 1
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
    assert f.experimental_get_tracing_count() == 1


def test_a_plan_made_for_a_new_size_checks_its_shapes_on_its_first_run():
    # x[:10] traced at sizes 3 and 7 looks like "n rows"; the plan made for 32 finds 10 rows
    # on its checked first run, before any state change: that size is traced instead, and
    # the function is traced per size from then on. Every result is right.
    traces = []

    @tp.function(input_signature=[tp.TensorSpec([None, 2])])
    def f(x):
        traces.append(1)
        return x[:10] * 2.0

    for n in (3, 5, 32, 40, 4, 32):
        x = np.arange(2 * n, dtype="f4").reshape(n, 2)
        np.testing.assert_array_equal(f(tp.constant(x)).numpy(), x[:10] * 2)
    assert len(traces) == f.experimental_get_tracing_count() == 4  # 3 (symbolic), 32, 40, 4


def test_a_shape_mismatch_after_a_state_change_raises_instead_of_retrying():
    v = tp.Variable(0.0)

    @tp.function(input_signature=[tp.TensorSpec([None, 2])])
    def g(x):
        v.assign_add(1.0)
        return x[:10] * 2.0

    g(tp.ones((3, 2)))
    g(tp.ones((5, 2)))
    with pytest.raises(RuntimeError, match=r"getitem gave shape \(10, 2\) where the plan made "
                                           r"for this size expected \(32, 2\)"):
        g(tp.ones((32, 2)))
    np.testing.assert_array_equal(g(tp.ones((32, 2))).numpy(), np.full((10, 2), 2.0))
    assert float(v) == 4.0


_DYNAMIC = {  # TensorFlow's idioms for the batch size inside a None-batch tf.function
    "reshape(x, [tf.shape(x)[0], -1])": lambda x: tp.reshape(x, [tp.shape(x)[0], -1]),
    "zeros([tf.shape(x)[0], 3])": lambda x: tp.zeros([tp.shape(x)[0], 3]) + x[:, :3],
    "zeros((x.shape[0], 3))": lambda x: tp.zeros((x.shape[0], 3)) + x[:, 1:],
    "ones(tf.shape(x))": lambda x: tp.ones(tp.shape(x)) * x,
    "fill([n, 2], 2.0)": lambda x: tp.fill([tp.shape(x)[0], 2], 2.0),
    "broadcast_to(v, tf.shape(x))": lambda x: tp.broadcast_to(tp.constant([1.0, 2, 3, 4]),
                                                              tp.shape(x)) * x,
    "zeros_like / ones_like": lambda x: tp.zeros_like(x) + tp.ones_like(x) * x,
    "n as a float": lambda x: tp.reduce_sum(x) / tp.cast(tp.shape(x)[0] * 2, tp.float32),
    "pad (n + 2 rows)": lambda x: tp.pad(x, [[1, 1], [0, 0]]) * 2.0,
    "tile (2n rows)": lambda x: tp.tile(x, [2, 1]),
    "gather rows": lambda x: tp.gather(x, tp.cast(tp.abs(x[:, 0]) * 0, tp.int32)),
    "l2_normalize": lambda x: tp.nn.l2_normalize(x, axis=1),
}


@pytest.mark.parametrize("name", list(_DYNAMIC))
def test_tensorflow_s_dynamic_shape_idioms_trace_once(name):
    fn = _DYNAMIC[name]
    f = tp.function(fn, input_signature=[tp.TensorSpec([None, 4])])
    for n in (5, 8, 3, 11, 2):
        x = tp.constant(np.random.default_rng(n).normal(size=(n, 4)).astype("f4"))
        np.testing.assert_array_equal(f(x).numpy(), fn(x).numpy())
    assert f.experimental_get_tracing_count() == 1


def test_random_draws_of_a_none_batch_are_drawn_in_each_call_s_shape():
    f = tp.function(lambda x: x + tp.random.uniform(tp.shape(x)),
                    input_signature=[tp.TensorSpec([None, 2])])
    outs = [f(tp.zeros((n, 2))).numpy() for n in (3, 5, 3, 40)]
    assert [o.shape for o in outs] == [(3, 2), (5, 2), (3, 2), (40, 2)]
    assert not np.array_equal(outs[0], outs[2]) and 0.0 <= outs[3].min() < outs[3].max() < 1.0
    assert f.experimental_get_tracing_count() == 1


def test_a_shape_computed_from_values_is_refused_not_frozen():
    f = tp.function(lambda x: tp.zeros([tp.cast(tp.reduce_max(x), tp.int32), 2]),
                    input_signature=[tp.TensorSpec([None])])
    with pytest.raises(TraceError):
        f(tp.constant([2.0, 3.0]))


def test_an_integer_mean_over_a_none_batch_traces_once():
    f = tp.function(lambda x: tp.reduce_mean(x, axis=0),
                    input_signature=[tp.TensorSpec([None, 2], tp.int32)])
    for n in (3, 5, 8):
        x = np.arange(2 * n, dtype="i4").reshape(n, 2)
        np.testing.assert_array_equal(f(tp.constant(x)).numpy(), x.sum(0) // n)
    assert f.experimental_get_tracing_count() == 1
