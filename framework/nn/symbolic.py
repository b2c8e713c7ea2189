"""Keras's symbolic tensors: ``keras.Input(shape)`` and the results of calling layers on it.

A :class:`KerasTensor` has a shape (``None`` for the batch and any open size), a dtype and the
call that made it. Calling a module on one (:func:`symbolic_call`) builds the layer and works
out its output shape by running it on zeros at two sizes of every open dimension (a dimension
that changes with them is ``None``); nothing is recorded by tapes or traces. A functional
model (:class:`~tapeflow.nn.functional_model.Functional`) replays those calls on real tensors.
Arithmetic between symbolic tensors (``x + y``, ``2 * x``) is a call of a small op layer.
"""
from __future__ import annotations

import operator
from typing import Any, Sequence

import numpy as np

from ..recording import _ACTIVE
from ..tensor import _TRACE, Tensor, TensorShape, as_dtype

__all__ = ["KerasTensor", "Input", "is_symbolic", "symbolic_call"]

_PROBES = ((2, 32), (3, 33))  # (batch size, size of another open dimension) per probe run


class KerasTensor:
    """A symbolic tensor of the functional API (see the module docstring)."""

    __slots__ = ("shape", "dtype", "name", "node", "index", "input_layer")

    def __init__(self, shape: Sequence[int | None], dtype: Any = "float32",
                 name: str | None = None, node: Any = None, index: int = 0,
                 input_layer: Any = None) -> None:
        self.shape = TensorShape(tuple(None if d is None else int(d) for d in shape))
        self.dtype = as_dtype(dtype)
        self.name = name
        self.node = node                # the _Node that made it (None for an Input)
        self.index = index              # its place among that call's outputs
        self.input_layer = input_layer  # the InputLayer of a keras.Input

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, *args: Any, **kwargs: Any):
        raise TypeError(
            f"{self!r} is a symbolic Keras tensor (keras.Input or a layer's output): it has "
            "no values. Apply Keras layers to it (keras.layers.Lambda(fn) for a function of "
            "tensors) and build a keras.Model(inputs, outputs)")

    def __bool__(self) -> bool:
        raise TypeError(f"{self!r} is symbolic: it has no truth value")

    def __repr__(self) -> str:
        name = f", name={self.name}" if self.name else ""
        return f"<KerasTensor shape={tuple(self.shape)}, dtype={self.dtype.name}{name}>"

    # Arithmetic: calls of an op layer (functional_model._Op), so models replay them.
    def _op(self, op: str, other: Any, reverse: bool = False) -> "KerasTensor":
        from .functional_model import _Op

        if isinstance(other, KerasTensor):
            args = [other, self] if reverse else [self, other]
            return _Op(op)(args)
        return _Op(op, constant=other, reverse=reverse)(self)

    def __add__(self, o): return self._op("add", o)
    def __radd__(self, o): return self._op("add", o, True)
    def __sub__(self, o): return self._op("subtract", o)
    def __rsub__(self, o): return self._op("subtract", o, True)
    def __mul__(self, o): return self._op("multiply", o)
    def __rmul__(self, o): return self._op("multiply", o, True)
    def __truediv__(self, o): return self._op("divide", o)
    def __rtruediv__(self, o): return self._op("divide", o, True)
    def __matmul__(self, o): return self._op("matmul", o)
    def __neg__(self): return self._op("multiply", -1.0)


OPS = {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul,
       "divide": operator.truediv, "matmul": operator.matmul}


def Input(shape: Sequence[int | None] | None = None, batch_size: int | None = None,
          name: str | None = None, dtype: Any = "float32", sparse: Any = None,
          tensor: Any = None, ragged: Any = None, batch_shape: Any = None) -> KerasTensor:
    """``keras.Input``: a symbolic input of ``shape`` (without the batch axis) for a
    functional model, or the first entry of a ``Sequential``."""
    from .extra_layers import InputLayer

    if batch_shape is not None:
        batch_size, shape = batch_shape[0], tuple(batch_shape[1:])
    if shape is None:
        raise ValueError("keras.Input needs shape= (the input shape without the batch axis)")
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    layer = InputLayer(shape=shape, name=name)
    return KerasTensor((batch_size, *shape), dtype, name=layer.name, input_layer=layer)


def is_symbolic(x: Any) -> bool:
    """Whether a layer's argument is (or holds) a symbolic tensor."""
    if type(x) is KerasTensor:
        return True
    return type(x) in (list, tuple) and any(type(v) is KerasTensor for v in x)


class _Node:
    """One call of ``layer`` on symbolic ``args`` (a KerasTensor, or a list/tuple of them)."""

    __slots__ = ("layer", "args", "outputs")

    def __init__(self, layer: Any, args: Any) -> None:
        self.layer, self.args, self.outputs = layer, args, []


def symbolic_call(layer: Any, args: Any) -> Any:
    """Call ``layer`` on symbolic ``args``: the output KerasTensor(s) of a new node."""
    leaves = [args] if type(args) is KerasTensor else list(args)
    if not all(type(v) is KerasTensor for v in leaves):
        raise TypeError(f"{type(layer).__name__}: a call mixing symbolic Keras tensors with "
                        "other values is not supported; make every input a keras.Input or "
                        "a layer's output")
    probes = []
    saved_tapes, saved_traces = list(_ACTIVE), list(_TRACE)
    _ACTIVE.clear()
    _TRACE.clear()
    try:
        for batch, other in _PROBES:
            zeros = [Tensor(np.zeros(tuple(
                (batch if i == 0 else other) if d is None else d
                for i, d in enumerate(kt.shape)), kt.dtype)) for kt in leaves]
            concrete = zeros[0] if type(args) is KerasTensor else type(args)(zeros)
            probes.append(layer(concrete, training=False))
    finally:
        _ACTIVE.extend(saved_tapes)
        _TRACE.extend(saved_traces)
    node = _Node(layer, args)
    single = isinstance(probes[0], Tensor)
    outs_a = [probes[0]] if single else list(probes[0])
    outs_b = [probes[1]] if single else list(probes[1])
    for k, (a, b) in enumerate(zip(outs_a, outs_b)):
        shape = [d if d == e else None for d, e in zip(a.shape, b.shape)]
        node.outputs.append(KerasTensor(shape, a.dtype, node=node, index=k))
    return node.outputs[0] if single else type(probes[0])(node.outputs)
