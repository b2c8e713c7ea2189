"""The kernels a ``tp.function`` plan picks: same bits as eager, buffers overwritten only when
nothing reads them afterwards."""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.optimizers import SGD

_SPECIALS = [-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45, 3.0, -3.0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_replay_has_eager_bits_for_nan_signed_zero_and_subnormals(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 37)).astype(dtype)
    x.flat[:: 7] = np.resize(np.array(_SPECIALS, dtype), x.flat[:: 7].shape)
    f = tp.function(lambda a: tp.nn.relu(a * 2.0))
    for _ in range(2):  # first call and a replay
        got = f(tp.constant(x)).numpy()
        want = tp.nn.relu(tp.constant(x) * 2.0).numpy()
        assert got.dtype == want.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got.view(f"u{got.itemsize}"),
                                      want.view(f"u{want.itemsize}"))


class _RecordingSGD(SGD):
    """Plain SGD that remembers which gradient buffers the plan let its kernel overwrite."""

    def _tp_replay_apply_gradients(self, grads_and_vars, _tp_scratch=()):
        self.scratch = tuple(_tp_scratch)
        return super()._tp_replay_apply_gradients(grads_and_vars, _tp_scratch=_tp_scratch)


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return [tp.Variable(rng.normal(size=s).astype("f4") * 0.3)
            for s in [(6, 5), (5,), (5, 3), (3,)]]


@pytest.mark.parametrize("returned", [(), (0,), (1, 3)])
def test_sgd_overwrites_only_gradient_buffers_nothing_reads_afterwards(returned):
    rng = np.random.default_rng(1)
    batches = [(rng.normal(size=(8, 6)).astype("f4"), rng.integers(0, 3, 8).astype("i4"))
               for _ in range(3)]
    runs = []
    for traced in (False, True):
        vs, opt = _model(), _RecordingSGD(0.1)

        def step(x, y):
            with tp.GradientTape() as tape:
                h = tp.nn.relu(x @ vs[0] + vs[1])
                loss = tp.reduce_mean(
                    tp.nn.sparse_softmax_cross_entropy_with_logits(y, h @ vs[2] + vs[3]))
            grads = tape.gradient(loss, vs)
            opt.apply_gradients(zip(grads, vs))
            return loss, [grads[i] for i in returned]
        fn = tp.function(step) if traced else step
        outs = [fn(tp.constant(x), tp.constant(y)) for x, y in batches]
        runs.append((outs, [v.numpy() for v in vs], opt))
    (o_e, v_e, _), (o_f, v_f, opt_f) = runs
    for (l_e, g_e), (l_f, g_f) in zip(o_e, o_f):
        assert float(l_e) == float(l_f)
        for a, b in zip(g_e, g_f):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(v_e, v_f):
        np.testing.assert_array_equal(a, b)
    # a gradient the function returns is an output: its buffer is not scaled in place
    assert opt_f.scratch == tuple(i not in returned for i in range(4))


def test_sgd_gets_no_scratch_for_one_gradient_given_for_two_variables():
    x = np.linspace(-1, 1, 4, dtype="f4")
    runs = []
    for traced in (False, True):
        a, b = tp.Variable(np.ones(4, "f4")), tp.Variable(np.full(4, 2.0, "f4"))
        opt = _RecordingSGD(0.5)

        def step(x):
            with tp.GradientTape() as tape:
                loss = tp.reduce_sum(tp.exp(a * x))
            g = tape.gradient(loss, a)  # exp(a x) * x: a buffer of the plan
            opt.apply_gradients([(g, a), (g, b)])
        fn = tp.function(step) if traced else step
        for _ in range(3):
            fn(tp.constant(x))
        runs.append((a.numpy(), b.numpy(), getattr(opt, "scratch", None)))
    (a_e, b_e, _), (a_f, b_f, scratch) = runs
    np.testing.assert_array_equal(a_e, a_f)
    np.testing.assert_array_equal(b_e, b_f)
    assert scratch == ()  # the same buffer twice: neither may be scaled in place


@pytest.mark.parametrize("with_loss", [False, True])
def test_xent_gradient_kernel_with_and_without_the_forward_in_the_plan(with_loss):
    rng = np.random.default_rng(2)
    w = tp.Variable(rng.normal(size=(6, 4)).astype("f4"))

    def grad(x, y):
        with tp.GradientTape() as tape:
            loss = tp.reduce_mean(tp.nn.sparse_softmax_cross_entropy_with_logits(y, x @ w))
        g = tape.gradient(loss, w)
        return (loss, g) if with_loss else (g,)  # without the loss its forward node is dead
    traced = tp.function(grad)
    for _ in range(3):
        x = tp.constant(rng.normal(size=(8, 6)).astype("f4"))
        y = tp.constant(rng.integers(0, 4, 8).astype("i4"))
        for a, b in zip(traced(x, y), grad(x, y)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
