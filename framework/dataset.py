"""``tp.data.Dataset``: TensorFlow's ``tf.data`` input pipeline, in memory and in Python.

A Dataset is a re-iterable sequence of *elements* (a Tensor, or a tuple / dict / list nest of
them). Sources: ``from_tensor_slices`` (slices along the first axis), ``from_tensors`` (one
element), ``range``, ``from_generator``, ``zip``. Transformations return a new Dataset and
run lazily on each iteration: ``map``, ``filter``, ``shuffle``, ``batch``, ``unbatch``,
``take``, ``skip``, ``repeat``, ``shard``, ``enumerate``, ``concatenate``; ``prefetch``,
``cache`` and ``with_options`` keep the elements as they are (everything is in memory).

Semantics follow TensorFlow's: ``map(f)`` on a tuple element calls ``f(*element)``;
``shuffle(buffer_size)`` keeps a buffer of that many elements and yields a random one of it
(a uniform shuffle when the buffer holds the whole dataset), drawing a new order on every
iteration unless ``reshuffle_each_iteration=False``; ``batch`` stacks elements (the last
batch smaller unless ``drop_remainder``); ``shard(n, i)`` keeps every n-th element from the
i-th (as Horovod's examples shard by rank). Elements come out as Tensors; ``as_numpy_iterator``
gives NumPy arrays.

>>> import tapeflow as tp, numpy as np
>>> ds = tp.data.Dataset.from_tensor_slices((np.arange(5), np.arange(5) * 10)).batch(2)
>>> [(x.numpy().tolist(), y.numpy().tolist()) for x, y in ds]
[([0, 1], [0, 10]), ([2, 3], [20, 30]), ([4], [40])]
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

import numpy as np

from .tensor import Tensor, as_dtype, to_numpy

__all__ = ["Dataset", "AUTOTUNE", "INFINITE_CARDINALITY", "UNKNOWN_CARDINALITY"]

AUTOTUNE = -1
INFINITE_CARDINALITY = -1
UNKNOWN_CARDINALITY = -2


def _host(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return to_numpy(x._value)
    a = np.asarray(x)
    return a.astype(np.float32) if a.dtype == np.float64 and not isinstance(
        x, np.ndarray) else a  # (Python floats are float32, as tf.constant makes them)


# tf.data's structure: tuples and dicts (a Python list is one value, as TensorFlow reads it).
def _flatten(e: Any) -> list:
    if isinstance(e, tuple):
        return [leaf for v in e for leaf in _flatten(v)]
    if isinstance(e, dict):
        return [leaf for k in e for leaf in _flatten(e[k])]
    return [e]


def _pack(structure: Any, leaves: list) -> Any:
    it = iter(leaves)

    def build(s):
        if isinstance(s, tuple):
            items = [build(v) for v in s]
            return type(s)(*items) if hasattr(s, "_fields") else tuple(items)
        if isinstance(s, dict):
            return {k: build(s[k]) for k in s}
        return next(it)
    return build(structure)


def _map(fn: Callable, e: Any) -> Any:
    return _pack(e, [fn(v) for v in _flatten(e)])


def _as_tensors(element: Any) -> Any:
    return _map(lambda v: v if isinstance(v, Tensor) else Tensor(_host(v)), element)


class Dataset:
    """See the module docstring. Build one with a source (``from_tensor_slices``, ...)."""

    def __init__(self, make: Callable[[], Iterator], cardinality: int,
                 batch_size: int | None = None):
        self._make = make                 # () -> iterator of elements (host arrays nests)
        self._cardinality = cardinality   # >= 0, INFINITE_ or UNKNOWN_CARDINALITY
        self._batch_size = batch_size     # the last batch() size (Keras's fit uses it)

    # -- sources ----------------------------------------------------------------------------
    @staticmethod
    def from_tensor_slices(tensors: Any, name: str | None = None) -> "Dataset":
        """One element per index of the first axis of every leaf (all of one length)."""
        leaves = [_host(v) for v in _flatten(tensors)]
        if not leaves:
            raise ValueError("from_tensor_slices: got no tensors")
        if any(a.ndim == 0 for a in leaves):
            raise ValueError("from_tensor_slices: every component needs a first axis to "
                             f"slice; got shapes {[a.shape for a in leaves]}")
        lengths = {len(a) for a in leaves}
        if len(lengths) != 1:
            raise ValueError(f"from_tensor_slices: components have different first "
                             f"dimensions {[a.shape[0] for a in leaves]}; they must be equal")
        n = lengths.pop()

        def make():
            for i in range(n):
                yield _pack(tensors, [a[i] for a in leaves])
        return Dataset(make, n)

    @staticmethod
    def from_tensors(tensors: Any, name: str | None = None) -> "Dataset":
        """One element: ``tensors`` itself."""
        leaves = [_host(v) for v in _flatten(tensors)]
        return Dataset(lambda: iter([_pack(tensors, leaves)]), 1)

    @staticmethod
    def range(*args: int, output_type: Any = "int64", name: str | None = None) -> "Dataset":
        """``range(stop)``, ``range(start, stop[, step])``: int64 scalars, as Python's range."""
        r = range(*args)
        dtype = as_dtype(output_type)
        return Dataset(lambda: (np.asarray(i, dtype) for i in r), len(r))

    @staticmethod
    def from_generator(generator: Callable[[], Any], output_types: Any = None,
                       output_shapes: Any = None, args: Any = None,
                       output_signature: Any = None, name: str | None = None) -> "Dataset":
        """Elements from ``generator(*args)`` (called anew for each iteration)."""
        if not callable(generator):
            raise TypeError("from_generator: generator must be callable (a function "
                            "returning an iterator), as in TensorFlow")
        call_args = tuple(args or ())
        return Dataset(lambda: (_map(_host, e) for e in generator(*call_args)),
                       UNKNOWN_CARDINALITY)

    @staticmethod
    def zip(*datasets: Any, name: str | None = None) -> "Dataset":
        """Elements of several datasets side by side (a tuple, or the nest given)."""
        structure = datasets[0] if len(datasets) == 1 else datasets
        parts = _flatten(structure)
        if not all(isinstance(d, Dataset) for d in parts):
            raise TypeError("Dataset.zip takes Datasets (a tuple or a nest of them)")
        known = [d._cardinality for d in parts if d._cardinality >= 0]
        card = min(known) if known else (INFINITE_CARDINALITY if all(
            d._cardinality == INFINITE_CARDINALITY for d in parts) else UNKNOWN_CARDINALITY)
        return Dataset(lambda: (_pack(structure, list(items)) for items in
                                zip(*(iter(d._make()) for d in parts))), card)

    # -- transformations --------------------------------------------------------------------
    def map(self, map_func: Callable, num_parallel_calls: Any = None,
            deterministic: Any = None, name: str | None = None) -> "Dataset":
        """``map_func(element)``, or ``map_func(*element)`` for a tuple element."""
        def apply(e):
            out = map_func(*_as_tensors(e)) if isinstance(e, tuple) else map_func(
                _as_tensors(e))
            return _map(_host, out)
        return self._derived(lambda: map(apply, self._make()), self._cardinality)

    def filter(self, predicate: Callable, name: str | None = None) -> "Dataset":
        """The elements for which ``predicate`` is true (a scalar bool)."""
        def keep(e) -> bool:
            got = predicate(*_as_tensors(e)) if isinstance(e, tuple) else predicate(
                _as_tensors(e))
            value = _host(got)
            if value.shape != () or value.dtype != np.bool_:
                raise ValueError(f"Dataset.filter: the predicate must return a scalar bool, "
                                 f"got dtype {value.dtype} shape {value.shape}")
            return bool(value)
        card = self._cardinality if self._cardinality < 0 else UNKNOWN_CARDINALITY
        return self._derived(lambda: filter(keep, self._make()), card)

    def shuffle(self, buffer_size: int, seed: int | None = None,
                reshuffle_each_iteration: bool = True, name: str | None = None) -> "Dataset":
        """TensorFlow's buffered shuffle (see the module docstring)."""
        if int(buffer_size) < 1:
            raise ValueError(f"Dataset.shuffle: buffer_size must be at least 1, got "
                             f"{buffer_size}")
        size = int(buffer_size)
        if seed is None:
            from . import random as tp_random
            seed = int(tp_random.generator().integers(2 ** 31))
        epochs = itertools.count()

        def make():
            epoch = next(epochs) if reshuffle_each_iteration else 0
            rng = np.random.default_rng([int(seed), epoch])
            buffer: list = []
            for e in self._make():
                if len(buffer) < size:
                    buffer.append(e)
                    continue
                i = int(rng.integers(size))
                yield buffer[i]
                buffer[i] = e
            while buffer:
                i = int(rng.integers(len(buffer)))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        return self._derived(make, self._cardinality)

    def batch(self, batch_size: int, drop_remainder: bool = False,
              num_parallel_calls: Any = None, deterministic: Any = None,
              name: str | None = None) -> "Dataset":
        """Consecutive elements stacked into batches of ``batch_size``."""
        size = int(batch_size)
        if size < 1:
            raise ValueError(f"Dataset.batch: batch_size must be at least 1, got {batch_size}")

        def make():
            it = self._make()
            while True:
                chunk = list(itertools.islice(it, size))
                if not chunk or (drop_remainder and len(chunk) < size):
                    return
                leaves = [_flatten(e) for e in chunk]
                try:
                    stacked = [np.stack(parts) for parts in zip(*leaves)]
                except ValueError as e:
                    raise ValueError(f"Dataset.batch: elements of different shapes cannot be "
                                     f"stacked into one batch ({e})") from None
                yield _pack(chunk[0], stacked)
        card = self._cardinality
        if card >= 0:
            card = card // size if drop_remainder else -(-card // size)
        return self._derived(make, card, size)

    def unbatch(self, name: str | None = None) -> "Dataset":
        """The rows of every batch, one element each."""
        def make():
            for e in self._make():
                leaves = _flatten(e)
                for i in range(len(leaves[0]) if leaves else 0):
                    yield _pack(e, [a[i] for a in leaves])
        return self._derived(make, UNKNOWN_CARDINALITY)

    def take(self, count: int, name: str | None = None) -> "Dataset":
        count = int(count)
        card = self._cardinality if count < 0 else (
            count if self._cardinality in (INFINITE_CARDINALITY,) else
            min(count, self._cardinality) if self._cardinality >= 0 else UNKNOWN_CARDINALITY)
        return self._derived(lambda: itertools.islice(self._make(), count if count >= 0
                                                       else None), card)

    def skip(self, count: int, name: str | None = None) -> "Dataset":
        count = max(int(count), 0)
        card = max(self._cardinality - count, 0) if self._cardinality >= 0 else \
            self._cardinality
        return self._derived(lambda: itertools.islice(self._make(), count, None), card)

    def repeat(self, count: int | None = None, name: str | None = None) -> "Dataset":
        """The dataset ``count`` times (for ever with None or -1), re-iterated each time (a
        shuffle draws a new order per repetition)."""
        times = None if count is None or int(count) < 0 else int(count)

        def make():
            for _ in (itertools.count() if times is None else range(times)):
                yield from self._make()
        card = INFINITE_CARDINALITY if times is None and self._cardinality != 0 else (
            self._cardinality * (times or 0) if self._cardinality >= 0 else self._cardinality)
        return self._derived(make, card)

    def shard(self, num_shards: int, index: int, name: str | None = None) -> "Dataset":
        """Every ``num_shards``-th element, starting at ``index``."""
        if not 0 <= int(index) < int(num_shards):
            raise ValueError(f"Dataset.shard: index must be in [0, num_shards), got index "
                             f"{index} for {num_shards} shards")
        n, i = int(num_shards), int(index)
        card = len(range(i, self._cardinality, n)) if self._cardinality >= 0 else \
            self._cardinality
        return self._derived(lambda: itertools.islice(self._make(), i, None, n), card)

    def enumerate(self, start: int = 0, name: str | None = None) -> "Dataset":
        return self._derived(lambda: ((np.asarray(k, np.int64), e) for k, e in
                                      enumerate(self._make(), start)), self._cardinality)

    def concatenate(self, dataset: "Dataset", name: str | None = None) -> "Dataset":
        card = self._cardinality + dataset._cardinality if min(
            self._cardinality, dataset._cardinality) >= 0 else UNKNOWN_CARDINALITY
        return self._derived(lambda: itertools.chain(self._make(), dataset._make()), card)

    def prefetch(self, buffer_size: int = AUTOTUNE, name: str | None = None) -> "Dataset":
        return self  # (in memory: nothing to overlap)

    def cache(self, filename: str = "", name: str | None = None) -> "Dataset":
        return self

    def with_options(self, options: Any, name: str | None = None) -> "Dataset":
        return self

    def _derived(self, make: Callable[[], Iterator], cardinality: int,
                 batch_size: int | None = None) -> "Dataset":
        return Dataset(make, cardinality, batch_size or self._batch_size)

    # -- reading ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator:
        return (_as_tensors(e) for e in self._make())

    def as_numpy_iterator(self) -> Iterator:
        return iter(self._make())

    def reduce(self, initial_state: Any, reduce_func: Callable) -> Any:
        state = _as_tensors(initial_state)
        for e in self:
            state = reduce_func(state, e)
        return state

    def cardinality(self) -> Tensor:
        """The number of elements (``INFINITE_CARDINALITY`` -1, ``UNKNOWN_CARDINALITY`` -2)."""
        return Tensor(np.asarray(self._cardinality, np.int64))

    def __len__(self) -> int:
        if self._cardinality == INFINITE_CARDINALITY:
            raise TypeError("The dataset is infinite.")
        if self._cardinality == UNKNOWN_CARDINALITY:
            raise TypeError("The dataset length is unknown.")
        return self._cardinality

    @property
    def element_spec(self) -> Any:
        from .traced_function import TensorSpec

        first = next(iter(self._make()), None)
        if first is None:
            raise ValueError("element_spec of an empty dataset")
        return _map(lambda a: TensorSpec(
            (None,) + a.shape[1:] if self._batch_size else a.shape, a.dtype), first)

    def __repr__(self) -> str:
        return f"<tp.data.Dataset cardinality={self._cardinality}>"
