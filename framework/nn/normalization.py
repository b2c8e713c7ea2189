"""Normalisation functions with TensorFlow's names: ``moments``, ``batch_normalization``,
``l2_loss``, ``l2_normalize``. Compositions of ops (no rules of their own).

>>> import tapeflow as tp
>>> mean, var = tp.nn.moments(tp.constant([1.0, 2.0, 3.0, 4.0]), axes=[0])
>>> float(mean), float(var)
(2.5, 1.25)
"""
from __future__ import annotations

from typing import Sequence

from .. import math_ops, ops
from ..tensor import Tensor, convert_to_tensor

__all__ = ["moments", "batch_normalization", "l2_loss", "l2_normalize"]

l2_normalize = math_ops.l2_normalize


def moments(x, axes: Sequence[int], keepdims: bool = False) -> tuple[Tensor, Tensor]:
    """``(mean, variance)`` over ``axes``. As in TensorFlow the variance is taken around a
    ``stop_gradient`` of the mean (its gradient through the mean is zero anyway)."""
    x = convert_to_tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"moments expects a float tensor, got {x.dtype}")
    axes = tuple(axes)
    mean = ops.reduce_mean(x, axes, keepdims=True)
    var = ops.reduce_mean(math_ops.squared_difference(x, ops.stop_gradient(mean)), axes,
                          keepdims=True)
    if not keepdims:
        mean, var = ops.squeeze(mean, axes), ops.squeeze(var, axes)
    return mean, var


def batch_normalization(x, mean, variance, offset, scale, variance_epsilon: float) -> Tensor:
    """``scale * (x - mean) / sqrt(variance + eps) + offset``; ``offset``/``scale`` may be
    None (0 and 1)."""
    x = convert_to_tensor(x)
    inv = math_ops.rsqrt(ops.add(convert_to_tensor(variance), variance_epsilon))
    if scale is not None:
        inv = ops.multiply(inv, scale)
    shift = ops.negative(ops.multiply(mean, inv))
    if offset is not None:
        shift = ops.add(shift, offset)
    return ops.add(ops.multiply(x, inv), shift)


def l2_loss(t) -> Tensor:
    """``sum(t ** 2) / 2``."""
    t = convert_to_tensor(t)
    return ops.multiply(ops.reduce_sum(ops.square(t)), 0.5)
