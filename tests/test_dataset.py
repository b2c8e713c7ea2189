"""tp.data.Dataset against tf.data's documented behaviour (tf.data.Dataset API docs and the
"tf.data: Build TensorFlow input pipelines" guide), and the TensorFlow 2 quickstart for
experts run with only the import changed."""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp

Dataset = tp.data.Dataset


def _lists(ds):
    return [_plain(e) for e in ds]


def _plain(e):
    if isinstance(e, tuple):
        return tuple(_plain(v) for v in e)
    if isinstance(e, dict):
        return {k: _plain(v) for k, v in e.items()}
    return e.numpy().tolist()


def test_sources_slice_and_yield_tensors():
    ds = Dataset.from_tensor_slices(([1, 2, 3], [[4, 5], [6, 7], [8, 9]]))
    assert [_plain(e) for e in ds] == [(1, [4, 5]), (2, [6, 7]), (3, [8, 9])]
    assert all(isinstance(v, tp.Tensor) for e in ds for v in e)
    d = Dataset.from_tensor_slices({"a": np.arange(2), "b": np.ones((2, 3), "f4")})
    assert [_plain(e) for e in d] == [{"a": 0, "b": [1, 1, 1]}, {"a": 1, "b": [1, 1, 1]}]
    assert [_plain(e) for e in Dataset.range(1, 8, 3)] == [1, 4, 7]
    assert _plain(next(iter(Dataset.from_tensors([1, 2])))) == [1, 2]
    assert [_plain(e) for e in Dataset.from_generator(lambda: iter([[1], [2, 3]]))] == \
        [[1], [2, 3]]
    with pytest.raises(ValueError, match="different first dimensions \\[3, 2\\]"):
        Dataset.from_tensor_slices((np.zeros(3), np.zeros(2)))


def test_batch_map_filter_take_skip_repeat_shard_enumerate_zip_concatenate():
    ds = Dataset.range(10)
    assert [_plain(b) for b in ds.batch(4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [_plain(b) for b in ds.batch(4, drop_remainder=True)] == [[0, 1, 2, 3],
                                                                      [4, 5, 6, 7]]
    assert [_plain(e) for e in ds.map(lambda x: x * 2).filter(lambda x: x > 10)] == \
        [12, 14, 16, 18]
    pairs = Dataset.from_tensor_slices((np.arange(3), np.arange(3) * 10))
    assert [_plain(e) for e in pairs.map(lambda x, y: x + y)] == [0, 11, 22]  # (unpacked)
    assert [_plain(e) for e in ds.skip(7)] == [7, 8, 9]
    assert [_plain(e) for e in ds.take(2).repeat(2)] == [0, 1, 0, 1]
    assert [_plain(e) for e in ds.shard(3, 1)] == [1, 4, 7]
    assert [_plain(e) for e in ds.take(2).enumerate(5)] == [(5, 0), (6, 1)]
    assert [_plain(e) for e in Dataset.zip((ds.take(2), ds.skip(8)))] == [(0, 8), (1, 9)]
    assert [_plain(e) for e in ds.take(1).concatenate(ds.skip(9))] == [0, 9]
    assert [_plain(e) for e in ds.batch(3).unbatch()] == list(range(10))
    assert list(ds.take(2).as_numpy_iterator()) == [0, 1]
    assert int(ds.batch(3).cardinality()) == 4 and len(ds.shard(3, 1)) == 3
    assert int(ds.repeat().cardinality()) == tp.data.experimental.INFINITE_CARDINALITY
    assert int(ds.filter(lambda x: x > 2).cardinality()) == -2
    with pytest.raises(TypeError, match="infinite"):
        len(ds.repeat())
    assert int(ds.reduce(tp.constant(0, tp.int64), lambda s, x: s + x)) == 45
    assert ds.prefetch(tp.data.AUTOTUNE).cache() is ds


def test_shuffle_is_a_permutation_reshuffled_each_iteration_and_seeded():
    ds = Dataset.range(50).shuffle(50, seed=3)
    first, second = [int(x) for x in ds], [int(x) for x in ds]
    assert sorted(first) == sorted(second) == list(range(50)) and first != second
    assert first == [int(x) for x in Dataset.range(50).shuffle(50, seed=3)]
    fixed = Dataset.range(50).shuffle(50, seed=3, reshuffle_each_iteration=False)
    assert [int(x) for x in fixed] == [int(x) for x in fixed]
    # A buffer of 2: an element moves at most a few places forward (TF's buffered shuffle).
    small = [int(x) for x in Dataset.range(100).shuffle(2, seed=0)]
    assert sorted(small) == list(range(100))
    assert all(small.index(i) >= i - 1 for i in range(100))


def test_tensorflows_quickstart_for_experts_runs_as_written():
    tf = tp  # only the import differs
    rng = np.random.default_rng(0)
    x_train = rng.random((96, 28, 28)).astype("f4")
    y_train = (x_train.reshape(96, -1).mean(1) > 0.5).astype("int64")
    x_train = x_train[..., tf.newaxis]
    train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(10000).batch(32)

    class MyModel(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.conv1 = tf.keras.layers.Conv2D(4, 3, activation="relu")
            self.flatten = tf.keras.layers.Flatten()
            self.d1 = tf.keras.layers.Dense(16, activation="relu")
            self.d2 = tf.keras.layers.Dense(10)

        def call(self, x):
            x = self.conv1(x)
            x = self.flatten(x)
            x = self.d1(x)
            return self.d2(x)

    model = MyModel()
    loss_object = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = tf.keras.optimizers.Adam()
    train_loss = tf.keras.metrics.Mean(name="train_loss")
    train_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="train_accuracy")

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            loss = loss_object(labels, predictions)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        train_loss(loss)
        train_accuracy(labels, predictions)

    losses = []
    for epoch in range(3):
        train_loss.reset_state()
        train_accuracy.reset_state()
        for images, labels in train_ds:
            train_step(images, labels)
        losses.append(float(train_loss.result()))
    assert losses[-1] < losses[0]
    assert train_step.experimental_get_tracing_count() == 1  # 96 = 3 full batches of 32


def test_fit_takes_a_batched_dataset_in_its_batches():
    x = np.random.default_rng(1).normal(size=(40, 3)).astype("f4")
    y = (x.sum(1) > 0).astype("int64")
    model = tp.keras.Sequential([tp.keras.layers.Dense(2, input_shape=(3,))])
    model.compile(optimizer="sgd", loss=tp.keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    seen = []

    class Count(tp.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)
    model.fit(Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0,
              callbacks=[Count()])
    assert len(seen) == 5  # 40 samples in batches of 8, not Keras's default 32
    loss, acc = model.evaluate(Dataset.from_tensor_slices((x, y)).batch(16), verbose=0)
    assert 0.0 <= acc <= 1.0 and loss > 0
