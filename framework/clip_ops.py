"""Gradient clipping as differentiable ops (``tf.clip_by_norm``, ``tf.clip_by_global_norm``,
``tf.linalg.global_norm``), with TensorFlow's formulas.

``tapeflow.optimizers`` hands Tensors to these; its own update step clips raw arrays without a
tape. ``clip_by_value`` is the op library's.

>>> import tapeflow as tp
>>> clipped, norm = tp.clip_by_global_norm([tp.constant([3.0]), None, tp.constant([4.0])], 1.0)
>>> float(norm), [None if c is None else c.numpy().tolist() for c in clipped]
(5.0, [[0.6000000238418579], None, [0.800000011920929]])
"""
from __future__ import annotations

from typing import Any, Sequence

from . import ops
from .tensor import Tensor, convert_to_tensor

__all__ = ["clip_by_norm", "clip_by_global_norm", "global_norm"]


def _check_positive(clip_norm: Any, fn: str) -> None:
    if not float(clip_norm) > 0:
        raise ValueError(f"{fn}: clip_norm must be > 0, got {clip_norm}")


def _safe_l2norm(t: Tensor, axes: Any = None) -> Tensor:
    """TensorFlow's safe norm: sqrt is taken only where the sum of squares is positive, so a
    zero tensor has a zero (not NaN) gradient."""
    l2sum = ops.reduce_sum(ops.square(t), axis=axes, keepdims=True)
    positive = ops.greater(l2sum, 0)
    safe = ops.where(positive, l2sum, ops.ones_like(l2sum))
    return ops.where(positive, ops.sqrt(safe), l2sum)


def clip_by_norm(t: Any, clip_norm: float, axes: Any = None) -> Tensor:
    """``t * clip_norm / max(||t||_2, clip_norm)`` with the norm over ``axes`` (default all):
    unchanged when already within the norm; differentiable through the norm too."""
    _check_positive(clip_norm, "clip_by_norm")
    t = convert_to_tensor(t)
    if t.dtype.kind != "f":
        raise TypeError(f"clip_by_norm expects a float tensor, got {t.dtype}")
    norm = _safe_l2norm(t, axes)
    return ops.divide(ops.multiply(t, clip_norm), ops.maximum(norm, clip_norm))


def global_norm(t_list: Sequence[Any]) -> Tensor:
    """``sqrt(sum of squares of every entry)``, ignoring ``None``, as a scalar Tensor in the
    first entry's dtype (0.0 for an empty list)."""
    live = [convert_to_tensor(t) for t in t_list if t is not None]
    if not live:
        return convert_to_tensor(0.0)
    dtype = live[0].dtype
    total = None
    for t in live:
        sq = ops.reduce_sum(ops.square(ops.cast(t, dtype)))
        total = sq if total is None else ops.add(total, sq)
    return ops.sqrt(total)


def clip_by_global_norm(t_list: Sequence[Any], clip_norm: float,
                        use_norm: Any = None) -> tuple[list, Tensor]:
    """Scale every entry by ``clip_norm / max(global_norm, clip_norm)``; returns
    ``(clipped_list, global_norm)`` with the norm before clipping (or ``use_norm`` if given).
    ``None`` entries stay ``None``; a non-finite norm gives non-finite results, as in TF."""
    _check_positive(clip_norm, "clip_by_global_norm")
    t_list = list(t_list)
    norm = global_norm(t_list) if use_norm is None else convert_to_tensor(use_norm)
    scale = ops.divide(clip_norm, ops.maximum(norm, clip_norm))
    clipped = [None if t is None else ops.multiply(convert_to_tensor(t),
                                                   ops.cast(scale, convert_to_tensor(t).dtype))
               for t in t_list]
    return clipped, norm
