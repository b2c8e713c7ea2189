"""``tp.linalg``: TensorFlow's ``tf.linalg`` names for matrix ops.

``inv`` and ``det`` are primitives (:mod:`primitives_ext`); the rest are the op library's own
functions under their ``tf.linalg`` names.

>>> import tapeflow as tp
>>> float(tp.linalg.det(tp.constant([[2.0, 0.0], [0.0, 3.0]])))
6.0
"""
from __future__ import annotations

from . import ops
from . import primitives_ext as PX
from .array_ops import einsum, eye, norm, tensordot
from .clip_ops import global_norm
from .errors import InvalidArgumentError
from .math_ops import l2_normalize
from .ops import matmul
from .tensor import Tensor, convert_to_tensor

__all__ = ["matmul", "inv", "det", "norm", "eye", "matrix_transpose", "einsum", "tensordot",
           "l2_normalize", "trace", "global_norm"]


def _square(x, op: str) -> Tensor:
    x = convert_to_tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{op} expects a float tensor, got {x.dtype}")
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise InvalidArgumentError(f"{op} expects (a batch of) square matrices, got shape "
                                   f"{x.shape}")
    return x


def inv(input) -> Tensor:
    """Inverse of (a batch of) square matrices; a singular matrix raises ``LinAlgError``."""
    return PX.matrix_inverse_p(_square(input, "inv"))


def det(input) -> Tensor:
    """Determinant of (a batch of) square matrices."""
    return PX.det_p(_square(input, "det"))


def matrix_transpose(a) -> Tensor:
    """Swap the last two axes."""
    x = convert_to_tensor(a)
    if x.ndim < 2:
        raise InvalidArgumentError(f"matrix_transpose needs rank >= 2, got shape {x.shape}")
    return ops.transpose(x, tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2))


def trace(x) -> Tensor:
    """Sum of the diagonal of (a batch of) matrices."""
    x = convert_to_tensor(x)
    if x.ndim < 2:
        raise InvalidArgumentError(f"trace needs rank >= 2, got shape {x.shape}")
    return einsum("...ii->...", x)
