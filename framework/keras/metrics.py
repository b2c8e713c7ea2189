"""``tp.keras.metrics``: per-example accuracy functions and stateful metrics (``Mean``,
``SparseCategoricalAccuracy``, ...) with Keras's ``update_state`` / ``result`` /
``reset_state``.

>>> import tapeflow as tp
>>> m = tp.keras.metrics.SparseCategoricalAccuracy()
>>> m.update_state([0, 1], [[0.9, 0.1], [0.8, 0.2]])
>>> float(m.result())
0.5
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

from ..recording import derived
from ..tensor import Tensor, constant, convert_to_tensor
from ..trace import replayed, replayed_value

__all__ = ["sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy", "Metric",
           "Mean", "Sum", "MeanMetricWrapper", "SparseCategoricalAccuracy", "CategoricalAccuracy",
           "BinaryAccuracy", "get"]


def _host(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


def sparse_categorical_accuracy(y_true: Any, y_pred: Any) -> Tensor:
    """Per example: 1.0 where ``argmax(y_pred)`` equals the integer label, else 0.0."""
    pred, labels = convert_to_tensor(y_pred), convert_to_tensor(y_true)
    lshape = tuple(labels.shape)
    if len(lshape) == pred.ndim and lshape and lshape[-1] == 1:
        lshape = lshape[:-1]
    if lshape != tuple(pred.shape[:-1]):
        raise ValueError(f"sparse_categorical_accuracy: y_true of shape {labels.shape} does not "
                         f"fit y_pred of shape {pred.shape}")
    return derived(_sparse_hits, pred, labels)  # (computed per call inside tp.function)


def _sparse_hits(pred, labels):
    if labels.ndim == pred.ndim and labels.shape[-1] == 1:
        labels = labels[..., 0]
    return (pred.argmax(-1) == labels.astype(np.int64)).astype(np.float32)


def categorical_accuracy(y_true: Any, y_pred: Any) -> Tensor:
    """Per example: 1.0 where ``argmax(y_pred) == argmax(y_true)`` (one-hot targets)."""
    pred, true = convert_to_tensor(y_pred), convert_to_tensor(y_true)
    if tuple(pred.shape) != tuple(true.shape):
        raise ValueError(f"categorical_accuracy: y_true of shape {true.shape} must match y_pred "
                         f"of shape {pred.shape}")
    return derived(_categorical_hits, pred, true)


def _categorical_hits(pred, true):
    return (pred.argmax(-1) == true.argmax(-1)).astype(np.float32)


def binary_accuracy(y_true: Any, y_pred: Any, threshold: float = 0.5) -> Tensor:
    """Per example: the fraction over the last axis of ``(y_pred > threshold) == y_true``."""
    return derived(_binary_hits, convert_to_tensor(y_pred), convert_to_tensor(y_true),
                   threshold=threshold)


def _binary_hits(pred, true, threshold):
    if true.ndim == pred.ndim - 1 and pred.shape[-1] == 1:
        true = true[..., None]
    hit = ((pred > threshold) == (true > 0.5)).astype(np.float32)
    return hit.mean(axis=-1)


class Metric(ABC):
    """Base of stateful metrics: ``update_state(...)``, ``result()`` (a float32 scalar
    Tensor), ``reset_state()``; calling the metric updates it and returns the result.

    Inside ``tp.function`` (as Keras metrics inside ``tf.function``) every replay updates the
    metric with that step's tensors and ``result()`` is read at its place in the step: each
    subclass's ``update_state``/``reset_state``/``result`` are marked for replay here."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, mark in (("update_state", replayed), ("reset_state", replayed),
                           ("result", replayed_value)):
            method = vars(cls).get(name)
            if method is not None and not getattr(method, "_tp_replayed", False) \
                    and not getattr(method, "__isabstractmethod__", False):
                setattr(cls, name, mark(method))

    def __init__(self, name: str | None = None, dtype: str = "float32") -> None:
        self.name = name or _snake(type(self).__name__)
        self.dtype = dtype
        reset = type(self).reset_state
        getattr(reset, "__wrapped__", reset)(self)  # now, even when built inside a trace

    @replayed
    def reset_state(self) -> None:
        self._total = 0.0
        self._count = 0.0

    @replayed_value
    def result(self) -> Tensor:
        value = self._total / self._count if self._count else 0.0
        return constant(np.asarray(value, dtype=self.dtype))

    @abstractmethod
    def update_state(self, *args: Any, **kwargs: Any) -> None:
        """Fold a batch into the running totals."""

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        self.update_state(*args, **kwargs)
        return self.result()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {float(self.result()):.6g}>"


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower()
                   for i, c in enumerate(name))


class Mean(Metric):
    """The (weighted) mean of every value passed to ``update_state``."""

    def update_state(self, values: Any, sample_weight: Any = None) -> None:
        v = _host(values).astype(np.float64)
        if sample_weight is None:
            self._total += float(v.sum())
            self._count += float(v.size)
            return
        w = np.broadcast_to(_host(sample_weight).astype(np.float64), v.shape)
        self._total += float((v * w).sum())
        self._count += float(w.sum())


class Sum(Metric):
    """The (weighted) sum of every value passed to ``update_state``."""

    def update_state(self, values: Any, sample_weight: Any = None) -> None:
        v = _host(values).astype(np.float64)
        if sample_weight is not None:
            v = v * _host(sample_weight)
        self._total += float(v.sum())
        self._count = 1.0


class MeanMetricWrapper(Mean):
    """The mean over examples of a per-example function ``fn(y_true, y_pred)``."""

    def __init__(self, fn: Callable[..., Tensor], name: str | None = None,
                 dtype: str = "float32", **options: Any) -> None:
        self.fn, self.options = fn, options
        super().__init__(name, dtype)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        super().update_state(self.fn(y_true, y_pred, **self.options), sample_weight)


class SparseCategoricalAccuracy(MeanMetricWrapper):
    def __init__(self, name: str = "sparse_categorical_accuracy", dtype: str = "float32"):
        super().__init__(sparse_categorical_accuracy, name, dtype)


class CategoricalAccuracy(MeanMetricWrapper):
    def __init__(self, name: str = "categorical_accuracy", dtype: str = "float32"):
        super().__init__(categorical_accuracy, name, dtype)


class BinaryAccuracy(MeanMetricWrapper):
    def __init__(self, name: str = "binary_accuracy", dtype: str = "float32",
                 threshold: float = 0.5):
        super().__init__(binary_accuracy, name, dtype, threshold=threshold)


_BY_NAME: dict[str, Any] = {
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy, "binary_accuracy": BinaryAccuracy,
    "mean": Mean, "sum": Sum,
}


def get(identifier: Any) -> Metric:
    """A fresh metric by name (``"sparse_categorical_accuracy"``, ...) or class; a Metric
    object as is."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    cls = _BY_NAME.get(identifier) if isinstance(identifier, str) else None
    if cls is None:
        raise ValueError(f"unknown metric {identifier!r}; expected a Metric or one of "
                         f"{sorted(_BY_NAME)}")
    return cls()
