"""The strict device stand-in refuses what array-api-strict refuses on ``Device("device1")``.

``tapeflow.strict_device`` is CuPy-shaped (tapeflow's kernels are written against the
NumPy/CuPy API, which array-api-strict does not offer), so it is accepted as the GPU of the
``device`` tests only because it refuses the same things: each forbidden action below is run
on both libraries, side by side, and must raise the same kind of error on both.
"""
import numpy as np
import pytest

from tapeflow import strict_device as sd

xps = pytest.importorskip("array_api_strict")

pytestmark = pytest.mark.device


def _strict(values, device="device1"):
    return xps.asarray(values, device=xps.Device(device))


def _ours(values, device=0):
    with sd.StrictDevice(device):
        return sd.xp.asarray(np.asarray(values, np.float64))


# (name, action on array-api-strict arrays, action on ours, the error both must raise)
CASES = [
    ("implicit NumPy conversion", lambda: np.asarray(_strict([1.0, 2.0])),
     lambda: np.asarray(_ours([1.0, 2.0])), RuntimeError),
    ("np.array copy", lambda: np.array(_strict([1.0, 2.0])),
     lambda: np.array(_ours([1.0, 2.0])), RuntimeError),
    ("two devices combined", lambda: _strict([1.0]) + _strict([1.0], "device2"),
     lambda: _ours([1.0]) + _ours([1.0], 1), ValueError),
    ("device and host combined", lambda: _strict([1.0]) + xps.asarray([1.0]),
     lambda: _ours([1.0]) + np.asarray([1.0]), ValueError),
    ("host and device combined (reflected)", lambda: xps.asarray([1.0]) * _strict([1.0]),
     lambda: np.asarray([1.0]) * _ours([1.0]), ValueError),
    ("functions mixing devices", lambda: xps.maximum(_strict([1.0]), _strict([1.0], "device2")),
     lambda: sd.xp.maximum(_ours([1.0]), _ours([1.0], 1)), ValueError),
]


@pytest.mark.parametrize("name,strict,ours,error", CASES, ids=[c[0] for c in CASES])
def test_refuses_like_array_api_strict(name, strict, ours, error):
    with pytest.raises(error):
        strict()
    with pytest.raises(error):
        ours()


def test_explicit_copies_and_scalar_reads_are_allowed_by_both():
    a, b = _strict([1.5, 2.0]), _ours([1.5, 2.0])
    host_a = np.asarray(a.to_device(xps.Device("CPU_DEVICE")))
    assert host_a.tolist() == b.get().tolist() == [1.5, 2.0]
    before = sd.host_reads()
    assert float(a[0]) == float(b[0]) == 1.5 and bool(a[1] > 1) and bool(b[1] > 1)
    assert sd.host_reads() == before + 2  # ours counts the reads a test can then forbid
    assert (a * 2.0).device == xps.Device("device1") and (b * 2.0).device == sd.StrictDevice(0)


def test_numpy_functions_on_device_arrays_are_refused():
    # array-api-strict refuses them by refusing the conversion; ours names the function
    with pytest.raises(RuntimeError):
        np.exp(_strict([1.0]))
    with pytest.raises(RuntimeError, match="numpy.exp"):
        np.exp(_ours([1.0]))
    with pytest.raises(RuntimeError, match="numpy.concatenate"):
        np.concatenate([_ours([1.0]), _ours([2.0])])
    assert sd.xp.concatenate([_ours([1.0]), _ours([2.0])]).get().tolist() == [1.0, 2.0]
