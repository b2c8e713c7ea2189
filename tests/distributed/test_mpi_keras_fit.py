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


@pytest.mark.mpi
def test_horovods_keras_example_runs_as_written(comm, tmp_path):
    # horovod/examples/tensorflow2/tensorflow2_keras_mnist.py with only the import changed:
    # each rank's own repeated, shuffled dataset, steps_per_epoch, Horovod's callbacks, and
    # ModelCheckpoint added on rank 0 only (it must not be a collective there).
    import tapeflow as tf
    import tapeflow.distributed as hvd

    x, y = _data()
    folder = comm.broadcast_object(str(tmp_path), root=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().shuffle(
        200, seed=comm.rank).batch(16)
    model = tf.keras.Sequential([tf.keras.layers.Dense(8, activation="relu", seed=comm.rank),
                                 tf.keras.layers.Dense(3, seed=comm.rank)])
    scaled_lr = 0.01 * hvd.size()
    opt = hvd.DistributedOptimizer(tf.optimizers.Adam(scaled_lr))
    model.compile(loss=tf.losses.SparseCategoricalCrossentropy(from_logits=True),
                  optimizer=opt, metrics=["accuracy"], experimental_run_tf_function=False)
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                 hvd.callbacks.MetricAverageCallback(),
                 hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr,
                                                          warmup_epochs=1)]
    if hvd.rank() == 0:
        callbacks.append(tf.keras.callbacks.ModelCheckpoint(folder + "/ckpt-{epoch}.keras"))
    history = model.fit(dataset, steps_per_epoch=6 // hvd.size(), callbacks=callbacks,
                        epochs=3, verbose=0)
    assert len(history.history["loss"]) == 3
    weights = [v.numpy() for v in model.variables]
    for w, other in zip(weights, comm.broadcast_object([w.tolist() for w in weights], 0)):
        np.testing.assert_array_equal(w, np.asarray(other, w.dtype))  # one model everywhere
    comm.barrier()
    if comm.rank == 0:
        saved = tf.keras.models.load_model(f"{folder}/ckpt-3.keras")
        np.testing.assert_array_equal(saved.predict(x, verbose=0),
                                      model.predict(x, verbose=0))
