"""A strict, CuPy-shaped array library whose arrays live on a device that is not the host.

It is the GPU stand-in of the ``device`` tests: tapeflow code that runs on it takes its array
module from its arrays and never copies to the host behind the user's back, so it runs on CuPy
too. It refuses what ``array-api-strict`` refuses for an array on ``Device("device1")``
(``tests/test_device_strict.py`` checks each refusal against array-api-strict side by side):

* implicit host conversion: ``np.asarray(a)``, ``np.array(a)``, the buffer protocol and every
  NumPy function or ufunc applied to a device array raise :class:`HostConversionError`
  (a ``RuntimeError``, like array-api-strict's);
* mixing devices: combining arrays of two devices, or a device array with a host NumPy array,
  raises :class:`DeviceMismatchError` (a ``ValueError``, like array-api-strict's).

Its API is CuPy's (NumPy's functions and methods, ``cuda.Device(i)`` to pick the current
device, ``asnumpy``/``.get()`` for explicit host copies, ``ufunc.at``), because that is the API
tapeflow's kernels are written against. Explicit scalar reads (``float(a)``, ``bool(a)``,
``a.item()``) are allowed, as in CuPy and array-api-strict, and counted in ``host_reads()``,
so a test can assert that a training step makes none. The arrays are NumPy arrays underneath.
"""
from __future__ import annotations

import math
import operator
import threading
import types
from typing import Any

import numpy as np

__all__ = ["StrictArray", "StrictDevice", "DeviceMismatchError", "HostConversionError",
           "xp", "host_reads"]


class DeviceMismatchError(ValueError):
    """Arrays of two devices (or a device array and a host array) were combined."""


class HostConversionError(RuntimeError):
    """A device array was converted to the host implicitly (through NumPy)."""


class StrictDevice:
    """A device of the strict library (``.id`` as on a CuPy device); a context manager that
    makes it the current device for new arrays, like ``cupy.cuda.Device``."""

    __slots__ = ("id",)
    _local = threading.local()

    def __init__(self, id: int = 0):
        self.id = int(id)

    def __eq__(self, other) -> bool:
        return isinstance(other, StrictDevice) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("strict", self.id))

    def __repr__(self) -> str:
        return f"<StrictDevice {self.id}>"

    def __enter__(self) -> "StrictDevice":
        stack = StrictDevice._stack()
        stack.append(self)
        return self

    def __exit__(self, *exc) -> None:
        StrictDevice._stack().pop()

    def use(self) -> None:
        StrictDevice._stack()[0] = self

    @staticmethod
    def _stack() -> list:
        st = getattr(StrictDevice._local, "stack", None)
        if st is None:
            st = StrictDevice._local.stack = [StrictDevice(0)]
        return st

    @staticmethod
    def current() -> "StrictDevice":
        return StrictDevice._stack()[-1]


_READS = [0]


def host_reads() -> int:
    """How many scalar reads (``float``/``int``/``bool``/``item``/``tolist``) happened so far."""
    return _READS[0]


def _unwrap(x: Any, dev: StrictDevice, what: str) -> Any:
    if type(x) is StrictArray:
        if x.device != dev:
            raise DeviceMismatchError(f"{what}: arrays from two different devices ({x.device} "
                                      f"and {dev}) can not be combined")
        return x._a
    if isinstance(x, np.ndarray):
        raise DeviceMismatchError(f"{what}: a host NumPy array of shape {x.shape} was combined "
                                  f"with arrays on {dev}; copy it to the device explicitly")
    if type(x) in (list, tuple):
        return type(x)(_unwrap(i, dev, what) for i in x)
    return x


def _find_device(args, kwargs) -> StrictDevice | None:
    for a in (*args, *kwargs.values()):
        if type(a) is StrictArray:
            return a.device
        if type(a) in (list, tuple):
            d = _find_device(a, {})
            if d is not None:
                return d
    return None


def _wrap(r: Any, dev: StrictDevice) -> Any:
    if isinstance(r, np.ndarray):
        return StrictArray(r, dev)
    if isinstance(r, np.generic):
        return StrictArray(np.asarray(r), dev)  # CuPy returns 0-d device arrays, not scalars
    if type(r) in (list, tuple):
        return type(r)(_wrap(i, dev) for i in r)
    return r


def _call(fn, what: str, args, kwargs, dev: StrictDevice | None = None):
    if dev is None:
        dev = _find_device(args, kwargs) or StrictDevice.current()
    out = kwargs.get("out")
    r = fn(*_unwrap(args, dev, what), **{k: _unwrap(v, dev, what) for k, v in kwargs.items()})
    if out is not None:
        return out
    return _wrap(r, dev)


class _Ufunc:
    """A NumPy ufunc working on device arrays: call, ``reduce``, ``accumulate``, ``at``."""

    def __init__(self, uf: np.ufunc):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kwargs):
        return _call(self._uf, self.__name__, args, kwargs)

    def reduce(self, *args, **kwargs):
        return _call(self._uf.reduce, self.__name__ + ".reduce", args, kwargs)

    def accumulate(self, *args, **kwargs):
        return _call(self._uf.accumulate, self.__name__ + ".accumulate", args, kwargs)

    def at(self, a, indices, b=None) -> None:
        dev = a.device
        raw = _unwrap(a, dev, self.__name__ + ".at")
        extra = () if b is None else (_unwrap(b, dev, self.__name__ + ".at"),)
        self._uf.at(raw, _unwrap(indices, dev, self.__name__ + ".at"), *extra)

    def __getattr__(self, name):
        return getattr(self._uf, name)


def _function(fn, name: str):
    def call(*args, **kwargs):
        return _call(fn, name, args, kwargs)
    call.__name__ = name
    return call


def _from_host(fn, name: str):
    """``asarray``/``array``: an explicit copy onto the current device (host input allowed)."""
    def call(obj, *args, **kwargs):
        if type(obj) is StrictArray:
            return _call(fn, name, (obj, *args), kwargs)
        dev = StrictDevice.current()
        raw = fn(_unwrap(obj, dev, name) if type(obj) in (list, tuple) else obj, *args, **kwargs)
        return StrictArray(np.array(raw, copy=True), dev)
    call.__name__ = name
    return call


class _Namespace(types.ModuleType):
    """The library's module (``xp``): NumPy's names, each taking and returning device arrays."""

    def __init__(self, name: str, base):
        super().__init__(name)
        self._base = base

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._base, name)
        if isinstance(attr, types.ModuleType):
            out = _Namespace(f"{self.__name__}.{name}", attr)
        elif isinstance(attr, np.ufunc):
            out = _Ufunc(attr)
        elif name in ("asarray", "array"):
            out = _from_host(attr, name)
        elif callable(attr) and not isinstance(attr, type):
            out = _function(attr, name)
        else:
            out = attr  # dtypes, constants (CuPy shares NumPy's dtypes)
        setattr(self, name, out)
        return out


xp = _Namespace("strict_device.xp", np)
# CuPy's cuda namespace, as far as tapeflow uses it: two devices, 0 and 1
xp.cuda = types.SimpleNamespace(Device=StrictDevice,
                                runtime=types.SimpleNamespace(getDeviceCount=lambda: 2))


def _asnumpy(a) -> np.ndarray:
    """The explicit device -> host copy (CuPy's ``asnumpy``)."""
    return a.get() if type(a) is StrictArray else np.asarray(a)


xp.asnumpy = _asnumpy
# cupyx.scipy.special's erf (NumPy has none): math.erf per element, in the input's dtype
_erf = np.vectorize(math.erf, otypes=[np.float64])
xp.special = types.SimpleNamespace(erf=_function(lambda a: _erf(a).astype(a.dtype), "erf"))
xp.ndarray = None  # set below, once the class exists


def _binop(op, name: str, reflected: bool = False, inplace: bool = False):
    def method(self, other):
        if not (type(other) is StrictArray or isinstance(other, (int, float, bool, complex,
                                                                   np.generic, np.ndarray))):
            return NotImplemented
        raw = _unwrap(other, self.device, name)
        if inplace:
            op(self._a, raw)
            return self
        return _wrap(op(raw, self._a) if reflected else op(self._a, raw), self.device)
    method.__name__ = name
    return method


_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
           "truediv": operator.truediv, "floordiv": operator.floordiv, "mod": operator.mod,
           "pow": operator.pow, "matmul": operator.matmul, "and": operator.and_,
           "or": operator.or_, "xor": operator.xor}
_INPLACE = {"add": operator.iadd, "sub": operator.isub, "mul": operator.imul,
            "truediv": operator.itruediv, "floordiv": operator.ifloordiv,
            "mod": operator.imod, "pow": operator.ipow, "and": operator.iand,
            "or": operator.ior, "xor": operator.ixor}
_COMPARE = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
            "eq": operator.eq, "ne": operator.ne}

# The attributes that expose host memory: no CuPy array has them.
_HOST_ONLY = frozenset({"data", "ctypes", "tobytes", "tofile", "dump", "dumps", "flat",
                        "__array_interface__", "__array_struct__"})


class StrictArray:
    """An array on a :class:`StrictDevice`; see the module docstring for what it refuses."""

    __slots__ = ("_a", "device")
    __array_priority__ = 1000
    __hash__ = None

    def __init__(self, a: np.ndarray, device: StrictDevice):
        self._a = a
        self.device = device

    # -- what it refuses ----------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise HostConversionError(f"implicit conversion of an array on {self.device} to a "
                                  f"NumPy array; copy it explicitly (.get(), asnumpy)")

    def __array_function__(self, func, types_, args, kwargs):
        raise HostConversionError(f"numpy.{func.__name__} called on an array on {self.device}; "
                                  f"use the array's own module")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # `np.float32(2) * a` arrives here from the NumPy scalar: a scalar operand, allowed
        # (CuPy allows it). A host array operand or a NumPy ufunc called by name is refused.
        if (method == "__call__" and not kwargs and len(inputs) == 2
                and any(isinstance(i, np.generic) for i in inputs)
                and all(isinstance(i, np.generic) or type(i) is StrictArray for i in inputs)):
            return _wrap(ufunc(*_unwrap(inputs, self.device, ufunc.__name__)), self.device)
        if any(isinstance(i, np.ndarray) for i in inputs):
            raise DeviceMismatchError(f"numpy.{ufunc.__name__}: a host NumPy array combined "
                                      f"with an array on {self.device}")
        raise HostConversionError(f"numpy.{ufunc.__name__} called on an array on "
                                  f"{self.device}; use the array's own module")

    def __getattr__(self, name: str):
        if name.startswith("__") or name in _HOST_ONLY:
            raise AttributeError(f"{name!r} is not available on a device array")
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr, self.device)
        dev = self.device

        def method(*args, **kwargs):
            r = attr(*_unwrap(args, dev, name), **{k: _unwrap(v, dev, name)
                                                  for k, v in kwargs.items()})
            return self if r is self._a else _wrap(r, dev)
        return method

    # -- explicit host copies and scalar reads ---------------------------------------------
    def get(self) -> np.ndarray:
        """The explicit device -> host copy (CuPy's ``.get()``)."""
        return self._a.copy()

    def _read(self):
        _READS[0] += 1
        return self._a

    def __float__(self) -> float:
        return float(self._read())

    def __int__(self) -> int:
        return int(self._read())

    def __bool__(self) -> bool:
        return bool(self._read())

    def __index__(self) -> int:
        return operator.index(self._read())

    def __complex__(self) -> complex:
        return complex(self._read())

    def item(self):
        return self._read().item()

    def tolist(self):
        return self._read().tolist()

    # -- shape, indexing -------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    T = property(lambda self: StrictArray(self._a.T, self.device))

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (StrictArray(np.asarray(r), self.device) for r in self._a)

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index, self.device, "getitem")], self.device)

    def __setitem__(self, index, value) -> None:
        self._a[_unwrap(index, self.device, "setitem")] = _unwrap(value, self.device, "setitem")

    def __neg__(self):
        return StrictArray(-self._a, self.device)

    def __pos__(self):
        return StrictArray(+self._a, self.device)

    def __abs__(self):
        return StrictArray(abs(self._a), self.device)

    def __invert__(self):
        return StrictArray(~self._a, self.device)

    def __repr__(self) -> str:
        return f"StrictArray({self._a!r}, device={self.device.id})"


for _n, _op in _BINARY.items():
    setattr(StrictArray, f"__{_n}__", _binop(_op, f"__{_n}__"))
    setattr(StrictArray, f"__r{_n}__", _binop(_op, f"__r{_n}__", reflected=True))
for _n, _op in _INPLACE.items():
    setattr(StrictArray, f"__i{_n}__", _binop(_op, f"__i{_n}__", inplace=True))
for _n, _op in _COMPARE.items():
    setattr(StrictArray, f"__{_n}__", _binop(_op, f"__{_n}__"))
xp.ndarray = StrictArray
