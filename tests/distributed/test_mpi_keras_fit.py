"""``model.fit`` under ``mpiexec -n N``: global-batch semantics (the same trajectory as one
process), every rank starting from rank 0's weights, and equal logs on every rank."""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.distributed import LocalCommunicator


def _data(n: int = 200):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    centers = np.eye(3, 4, dtype=np.float32) * 3
    return (centers[y] + rng.normal(0, 0.7, (n, 4))).astype(np.float32), y.astype(np.int64)


def _model(seed: int):
    model = tp.nn.Sequential([tp.nn.Dense(8, activation="relu", input_dim=4, seed=seed),
                              tp.nn.Dense(3, input_dim=8, seed=seed + 100)])
    model.compile(optimizer=tp.optimizers.SGD(learning_rate=0.2, momentum=0.9),
                  loss=tp.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


@pytest.mark.mpi
def test_fit_on_n_ranks_follows_the_single_process_trajectory(comm):
    x, y = _data()
    xv, yv = _data(60)
    reference = _model(seed=0)   # what one process does with rank 0's initial weights
    ref = reference.fit(x, y, batch_size=40, epochs=3, validation_data=(xv, yv), verbose=0,
                        comm=LocalCommunicator(), seed=3)
    model = _model(seed=comm.rank)  # different on each rank: fit starts from rank 0's
    got = model.fit(x, y, batch_size=40, epochs=3, validation_data=(xv, yv), verbose=0,
                    comm=comm, seed=3)
    for key in ref.history:
        np.testing.assert_allclose(got.history[key], ref.history[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # every rank holds the same weights and the same History
    gathered = comm.allgather_object([got.history["loss"], float(model.get_weights()[0].sum())])
    assert all(g == gathered[0] for g in gathered)
    logs = model.evaluate(xv, yv, return_dict=True, verbose=0, comm=comm)
    assert logs == pytest.approx(reference.evaluate(xv, yv, return_dict=True, verbose=0,
                                                    comm=LocalCommunicator()), rel=1e-4)


@pytest.mark.mpi
def test_horovod_callbacks_under_mpi(comm):
    x, y = _data()
    model = _model(seed=comm.rank)
    cbs = tp.keras.callbacks
    warmup = cbs.LearningRateWarmupCallback(initial_lr=0.1 * comm.size, warmup_epochs=2)
    seen = []

    class Rate(cbs.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(self.trainer.optimizer.learning_rate)

    history = model.fit(x, y, batch_size=50, epochs=3, verbose=0, comm=comm,
                        callbacks=[cbs.BroadcastGlobalVariablesCallback(0),
                                   cbs.MetricAverageCallback(), warmup, Rate()])
    assert seen[0] == pytest.approx(0.1) and seen[-1] == pytest.approx(0.1 * comm.size)
    assert all(a <= b + 1e-12 for a, b in zip(seen, seen[1:]))  # rises, then holds
    gathered = comm.allgather_object([history.history["loss"], seen])
    assert all(g == gathered[0] for g in gathered)
