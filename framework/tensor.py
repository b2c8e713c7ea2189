"""``Tensor`` (immutable), ``Variable`` (mutable, trainable state) and conversion rules.

Dtype rules follow TensorFlow: Python floats become float32, Python ints int32, bools bool;
NumPy arrays keep their dtype. float16/32/64 are differentiable, everything else is not.
Python operators are attached by :mod:`tapeflow.ops` (they are ordinary recorded ops).
"""
from __future__ import annotations

import itertools
import sys
from typing import Any

import numpy as np

from . import devices as _device
from .devices import _OPEN as _SCOPES  # (a list: how many tp.device scopes are open)
from ._backend import array_module, device_name, to_numpy

__all__ = ["Tensor", "Variable", "TensorShape", "constant", "convert_to_tensor", "as_dtype"]

# Every tensor gets a unique id; the tape keys its record by id, never by the object, so
# recording keeps no tensor alive that a rule does not need.
_next_id = itertools.count(1).__next__

# The tracer of the ``tp.function`` being traced, if any (tapeflow.trace). It lives here, at
# the bottom, because Tensor and Variable report to it; mutated in place only.
_TRACE: list = []

_DTYPE_NAMES = {
    "float16": np.float16, "float32": np.float32, "float64": np.float64,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "bool": np.bool_,
}


def as_dtype(dtype) -> np.dtype:
    """Normalise a dtype given as a string, NumPy type or dtype (``"float32"``, ``np.int64``)."""
    if dtype is None:
        raise TypeError("dtype must not be None")
    if isinstance(dtype, str):
        if dtype not in _DTYPE_NAMES:
            raise TypeError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPE_NAMES)}")
        return np.dtype(_DTYPE_NAMES[dtype])
    return np.dtype(dtype)


def _no_float_to_int(value: Any, dtype: np.dtype):
    """Convert ``value`` to the integer ``dtype``; a float value is refused, as TensorFlow
    refuses it ("Cannot convert 1.5 to EagerTensor of dtype int32"), even when integral."""
    src = array_module(value).asarray(value)
    if src.dtype.kind in "fc":
        raise TypeError(f"cannot convert {value!r:.60} (dtype {src.dtype}) to a tensor of dtype "
                        f"{dtype}: float values are not converted to integers implicitly; use "
                        f"tp.cast to truncate")
    return src.astype(dtype)


def _to_array(value: Any, dtype=None):
    """Convert a Python/NumPy/CuPy value to an array following TensorFlow's dtype rules (where
    it is: the callers that create tensors put it on the ``tp.device`` scope's device)."""
    if isinstance(value, Tensor):
        arr = value._value
        return arr if dtype is None or arr.dtype == dtype else arr.astype(as_dtype(dtype))
    xp = array_module(value)
    if dtype is not None:
        dtype = as_dtype(dtype)
        if dtype.kind in "iu" and not isinstance(value, (int, np.integer)):
            return _no_float_to_int(value, dtype)
        return xp.asarray(value, dtype=dtype)
    if xp is not np or isinstance(value, (np.ndarray, np.generic)):
        return xp.asarray(value)
    # Python scalars and (nested) lists: floats -> float32, ints -> int32 (TensorFlow).
    arr = np.asarray(value)
    if arr.dtype == np.float64:
        return arr.astype(np.float32)
    if arr.dtype == np.int64:
        # int32 like TensorFlow, unless a value does not fit (then int64, as TF infers too)
        if arr.size and (arr.min() < -2**31 or arr.max() >= 2**31):
            return arr
        return arr.astype(np.int32)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"cannot convert {type(value).__name__} {value!r:.80} to a tensor "
                        f"(got NumPy dtype {arr.dtype})")
    return arr


class TensorShape(tuple):
    """A tensor's shape: a plain tuple of ints with TensorFlow's ``TensorShape`` methods.

    >>> TensorShape((2, 3)).as_list(), TensorShape((2, 3)) == [2, 3], TensorShape((2, 3))[1:]
    ([2, 3], True, (3,))
    """

    __slots__ = ()

    def as_list(self) -> list:
        return list(self)

    @property
    def rank(self) -> int:
        return len(self)

    ndims = rank

    def num_elements(self) -> int:
        n = 1
        for d in self:
            n *= d
        return n

    def is_fully_defined(self) -> bool:
        """False inside ``tp.function`` for a shape with a ``None`` dimension."""
        return all(type(d) is int or isinstance(d, np.integer) for d in self)

    def __getitem__(self, key):
        out = tuple.__getitem__(self, key)
        return TensorShape(out) if isinstance(key, slice) else out

    def __eq__(self, other) -> bool:
        if isinstance(other, list):
            other = tuple(other)
        return tuple.__eq__(self, other)

    def __ne__(self, other) -> bool:
        return not self.__eq__(other)

    __hash__ = tuple.__hash__


class Tensor:
    """An immutable n-dimensional array that operations on a tape can differentiate.

    >>> import tapeflow as tp
    >>> tp.constant([1.0, 2.0]) * 3
    tp.Tensor([3. 6.], shape=(2,), dtype=float32)
    """

    __slots__ = ("_value", "_id", "__weakref__")
    __array_priority__ = 100  # NumPy defers `ndarray + Tensor` to Tensor.__radd__

    def __init__(self, value):
        self._value = value
        self._id = _next_id()

    # -- properties -------------------------------------------------------------------------
    @property
    def shape(self) -> TensorShape:
        return TensorShape(self._value.shape)

    def get_shape(self) -> TensorShape:
        return TensorShape(self._value.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._value.dtype

    @property
    def ndim(self) -> int:
        return self._value.ndim

    @property
    def size(self) -> int:
        return self._value.size

    @property
    def device(self) -> str:
        return device_name(self._value)

    def numpy(self) -> np.ndarray:
        """The value as a NumPy array (a host copy for GPU tensors). Not traced by any tape."""
        if _TRACE:
            _TRACE[-1].concrete(self, "numpy()")
        return to_numpy(self._value)

    def ref(self) -> "Tensor":
        """Hashable by identity (Tensors compare elementwise, like TensorFlow's)."""
        return self

    # -- Python protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        if self._value.ndim == 0:
            raise TypeError("len() of a scalar tensor")
        return self._value.shape[0]

    def __float__(self) -> float:
        if _TRACE:
            _TRACE[-1].concrete(self, "float()")
        return float(self._value)

    def __int__(self) -> int:
        if _TRACE:
            _TRACE[-1].concrete(self, "int()")
        return int(self._value)

    def __bool__(self) -> bool:
        if _TRACE:
            _TRACE[-1].concrete(self, "using the truth value (if/while/and/or)")
        return bool(self._value)

    def __index__(self) -> int:
        if _TRACE:
            _TRACE[-1].concrete(self, "using as an index")
        if self._value.dtype.kind not in "iu":
            raise TypeError(f"only integer tensors can be used as an index, not {self.dtype}")
        return int(self._value)

    def __array__(self, dtype=None, copy=None):
        if _TRACE:
            _TRACE[-1].concrete(self, "conversion to a NumPy array")
        arr = to_numpy(self._value)
        return arr if dtype is None else arr.astype(dtype)

    def __iter__(self):
        if self._value.ndim == 0:
            raise TypeError("iteration over a scalar tensor")
        for i in range(self._value.shape[0]):
            yield self[i]

    __hash__ = object.__hash__

    def __format__(self, spec: str) -> str:
        """``f"{t:.3f}"`` formats a scalar's value, as TensorFlow's eager tensors do."""
        if not spec:
            return str(self)
        if self._value.ndim != 0:
            raise TypeError(f"format spec {spec!r} applies to scalar tensors only; this one has "
                            f"shape {self.shape} (format t.numpy() instead)")
        if _TRACE:
            _TRACE[-1].concrete(self, "format()")
        return format(self._value.item(), spec)

    def __repr__(self) -> str:
        # Inside tp.function a traced tensor prints as TensorFlow's graph tensors do, without
        # a value (the trace's values are one call's, not what later calls compute).
        if getattr(self._value, "_dims", None) is not None or (
                _TRACE and type(self) is not Variable and _TRACE[-1].is_traced(self)):
            return f'Tensor("{_TRACE[-1].name if _TRACE else "traced"}", shape={self.shape}, ' \
                   f'dtype={self.dtype})'
        return f"tp.Tensor({_format(self._value)}, shape={self.shape}, dtype={self.dtype})"

    __str__ = __repr__


class Variable(Tensor):
    """Mutable state: ``assign``/``assign_add``/``assign_sub`` change it in place of a rebind.

    Reading a trainable Variable inside a ``GradientTape`` watches it automatically.
    Assignments are not recorded: no gradient flows through them (as in TensorFlow).
    Arithmetic on a Variable returns a :class:`Tensor`.
    """

    __slots__ = ("trainable", "_name")
    _counter = itertools.count()

    def __init__(self, initial_value, trainable: bool = True, name: str | None = None,
                 dtype=None):
        value = _to_array(initial_value, dtype)
        if _SCOPES[0]:  # inside a tp.device scope: the variable lives there
            value = _device.place(value)
        # A Variable owns its buffer: copy, so the caller's array is never aliased.
        super().__init__(value.copy())
        self.trainable = bool(trainable)
        self._name = name if name is not None else f"Variable_{next(Variable._counter)}"
        if _TRACE:
            _TRACE[-1].on_variable(self)

    @property
    def name(self) -> str:
        return self._name

    def value(self) -> Tensor:
        """The current value as an immutable Tensor (a snapshot with this Variable's identity).

        Like TensorFlow's, it is a read of the variable: a tape recording now watches a
        trainable variable read this way, so gradients flow to it.
        """
        return self.read_value()

    def read_value(self) -> Tensor:
        """The current value as an immutable Tensor; watched by the recording tapes."""
        from .recording import _ACTIVE  # (the recording layer sits on top of this module)

        if _ACTIVE and self.trainable:
            for tape in _ACTIVE:
                if tape._watch_accessed:
                    tape._watch_one(self)
        return _snapshot(self)

    def _checked(self, value, what: str):
        arr = _to_array(value, self._value.dtype)
        t = type(arr)
        if t is not _NDARRAY or type(self._value) is not t:  # (one check for two host arrays)
            if t is not type(self._value) or arr.device != self._value.device:
                arr = _on_device_of(self, arr, what)
        if arr.shape != self._value.shape:
            raise ValueError(f"Variable {self._name!r}.{what}: shape {arr.shape} does not match "
                             f"the variable's shape {self._value.shape}")
        return arr

    def assign(self, value) -> "Variable":
        """Replace the value (same shape; cast to the variable's dtype)."""
        if _TRACE:
            return _TRACE[-1].on_assign(self, value, "assign")
        arr = self._checked(value, "assign")
        # Rebind rather than write in place: a tape that saved the old value keeps it.
        self._value = arr.copy() if arr is getattr(value, "_value", value) else arr
        return self

    def assign_add(self, delta) -> "Variable":
        if _TRACE:
            return _TRACE[-1].on_assign(self, delta, "assign_add")
        self._add_(self._checked(delta, "assign_add"))
        return self

    def assign_sub(self, delta) -> "Variable":
        if _TRACE:
            return _TRACE[-1].on_assign(self, delta, "assign_sub")
        self._subtract_(self._checked(delta, "assign_sub"))
        return self

    # Copy-on-write, as TensorFlow's variables do: update the buffer in place only when nothing
    # else references it (no tape snapshot, no array the user got from .numpy()); otherwise
    # rebind, so every recorded or exported value stays what it was.
    def _add_(self, delta) -> None:
        v = self._value
        if sys.getrefcount(v) <= 3:  # self._value, `v`, and getrefcount's own argument
            v += delta
        else:
            self._value = _array(v + delta)

    def _subtract_(self, delta) -> None:
        v = self._value
        if sys.getrefcount(v) <= 3:
            v -= delta
        else:
            self._value = _array(v - delta)

    def __repr__(self) -> str:
        return (f"<tp.Variable '{self._name}' shape={self.shape} dtype={self.dtype}, "
                f"trainable={self.trainable}, numpy={_format(self._value)}>")

    __str__ = __repr__


class VariableSlice(Tensor):
    """``v[index]``: the sliced value (a Tensor, recorded like any indexing) that can also be
    assigned into the variable, TensorFlow style: ``v[0].assign(1.0)``, ``v[1:3].assign_add(x)``.
    Assignments are not recorded (as in TensorFlow) and rebind the variable's buffer, so values
    a tape saved earlier keep what they were."""

    __slots__ = ("_var", "_index", "_item")

    def _update(self, value, how: str) -> "Variable":
        v = self._var
        if _TRACE:
            return self._traced_update(value, how)
        arr = _to_array(value, v._value.dtype)
        if type(arr) is not type(v._value) or _other_device(arr, v._value):
            arr = _on_device_of(v, arr, how)
        try:
            new = _slice_update(v._value, arr, how=how, parts=self._index)
        except ValueError as e:
            raise ValueError(f"Variable {v.name!r}[...].{how}: value of shape {arr.shape} does "
                             f"not fit the slice of shape {self._value.shape}: {e}") from None
        v._value = new
        return v

    def _traced_update(self, value, how: str) -> "Variable":
        """Inside ``tp.function``: the updated whole value, computed by a recorded kernel
        from the variable, the value and the index's tensors (each call's own), then assigned
        as a recorded ``assign`` -- not an update made once, at trace time."""
        from .recording import derived
        v = self._var
        val = value if isinstance(value, Tensor) else Tensor(_to_array(value, v._value.dtype))
        if val.dtype != v.dtype:
            raise TypeError(f"Variable {v.name!r}[...].{how}: value of dtype {val.dtype} for a "
                            f"variable of dtype {v.dtype}; cast it with tp.cast")
        items = self._item if isinstance(self._item, tuple) else (self._item,)
        tensors = [i for i in items if isinstance(i, Tensor)]
        parts = tuple(_SLOT if isinstance(i, Tensor) else
                      (np.asarray(i) if isinstance(i, list) else i) for i in items)
        try:
            new = derived(_slice_update, v, val, *tensors, how=how, parts=parts)
        except (ValueError, IndexError) as e:
            raise ValueError(f"Variable {v.name!r}[...].{how}: value of shape {val.shape} does "
                             f"not fit the slice of shape {self.shape}: {e}") from None
        return v.assign(new)

    def assign(self, value) -> "Variable":
        return self._update(value, "assign")

    def assign_add(self, delta) -> "Variable":
        return self._update(delta, "assign_add")

    def assign_sub(self, delta) -> "Variable":
        return self._update(delta, "assign_sub")


_SLOT = object()  # a tensor's place in a traced slice assignment's index


def _slice_update(var, val, *index_arrays, how: str, parts: tuple):
    """``var`` with ``var[index] = val`` (or ``+=``, ``-=``) applied to a copy."""
    arrays = iter(index_arrays)
    index = tuple(next(arrays) if p is _SLOT else p for p in parts)
    new = var.copy()
    if how == "assign":
        new[index] = val
    elif how == "assign_add":
        new[index] += val
    else:
        new[index] -= val
    return new


def _array(value):
    """``value`` as an array: NumPy's arithmetic on 0-d arrays returns a scalar (immutable, so
    a later in-place update of the variable holding it would be lost)."""
    return np.asarray(value) if isinstance(value, np.generic) else value


def _format(value) -> str:
    arr = to_numpy(value)
    if arr.ndim == 0:
        return repr(arr.item())  # 7.0, like TensorFlow (NumPy would print "7.")
    return np.array2string(arr, separator=" ", threshold=20)


_NDARRAY = np.ndarray


def _other_device(arr, like) -> bool:
    """Two device arrays of one library on different devices (False for NumPy arrays)."""
    return type(arr) is not np.ndarray and arr.device != like.device


def _on_device_of(v: Variable, arr, what: str):
    """A host value for ``v``'s device (an explicit conversion, like tp.constant); a value on
    another device is refused: copying across devices is explicit (``.to``)."""
    src, dst = _device.device_of(arr), _device.device_of(v._value)
    if src != dst and src.device_type != "CPU":
        raise ValueError(f"Variable {v._name!r}.{what}: value on {src} but the variable is on "
                         f"{dst}; copy it explicitly with .to({dst.to_string()!r})")
    return _device.to_device(arr, dst)


def _snapshot(v: Variable) -> Tensor:
    """A Tensor holding ``v``'s current value under ``v``'s id.

    Rules save snapshots of Variables, so a later ``assign`` cannot change a recorded value,
    while outer tapes still see the saved operand as the Variable they watch.
    """
    t = Tensor.__new__(Tensor)
    t._value = v._value
    t._id = v._id
    if _TRACE:
        _TRACE[-1].on_snapshot(v, t)
    return t


def constant(value, dtype=None, shape=None) -> Tensor:
    """Create a Tensor. Python floats become float32 and ints int32 (TensorFlow's defaults).

    >>> constant(7.0)
    tp.Tensor(7.0, shape=(), dtype=float32)
    """
    arr = _to_array(value, dtype)
    if _SCOPES[0]:  # inside a tp.device scope: the constant lives there
        arr = _device.place(arr)
    if isinstance(value, Tensor) and arr is value._value:
        arr = arr.copy()
    if shape is not None:
        xp = array_module(arr)
        arr = xp.broadcast_to(arr, tuple(shape)).copy() if arr.size == 1 else arr.reshape(shape)
    return Tensor(arr)


def convert_to_tensor(value, dtype=None) -> Tensor:
    """Return ``value`` itself if it is a Tensor, else a new constant (of ``dtype`` if given).

    Like TensorFlow, a Tensor is never silently cast: asking for another dtype is an error.
    """
    if isinstance(value, Tensor):
        if dtype is not None and value._value.dtype != as_dtype(dtype):
            raise ValueError(f"tensor conversion requested dtype {as_dtype(dtype)} for a tensor "
                             f"of dtype {value.dtype} (shape {value.shape}); use tp.cast")
        return value
    arr = _to_array(value, dtype)
    return Tensor(_device.place(arr) if _SCOPES[0] else arr)
