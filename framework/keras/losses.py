"""``tp.keras.losses``: Keras's loss functions (one loss per example, reduced over the last
axis) and loss classes (``loss(y_true, y_pred, sample_weight=None)``, reduced by
``"sum_over_batch_size"`` by default), with Keras's defaults (``from_logits=False``).

The cross-entropies call ``tp.nn``'s implementations; only Keras's defaults and reductions are
added here.

>>> import tapeflow as tp
>>> loss = tp.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
>>> round(float(loss([0, 1], tp.constant([[2.0, 0.0], [0.0, 2.0]]))), 4)
0.1269
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .. import ops
from ..nn import functional as F
from ..nn import losses as nn_losses
from ..tensor import Tensor, convert_to_tensor

__all__ = ["Loss", "SparseCategoricalCrossentropy", "CategoricalCrossentropy",
           "BinaryCrossentropy", "MeanSquaredError", "MeanAbsoluteError",
           "sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
           "mean_squared_error", "mean_absolute_error", "mse", "mae", "get", "Huber", "huber"]

_EPSILON = nn_losses._EPSILON  # Keras's backend epsilon, 1e-7


def _pred(y_pred: Any, fn: str) -> Tensor:
    y_pred = convert_to_tensor(y_pred)
    if y_pred.dtype.kind != "f":
        raise TypeError(f"{fn}: y_pred must be a float tensor, got {y_pred.dtype}")
    return y_pred


def _same_rank(y_true: Any, y_pred: Tensor) -> Tensor:
    """``y_true`` in ``y_pred``'s dtype, with a trailing unit axis added or dropped so the
    ranks agree (Keras's ``squeeze_or_expand_to_same_rank``)."""
    t = ops.cast(convert_to_tensor(y_true), y_pred.dtype)
    if t.ndim == y_pred.ndim - 1 and y_pred.shape[-1] == 1:
        t = ops.expand_dims(t, -1)
    elif t.ndim == y_pred.ndim + 1 and t.shape[-1] == 1:
        t = ops.squeeze(t, -1)
    if t.shape != y_pred.shape:
        raise ValueError(f"y_true of shape {t.shape} does not match y_pred of shape "
                         f"{y_pred.shape}")
    return t


# ---------------------------------------------------------------- functions
def sparse_categorical_crossentropy(y_true: Any, y_pred: Any, from_logits: bool = False,
                                    axis: int = -1) -> Tensor:
    """Per-example cross-entropy of integer class ``y_true`` (float labels are truncated to
    ints, as Keras casts them) against probabilities (or logits) ``y_pred``."""
    if axis not in (-1, np.ndim(y_pred) - 1):
        raise ValueError("sparse_categorical_crossentropy: only the last axis holds classes")
    labels = convert_to_tensor(y_true)
    if labels.dtype.kind == "f":
        labels = ops.cast(labels, "int64")  # truncated, as astype (and traceable)
    return nn_losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=from_logits,
                                                     reduction="none")


def _smooth(t: Tensor, label_smoothing: float, classes: float) -> Tensor:
    if not label_smoothing:
        return t
    return ops.add(ops.multiply(t, 1.0 - label_smoothing), label_smoothing / classes)


def categorical_crossentropy(y_true: Any, y_pred: Any, from_logits: bool = False,
                             label_smoothing: float = 0.0, axis: int = -1) -> Tensor:
    """Per-example ``-sum(y_true * log(p))`` over ``axis``; probabilities are renormalised and
    clipped to ``[1e-7, 1 - 1e-7]`` first (Keras)."""
    fn = "categorical_crossentropy"
    y_pred = _pred(y_pred, fn)
    t = ops.cast(convert_to_tensor(y_true), y_pred.dtype)
    if t.shape != y_pred.shape:
        raise ValueError(f"{fn}: y_true of shape {t.shape} must match y_pred of shape "
                         f"{y_pred.shape} (one-hot targets; use "
                         f"sparse_categorical_crossentropy for class indices)")
    t = _smooth(t, label_smoothing, y_pred.shape[axis])
    if from_logits:
        return F.softmax_cross_entropy_with_logits(t, y_pred, axis=axis)
    p = ops.divide(y_pred, ops.reduce_sum(y_pred, axis, keepdims=True))
    p = ops.clip_by_value(p, _EPSILON, 1.0 - _EPSILON)
    return ops.negative(ops.reduce_sum(ops.multiply(t, ops.log(p)), axis))


def binary_crossentropy(y_true: Any, y_pred: Any, from_logits: bool = False,
                        label_smoothing: float = 0.0, axis: int = -1) -> Tensor:
    """Per-example mean over ``axis`` of the elementwise binary cross-entropy; probabilities
    are clipped to ``[1e-7, 1 - 1e-7]`` (Keras)."""
    y_pred = _pred(y_pred, "binary_crossentropy")
    t = _smooth(_same_rank(y_true, y_pred), label_smoothing, 2.0)
    if from_logits:
        per = F.sigmoid_cross_entropy_with_logits(labels=t, logits=y_pred)
    else:
        p = ops.clip_by_value(y_pred, _EPSILON, 1.0 - _EPSILON)
        per = ops.negative(ops.add(ops.multiply(t, ops.log(p)),
                                   ops.multiply(ops.subtract(1.0, t),
                                                ops.log(ops.subtract(1.0, p)))))
    return ops.reduce_mean(per, axis)


def mean_squared_error(y_true: Any, y_pred: Any) -> Tensor:
    """Per-example ``mean((y_true - y_pred) ** 2)`` over the last axis (Keras)."""
    y_pred = _pred(y_pred, "mean_squared_error")
    return ops.reduce_mean(ops.square(ops.subtract(y_pred, _same_rank(y_true, y_pred))), -1)


def mean_absolute_error(y_true: Any, y_pred: Any) -> Tensor:
    """Per-example ``mean(|y_true - y_pred|)`` over the last axis (Keras)."""
    y_pred = _pred(y_pred, "mean_absolute_error")
    return ops.reduce_mean(ops.abs(ops.subtract(y_pred, _same_rank(y_true, y_pred))), -1)


def huber(y_true: Any, y_pred: Any, delta: float = 1.0) -> Tensor:
    """Per-example Huber loss over the last axis (Keras): ``0.5 * e**2`` where
    ``|e| <= delta``, else ``delta * |e| - 0.5 * delta**2``, for ``e = y_pred - y_true``."""
    y_pred = _pred(y_pred, "huber")
    err = ops.abs(ops.subtract(y_pred, _same_rank(y_true, y_pred)))
    small = ops.minimum(err, delta)  # (the quadratic part, capped at delta)
    per = ops.add(ops.multiply(0.5, ops.square(small)),
                  ops.multiply(delta, ops.subtract(err, small)))
    return ops.reduce_mean(per, -1)


mse, mae = mean_squared_error, mean_absolute_error


# ---------------------------------------------------------------- classes
_REDUCTIONS = ("sum_over_batch_size", "sum", "none", None)


class Loss:
    """A loss function with Keras's call: ``loss(y_true, y_pred, sample_weight=None)``.

    ``reduction``: ``"sum_over_batch_size"`` (the weighted sum divided by the number of
    per-example losses), ``"sum"``, or ``"none"``/``None`` (the per-example losses).
    """

    def __init__(self, fn: Callable[..., Tensor], reduction: str | None = "sum_over_batch_size",
                 name: str | None = None, **options: Any) -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of "
                             f"{list(_REDUCTIONS)}, got {reduction!r}")
        self.fn, self.reduction, self.options = fn, reduction, options
        self.name = name or _snake(type(self).__name__)

    def call(self, y_true: Any, y_pred: Any) -> Tensor:
        """The per-example losses."""
        return self.fn(y_true, y_pred, **self.options)

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Tensor:
        per = self.call(y_true, y_pred)
        if sample_weight is not None:
            w = ops.cast(convert_to_tensor(sample_weight), per.dtype)
            if w.ndim > per.ndim and w.shape[-1] == 1:
                w = ops.squeeze(w, -1)
            per = ops.multiply(per, w)
        if self.reduction in ("none", None):
            return per
        total = ops.reduce_sum(per)
        if self.reduction == "sum":
            return total
        return ops.divide(total, ops.shape_constant(per, _batch_count, total.dtype))

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction, **self.options}


def _batch_count(shape: tuple) -> float:
    """The number of per-example losses (at least 1): what "sum_over_batch_size" divides by."""
    return float(max(math.prod(shape), 1))


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower()
                   for i, c in enumerate(name))


class SparseCategoricalCrossentropy(Loss):
    def __init__(self, from_logits: bool = False, reduction="sum_over_batch_size",
                 name: str | None = None) -> None:
        super().__init__(sparse_categorical_crossentropy, reduction, name,
                         from_logits=from_logits)


class CategoricalCrossentropy(Loss):
    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0,
                 reduction="sum_over_batch_size", name: str | None = None) -> None:
        super().__init__(categorical_crossentropy, reduction, name, from_logits=from_logits,
                         label_smoothing=label_smoothing)


class BinaryCrossentropy(Loss):
    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0,
                 reduction="sum_over_batch_size", name: str | None = None) -> None:
        super().__init__(binary_crossentropy, reduction, name, from_logits=from_logits,
                         label_smoothing=label_smoothing)


class MeanSquaredError(Loss):
    def __init__(self, reduction="sum_over_batch_size", name: str | None = None) -> None:
        super().__init__(mean_squared_error, reduction, name)


class MeanAbsoluteError(Loss):
    def __init__(self, reduction="sum_over_batch_size", name: str | None = None) -> None:
        super().__init__(mean_absolute_error, reduction, name)


class Huber(Loss):
    def __init__(self, delta: float = 1.0, reduction="sum_over_batch_size",
                 name: str | None = None) -> None:
        super().__init__(huber, reduction, name, delta=float(delta))


_BY_NAME: dict[str, Any] = {
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "categorical_crossentropy": categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy, "mean_squared_error": mean_squared_error,
    "mse": mean_squared_error, "mean_absolute_error": mean_absolute_error,
    "mae": mean_absolute_error, "huber": huber,
}
_BY_NAME.update({c.__name__: c for c in (SparseCategoricalCrossentropy, CategoricalCrossentropy,
                                         BinaryCrossentropy, MeanSquaredError,
                                         MeanAbsoluteError, Huber)})


def get(identifier: Any) -> Any:
    """A loss by name (function names, aliases, or class names, which are instantiated with
    their defaults), or a callable as is."""
    if callable(identifier) and not isinstance(identifier, type):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    found = _BY_NAME.get(identifier) if isinstance(identifier, str) else None
    if found is None:
        raise ValueError(f"unknown loss {identifier!r}; expected a callable or one of "
                         f"{sorted(_BY_NAME)}")
    return found() if isinstance(found, type) else found
