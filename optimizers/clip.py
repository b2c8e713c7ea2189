"""Gradient clipping (TensorFlow semantics).

Tapeflow Tensors (or Variables) in: the clipping is ``tp.clip_by_norm`` /
``tp.clip_by_global_norm`` (``tapeflow.clip_ops``), built from tapeflow ops, so it is
differentiable and recorded by any tape that watches its input, as TensorFlow's is; the results
are Tensors and :func:`global_norm` returns a Tensor. Raw arrays in (the optimizer's own fast
path): arrays out, with no tape involved. ``None`` entries pass through as ``None``. The result
keeps the input's dtype and device (NumPy or CuPy); no host synchronisation.

Example:
    >>> import numpy as np
    >>> clipped, norm = clip_by_global_norm([np.array([3.0, 0.0]), None, np.array([4.0])], 1.0)
    >>> float(norm), clipped[0].round(6).tolist(), clipped[1], clipped[2].round(6).tolist()
    (5.0, [0.6, 0.0], None, [0.8])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .rules import xp_of

__all__ = ["clip_by_norm", "clip_by_global_norm", "clip_by_value", "global_norm"]


def _tp():
    import tapeflow  # lazily: keeps `import tapeflow.optimizers` free of import cycles

    return tapeflow


def _is_tensor(t: Any) -> bool:
    return hasattr(t, "_value") and not isinstance(t, np.ndarray)


def _unwrap(t: Any) -> Any:
    """The raw array of an array-like (Python scalars and lists become NumPy arrays)."""
    return np.asarray(t) if not hasattr(t, "dtype") else t


def _sum_sq(a: Any) -> Any:
    """Sum of squares of ``a`` as a 0-d array, accumulated in at least float32."""
    acc = np.promote_types(a.dtype, np.float32)
    return xp_of(a).sum(xp_of(a).square(a, dtype=acc))


def clip_by_norm(t: Any, clip_norm: float, axes: Any = None) -> Any:
    """``t * clip_norm / max(||t||_2, clip_norm)``: rescale ``t`` so its L2 norm (over ``axes``,
    default all) is at most ``clip_norm`` (unchanged when already smaller; zero stays zero).
    Differentiable for Tensors, through the norm too (TensorFlow's ``tf.clip_by_norm``)."""
    if _is_tensor(t):
        return _tp().clip_by_norm(t, clip_norm, axes)
    if not float(clip_norm) > 0:
        raise ValueError(f"clip_by_norm: clip_norm must be > 0, got {clip_norm}")
    a = _unwrap(t)
    xp = xp_of(a)
    if axes is None:
        norm = xp.sqrt(_sum_sq(a))
    else:
        norm = xp.sqrt(xp.sum(xp.square(a, dtype=np.promote_types(a.dtype, np.float32)),
                              axis=axes, keepdims=True))
    c = norm.dtype.type(clip_norm)
    scale = (c / xp.maximum(norm, c)).astype(a.dtype)
    return a * scale


def _array_global_norm(arrays: list) -> Any:
    if not arrays:
        return np.zeros((), np.float32)
    total = _sum_sq(arrays[0])
    for a in arrays[1:]:
        total = total + _sum_sq(a)
    return xp_of(total).sqrt(total)


def global_norm(t_list: Sequence[Any]) -> Any:
    """``sqrt(sum of squares of every entry)``, ignoring ``None``, as a scalar Tensor (like
    ``tf.linalg.global_norm``); differentiable when the entries are Tensors."""
    tp = _tp()
    live = [t for t in t_list if t is not None]
    if not live or not all(_is_tensor(t) for t in live):
        return tp.constant(_array_global_norm([_unwrap(getattr(t, "_value", t)) for t in live]))
    return tp.linalg.global_norm(live)


def clip_by_global_norm(t_list: Sequence[Any], clip_norm: float) -> tuple[list[Any], Any]:
    """Scale every entry by ``clip_norm / max(global_norm, clip_norm)``.

    Returns ``(clipped_list, global_norm)`` where ``global_norm`` is the norm *before*
    clipping: a Tensor when the inputs are Tensors (and then everything is differentiable,
    as in TensorFlow), a 0-d array for raw arrays. ``None`` entries stay ``None``. A
    non-finite global norm gives non-finite gradients, as in TensorFlow.
    """
    t_list = list(t_list)
    live = [t for t in t_list if t is not None]
    if live and all(_is_tensor(t) for t in live):
        return _tp().clip_by_global_norm(t_list, clip_norm)
    if not float(clip_norm) > 0:
        raise ValueError(f"clip_by_global_norm: clip_norm must be > 0, got {clip_norm}")
    norm = _array_global_norm([_unwrap(getattr(t, "_value", t)) for t in live])
    xp = xp_of(norm)
    scale = norm.dtype.type(clip_norm) / xp.maximum(norm, norm.dtype.type(clip_norm))
    clipped: list[Any] = []
    for t in t_list:
        if t is None:
            clipped.append(None)
            continue
        if _is_tensor(t):  # a mix of Tensors and arrays: clip the Tensor's value, keep the type
            clipped.append(_tp().constant(t._value * scale.astype(t._value.dtype)))
            continue
        a = _unwrap(t)
        clipped.append(a * scale.astype(a.dtype))
    return clipped, norm


def clip_by_value(t: Any, clip_value_min: Any, clip_value_max: Any) -> Any:
    """Elementwise ``min(max(t, clip_value_min), clip_value_max)``, in ``t``'s dtype.
    Differentiable for Tensors (the gradient passes where ``t`` was inside the range)."""
    scalars = all(isinstance(c, (int, float)) for c in (clip_value_min, clip_value_max))
    if scalars and clip_value_min > clip_value_max:
        raise ValueError(f"clip_by_value: clip_value_min ({clip_value_min}) is greater than "
                         f"clip_value_max ({clip_value_max})")
    if _is_tensor(t):
        return _tp().clip_by_value(t, clip_value_min, clip_value_max)
    a = _unwrap(t)
    xp = xp_of(a)
    lo = xp.asarray(clip_value_min, dtype=a.dtype)
    hi = xp.asarray(clip_value_max, dtype=a.dtype)
    return xp.clip(a, lo, hi)
