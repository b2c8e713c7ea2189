"""Every registered primitive on a non-default device: forward, rule, rule under an outer tape.

The primitive table of ``tests/test_primitives.py`` runs through ``check_grads`` (first and
second order, central finite differences) inside ``tp.device("/GPU:0")``, with the GPU served
by the strict stand-in of :mod:`tapeflow.strict_device` (it refuses implicit host conversion
and mixing devices, as array-api-strict does). Each primitive's forward and rule are
instrumented: the test fails unless the forward ran on device arrays, the rule ran on device
cotangents, and the rule ran again while an outer tape recorded it (second order).
"""
import importlib.util
from pathlib import Path

import pytest

import tapeflow as tp
from tapeflow import devices, recording
from tapeflow import strict_device as sd
from tapeflow.testing import check_grads

pytestmark = pytest.mark.device

_spec = importlib.util.spec_from_file_location(
    "_tapeflow_primitive_table", Path(__file__).parents[1] / "test_primitives.py")
_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_table)
TABLE = _table.TABLE
CASES = [pytest.param(name, i, id=f"{name}-{i}") for name in TABLE for i in range(len(TABLE[name]))]


@pytest.fixture(autouse=True)
def strict_gpu():
    prev = devices.set_gpu_module(sd.xp)
    yield
    devices.set_gpu_module(prev)


def _on_device(a) -> bool:
    return type(a) is sd.StrictArray


def test_every_primitive_runs_on_the_device():
    assert set(TABLE) >= set(tp.PRIMITIVES) - set(_table.NO_RULE)


@pytest.mark.parametrize("name,i", CASES)
def test_primitive_on_strict_device(name, i, monkeypatch):
    prim = tp.PRIMITIVES[name]
    seen = {"fwd": 0, "vjp": 0, "vjp2": 0}
    fwd, vjp = prim.fwd, prim.vjp

    def counted_fwd(*arrays, **params):
        out = fwd(*arrays, **params)
        # to_device is the one primitive whose output may leave the device (its row copies
        # to the host): its input must still have been on the device
        if all(_on_device(a) for a in arrays if hasattr(a, "shape")) and (
                _on_device(out) or name == "to_device"):
            seen["fwd"] += 1
        return out

    def counted_vjp(g, *rest, **params):
        grads = vjp(g, *rest, **params)
        out = [g] + [t for t in grads if t is not None]
        # (to_device's rule moves the cotangent between the host and the device)
        if all(_on_device(t._value) for t in out) or (
                name == "to_device" and any(_on_device(t._value) for t in out)):
            seen["vjp2" if len(recording._ACTIVE) else "vjp"] += 1
        return grads

    monkeypatch.setattr(prim, "fwd", counted_fwd)
    monkeypatch.setattr(prim, "vjp", counted_vjp)
    fn, args, *opts = TABLE[name][i]
    with tp.device("/GPU:0"):
        check_grads(fn, args, order=2, **(opts[0] if opts else {}))
    assert seen["fwd"] > 0, f"{name}: forward never ran on device arrays"
    assert seen["vjp"] > 0, f"{name}: rule never ran on device cotangents"
    assert seen["vjp2"] > 0, f"{name}: rule never ran on the device under an outer tape"
