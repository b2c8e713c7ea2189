"""Losses and metrics: ``sparse_categorical_crossentropy``, ``mean_squared_error``,
``accuracy``.

Losses are differentiable Tensors; shapes are checked up front (no silent broadcasting of a
``(N,)`` target against an ``(N, 1)`` prediction). ``reduction`` is ``"mean"`` (over every
example; Keras's ``"sum_over_batch_size"``), ``"sum"`` or ``"none"`` (one loss per example).

>>> import tapeflow as tp
>>> logits = tp.constant([[2.0, 0.0], [0.0, 2.0]])
>>> round(float(sparse_categorical_crossentropy([0, 1], logits)), 4)
0.1269
>>> accuracy([0, 0], logits)
0.5
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from .._backend import array_module
from ..recording import derived
from ..tensor import _TRACE, Tensor, convert_to_tensor
from . import functional as F

__all__ = ["sparse_categorical_crossentropy", "mean_squared_error", "accuracy"]

_REDUCTIONS = {"mean": "mean", "sum_over_batch_size": "mean", "auto": "mean", "sum": "sum",
               "none": "none"}

# Probabilities are clipped to [eps, 1 - eps] before the log (Keras's backend epsilon).
_EPSILON = 1e-7


def _reduce(per_example: Tensor, reduction: str, fn: str) -> Tensor:
    mode = _REDUCTIONS.get(reduction)
    if mode is None:
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if mode == "mean":
        return ops.reduce_mean(per_example)
    if mode == "sum":
        return ops.reduce_sum(per_example)
    return per_example


def _sparse_labels(labels: Any, logits_shape: tuple, fn: str) -> Tensor:
    labels = convert_to_tensor(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{fn}: labels must be integer class indices, got dtype {labels.dtype}; "
                        f"for one-hot targets use tp.nn.softmax_cross_entropy_with_logits")
    if labels.shape == logits_shape[:-1]:
        return labels
    if labels.shape == logits_shape[:-1] + (1,):  # (N, 1) labels, as Keras accepts
        return ops.reshape(labels, logits_shape[:-1])
    raise ValueError(f"{fn}: labels of shape {labels.shape} do not fit logits of shape "
                     f"{logits_shape}; labels must have shape {logits_shape[:-1]} "
                     f"(logits without the class axis)")


def sparse_categorical_crossentropy(labels: Any, logits: Any, from_logits: bool = True,
                                    reduction: str = "mean") -> Tensor:
    """Cross-entropy of integer ``labels`` against class scores ``logits`` (last axis).

    ``from_logits=False`` takes probabilities instead (clipped to ``[1e-7, 1 - 1e-7]`` before
    the log, as Keras does). Labels may be ``logits.shape[:-1]`` or that with a trailing 1.
    """
    fn = "sparse_categorical_crossentropy"
    logits = convert_to_tensor(logits)
    if logits.ndim < 1 or logits.dtype.kind != "f":
        raise ValueError(f"{fn}: logits must be a float tensor with a class axis, got shape "
                         f"{logits.shape} and dtype {logits.dtype}")
    labels = _sparse_labels(labels, logits.shape, fn)
    if not from_logits:
        # softmax(log p) = p / sum(p): the fused op then also renormalises, like Keras.
        logits = ops.log(ops.clip_by_value(logits, _EPSILON, 1.0 - _EPSILON))
    per_example = F.sparse_softmax_cross_entropy_with_logits(labels, logits)
    return _reduce(per_example, reduction, fn)


def mean_squared_error(y_true: Any, y_pred: Any, reduction: str = "mean") -> Tensor:
    """Mean of ``(y_pred - y_true) ** 2``.

    The per-example loss (``reduction="none"``) averages every axis but the first; a 1-D input
    is one value per example. ``y_true`` is cast to ``y_pred``'s dtype; shapes must be equal.
    """
    fn = "mean_squared_error"
    y_pred = convert_to_tensor(y_pred)
    if y_pred.dtype.kind != "f":
        raise TypeError(f"{fn}: y_pred must be a float tensor, got {y_pred.dtype}")
    y_true = ops.cast(convert_to_tensor(y_true), y_pred.dtype)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{fn}: y_true has shape {y_true.shape} but y_pred has shape "
                         f"{y_pred.shape}; they must be equal (reshape one; no broadcasting)")
    sq = ops.square(ops.subtract(y_pred, y_true))
    if _REDUCTIONS.get(reduction) == "mean":
        return ops.reduce_mean(sq)  # examples are equal in size: the mean of their means
    per_example = ops.reduce_mean(sq, axis=tuple(range(1, sq.ndim))) if sq.ndim > 1 else sq
    return _reduce(per_example, reduction, fn)


def accuracy(labels: Any, logits: Any) -> float:
    """Fraction of rows whose largest logit is at the label (not differentiable).

    ``labels`` are class indices (shape ``logits.shape[:-1]``, or with a trailing 1) or
    one-hot/probability rows of ``logits``'s shape.
    """
    if _TRACE and any(isinstance(t, Tensor) and _TRACE[-1].is_traced(t)
                      for t in (labels, logits)):
        # Inside tp.function: each call's accuracy, as a float64 scalar Tensor (a float read
        # here would be the trace's, frozen into every replay).
        return derived(_accuracy_of, convert_to_tensor(logits), convert_to_tensor(labels))
    scores = logits._value if isinstance(logits, Tensor) else np.asarray(logits)
    lab = labels._value if isinstance(labels, Tensor) else labels
    return float(_accuracy_of(scores, lab))


def _accuracy_of(scores, lab):
    xp = array_module(scores)
    lab = xp.asarray(lab)
    if scores.ndim < 1:
        raise ValueError(f"accuracy: logits need a class axis, got shape {scores.shape}")
    if lab.shape == scores.shape and scores.ndim > 1:
        lab = lab.argmax(axis=-1)
    elif lab.shape == scores.shape[:-1] + (1,):
        lab = lab.reshape(scores.shape[:-1])
    elif lab.shape != scores.shape[:-1]:
        raise ValueError(f"accuracy: labels of shape {lab.shape} do not fit logits of shape "
                         f"{scores.shape}; expected {scores.shape[:-1]} or {scores.shape}")
    if lab.size == 0:
        raise ValueError("accuracy: empty batch")
    return xp.asarray((scores.argmax(axis=-1) == lab).mean(), dtype=np.float64)
