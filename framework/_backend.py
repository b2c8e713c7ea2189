"""The backend seam: which array module (``xp``) holds an array.

Primitives are written once against ``xp``. NumPy is always there; CuPy is imported only when a
CuPy array is met or a GPU is asked for, so ``import tapeflow`` never needs a GPU stack.
"""
from __future__ import annotations

import numpy as np

__all__ = ["array_module", "cupy_or_none", "is_float_dtype", "device_name", "to_numpy",
           "register_array_type", "special_module"]

_cupy = None
# Array types of other CuPy-shaped modules (tapeflow.strict_device in the `device` tests).
_MODULES: dict = {}
_cupy_checked = False


def cupy_or_none():
    """Return the ``cupy`` module if it imports and sees a GPU, else ``None`` (cached)."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                _cupy = cupy
        except Exception:  # no cupy, no driver or no device: CPU only
            _cupy = None
    return _cupy


def register_array_type(array_type: type, xp) -> None:
    """Make :func:`array_module` answer ``xp`` for arrays of ``array_type``."""
    _MODULES[array_type] = xp


def array_module(a):
    """``numpy`` for NumPy arrays and scalars, ``cupy`` for CuPy arrays (or the module
    registered for the array's type)."""
    t = type(a)
    if t is np.ndarray:
        return np
    xp = _MODULES.get(t)
    if xp is not None:
        return xp
    if not t.__module__.startswith("cupy"):
        return np
    import cupy

    return cupy


def special_module(xp):
    """``scipy.special``'s GPU twin for a CuPy-shaped module: ``cupyx.scipy.special`` for CuPy,
    the module's own ``special`` for another (the strict stand-in of the device tests)."""
    sp = getattr(xp, "special", None)
    if sp is not None:
        return sp
    import cupyx.scipy.special

    return cupyx.scipy.special


def is_float_dtype(dtype) -> bool:
    """True for the differentiable dtypes: float16, float32, float64."""
    return dtype.kind == "f"


def device_name(a) -> str:
    """TensorFlow-style device string of an array."""
    if array_module(a) is np:
        return "/device:CPU:0"
    return f"/device:GPU:{a.device.id}"


def to_numpy(a) -> np.ndarray:
    """A host copy of ``a`` (a no-op for NumPy arrays)."""
    if type(a) is np.ndarray:
        return a
    return a.get() if hasattr(a, "get") else np.asarray(a)
