"""``tp.math``: TensorFlow's ``tf.math`` spelling of the op library.

It holds the core elementwise ops and reductions of :mod:`tapeflow.ops` and the additions in
:mod:`tapeflow.math_ops`; each is the same function object as ``tp.<name>`` (one
implementation, two names).

>>> import tapeflow as tp
>>> tp.math.reduce_prod is tp.reduce_prod, tp.math.add is tp.add
(True, True)
"""
from . import math_ops, ops
from .math_ops import *  # noqa: F401,F403
from .nn.functional import softmax, log_softmax  # noqa: F401  (tf.math.softmax too)

_FROM_OPS = [
    "add", "subtract", "multiply", "divide", "pow", "negative", "abs", "square", "sqrt", "exp",
    "log", "log1p", "sin", "cos", "tanh", "sigmoid", "maximum", "minimum", "reduce_sum",
    "reduce_mean", "reduce_max", "reduce_min", "argmax", "argmin", "floor", "round", "sign",
    "equal", "not_equal", "less", "less_equal", "greater", "greater_equal", "floordiv", "mod",
    "floormod", "logical_and", "logical_or", "logical_not",
]
globals().update({name: getattr(ops, name) for name in _FROM_OPS})

__all__ = sorted(set(_FROM_OPS) | set(math_ops.__all__) | {"softmax", "log_softmax"})
