"""Explicit copies of tensors across devices, differentiable, and moving variables in place.

``tp.to_device(x, "/GPU:0")`` (also ``x.to(...)``, and ``tp.identity(x)`` inside a
``tp.device`` scope) is the primitive ``to_device``: its rule copies the cotangent back to the
source device, so a gradient always lives where its source does.
"""
from __future__ import annotations

from typing import Iterable

from . import devices as _device
from .recording import primitive
from .tensor import Tensor, Variable, convert_to_tensor

__all__ = ["to_device", "move_variables"]


@primitive("to_device")
def to_device_p(x, device, source):
    return _device.to_device(x, device)


@to_device_p.defvjp
def _(g, ans, xs, shapes, needs, device, source):
    return (to_device_p(g, device=source, source=device),)


def to_device(x, device) -> Tensor:
    """A copy of ``x`` on ``device`` (``x`` itself, read if a Variable, when already there)."""
    x = convert_to_tensor(x)
    dst, src = _device.parse(device), _device.device_of(x._value)
    if dst == src and not isinstance(x, Variable):
        return x
    return to_device_p(x, device=dst, source=src)


def _tensor_to(self: Tensor, device) -> Tensor:
    """``x.to("/GPU:0")``: an explicit, differentiable copy to ``device`` (see tp.to_device)."""
    return to_device(self, device)


Tensor.to = _tensor_to


def move_variables(variables: Iterable[Variable], device) -> None:
    """Move each variable's value to ``device`` in place (not recorded, like an assign)."""
    spec = _device.parse(device)
    for v in variables:
        v._value = _device.to_device(v._value, spec)
