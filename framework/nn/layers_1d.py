"""Keras's 1-D layers over ``(batch, steps, channels)`` input: ``Conv1D``, ``MaxPooling1D``,
``AveragePooling1D``, ``GlobalAveragePooling1D``, ``GlobalMaxPooling1D``.

Each runs its 2-D counterpart on a height-1 image ``(batch, 1, steps, channels)``, so it shares
its kernels, gradients and ``tp.function`` plans; ``Conv1D``'s ``kernel`` has Keras's shape
``(kernel_size, in, filters)`` (and Keras's fans: ``kernel_size * in`` and
``kernel_size * filters``).

>>> import tapeflow as tp
>>> tp.keras.layers.Conv1D(4, 3, seed=0)(tp.ones((2, 10, 5))).shape
(2, 8, 4)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .. import ops
from ..tensor import Tensor, convert_to_tensor
from . import functional as F
from .extra_layers import _GlobalPooling
from .layers import ActivationLike, Seed, _KernelLayer, _padding, _shape_hint
from .modules import Module

__all__ = ["Conv1D", "MaxPooling1D", "MaxPool1D", "AveragePooling1D", "AvgPool1D",
           "GlobalAveragePooling1D", "GlobalMaxPooling1D"]


def _one(value, what: str) -> int:
    v = value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value
    if not isinstance(v, int) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return v


def _steps(x: Any, what: str) -> Tensor:
    x = convert_to_tensor(x)
    if x.ndim != 3:
        raise ValueError(f"{what} expects (batch, steps, channels) input, got shape {x.shape}")
    return ops.expand_dims(x, 1)


class Conv1D(_KernelLayer):
    """1-D convolution over ``(batch, steps, channels)``; ``kernel`` ``(kernel_size, in,
    filters)``; ``padding`` ``"valid"`` or ``"same"``."""

    def __init__(self, filters: int, kernel_size: int | Sequence[int], strides=1,
                 padding: str = "valid", activation: ActivationLike = None,
                 use_bias: bool = True, kernel_initializer: str | Callable = "glorot_uniform",
                 bias_initializer: str | Callable = "zeros", dilation_rate=1,
                 dtype: str = "float32", seed: Seed = None, name: str | None = None,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, dtype,
                         seed, name, input_shape)
        if int(filters) < 1:
            raise ValueError(f"Conv1D: filters must be positive, got {filters}")
        self.filters = int(filters)
        self.kernel_size = _one(kernel_size, "Conv1D kernel_size")
        self.strides = _one(strides, "Conv1D strides")
        self.dilation_rate = _one(dilation_rate, "Conv1D dilation_rate")
        self.padding = _padding(padding, "Conv1D")
        if self.input_shape_hint:
            self.build(int(self.input_shape_hint[-1]))

    def build(self, input_channels: int, like: Any = None) -> None:
        """Create ``kernel`` ``(kernel_size, input_channels, filters)`` and ``bias``."""
        self._create((self.kernel_size, int(input_channels), self.filters), like)

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = self._input(x, 3, "(batch, steps, channels)")
        y = F.conv2d(ops.expand_dims(x, 1), ops.expand_dims(self.kernel, 0), (1, self.strides), self.padding,
                     dilations=(1, self.dilation_rate))
        return self._bias_activation(ops.squeeze(y, 1))


class _Pool1D(Module):
    _pool = staticmethod(F.max_pool2d)

    def __init__(self, pool_size: int = 2, strides: int | None = None, padding: str = "valid",
                 name: str | None = None, input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)
        what = type(self).__name__
        self.pool_size = _one(pool_size, f"{what} pool_size")
        self.strides = self.pool_size if strides is None else _one(strides, f"{what} strides")
        self.padding = _padding(padding, what)

    def call(self, x: Any, training: bool = False) -> Tensor:
        y = self._pool(_steps(x, type(self).__name__), (1, self.pool_size), (1, self.strides),
                       self.padding)
        return ops.squeeze(y, 1)


class MaxPooling1D(_Pool1D):
    """The maximum over windows of ``pool_size`` steps."""


class AveragePooling1D(_Pool1D):
    """The mean over windows of ``pool_size`` steps (with ``"same"``, of the steps covered)."""

    _pool = staticmethod(F.avg_pool2d)


MaxPool1D, AvgPool1D = MaxPooling1D, AveragePooling1D


class _GlobalPooling1D(_GlobalPooling):
    """``(N, steps, C) -> (N, C)`` (or ``(N, 1, C)`` with ``keepdims``)."""

    _rank, _axes, _layout = 3, 1, "(batch, steps, channels)"


class GlobalAveragePooling1D(_GlobalPooling1D):
    """The mean over the steps."""


class GlobalMaxPooling1D(_GlobalPooling1D):
    """The maximum over the steps."""

    _reduce = staticmethod(ops.reduce_max)
