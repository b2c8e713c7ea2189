"""Activation functions with TensorFlow's names, defaults and derivatives at the kinks.

Composed from primitives; where a kink's derivative matters the composition is chosen to give
TensorFlow's value there (``leaky_relu'(0) = alpha``, ``relu6'(0) = relu6'(6) = 0``), and
branches that could overflow are clamped first so an unused branch never feeds ``inf`` or
``NaN`` into the backward pass.

>>> import tapeflow as tp
>>> tp.nn.leaky_relu(tp.constant([-1.0, 2.0])).numpy().tolist()
[-0.20000000298023224, 2.0]
"""
from __future__ import annotations

import math

from .. import math_ops, ops
from ..tensor import Tensor, convert_to_tensor

__all__ = ["leaky_relu", "gelu", "softplus", "elu", "selu", "silu", "swish", "relu6",
           "softsign", "tanh", "log_sigmoid"]

tanh = ops.tanh
softplus = math_ops.softplus
log_sigmoid = math_ops.log_sigmoid

# SELU's constants (Klambauer et al. 2017), as TensorFlow uses them.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _float(x, op: str) -> Tensor:
    x = convert_to_tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{op} expects a float tensor, got {x.dtype}")
    return x


def leaky_relu(features, alpha: float = 0.2) -> Tensor:
    """``x`` for ``x > 0``, else ``alpha * x`` (derivative ``alpha`` at 0, like TensorFlow)."""
    x = _float(features, "leaky_relu")
    return ops.where(ops.greater(x, 0), x, ops.multiply(x, alpha))


def _expm1_negative_part(x: Tensor) -> Tensor:
    """``exp(min(x, 0)) - 1``: the ELU branch, clamped so large ``x`` cannot overflow."""
    return math_ops.expm1(ops.minimum(x, ops.zeros_like(x)))


def elu(features) -> Tensor:
    """``x`` for ``x > 0``, else ``exp(x) - 1``."""
    x = _float(features, "elu")
    return ops.where(ops.greater_equal(x, 0), x, _expm1_negative_part(x))


def selu(features) -> Tensor:
    """``scale * elu(x)`` with ``alpha``-scaled negative part (self-normalising constants)."""
    x = _float(features, "selu")
    neg = ops.multiply(_expm1_negative_part(x), _SELU_ALPHA)
    # x >= 0 takes the linear branch: the derivative at 0 is scale (TensorFlow's SeluGrad)
    return ops.multiply(ops.where(ops.greater_equal(x, 0), x, neg), _SELU_SCALE)


def gelu(features, approximate: bool = False) -> Tensor:
    """Gaussian error linear unit: ``x * Phi(x)`` with the exact normal CDF (erf), or with
    ``approximate=True`` its tanh approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.
    """
    x = _float(features, "gelu")
    if approximate:
        inner = ops.multiply(ops.add(x, ops.multiply(ops.pow(x, 3.0), 0.044715)),
                             math.sqrt(2.0 / math.pi))
        return ops.multiply(ops.multiply(x, 0.5), ops.add(ops.tanh(inner), 1.0))
    cdf = ops.multiply(ops.add(math_ops.erf(ops.multiply(x, 1.0 / math.sqrt(2.0))), 1.0), 0.5)
    return ops.multiply(x, cdf)


def silu(features, beta: float = 1.0) -> Tensor:
    """``x * sigmoid(beta * x)`` (also called swish)."""
    x = _float(features, "silu")
    return ops.multiply(x, ops.sigmoid(ops.multiply(x, beta) if beta != 1.0 else x))


swish = silu


def relu6(features) -> Tensor:
    """``min(max(x, 0), 6)``; the derivative is 0 at both kinks, like TensorFlow."""
    x = _float(features, "relu6")
    return ops.where(ops.greater_equal(x, 6), ops.multiply(ops.ones_like(x), 6.0), ops.relu(x))


def softsign(features) -> Tensor:
    """``x / (1 + |x|)``."""
    x = _float(features, "softsign")
    return ops.divide(x, ops.add(ops.abs(x), 1.0))
