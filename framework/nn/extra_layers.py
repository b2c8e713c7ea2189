"""More Keras layers: ``AveragePooling2D``, global pooling, ``Embedding``,
``BatchNormalization`` and ``InputLayer`` / ``Input``.

Same conventions as :mod:`layers`: variables are created at construction when the input size
is known (``input_dim``, ``input_shape``), otherwise on the first call; ``training=`` selects
batch statistics (and updates the moving ones) in ``BatchNormalization``.

>>> import tapeflow as tp
>>> emb = tp.nn.Embedding(10, 3, seed=0)
>>> emb(tp.constant([[1, 2], [3, 4]])).shape
(2, 2, 3)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .. import math_ops, ops
from ..tensor import Tensor, Variable, as_dtype, convert_to_tensor
from . import functional as F
from . import init
from .normalization import batch_normalization
from .layers import _as_layer_dtype, _on_device, _pair, _padding, _shape_hint
from .modules import Module

__all__ = ["AveragePooling2D", "AvgPool2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
           "Embedding", "BatchNormalization", "LayerNormalization", "InputLayer"]


class AveragePooling2D(Module):
    """Average pooling over NHWC windows; ``strides`` defaults to ``pool_size``. With
    ``padding="same"`` a window averages only the pixels it covers (TensorFlow)."""

    def __init__(self, pool_size: int | Sequence[int] = 2, strides=None, padding: str = "valid",
                 name: str | None = None, input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)
        self.pool_size = _pair(pool_size, "AveragePooling2D pool_size")
        self.strides = self.pool_size if strides is None else _pair(strides,
                                                                    "AveragePooling2D strides")
        self.padding = _padding(padding, "AveragePooling2D")

    def call(self, x: Any, training: bool = False) -> Tensor:
        return F.avg_pool2d(x, self.pool_size, self.strides, self.padding)


AvgPool2D = AveragePooling2D


class _GlobalPooling(Module):
    """``_reduce`` over the inner axes of input of rank ``_rank`` (``keepdims`` keeps them)."""

    _reduce = staticmethod(ops.reduce_mean)
    _rank, _axes, _layout = 4, (1, 2), "NHWC"

    def __init__(self, keepdims: bool = False, name: str | None = None) -> None:
        super().__init__(name)
        self.keepdims = bool(keepdims)

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = convert_to_tensor(x)
        if x.ndim != self._rank:
            raise ValueError(f"{type(self).__name__} expects {self._layout} input, got shape "
                             f"{x.shape}")
        return self._reduce(x, axis=self._axes, keepdims=self.keepdims)


class _GlobalPooling2D(_GlobalPooling):
    """``(N, H, W, C) -> (N, C)`` (or ``(N, 1, 1, C)`` with ``keepdims``)."""


class GlobalAveragePooling2D(_GlobalPooling2D):
    """The mean over the spatial axes."""


class GlobalMaxPooling2D(_GlobalPooling2D):
    """The maximum over the spatial axes."""

    _reduce = staticmethod(ops.reduce_max)


class Embedding(Module):
    """Integer ids ``(...)`` -> vectors ``(..., output_dim)`` from a trainable table
    ``embeddings`` of shape ``(input_dim, output_dim)`` (Keras's default init: U(-0.05, 0.05)).
    Ids outside ``[0, input_dim)`` are an error."""

    def __init__(self, input_dim: int, output_dim: int,
                 embeddings_initializer: str | Callable = "uniform", dtype: str = "float32",
                 seed: int | np.random.Generator | None = None, name: str | None = None,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)
        if int(input_dim) < 1 or int(output_dim) < 1:
            raise ValueError(f"Embedding: input_dim and output_dim must be positive, got "
                             f"{input_dim} and {output_dim}")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        table = init.get(embeddings_initializer)((self.input_dim, self.output_dim), None, None,
                                                 init.as_generator(seed), as_dtype(dtype))
        self.embeddings = Variable(table, name="embeddings")

    def call(self, x: Any, training: bool = False) -> Tensor:
        ids = convert_to_tensor(x)
        if ids.dtype.kind == "f":  # Keras casts float ids (e.g. from a numpy float array)
            ids = ops.cast(ids, "int64")  # truncated, as astype (and traceable)
        return F.embedding_lookup(self.embeddings, ids)


class BatchNormalization(Module):
    """Normalise over the batch (Keras): with ``training=True`` uses the batch mean and
    (biased) variance over every axis but ``axis`` and moves ``moving_mean`` /
    ``moving_variance`` by ``momentum``; with ``training=False`` uses the moving statistics.
    ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta``."""

    def __init__(self, axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, dtype: str = "float32",
                 name: str | None = None, input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)
        self.axis = int(axis)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.dtype = as_dtype(dtype)
        self.gamma: Variable | None = None
        self.beta: Variable | None = None
        self.moving_mean: Variable | None = None
        self.moving_variance: Variable | None = None
        if self.input_shape_hint:
            self.build(self.input_shape_hint[self.axis])

    def build(self, channels: int, like: Any = None) -> None:
        """Create ``gamma``/``beta`` (if enabled) and the moving statistics for ``channels``."""
        def var(fill: float, trainable: bool, name: str) -> Variable:
            arr = _on_device(np.full((channels,), fill, self.dtype), like)
            return Variable(arr, trainable=trainable, name=name)
        self.gamma = var(1.0, True, "gamma") if self.scale else None
        self.beta = var(0.0, True, "beta") if self.center else None
        self.moving_mean = var(0.0, False, "moving_mean")
        self.moving_variance = var(1.0, False, "moving_variance")

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = _as_layer_dtype(convert_to_tensor(x, self.dtype) if not isinstance(x, Tensor)
                            else x, self.dtype)
        axis = self.axis % x.ndim
        if self.moving_mean is None:
            self.build(int(x.shape[axis]), x)
        reduce_axes = [i for i in range(x.ndim) if i != axis]
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        if training:
            mean, var = _exact_moments(x, reduce_axes, keepdims=False)
            m = self.momentum
            # tensor ops, so tp.function records the updates (no gradient flows into them)
            self.moving_mean.assign(self.moving_mean * m + ops.stop_gradient(mean) * (1 - m))
            self.moving_variance.assign(self.moving_variance * m
                                        + ops.stop_gradient(var) * (1 - m))
        else:
            mean, var = self.moving_mean, self.moving_variance
        gamma = None if self.gamma is None else ops.reshape(self.gamma, shape)
        beta = None if self.beta is None else ops.reshape(self.beta, shape)
        return batch_normalization(x, ops.reshape(mean, shape), ops.reshape(var, shape), beta,
                                   gamma, self.epsilon)


class LayerNormalization(Module):
    """Normalise each example over its last axis (Keras):
    ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta`` with per-example statistics, so
    training and inference behave the same. ``gamma``/``beta`` have the last axis's size."""

    def __init__(self, epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 dtype: str = "float32", name: str | None = None,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)
        self.epsilon, self.center, self.scale = float(epsilon), bool(center), bool(scale)
        self.dtype = as_dtype(dtype)
        self.gamma: Variable | None = None
        self.beta: Variable | None = None
        if self.input_shape_hint:
            self.build(self.input_shape_hint[-1])

    def build(self, features: int, like: Any = None) -> None:
        """Create ``gamma`` (ones) and ``beta`` (zeros) of size ``features``."""
        if self.scale:
            self.gamma = Variable(_on_device(np.ones(features, self.dtype), like), name="gamma")
        if self.center:
            self.beta = Variable(_on_device(np.zeros(features, self.dtype), like), name="beta")
        self._built = True

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = _as_layer_dtype(convert_to_tensor(x, self.dtype) if not isinstance(x, Tensor)
                            else x, self.dtype)
        if not getattr(self, "_built", False):
            self.build(int(x.shape[-1]), x)
        mean, var = _exact_moments(x, [x.ndim - 1], keepdims=True)
        return batch_normalization(x, mean, var, self.beta, self.gamma, self.epsilon)


def _exact_moments(x: Tensor, axes: list, keepdims: bool) -> tuple[Tensor, Tensor]:
    """Mean and (biased) variance with the gradient through both: unlike ``tp.nn.moments``
    (TensorFlow's stop_gradient on the mean), second derivatives of the layers are exact."""
    return (ops.reduce_mean(x, axes, keepdims=keepdims),
            math_ops.reduce_variance(x, axes, keepdims=keepdims))


class InputLayer(Module):
    """Declares the input shape (without the batch axis) of a ``Sequential``; the identity.

    ``keras.Input(shape)`` (a symbolic tensor, :mod:`symbolic`) holds one; as the first entry
    of a ``Sequential`` it stands for this layer."""

    def __init__(self, shape: Sequence[int] | None = None, name: str | None = None,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        hint = shape if shape is not None else input_shape
        if hint is None:
            raise ValueError("InputLayer needs shape= (the input shape without the batch axis)")
        self.input_shape_hint = _shape_hint(hint)

    def call(self, x: Any, training: bool = False) -> Any:
        return x
