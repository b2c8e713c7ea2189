"""Keras's parameter-free layers: activations as layers (``Softmax``, ``ReLU``, ``LeakyReLU``,
``ELU``) and shape and value layers (``Rescaling``, ``Identity``, ``Permute``,
``RepeatVector``, ``ZeroPadding2D``, ``Cropping2D``, ``UpSampling2D``, ``GaussianNoise``),
with Keras's arguments and defaults. Each is composed of recorded ops, so it differentiates,
traces in ``tp.function`` and saves with its model (its constructor arguments are its config).

>>> import tapeflow as tp
>>> tp.keras.layers.Softmax()(tp.constant([[0.0, 0.0]]))
tp.Tensor([[0.5 0.5]], shape=(1, 2), dtype=float32)
"""
from __future__ import annotations

from typing import Any, Sequence

from .. import ops
from .. import random as tp_random
from ..tensor import Tensor, convert_to_tensor
from . import activations as A
from . import functional as F
from .layers import _shape_hint
from .modules import Module

__all__ = ["Softmax", "ReLU", "LeakyReLU", "ELU", "Rescaling", "Identity", "Permute",
           "RepeatVector", "ZeroPadding2D", "Cropping2D", "UpSampling2D", "GaussianNoise"]


class _Layer(Module):
    def __init__(self, name: str | None = None, input_shape: Sequence[int] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.input_shape_hint = _shape_hint(input_shape)


class Softmax(_Layer):
    """``softmax(x)`` along ``axis``."""

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = int(axis)

    def call(self, x: Any, training: bool = False) -> Tensor:
        return F.softmax(x, axis=self.axis)


class ReLU(_Layer):
    """Keras's ``ReLU``: ``x`` above ``threshold`` (capped at ``max_value``), else
    ``negative_slope * (x - threshold)``; the defaults are the plain ``relu``."""

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0,
                 threshold: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_value is not None and max_value < 0:
            raise ValueError(f"ReLU: max_value must be >= 0, got {max_value}")
        if negative_slope < 0:
            raise ValueError(f"ReLU: negative_slope must be >= 0, got {negative_slope}")
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = convert_to_tensor(x)
        if self.negative_slope == 0 and self.threshold == 0:
            y = ops.relu(x)
        else:
            y = ops.where(ops.greater_equal(x, self.threshold), x,
                          ops.multiply(ops.subtract(x, self.threshold), self.negative_slope))
        return y if self.max_value is None else ops.minimum(y, self.max_value)


class LeakyReLU(_Layer):
    """``x`` for ``x > 0``, else ``negative_slope * x`` (Keras 3's name; tf.keras's ``alpha``
    is taken too). Keras's default slope is 0.3."""

    def __init__(self, negative_slope: float | None = None, alpha: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if negative_slope is not None and alpha is not None:
            raise ValueError("LeakyReLU: give negative_slope or alpha, not both")
        slope = negative_slope if negative_slope is not None else alpha
        self.negative_slope = 0.3 if slope is None else float(slope)

    def call(self, x: Any, training: bool = False) -> Tensor:
        return A.leaky_relu(x, alpha=self.negative_slope)


class ELU(_Layer):
    """``x`` for ``x > 0``, else ``alpha * (exp(x) - 1)``."""

    def __init__(self, alpha: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha = float(alpha)

    def call(self, x: Any, training: bool = False) -> Tensor:
        y = A.elu(x)
        if self.alpha == 1.0:
            return y
        return ops.where(ops.greater_equal(y, 0), y, ops.multiply(y, self.alpha))


class Rescaling(_Layer):
    """``x * scale + offset`` (``Rescaling(1.0 / 255)`` for images), in float32."""

    def __init__(self, scale: float, offset: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale, self.offset = float(scale), float(offset)

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = convert_to_tensor(x)
        if x.dtype.kind != "f":
            x = ops.cast(x, "float32")
        return ops.add(ops.multiply(x, self.scale), self.offset)


class Identity(_Layer):
    """Its input, unchanged."""

    def call(self, x: Any, training: bool = False) -> Any:
        return x


class Permute(_Layer):
    """Reorder the non-batch axes: ``dims`` are 1-based, as in Keras (``Permute((2, 1))``)."""

    def __init__(self, dims: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dims = tuple(int(d) for d in dims)
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ValueError(f"Permute: dims must be a permutation of 1..{len(self.dims)}, "
                             f"got {self.dims}")

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = convert_to_tensor(x)
        if x.ndim != len(self.dims) + 1:
            raise ValueError(f"Permute{self.dims}: input of shape {x.shape} has {x.ndim - 1} "
                             f"non-batch axes, not {len(self.dims)}")
        return ops.transpose(x, (0,) + self.dims)


class RepeatVector(_Layer):
    """``(N, F) -> (N, n, F)``: the input repeated ``n`` times."""

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = int(n)

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = convert_to_tensor(x)
        if x.ndim != 2:
            raise ValueError(f"RepeatVector: expects (batch, features) input, got {x.shape}")
        return ops.broadcast_to(ops.expand_dims(x, 1), (x.shape[0], self.n, x.shape[1]))


def _two_pairs(value, what: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras's ``padding``/``cropping``: an int, ``(rows, cols)`` or
    ``((top, bottom), (left, right))``."""
    if isinstance(value, int):
        return (value, value), (value, value)
    a, b = value
    pairs = tuple((int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))
                  for v in (a, b))
    if min(v for p in pairs for v in p) < 0:
        raise ValueError(f"{what}: sizes must be >= 0, got {value!r}")
    return pairs


class ZeroPadding2D(_Layer):
    """Zeros around the rows and columns of NHWC images."""

    def __init__(self, padding: Any = (1, 1), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.padding = _two_pairs(padding, "ZeroPadding2D")

    def call(self, x: Any, training: bool = False) -> Tensor:
        return ops.pad(x, ((0, 0),) + self.padding + ((0, 0),))


class Cropping2D(_Layer):
    """Rows and columns cut from the edges of NHWC images."""

    def __init__(self, cropping: Any = ((0, 0), (0, 0)), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cropping = _two_pairs(cropping, "Cropping2D")

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = convert_to_tensor(x)
        (t, b), (le, r) = self.cropping
        if x.ndim != 4 or t + b >= x.shape[1] or le + r >= x.shape[2]:
            raise ValueError(f"Cropping2D{self.cropping}: cannot crop NHWC input of shape "
                             f"{x.shape}")
        return x[:, t:x.shape[1] - b, le:x.shape[2] - r, :]


class UpSampling2D(_Layer):
    """Each pixel of NHWC images repeated ``size`` times along rows and columns (nearest)."""

    def __init__(self, size: Any = (2, 2), interpolation: str = "nearest",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if interpolation != "nearest":
            raise ValueError(f"UpSampling2D: only interpolation='nearest' is supported, got "
                             f"{interpolation!r}")
        self.size = (int(size), int(size)) if isinstance(size, int) else tuple(map(int, size))
        self.interpolation = interpolation

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = convert_to_tensor(x)
        if x.ndim != 4:
            raise ValueError(f"UpSampling2D expects NHWC input, got shape {x.shape}")
        n, h, w, c = x.shape
        sh, sw = self.size
        grid = ops.broadcast_to(ops.reshape(x, (n, h, 1, w, 1, c)), (n, h, sh, w, sw, c))
        return ops.reshape(grid, (n, h * sh, w * sw, c))


class GaussianNoise(_Layer):
    """Adds zero-mean normal noise of ``stddev`` while training (a regulariser); the identity
    at inference. The noise comes from ``tp.random`` (``seed`` for a fixed stream)."""

    def __init__(self, stddev: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stddev, self.seed = float(stddev), seed

    def call(self, x: Any, training: bool = False) -> Any:
        if not training or self.stddev == 0:
            return x
        x = convert_to_tensor(x)
        noise = tp_random.normal(tuple(x.shape), 0.0, self.stddev, dtype=x.dtype,
                                 seed=self.seed)
        return ops.add(x, noise)
