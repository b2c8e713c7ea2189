"""Trainer steps through tp.function: the same losses, metrics and weights as eager steps."""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import optimizers
from tapeflow.nn.layers import Dense, Dropout, Flatten, Sequential
from tapeflow.training import Trainer

N_FEATURES, N_CLASSES, N_TRAIN, BATCH = 12, 4, 90, 16  # a ragged last batch of 10


def _data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n).astype(np.int64)
    centres = np.random.default_rng(0).normal(size=(N_CLASSES, N_FEATURES))
    return (centres[y] + 0.5 * rng.normal(size=(n, N_FEATURES))).astype(np.float32), y


def _model(kind):
    if kind == "mlp":
        return tp.nn.mlp([N_FEATURES, 10, N_CLASSES], seed=0)
    rng = np.random.default_rng(0)
    return Sequential([Flatten(), Dense(10, activation="relu", input_dim=N_FEATURES, seed=rng),
                       Dropout(0.25), Dense(N_CLASSES, input_dim=10, seed=rng)])


@pytest.mark.parametrize("kind,make_opt", [("mlp", lambda: optimizers.SGD(0.1)),
                                           ("mlp", lambda: optimizers.Adam(0.01)),
                                           ("dropout", lambda: optimizers.SGD(0.1, momentum=0.9))])
def test_traced_steps_train_exactly_like_eager_steps(kind, make_opt):
    (x, y), (xt, yt) = _data(N_TRAIN, 1), _data(32, 2)
    results = []
    for use_function in (False, True):
        tp.random.set_seed(3)  # dropout masks come from the global generator
        model = _model(kind)
        trainer = Trainer(model, make_opt(), x, y, xt, yt, batch_size=BATCH, seed=5,
                          progress=False, log=lambda s: None, log_every=0,
                          use_function=use_function)
        epochs = trainer.fit(2)
        results.append(([(e.train_loss, e.train_accuracy, e.test_loss) for e in epochs],
                        [v.numpy() for v in model.trainable_variables], trainer))
    (m_e, w_e, _), (m_f, w_f, traced) = results
    assert m_e == m_f
    for a, b in zip(w_e, w_f):
        np.testing.assert_array_equal(a, b)
    # one trace for the full batches, one for the ragged last batch
    assert traced._step_fn.experimental_get_tracing_count() == 2
    assert m_f[1][0] < m_f[0][0]
