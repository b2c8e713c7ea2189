"""Keras's model API on tapeflow models: compile/fit/evaluate/predict, save/load_model, and the
callbacks, all running the one training loop (tapeflow.training.Trainer)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import checkpoint as ckpt
from tapeflow.training import Trainer

keras = tp.keras


def _blobs(n: int = 240, seed: int = 0):
    """Three Gaussian blobs in 4-D: learnable to ~100 % in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.array([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]], np.float32)
    return (centers[y] + rng.normal(0, 0.7, (n, 4))).astype(np.float32), y.astype(np.int64)


def _model(seed: int = 0):
    return tp.nn.Sequential([tp.nn.Dense(16, activation="relu", input_dim=4, seed=seed),
                             tp.nn.Dense(3, input_dim=16, seed=seed + 1)])


def _compiled(seed: int = 0, optimizer=None):
    model = _model(seed)
    model.compile(optimizer=optimizer or tp.optimizers.SGD(learning_rate=0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


X, Y = _blobs()
XV, YV = _blobs(90, seed=1)


def test_fit_returns_keras_history_and_learns():
    model = _compiled()
    history = model.fit(X, Y, batch_size=32, epochs=4, validation_data=(XV, YV), verbose=0)
    assert isinstance(history, keras.callbacks.History)
    assert sorted(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert history.epoch == [0, 1, 2, 3]
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy"][-1] > 0.9
    assert history.params["steps"] == 8  # ceil(240 / 32)


def test_fit_is_the_shared_training_loop():
    """fit == Trainer with the same loss, seed and batch: identical weights."""
    a, b = _compiled(), _model()
    a.fit(X, Y, batch_size=32, epochs=2, verbose=0, seed=7)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    Trainer(b, tp.optimizers.SGD(learning_rate=0.1), X, Y, batch_size=32, seed=7,
            loss_fn=loss.call, progress=False, log=None).fit(2)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_validation_split_takes_the_last_samples_and_a_dataset_works():
    model = _compiled()
    history = model.fit(X, Y, batch_size=40, epochs=1, validation_split=0.25, verbose=0)
    manual = model.evaluate(X[180:], Y[180:], return_dict=True, verbose=0)
    assert history.history["val_loss"][-1] == pytest.approx(manual["loss"])
    batches = [(X[i:i + 60], Y[i:i + 60]) for i in range(0, 240, 60)]
    assert len(_compiled().fit(batches, epochs=2, verbose=0).history["loss"]) == 2


def test_evaluate_and_predict_agree_with_a_direct_computation():
    model = _compiled()
    model.fit(X, Y, epochs=2, verbose=0)
    logits = model(tp.constant(XV)).numpy()
    np.testing.assert_allclose(model.predict(XV, batch_size=7), logits, rtol=1e-6, atol=1e-6)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss, acc = model.evaluate(XV, YV, verbose=0)
    assert loss == pytest.approx(-log_p[np.arange(len(YV)), YV].mean(), rel=1e-5)
    assert acc == pytest.approx(np.mean(logits.argmax(1) == YV))
    assert model.evaluate(XV, YV, return_dict=True, verbose=0) == {"loss": loss,
                                                                   "accuracy": acc}


def test_compile_and_data_mistakes_are_clear():
    model = _model()
    with pytest.raises(RuntimeError, match=r"must call compile\(\) before fit\(\)"):
        model.fit(X, Y)
    with pytest.raises(ValueError, match="needs a loss"):
        model.compile(optimizer="adam")
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="x has 240 samples but y has 10"):
        model.fit(X, Y[:10])
    with pytest.raises(ValueError, match=r"validation_split must be in \[0, 1\)"):
        model.fit(X, Y, validation_split=1.5)


def test_save_and_load_model_continue_exactly(tmp_path):
    model = _compiled(optimizer=tp.optimizers.Adam(learning_rate=0.01))
    model.fit(X, Y, epochs=1, verbose=0, seed=1)
    path = tmp_path / "model.safetensors"
    model.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp left
    loaded = keras.models.load_model(path)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    one = model.fit(X, Y, epochs=1, verbose=0, seed=2).history
    two = loaded.fit(X, Y, epochs=1, verbose=0, seed=2).history  # optimizer state restored
    assert one == two
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a tapeflow model file"):
        keras.models.load_model(bad)


def test_a_lazily_built_model_saves_after_fit(tmp_path):
    model = tp.keras.Sequential([tp.keras.layers.Dense(8, activation="relu"),
                                 tp.keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(X, Y, epochs=1, verbose=0)
    model.save(tmp_path / "m.safetensors")
    loaded = keras.models.load_model(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(loaded.predict(XV), model.predict(XV))


def test_a_model_built_by_calling_it_saves_and_loads(tmp_path):
    # Keras's deferred build: a Sequential built by its first call (eagerly or in a traced
    # step with a None batch) records its input shape, so load_model can build it again.
    for traced in (False, True):
        model = tp.keras.Sequential([tp.keras.layers.Conv2D(2, 3, activation="relu"),
                                     tp.keras.layers.Flatten(), tp.keras.layers.Dense(3)])
        call = tp.function(model, input_signature=[tp.TensorSpec([None, 6, 6, 1])]) \
            if traced else model
        call(tp.ones((4, 6, 6, 1)))
        model.save(tmp_path / f"m{traced}.keras")
        loaded = keras.models.load_model(tmp_path / f"m{traced}.keras")
        x = tp.constant(np.random.default_rng(0).normal(size=(2, 6, 6, 1)).astype("f4"))
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


# --------------------------------------------------------------------------- callbacks
class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        self.calls, self.lrs = [], []

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(f"epoch_begin {epoch}")
        self.lrs.append(self.trainer.optimizer.current_learning_rate)

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append("batch")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"epoch_end {epoch} {sorted(logs)}")

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


def test_hooks_run_in_keras_order_and_the_scheduler_sets_the_rate():
    rec = _Recorder()
    sched = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    _compiled().fit(X, Y, batch_size=120, epochs=2, verbose=0, callbacks=[sched, rec])
    assert rec.calls == ["train_begin", "epoch_begin 0", "batch", "batch",
                         "epoch_end 0 ['accuracy', 'epoch_seconds', 'learning_rate', 'loss', "
                         "'samples_per_second']", "epoch_begin 1", "batch", "batch",
                         "epoch_end 1 ['accuracy', 'epoch_seconds', 'learning_rate', 'loss', "
                         "'samples_per_second']", "train_end"]
    assert rec.lrs == pytest.approx([0.1, 0.05])


def test_early_stopping_stops_and_restores_the_best_weights():
    model = _compiled()
    best = {}

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            best[epoch] = model.get_weights()

    stop = keras.callbacks.EarlyStopping(monitor="loss", mode="max", patience=2,
                                         restore_best_weights=True)
    history = model.fit(X, Y, epochs=20, verbose=0, callbacks=[Keep(), stop])
    assert len(history.epoch) == 3 and stop.stopped_epoch == 2  # loss falls: never "better"
    for a, b in zip(model.get_weights(), best[0]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(KeyError, match="'val_loss' is not in the logs"):
        _compiled().fit(X, Y, epochs=1, verbose=0,
                        callbacks=[keras.callbacks.EarlyStopping()])


def test_model_checkpoint_saves_atomically_with_the_checkpoint_module(tmp_path):
    best = keras.callbacks.ModelCheckpoint(tmp_path / "best", monitor="val_accuracy",
                                           save_best_only=True, keep=None)
    every = keras.callbacks.ModelCheckpoint(tmp_path / "steps", save_freq=4, keep=2)
    model = _compiled()
    history = model.fit(X, Y, batch_size=32, epochs=3, validation_data=(XV, YV), verbose=0,
                        callbacks=[best, every])
    acc = history.history["val_accuracy"]
    improved = [i for i in range(3) if acc[i] > max(acc[:i], default=-1)]
    assert len(best.saved) == len(improved)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "steps")] == \
        ["ckpt-000000020", "ckpt-000000024"]
    newest = ckpt.load(ckpt.latest(tmp_path / "steps"))
    for (name, var) in model.named_variables():
        np.testing.assert_array_equal(newest.tensors[f"model/{name}"], var.numpy())
    assert not [p for p in (tmp_path / "steps").iterdir() if p.name.startswith(".tmp")]


def test_model_checkpoint_cleans_killed_saves_and_refuses_a_second_run(tmp_path):
    junk = tmp_path / "ck" / ".tmp-ckpt-killed"
    junk.mkdir(parents=True)
    (junk / "tensors.safetensors").write_bytes(b"x" * 1000)
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(junk.exists())
            with pytest.raises(ckpt.CheckpointError, match="in use by another run"):
                ckpt.DirectoryLock(tmp_path / "ck").acquire()

    _compiled().fit(X, Y, epochs=1, verbose=0,
                    callbacks=[keras.callbacks.ModelCheckpoint(tmp_path / "ck"), Probe()])
    assert seen == [False]
    ckpt.DirectoryLock(tmp_path / "ck").acquire().release()  # released at the end


def test_csv_and_jsonl_loggers_write_one_row_per_epoch(tmp_path):
    model = _compiled()
    model.fit(X, Y, batch_size=60, epochs=2, verbose=0, validation_data=(XV, YV),
              callbacks=[keras.callbacks.CSVLogger(tmp_path / "log.csv"),
                         keras.callbacks.JSONLLogger(tmp_path / "log.jsonl")])
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "start" and [r["epoch"] for r in records[1:]] == [1, 2]
    assert float(rows[1]["val_loss"]) == pytest.approx(records[2]["val_loss"])


def test_verbose_1_draws_a_bar_and_prints_epoch_lines(capsys):
    _compiled().fit(X, Y, epochs=2, verbose=1, validation_data=(XV, YV))
    captured = capsys.readouterr()
    assert captured.out.count("epoch ") == 2 and "val loss" in captured.out
    assert "epoch 1/2" in captured.err  # tqdm's bar on stderr
    _compiled().fit(X, Y, epochs=1, verbose=0)
    assert capsys.readouterr() == ("", "")


class _Stub:
    """What the Horovod-style callbacks read from the loop, with a pretend world size."""

    def __init__(self, size: int):
        self.comm = type("C", (), {"size": size, "rank": 0,
                                   "allreduce": lambda self, x, op: x * 0 + 5.0})()
        self.optimizer = tp.optimizers.SGD(learning_rate=1.0)
        self.model, self.epoch, self.steps_per_epoch = _model(), 0, 10


def test_warmup_rises_from_lr_over_size_to_lr_like_horovod():
    t = _Stub(size=4)
    cb = keras.callbacks.LearningRateWarmupCallback(initial_lr=0.4, warmup_epochs=2)
    cb.set_trainer(t, {})
    seen = []
    for epoch in range(3):
        t.epoch = epoch
        for batch in (0, 5):
            cb.on_train_batch_begin(batch)
            seen.append(t.optimizer.learning_rate)
        cb.on_epoch_end(epoch)
    # lr = 0.4 / 4 * (e * 3 / 2 + 1) at e = 0, 0.5, 1, 1.5; then 0.4 held
    assert seen == pytest.approx([0.1, 0.175, 0.25, 0.325, 0.4, 0.4])


def test_metric_average_averages_numeric_logs_over_ranks():
    cb = keras.callbacks.MetricAverageCallback()
    cb.set_trainer(_Stub(size=2), {})
    logs = {"loss": 1.0, "accuracy": 0.5, "note": "x"}
    cb.on_epoch_end(0, logs)
    assert logs == {"loss": 5.0, "accuracy": 5.0, "note": "x"}  # the stub's "average"


def test_fit_steps_through_tp_function_unless_run_eagerly(monkeypatch):
    import tapeflow.training as training

    traced = []
    real = training.function
    monkeypatch.setattr(training, "function", lambda fn: traced.append(fn) or real(fn))
    eager = _model()
    eager.compile(optimizer=tp.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], run_eagerly=True)
    graph = _model()
    graph.compile(optimizer=tp.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    one = eager.fit(X, Y, epochs=2, verbose=0, seed=4).history
    assert traced == []
    two = graph.fit(X, Y, epochs=2, verbose=0, seed=4).history
    assert len(traced) == 1 and one == two
    for a, b in zip(eager.get_weights(), graph.get_weights()):
        np.testing.assert_array_equal(a, b)


class _Line(keras.Model):
    """TensorFlow's "basic training loops" model: y = w * x + b on 1-D data."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.w = tp.Variable(5.0)
        self.b = tp.Variable(0.0)

    def call(self, x):
        return self.w * x + self.b


def _line_data():
    x = np.linspace(-2, 2, 201).astype(np.float32)
    noise = np.random.default_rng(0).normal(size=201).astype(np.float32)
    return x, (x * 3.0 + 2.0 + noise).astype(np.float32)


@pytest.mark.parametrize("loss", [
    "mse", keras.losses.mean_squared_error, keras.losses.MeanSquaredError(),
    lambda y_true, y_pred: tp.reduce_mean(tp.square(y_true - y_pred)),  # a custom batch mean
])
@pytest.mark.parametrize("run_eagerly", [False, True])
def test_a_loss_of_1d_targets_or_a_batch_mean_is_the_batch_loss_like_keras(loss, run_eagerly):
    # Keras divides the sum of what the loss returns by its number of elements: MSE of 1-D
    # targets (one value for the batch) or a function returning the batch mean is the batch's
    # loss. It was taken as one example's loss, so fit saw it divided by the batch size.
    x, y = _line_data()
    model = _Line()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss=loss,
                  metrics=["mae"], run_eagerly=run_eagerly)
    history = model.fit(x, y, epochs=10, batch_size=1000, verbose=0)
    w, b, losses, maes = 5.0, 0.0, [], []
    for _ in range(10):  # full-batch gradient descent in float64
        err = w * x.astype(np.float64) + b - y
        losses.append(np.mean(err ** 2))
        maes.append(np.mean(np.abs(err)))
        w, b = w - 0.1 * np.mean(2 * err * x), b - 0.1 * np.mean(2 * err)
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-5)
    np.testing.assert_allclose(history.history["mae"], maes, rtol=1e-5)
    np.testing.assert_allclose([model.w.numpy(), model.b.numpy()], [w, b], rtol=1e-5)
    err = w * x + b - y
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), [np.mean(err ** 2),
                                                                 np.mean(np.abs(err))],
                               rtol=1e-5)


def test_per_output_losses_average_over_outputs_like_keras():
    # Values per example and output: Keras's sum_over_batch_size divides by all of them.
    x = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
    y = np.random.default_rng(2).normal(size=(40, 2)).astype(np.float32)
    model = tp.nn.Sequential([tp.nn.Dense(2, input_dim=4, seed=0)])
    model.compile(optimizer="sgd", loss=lambda t, p: tp.square(t - p))
    pred = model.predict(x, verbose=0)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(np.mean((pred - y) ** 2), rel=1e-5)


def test_save_weights_and_load_weights_round_trip_by_name(tmp_path):
    model = _compiled(seed=3)
    model.fit(X, Y, epochs=1, verbose=0)
    for name in ("w.weights.h5", "ckpt"):  # Keras 3's and TF's spellings: one format here
        model.save_weights(tmp_path / name)
        other = _model(seed=9)
        other.load_weights(tmp_path / name)
        np.testing.assert_array_equal(other.predict(XV, verbose=0),
                                      model.predict(XV, verbose=0))
    model.save(tmp_path / "whole.keras")
    other = _model(seed=9)
    other.load_weights(tmp_path / "whole.keras")  # a saved model's weights load too
    np.testing.assert_array_equal(other.predict(XV, verbose=0), model.predict(XV, verbose=0))
    wrong = tp.nn.Sequential([tp.nn.Dense(5, input_dim=4, seed=0)])
    with pytest.raises(ValueError, match="load_weights.*(missing|shape)"):
        wrong.load_weights(tmp_path / "ckpt")
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="no weights yet"):
        unbuilt.load_weights(tmp_path / "ckpt")
    with pytest.raises(FileExistsError):
        model.save_weights(tmp_path / "ckpt", overwrite=False)


def test_compiled_models_expose_optimizer_loss_and_metrics_names():
    model = _model()
    assert model.optimizer is None and model.metrics_names == []
    opt = tp.optimizers.Adam(0.01)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert model.optimizer is opt and model.metrics_names == ["loss", "accuracy"]
    assert model.loss is not None


def test_one_dimensional_inputs_are_one_feature_per_sample_like_tf_keras():
    # tf.keras's expand_1d: x of shape (n,) feeds a Dense as (n, 1) in fit/evaluate/predict.
    x = np.linspace(0, 1, 50).astype("f4")
    y = 2 * x + 1
    model = keras.Sequential([keras.layers.Dense(1, seed=0)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    history = model.fit(x, y, epochs=30, batch_size=50, verbose=0).history["loss"]
    assert history[-1] < 0.05 * history[0]
    assert model.predict(x[:3], verbose=0).shape == (3, 1)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(history[-1], rel=0.5)


def test_a_custom_loss_sees_targets_with_the_predictions_rank_like_keras():
    # 1-D targets against a Dense(1)'s (n, 1) predictions: Keras expands the targets before
    # any loss function, so `y_true - y_pred` is (n, 1), not a broadcast (n, n).
    x = np.random.default_rng(2).normal(size=(30, 3)).astype("f4")
    y = x @ np.array([1.0, -1.0, 0.5], "f4")
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(3,), seed=0)])
    model.compile(optimizer="sgd", loss=lambda t, p: tp.reduce_mean(tp.square(t - p)))
    pred = model.predict(x, verbose=0)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(np.mean((pred[:, 0] - y) ** 2),
                                                            rel=1e-5)


def test_model_checkpoint_takes_keras_file_templates(tmp_path):
    model = _compiled(seed=4)
    best = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.weights.h5"),
                                           monitor="val_accuracy", save_best_only=True,
                                           save_weights_only=True)
    every = keras.callbacks.ModelCheckpoint(str(tmp_path / "ep-{epoch:02d}-{loss:.2f}.keras"))
    history = model.fit(X, Y, epochs=3, validation_data=(XV, YV), verbose=0,
                        callbacks=[best, every])
    names = sorted(p.name for p in tmp_path.iterdir())
    losses = history.history["loss"]
    assert names == ["best.weights.h5"] + [f"ep-{e + 1:02d}-{losses[e]:.2f}.keras"
                                           for e in range(3)]
    last = keras.models.load_model(tmp_path / names[-1])
    np.testing.assert_array_equal(last.predict(XV, verbose=0), model.predict(XV, verbose=0))
    other = _model(seed=8)
    other.load_weights(tmp_path / "best.weights.h5")
    accuracy = np.mean(other.predict(XV, verbose=0).argmax(1) == YV)
    assert accuracy == pytest.approx(max(history.history["val_accuracy"]), abs=1e-6)


def test_fit_takes_an_endless_dataset_with_steps_per_epoch_and_refuses_what_it_cannot_do():
    model = _compiled(seed=5)
    endless = tp.data.Dataset.from_tensor_slices((X, Y)).repeat().shuffle(240, seed=0).batch(20)
    seen = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)
    model.fit(endless, steps_per_epoch=4, epochs=2, verbose=0, callbacks=[Count()])
    assert len(seen) == 8  # 4 steps of 20 samples per epoch
    with pytest.raises(ValueError, match="repeats for ever"):
        model.fit(endless, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="do not give batch_size"):
        model.fit(endless.take(2), batch_size=10, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch is for datasets"):
        model.fit(X, Y, steps_per_epoch=3, verbose=0)
    with pytest.raises(ValueError, match="class_weight is not supported"):
        model.fit(X, Y, class_weight={0: 1.0}, verbose=0)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['colour'\\]"):
        model.fit(X, Y, colour="red", verbose=0)
    model.fit(X, Y, epochs=1, verbose=0, workers=4, use_multiprocessing=False)  # (no effect)
