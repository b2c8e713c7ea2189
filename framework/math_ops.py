"""TensorFlow's ``tf.math`` ops beyond the core library: reductions, scans, special functions.

Differentiable ops apply a primitive (:mod:`primitives`, :mod:`primitives_ext`) or compose
existing ops; predicates and integer results carry no gradient. ``tp.math`` re-exports these
together with the core ops (:mod:`tapeflow.math`).

>>> import tapeflow as tp
>>> float(tp.math.reduce_logsumexp(tp.constant([0.0, 0.0])))  # log 2
0.6931471824645996
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from . import ops
from . import primitives as P
from . import primitives_ext as PX
from ._backend import array_module
from .errors import InvalidArgumentError
from .recording import derived
from .tensor import Tensor, as_dtype, convert_to_tensor

__all__ = [
    "reduce_prod", "reduce_logsumexp", "reduce_variance", "reduce_std", "reduce_any",
    "reduce_all", "count_nonzero", "cumsum", "cumprod", "top_k", "rsqrt", "reciprocal",
    "squared_difference", "divide_no_nan", "truediv", "softplus", "log_sigmoid", "erf", "expm1",
    "ceil", "tan", "atan", "sinh", "cosh", "is_nan", "is_finite", "is_inf", "l2_normalize",
    "add_n", "multiply_no_nan",
]

expm1 = ops._unary(PX.expm1_p, "expm1")
tan = ops._unary(PX.tan_p, "tan")
atan = ops._unary(PX.atan_p, "atan")
sinh = ops._unary(PX.sinh_p, "sinh")
cosh = ops._unary(PX.cosh_p, "cosh")
erf = ops._unary(PX.erf_p, "erf")
softplus = ops._unary(PX.softplus_p, "softplus")


def _float(x, op: str) -> Tensor:
    x = convert_to_tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{op} expects a float tensor, got {x.dtype}; cast it with "
                        f"tp.cast(x, 'float32')")
    return x


def log_sigmoid(x) -> Tensor:
    """``log(sigmoid(x)) = -softplus(-x)``, stable for large ``|x|``."""
    return ops.negative(softplus(ops.negative(_float(x, "log_sigmoid"))))


def rsqrt(x) -> Tensor:
    """``1 / sqrt(x)``."""
    x = _float(x, "rsqrt")
    return ops.divide(ops.ones_like(x), ops.sqrt(x))


def reciprocal(x) -> Tensor:
    """``1 / x``."""
    x = _float(x, "reciprocal")
    return ops.divide(ops.ones_like(x), x)


def squared_difference(x, y) -> Tensor:
    """``(x - y) ** 2`` with broadcasting."""
    return ops.square(ops.subtract(x, y))


def divide_no_nan(x, y) -> Tensor:
    """``x / y``, and 0 wherever ``y == 0`` (with a zero, not NaN, gradient there)."""
    x, y = ops._pair(x, y, "divide_no_nan")
    zero = derived(ops._of_module(np.equal), y,
                   Tensor(array_module(y._value).zeros((), y._value.dtype)))
    safe = ops.where(zero, ops.ones_like(y), y)
    return ops.where(zero, ops.zeros_like(ops.divide(x, safe)), ops.divide(x, safe))


def multiply_no_nan(x, y) -> Tensor:
    """``x * y``, and 0 wherever ``y == 0`` even if ``x`` is inf or NaN."""
    x, y = ops._pair(x, y, "multiply_no_nan")
    zero = derived(ops._of_module(np.equal), y,
                   Tensor(array_module(y._value).zeros((), y._value.dtype)))
    safe_x = ops.where(zero, ops.zeros_like(x), x)  # x is never multiplied by a zero y
    return ops.multiply(safe_x, y)


def add_n(inputs) -> Tensor:
    """The elementwise sum of a list of tensors of one shape and dtype."""
    ts = [convert_to_tensor(t) for t in inputs]
    if not ts or len({(t.shape, t.dtype) for t in ts}) != 1:
        raise InvalidArgumentError(f"add_n needs a non-empty list of tensors of one shape and "
                                   f"dtype, got {[(t.shape, str(t.dtype)) for t in ts]}")
    total = ts[0]
    for t in ts[1:]:
        total = ops.add(total, t)
    return total


def truediv(x, y) -> Tensor:
    """Division that always gives floats: int8/int16 become float32, int32/int64 float64."""
    x, y = ops._pair(x, y, "truediv")
    if x.dtype.kind in "iu":
        dtype = "float32" if x.dtype.itemsize <= 2 else "float64"
        x, y = ops.cast(x, dtype), ops.cast(y, dtype)
    return ops.divide(x, y)


# Piecewise-constant or bool results: no gradient (TensorFlow's None).
ceil = ops._raw(np.ceil, "ceil")
is_nan = ops._raw(np.isnan, "is_nan")
is_finite = ops._raw(np.isfinite, "is_finite")
is_inf = ops._raw(np.isinf, "is_inf")


# ---------------------------------------------------------------- reductions
def reduce_prod(input_tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Product over ``axis`` (all axes if None); the gradient is exact with zeros in the input
    (products of the other entries, not ``prod / x``)."""
    x = convert_to_tensor(input_tensor)
    axes = ops._axes(axis, x.ndim, "reduce_prod")
    if x.dtype.kind != "f":
        return derived(lambda a: a.prod(axis=axes, keepdims=bool(keepdims), dtype=a.dtype), x)
    return PX.reduce_prod_p(x, axis=axes, keepdims=bool(keepdims))


def reduce_logsumexp(input_tensor, axis=None, keepdims: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` over ``axis``, shifted by the (finite) maximum for stability."""
    x = _float(input_tensor, "reduce_logsumexp")
    raw_max = ops.reduce_max(x, axis, keepdims=True)
    shift = ops.stop_gradient(ops.where(is_finite(raw_max), raw_max, ops.zeros_like(raw_max)))
    total = ops.reduce_sum(ops.exp(ops.subtract(x, shift)), axis, keepdims=True)
    out = ops.add(ops.log(total), shift)
    if keepdims:
        return out
    axes = ops._axes(axis, x.ndim, "reduce_logsumexp")
    return ops.reshape(out, tuple(d for i, d in enumerate(out.shape)
                                  if axes is not None and i not in axes))


def reduce_variance(input_tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Population variance (divides by N) over ``axis``."""
    x = _float(input_tensor, "reduce_variance")
    mean = ops.reduce_mean(x, axis, keepdims=True)
    return ops.reduce_mean(ops.square(ops.subtract(x, mean)), axis, keepdims=keepdims)


def reduce_std(input_tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Population standard deviation over ``axis``."""
    return ops.sqrt(reduce_variance(input_tensor, axis, keepdims))


def _bool_reduction(name: str, method: str):
    def op(input_tensor, axis=None, keepdims: bool = False) -> Tensor:
        x = convert_to_tensor(input_tensor)
        if x.dtype != np.bool_:
            raise TypeError(f"{name} expects a bool tensor, got {x.dtype}")
        axes = ops._axes(axis, x.ndim, name)
        return derived(lambda a: getattr(a, method)(axis=axes, keepdims=bool(keepdims)), x)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"Logical ``{method}`` over ``axis`` of a bool tensor."
    return op


reduce_any = _bool_reduction("reduce_any", "any")
reduce_all = _bool_reduction("reduce_all", "all")


def count_nonzero(input, axis=None, keepdims: bool = False, dtype="int64") -> Tensor:
    """Number of non-zero entries over ``axis``."""
    x = convert_to_tensor(input)
    axes = ops._axes(axis, x.ndim, "count_nonzero")
    out_dtype = as_dtype(dtype)
    return derived(lambda a: (a != 0).sum(axis=axes, keepdims=bool(keepdims)).astype(out_dtype),
                   x)


# ---------------------------------------------------------------- scans
def _scan_op(prim, name: str, product: bool):
    def op(x, axis: int = 0, exclusive: bool = False, reverse: bool = False) -> Tensor:
        x = convert_to_tensor(x)
        if x.ndim == 0:
            raise InvalidArgumentError(f"{name}: input must have rank >= 1, got a scalar")
        ax = ops._axes(axis, x.ndim, name)[0]
        if x.dtype.kind != "f":
            return derived(lambda a: PX._scan(a, ax, bool(exclusive), bool(reverse), product), x)
        return prim(x, axis=ax, exclusive=bool(exclusive), reverse=bool(reverse))
    op.__name__ = op.__qualname__ = name
    op.__doc__ = (f"Running {'product' if product else 'sum'} along ``axis``; ``exclusive`` "
                  f"leaves out the current entry, ``reverse`` runs from the end (TensorFlow).")
    return op


cumsum = _scan_op(PX.cumsum_p, "cumsum", product=False)
cumprod = _scan_op(PX.cumprod_p, "cumprod", product=True)


# ---------------------------------------------------------------- top_k
TopKV2 = namedtuple("TopKV2", ["values", "indices"])


def top_k(input, k: int = 1, sorted: bool = True) -> TopKV2:
    """The ``k`` largest entries along the last axis and their int32 indices (ties: the lower
    index first, as TensorFlow). Values are differentiable (the gradient goes to the picks)."""
    x = convert_to_tensor(input)
    k = int(k)
    if x.ndim < 1 or not 0 <= k <= x.shape[-1]:
        raise InvalidArgumentError(f"top_k: k={k} must lie in [0, {x.shape[-1] if x.ndim else 0}]"
                                   f" for input of shape {x.shape}")
    order = derived(lambda a: (-a if a.dtype.kind != "u" else a.max() - a).argsort(
        axis=-1, kind="stable")[..., :k].astype(np.int32), x)
    return TopKV2(P.take_along_p(x, order, axis=-1), order)


# ---------------------------------------------------------------- normalisation
def l2_normalize(x, axis=None, epsilon: float = 1e-12) -> Tensor:
    """``x / sqrt(max(sum(x**2, axis), epsilon))``."""
    x = _float(x, "l2_normalize")
    sq = ops.reduce_sum(ops.square(x), axis, keepdims=True)
    return ops.multiply(x, rsqrt(ops.maximum(sq, epsilon)))
