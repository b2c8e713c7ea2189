"""Symbolic sizes for tracing an ``input_signature``'s ``None`` dimension once.

TensorFlow traces ``tf.function(input_signature=[TensorSpec([None, 784])])`` once: inside the
trace ``x.shape`` is ``(None, 784)`` and the graph works for every batch size. tapeflow's
tracer is concrete (it computes every value), so it traces such a function at two sizes at
once, in one run of the Python function: the real batch (size ``n1``) and a shadow batch of
size ``n2``. Every traced array seen from Python is a :class:`SymArray`: the size ``n1``
array, whose ``shape`` reports each size that depends on the batch as a :class:`Dim` -- an
affine ``a*n + b`` that prints as ``None``. Python code never sees the number: arithmetic on
a ``Dim`` stays symbolic (a reshape's target ``(n*h*w, c)``, a slice's end), and every use that
would turn it into a number (``int``, ``range``, ``1/n``, an ``if`` on it, a NumPy shape)
raises :class:`SymbolicDimError`. The tracer (:mod:`trace`) then falls back to tracing every
size, as before. So a traced value can never hold the batch size as a constant.

Kernels get plain arrays and parameters with every ``Dim`` replaced by its value at the size
they run at (:func:`at`): each op runs at ``n1`` and at ``n2``, and the two traces are fitted
by :func:`generalize.fit`.
"""
from __future__ import annotations

import math

import numpy as np

from ._backend import register_array_type

__all__ = ["Dim", "SymArray", "SymbolicDimError", "at", "plain", "concrete_shape"]

_shape_of = np.ndarray.shape.__get__  # the real shape of any ndarray, subclass or not


class SymbolicDimError(TypeError):
    """A ``None`` dimension's size was needed as a number while tracing it symbolically."""


def _refuse(what: str):
    from .tensor import _TRACE
    if _TRACE:
        _TRACE[-1].symbolic_failed = True  # even if the caller catches the error
    raise SymbolicDimError(
        f"{what} of a None dimension inside tp.function: its size is not known while "
        "tracing (TensorFlow: x.shape[0] is None); use tp.shape(x)[0] for the size as a "
        "tensor")


class Dim:
    """``a * n + b`` for the batch size ``n`` (an int ``a != 0``, an int ``b``); prints as
    ``None``, as TensorFlow's unknown dimension."""

    __slots__ = ("a", "b")

    def __init__(self, a: int, b: int = 0):
        self.a, self.b = a, b

    def at(self, n: int) -> int:
        return self.a * n + self.b

    # -- affine arithmetic stays symbolic ----------------------------------------------------
    def __add__(self, other):
        if isinstance(other, Dim):
            return _dim(self.a + other.a, self.b + other.b)
        if isinstance(other, (int, np.integer)) and not isinstance(other, bool):
            return Dim(self.a, self.b + int(other))
        return NotImplemented

    __radd__ = __add__

    def __neg__(self):
        return Dim(-self.a, -self.b)

    def __sub__(self, other):
        if isinstance(other, (Dim, int, np.integer)):
            return self + (-other)
        return NotImplemented

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if isinstance(other, (int, np.integer)) and not isinstance(other, bool):
            return _dim(self.a * int(other), self.b * int(other))
        if isinstance(other, Dim):
            _refuse("the product of two None dimensions")
        return NotImplemented

    __rmul__ = __mul__

    def __floordiv__(self, other):
        if isinstance(other, Dim):  # (k*n) // (j*n): whole where j divides k
            if not (self.b or other.b or self.a % other.a):
                return self.a // other.a
        elif isinstance(other, (int, np.integer)) and other and not (self.a % other or
                                                                    self.b % other):
            return _dim(self.a // int(other), self.b // int(other))
        _refuse(f"division by {other!r}")

    def __mod__(self, other):
        if isinstance(other, Dim):
            if not (self.b or other.b or self.a % other.a):
                return 0
        elif isinstance(other, (int, np.integer)) and other and not self.a % other:
            return self.b % int(other)
        _refuse(f"the remainder by {other!r}")

    # -- comparisons: decided where they hold for every size n >= 2 --------------------------
    def _decide(self, op, other) -> bool:
        if isinstance(other, Dim):
            diff = self - other
            if isinstance(diff, int):
                return op(diff, 0)
            a, b = op(diff.at(2), 0), op(diff.at(1 << 40), 0)
        elif isinstance(other, (int, np.integer)) and not isinstance(other, bool):
            a, b = op(self.at(2), other), op(self.at(1 << 40), other)
        else:
            return NotImplemented
        if a != b:
            _refuse(f"a comparison with {other!r}")
        return a

    def __eq__(self, other):
        if other is None:
            return True  # an unknown dimension, as TensorShape([None]) == [None]
        got = self._decide(lambda x, y: x == y, other)
        return got if got is NotImplemented else bool(got)

    def __ne__(self, other):
        got = self.__eq__(other)
        return got if got is NotImplemented else not got

    def __lt__(self, other):
        return self._decide(lambda x, y: x < y, other)

    def __le__(self, other):
        return self._decide(lambda x, y: x <= y, other)

    def __gt__(self, other):
        return self._decide(lambda x, y: x > y, other)

    def __ge__(self, other):
        return self._decide(lambda x, y: x >= y, other)

    def __hash__(self) -> int:
        return hash(("Dim", self.a, self.b))

    # -- every way to a number is refused ----------------------------------------------------
    def __index__(self):
        _refuse("the size")

    def __int__(self):
        _refuse("int()")

    def __float__(self):
        _refuse("float()")

    def __bool__(self):
        _refuse("the truth value")

    def __truediv__(self, other):
        _refuse("division")

    def __rtruediv__(self, other):
        _refuse("division by the size")

    __rfloordiv__ = __rmod__ = __pow__ = __rpow__ = __rtruediv__

    def __repr__(self) -> str:
        return "None"

    def __reduce__(self):
        _refuse("pickling")


def _dim(a: int, b: int):
    return Dim(a, b) if a else b


def dims_of(shape1: tuple, shape2: tuple, n1: int, n2: int):
    """The symbolic shape of an array of ``shape1`` at size ``n1`` and ``shape2`` at ``n2``:
    every differing size as a :class:`Dim` (None where one is not affine in ``n`` with
    whole coefficients -- the caller gives up), or the plain shape where none differs."""
    if shape1 == shape2:
        return shape1
    if len(shape1) != len(shape2):
        return None
    out = []
    for d1, d2 in zip(shape1, shape2):
        if d1 == d2:
            out.append(d1)
            continue
        a, r = divmod(d2 - d1, n2 - n1)
        if r:
            return None
        out.append(Dim(a, d1 - a * n1))
    return tuple(out)


def broadcast_shapes(*shapes) -> tuple:
    """``np.broadcast_shapes`` for shapes that may hold :class:`Dim` s (ValueError if they
    do not broadcast)."""
    if not has_dim(shapes):
        return np.broadcast_shapes(*shapes)
    rank = max(len(s) for s in shapes)
    out = []
    for k in range(-rank, 0):
        sizes = {s[k] for s in shapes if len(s) >= -k} - {1}  # (a Dim is never 1)
        if len(sizes) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


class SymArray(np.ndarray):
    """A traced array whose ``shape`` has :class:`Dim` s (set by :func:`sym`); the values are
    the size ``n1`` run's. ``len()``, ``size`` and ``nbytes`` follow ``shape``; kernels get
    :func:`plain` views."""

    _dims = None
    _real = None

    @property
    def shape(self):
        dims = self._dims
        if dims is not None and _shape_of(self) == self._real:
            return dims
        return _shape_of(self)

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def nbytes(self):
        return self.size * self.itemsize

    def __len__(self) -> int:
        shape = self.shape
        if not shape:
            raise TypeError("len() of unsized object")
        return shape[0]

    def __iter__(self):
        if self._dims is not None and isinstance(self.shape[0], Dim):
            _refuse("iteration over")
        return np.ndarray.__iter__(self)

    def __reduce__(self):
        _refuse("pickling")


register_array_type(SymArray, np)


def sym(arr: np.ndarray, dims: tuple) -> np.ndarray:
    """``arr`` seen with the symbolic shape ``dims`` (``arr`` itself where nothing is symbolic)."""
    if not has_dim(dims):
        return arr
    out = arr.view(SymArray)
    out._dims, out._real = tuple(dims), _shape_of(arr)
    return out


def plain(arr):
    """The plain array behind a :class:`SymArray` (views share the data)."""
    return arr.view(np.ndarray) if type(arr) is SymArray else arr


def shape_value(a, of, dtype):
    """``of(a.shape)`` (a count, its inverse) as a 0-d array of ``dtype``: the kernel of
    :func:`ops.shape_constant`, run on every call of a plan."""
    return np.asarray(of(a.shape), dtype=dtype)


def shape_value_into(a, of, dtype, out):
    """:func:`shape_value` written into ``out`` (a plan's buffer)."""
    out[...] = of(a.shape)


def concrete_shape(arr) -> tuple:
    return _shape_of(arr) if isinstance(arr, np.ndarray) else arr.shape


def at(value, n: int):
    """``value`` (a parameter: nested tuples, lists, dicts, slices) with every :class:`Dim`
    replaced by its size at ``n`` (``value`` itself where it holds none)."""
    return _at(value, n) if has_dim(value) else value


def _at(value, n: int):
    t = type(value)
    if t is Dim:
        return value.at(n)
    if t is slice:
        return slice(_at(value.start, n), _at(value.stop, n), _at(value.step, n))
    if t is dict:
        return {k: _at(v, n) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        if hasattr(t, "_fields"):  # a namedtuple
            return t(*(_at(v, n) for v in value))
        return t(_at(v, n) for v in value)  # a tuple, list or TensorShape
    return value


def has_dim(value) -> bool:
    """Whether ``value`` (a shape, a parameter nest) holds a :class:`Dim`."""
    t = type(value)
    if t is Dim:
        return True
    if t is slice:
        return has_dim((value.start, value.stop, value.step))
    if isinstance(value, (tuple, list)):
        return any(has_dim(v) for v in value)
    if t is dict:
        return any(has_dim(v) for v in value.values())
    return False
