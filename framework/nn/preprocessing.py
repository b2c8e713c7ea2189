"""Keras's ``Normalization`` preprocessing layer: ``(x - mean) / sqrt(variance)`` with the
statistics learnt by ``adapt(data)`` (or given), as TensorFlow's regression tutorials use it.

>>> import tapeflow as tp, numpy as np
>>> norm = tp.keras.layers.Normalization(axis=-1)
>>> norm.adapt(np.array([[1.0, 10.0], [3.0, 30.0]], "float32"))
>>> norm(tp.constant([[2.0, 20.0]])).numpy().tolist()
[[0.0, 0.0]]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import ops
from ..tensor import Tensor, Variable, convert_to_tensor, to_numpy
from .modules import Module

__all__ = ["Normalization"]

_EPSILON = 1e-7  # Keras's backend epsilon: the smallest standard deviation divided by


class Normalization(Module):
    """Keras's ``Normalization``. ``axis``: the axes that keep their own statistics (default
    the last; ``None``: one mean and variance for everything). ``mean``/``variance`` given
    fix the statistics; otherwise they start at 0 and 1 and ``adapt`` sets them.
    ``invert=True`` maps normalized values back. The statistics are non-trainable weights,
    saved and loaded with the model."""

    def __init__(self, axis: int | Sequence[int] | None = -1, mean: Any = None,
                 variance: Any = None, invert: bool = False, name: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.axis = None if axis is None else (
            (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis))
        if self.axis is not None and 0 in self.axis:
            raise ValueError("Normalization: axis may not be 0 (the batch axis)")
        self.invert = bool(invert)
        self.mean: Variable | None = None
        self.variance: Variable | None = None
        if (mean is None) != (variance is None):
            raise ValueError("Normalization: give both mean and variance, or neither")
        self._given = None if mean is None else (np.asarray(to_numpy(getattr(
            mean, "_value", mean)), np.float32), np.asarray(to_numpy(getattr(
                variance, "_value", variance)), np.float32))

    def _shape(self, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(axes reduced over, kept axes) for inputs of rank ``ndim``."""
        if self.axis is None:
            return tuple(range(ndim)), ()
        if any(not -ndim <= a < ndim for a in self.axis) or any(
                a % ndim == 0 for a in self.axis):
            raise ValueError(f"Normalization: axis {self.axis} does not fit inputs of rank "
                             f"{ndim} (the batch axis cannot keep its own statistics)")
        kept = tuple(a % ndim for a in self.axis)
        return tuple(a for a in range(ndim) if a not in kept), kept

    def _make(self, shape: tuple) -> None:
        _, kept = self._shape(len(shape))
        stat = tuple(shape[a] if a in kept else 1 for a in range(len(shape)))
        if self._given is not None:
            mean = np.broadcast_to(self._given[0], stat).astype(np.float32)
            var = np.broadcast_to(self._given[1], stat).astype(np.float32)
        else:
            mean, var = np.zeros(stat, np.float32), np.ones(stat, np.float32)
        self.mean = Variable(mean, trainable=False, name="mean")
        self.variance = Variable(var, trainable=False, name="variance")

    def adapt(self, data: Any, batch_size: Any = None, steps: Any = None) -> None:
        """Set the statistics to the mean and (biased) variance of ``data`` (an array, a
        Tensor, or a dataset of batches) over every axis but ``axis``."""
        if hasattr(data, "as_numpy_iterator") or (not isinstance(data, (np.ndarray, Tensor))
                                                 and hasattr(data, "__iter__")
                                                 and not isinstance(data, (list, tuple))):
            batches = [np.asarray(to_numpy(getattr(b, "_value", b))) for b in data]
            if not batches:
                raise ValueError("Normalization.adapt: the dataset is empty")
            arr = np.concatenate(batches)
        else:
            arr = np.asarray(to_numpy(getattr(data, "_value", data)))
        arr = arr.astype(np.float64)
        if arr.ndim == 1 and self.axis == (-1,):
            arr = arr[:, None]  # (Keras: a 1-D sample list is one feature per sample)
        if arr.size == 0:
            raise ValueError("Normalization.adapt: the data is empty")
        reduce, _ = self._shape(arr.ndim)
        if self.mean is None or self.mean.shape != tuple(
                arr.shape[a] if a not in reduce else 1 for a in range(arr.ndim)):
            self._make(arr.shape)
        self.mean.assign(arr.mean(axis=reduce, keepdims=True).astype(np.float32))
        self.variance.assign(arr.var(axis=reduce, keepdims=True).astype(np.float32))

    def call(self, x: Any) -> Tensor:
        x = convert_to_tensor(x)
        if x.dtype != np.float32:
            x = ops.cast(x, "float32")
        if self.mean is None:
            self._make(tuple(x.shape) if x.ndim > 1 or self.axis is None else (1, x.shape[0]))
        mean, var = self.mean, self.variance
        if x.ndim == 1 and mean.ndim == 2:  # 1-D input: one feature per sample
            mean, var = ops.reshape(mean, (-1,)), ops.reshape(var, (-1,))
        std = ops.maximum(ops.sqrt(var), _EPSILON)
        if self.invert:
            return ops.add(mean, ops.multiply(x, std))
        return ops.divide(ops.subtract(x, mean), std)
