"""``tp.config``: the ``tf.config`` calls TensorFlow programs make at start-up.

* ``list_physical_devices`` / ``list_logical_devices``: the CPU, and the GPUs CuPy sees (none
  without CuPy and a CUDA device), as ``PhysicalDevice(name, device_type)``;
* ``run_functions_eagerly(True)``: every ``tp.function`` runs its Python function eagerly
  (to debug it), ``functions_run_eagerly()`` says which;
* ``threading.set_intra_op_parallelism_threads(n)``: BLAS threads (threadpoolctl), what one
  op may use; ``set_inter_op_parallelism_threads`` is recorded (tapeflow runs one op at a
  time) and read back;
* ``experimental.set_memory_growth(gpu, True)``: CuPy's memory pool already grows as arrays
  are made, so it is accepted and read back.

>>> import tapeflow as tp
>>> [d.device_type for d in tp.config.list_physical_devices("CPU")]
['CPU']
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

from . import _backend
from .traced_function import _RUN_EAGERLY

__all__ = ["PhysicalDevice", "list_physical_devices", "list_logical_devices",
           "run_functions_eagerly", "functions_run_eagerly", "threading", "experimental"]


class PhysicalDevice(NamedTuple):
    name: str
    device_type: str


def _gpu_count() -> int:
    xp = _backend.cupy_or_none()
    if xp is None:
        return 0
    try:
        return int(xp.cuda.runtime.getDeviceCount())
    except Exception:  # (a CuPy without a working CUDA runtime: no GPU)
        return 0


def _devices(prefix: str, device_type: str | None) -> list[PhysicalDevice]:
    kinds = [("CPU", 1), ("GPU", _gpu_count())]
    want = None if device_type is None else device_type.upper()
    return [PhysicalDevice(f"{prefix}{kind}:{i}", kind) for kind, n in kinds
            if want in (None, kind) for i in range(n)]


def list_physical_devices(device_type: str | None = None) -> list[PhysicalDevice]:
    """The CPU and CuPy's GPUs, of ``device_type`` ("CPU" / "GPU") if given."""
    return _devices("/physical_device:", device_type)


def list_logical_devices(device_type: str | None = None) -> list[PhysicalDevice]:
    """The same devices under the names ``tp.device`` takes (``/device:GPU:0``)."""
    return _devices("/device:", device_type)


def run_functions_eagerly(run_eagerly: bool) -> None:
    """TensorFlow's switch: ``True`` runs every ``tp.function`` as plain Python."""
    _RUN_EAGERLY[0] = bool(run_eagerly)


def functions_run_eagerly() -> bool:
    return _RUN_EAGERLY[0]


_THREADS: dict[str, Any] = {"intra": 0, "inter": 0, "limits": None}


def _set_intra(n: int) -> None:
    from threadpoolctl import threadpool_limits

    n = int(n)
    if n < 0:
        raise ValueError(f"set_intra_op_parallelism_threads: n must be >= 0, got {n}")
    _THREADS["intra"] = n
    if _THREADS["limits"] is not None:  # back to the libraries' own settings first
        _THREADS["limits"].restore_original_limits()
        _THREADS["limits"] = None
    if n:  # (0: the libraries' own default)
        _THREADS["limits"] = threadpool_limits(limits=n, user_api="blas")


def _set_inter(n: int) -> None:
    if int(n) < 0:
        raise ValueError(f"set_inter_op_parallelism_threads: n must be >= 0, got {n}")
    _THREADS["inter"] = int(n)


threading = SimpleNamespace(
    set_intra_op_parallelism_threads=_set_intra,
    get_intra_op_parallelism_threads=lambda: _THREADS["intra"],
    set_inter_op_parallelism_threads=_set_inter,
    get_inter_op_parallelism_threads=lambda: _THREADS["inter"])

_GROWTH: dict[str, bool] = {}


def _set_memory_growth(device: PhysicalDevice, enable: bool) -> None:
    if getattr(device, "device_type", None) != "GPU":
        raise ValueError(f"set_memory_growth: {device!r} is not a GPU")
    _GROWTH[device.name] = bool(enable)


experimental = SimpleNamespace(
    set_memory_growth=_set_memory_growth,
    get_memory_growth=lambda device: _GROWTH.get(device.name, True),
    list_physical_devices=list_physical_devices)
