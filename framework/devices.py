"""Devices, TensorFlow style: names, the ``tp.device`` scope, and explicit copies of arrays.

``"/device:CPU:0"`` is NumPy (the default, at no extra cost); ``"/device:GPU:<n>"`` is the n-th
device of a CuPy-shaped array module: CuPy (the ``gpu`` extra), or in the ``device`` tests the
strict stand-in of :mod:`tapeflow.strict_device`. Arrays stay where they are: every op, rule and
optimizer takes its array module from its inputs. Only three things move an array:

* creating a tensor or variable from Python or NumPy values inside ``with tp.device(...)``;
* an explicit copy (:func:`to_device`, ``Tensor.to``, ``tp.identity`` in a device scope,
  ``Module.to``);
* an explicit host read (``.numpy()``, logging, checkpoints, MPI staging named as such).

This module sits at the bottom of the stack (it imports only the backend seam).
"""
from __future__ import annotations

import re
import threading
from typing import NamedTuple

import numpy as np

from . import _backend

__all__ = ["DeviceSpec", "device", "current_device", "to_device", "device_of",
           "set_gpu_module", "gpu_module", "batch_placer"]


class DeviceSpec(NamedTuple):
    """A device: ``device_type`` ``"CPU"`` or ``"GPU"`` and its ``index``."""

    device_type: str
    index: int

    def to_string(self) -> str:
        return f"/device:{self.device_type}:{self.index}"

    def __str__(self) -> str:
        return self.to_string()


CPU = DeviceSpec("CPU", 0)

# "/job:localhost/replica:0/task:0/device:GPU:0", "/device:GPU:0", "/GPU:0", "gpu:1", "cpu",
# "GPU", "cuda:0": TensorFlow's spellings plus PyTorch's "cuda".
_PATTERN = re.compile(r"^(?:/job:[^/]+(?:/replica:\d+)?(?:/task:\d+)?)?/?(?:device:)?"
                      r"(cpu|gpu|cuda)(?::(\d+))?$", re.IGNORECASE)


def parse(spec) -> DeviceSpec:
    """A :class:`DeviceSpec` from a TensorFlow-style string (or a DeviceSpec)."""
    if isinstance(spec, DeviceSpec):
        return spec
    m = _PATTERN.match(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise ValueError(f"invalid device {spec!r}: expected a name like '/CPU:0', '/GPU:0', "
                         f"'gpu:1' or '/device:GPU:0'")
    kind = "CPU" if m.group(1).lower() == "cpu" else "GPU"
    index = int(m.group(2) or 0)
    if kind == "CPU" and index != 0:
        raise ValueError(f"invalid device {spec!r}: there is one CPU device, '/CPU:0'")
    return DeviceSpec(kind, index)


# -- the array module serving "GPU" --------------------------------------------------------------
_GPU: list = [None]


def gpu_module():
    """The CuPy-shaped module whose arrays are GPU arrays (CuPy unless a test set another)."""
    xp = _GPU[0]
    if xp is None:
        xp = _backend.cupy_or_none()
        if xp is None:
            raise RuntimeError("no GPU: placing a tensor on a GPU needs CuPy and a CUDA device "
                               "(pip install 'tapeflow[gpu]' on a machine with a GPU)")
        _GPU[0] = xp
    return xp


def set_gpu_module(xp):
    """Serve ``"/GPU:n"`` with the CuPy-shaped module ``xp`` (None: CuPy again); returns the
    previous one. The ``device`` tests put :mod:`tapeflow.strict_device` here."""
    prev, _GPU[0] = _GPU[0], xp
    if xp is not None:
        _backend.register_array_type(xp.ndarray, xp)
    return prev


def device_of(a) -> DeviceSpec:
    """The device an array lives on."""
    if _backend.array_module(a) is np:
        return CPU
    return DeviceSpec("GPU", int(a.device.id))


def to_device(a, spec):
    """An explicit copy of array ``a`` onto ``spec`` (``a`` itself when it is already there)."""
    spec = parse(spec)
    if spec.device_type == "CPU":
        return a if _backend.array_module(a) is np else _backend.to_numpy(a)
    xp = gpu_module()
    with xp.cuda.Device(spec.index):
        if isinstance(a, xp.ndarray):
            # ndarray.copy() under another device's context copies across devices (CuPy).
            return a if int(a.device.id) == spec.index else a.copy()
        return xp.asarray(a)


def _same(a):
    return a


def batch_placer(variables):
    """The explicit copy that puts a host batch where ``variables`` live (the identity for CPU
    variables, or none): what a training loop applies to each batch it feeds a model."""
    spec = device_of(variables[0]._value) if variables else CPU
    if spec == CPU:
        return _same
    return lambda a: to_device(a, spec)


# -- the device scope ----------------------------------------------------------------------------
class _Scope(threading.local):
    spec: DeviceSpec | None = None  # (a class default: reading it never raises)


_LOCAL = _Scope()
# How many scopes are open in any thread: while 0, nothing needs the thread-local lookup, so
# the default placement costs one list read.
_OPEN = [0]


def current_device() -> DeviceSpec | None:
    """The device of the innermost ``tp.device`` scope of this thread (None: the default)."""
    return _LOCAL.spec if _OPEN[0] else None


def place(a):
    """A new tensor's array on the current scope's device (``a`` itself outside any scope)."""
    if not _OPEN[0]:
        return a
    spec = _LOCAL.spec
    return a if spec is None else to_device(a, spec)


class device:
    """``with tp.device("/GPU:0"):`` creates new tensors and variables on that device.

    Like ``tf.device``, it is a per-thread scope; ``None`` returns to the default placement.
    Ops follow their inputs (they never copy); combining tensors of two devices is an error of
    the array library. A GPU scope without a GPU fails at once, naming what is missing.
    """

    __slots__ = ("spec", "_prev", "_gpu")

    def __init__(self, name):
        self.spec = None if name is None else parse(name)
        self._gpu = None
        if self.spec is not None and self.spec.device_type == "GPU":
            gpu_module()  # no GPU: a clear error here rather than at the first tensor

    def __enter__(self) -> "device":
        self._prev = _LOCAL.spec
        _LOCAL.spec = self.spec
        _OPEN[0] += 1
        if self.spec is not None and self.spec.device_type == "GPU":
            # kernels launch on the current CUDA device: make it this scope's GPU
            self._gpu = gpu_module().cuda.Device(self.spec.index)
            self._gpu.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        _LOCAL.spec = self._prev
        _OPEN[0] -= 1
        if self._gpu is not None:
            gpu, self._gpu = self._gpu, None
            gpu.__exit__(*exc)

    def __repr__(self) -> str:
        return f"tp.device({None if self.spec is None else self.spec.to_string()!r})"
