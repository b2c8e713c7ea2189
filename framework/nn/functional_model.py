"""Keras's ``Model``: subclass it (define ``call``), or build a functional model from symbolic
tensors, ``keras.Model(inputs=keras.Input(...), outputs=...)``; and the layers that combine
tensors in such graphs (``Add``, ``Concatenate``, ... and ``Lambda``).

A :class:`Functional` model keeps its layers in ``layers`` (the inputs' ``InputLayer`` s
first, then every layer in the order the graph runs them), so its variables are named
``layers.<i>.<name>`` like a ``Sequential``'s, and ``call`` replays the recorded calls on real
tensors. Its config (layers, calls, inputs, outputs) is JSON: ``save`` / ``load_model`` rebuild
it without running code from the file.

>>> import tapeflow as tp
>>> keras = tp.keras
>>> inputs = keras.Input(shape=(4,))
>>> hidden = keras.layers.Dense(8, activation="relu")(inputs)
>>> model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(2)(hidden))
>>> model(tp.ones((3, 4))).shape
(3, 2)
"""
from __future__ import annotations

from typing import Any, Callable

from .. import ops
from ..tensor import Tensor, convert_to_tensor
from .modules import Model, Module
from .symbolic import OPS, Input, KerasTensor

__all__ = ["Functional", "Add", "Subtract", "Multiply", "Average", "Maximum",
           "Minimum", "Concatenate", "Lambda"]


def _structure(x: Any, what: str) -> tuple[Any, list]:
    """``(structure kind, leaves)`` of a model's inputs or outputs."""
    if isinstance(x, KerasTensor):
        return "single", [x]
    if isinstance(x, (list, tuple)) and all(isinstance(v, KerasTensor) for v in x) and x:
        return "list", list(x)
    if isinstance(x, dict) and all(isinstance(v, KerasTensor) for v in x.values()) and x:
        return ("dict", list(x)), list(x.values())
    raise TypeError(f"keras.Model: {what} must be a KerasTensor or a list or dict of them "
                    f"(keras.Input / layer outputs), got {type(x).__name__}")


def _pack(kind: Any, values: list) -> Any:
    if kind == "single":
        return values[0]
    if kind == "list":
        return list(values)
    return dict(zip(kind[1], values))


class Functional(Model):
    """A model given by its symbolic inputs and outputs (see the module docstring)."""

    def __init__(self, inputs: Any = None, outputs: Any = None, name: str | None = None,
                 *, layers: list | None = None, nodes: list | None = None,
                 input_specs: list | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if layers is not None:  # rebuilt from a saved config
            inputs, outputs = _replay_config(inputs, outputs, layers, nodes, input_specs)
        self._in_kind, in_leaves = _structure(inputs, "inputs")
        self._out_kind, out_leaves = _structure(outputs, "outputs")
        for kt in in_leaves:
            if kt.input_layer is None:
                raise ValueError(f"keras.Model: the inputs must be keras.Input tensors; "
                                 f"{kt!r} is a layer's output")
        order = _calls(out_leaves, in_leaves)
        self.layers = [kt.input_layer for kt in in_leaves]
        for node in order:
            if all(node.layer is not m for m in self.layers):
                self.layers.append(node.layer)
        index = {id(m): i for i, m in enumerate(self.layers)}
        ref: dict[int, tuple] = {id(kt): ("in", i) for i, kt in enumerate(in_leaves)}
        self._calls = []
        for k, node in enumerate(order):
            args = _refs(node.args, ref)
            self._calls.append((index[id(node.layer)], args))
            for j, out in enumerate(node.outputs):
                ref[id(out)] = ("call", k, j)
        self._outputs = [ref[id(kt)] for kt in out_leaves]
        shapes = {id(kt.input_layer): [kt] for kt in in_leaves}
        for node in order:
            shapes.setdefault(id(node.layer), node.outputs)
        self._layer_outputs = [shapes[id(m)] for m in self.layers]  # (for summary)
        self._input_specs = [[list(kt.shape[1:]), kt.dtype.name, kt.name] for kt in in_leaves]
        self._build_input_shape = tuple(in_leaves[0].shape[1:]) \
            if len(in_leaves) == 1 and None not in in_leaves[0].shape[1:] else None
        self.inputs, self.outputs = in_leaves, out_leaves

    def call(self, inputs: Any, training: bool = False) -> Any:
        given = [inputs] if self._in_kind == "single" else (
            list(inputs.values()) if isinstance(inputs, dict) else list(inputs))
        if len(given) != len(self._input_specs):
            raise ValueError(f"{self.name}: expected {len(self._input_specs)} inputs, got "
                             f"{len(given)}")
        values: dict[tuple, Any] = {("in", i): convert_to_tensor(v) if not isinstance(
            v, Tensor) else v for i, v in enumerate(given)}
        for k, (li, args) in enumerate(self._calls):
            layer = self.layers[li]
            out = layer(_values(args, values), training=training)
            for j, o in enumerate([out] if isinstance(out, Tensor) else list(out)):
                values[("call", k, j)] = o
        return _pack(self._out_kind, [values[r] for r in self._outputs])

    def layer_output_shapes(self) -> list[str]:
        """Each layer's output shape(s), ``None`` for the batch (what ``summary`` shows)."""
        return [", ".join(str(tuple(kt.shape)) for kt in outs) for outs in self._layer_outputs]

    def functional_config(self) -> dict[str, Any]:
        """The graph as JSON data with the layers as modules (``module_config`` turns them
        into their configs)."""
        return {"name": self.name, "input_specs": self._input_specs,
                "inputs": _kind_json(self._in_kind), "outputs": [self._outputs,
                                                                 _kind_json(self._out_kind)],
                "layers": self.layers[len(self._input_specs):],
                "nodes": [[li - len(self._input_specs), args] for li, args in self._calls]}


def _kind_json(kind: Any) -> Any:
    return kind if isinstance(kind, str) else ["dict", list(kind[1])]


def _replay_config(inputs: Any, outputs: Any, layers: list, nodes: list,
                   input_specs: list) -> tuple[Any, Any]:
    """Symbolic inputs and outputs of a saved graph, by calling its rebuilt layers again."""
    ins = [Input(shape=tuple(shape), dtype=dtype, name=name)
           for shape, dtype, name in input_specs]
    made: dict[tuple, KerasTensor] = {("in", i): kt for i, kt in enumerate(ins)}
    for k, (li, args) in enumerate(nodes):
        out = layers[li](_values(args, made))
        for j, o in enumerate([out] if isinstance(out, KerasTensor) else list(out)):
            made[("call", k, j)] = o
    refs, out_kind = outputs
    in_kind = inputs if isinstance(inputs, str) else ("dict", inputs[1])
    out_kind = out_kind if isinstance(out_kind, str) else ("dict", out_kind[1])
    return (_pack(in_kind, ins),
            _pack(out_kind, [made[tuple(r)] for r in refs]))


def _calls(outputs: list, inputs: list) -> list:
    """The calls that compute ``outputs`` from ``inputs``, each after the calls it needs."""
    order, seen, given = [], set(), {id(kt) for kt in inputs}

    def visit(kt: KerasTensor) -> None:
        if id(kt) in given:
            return
        if kt.node is None:
            raise ValueError(f"keras.Model: graph disconnected: {kt!r} is an input that is "
                             "not among the model's inputs")
        if id(kt.node) in seen:
            return
        seen.add(id(kt.node))
        args = [kt.node.args] if isinstance(kt.node.args, KerasTensor) else kt.node.args
        for a in args:
            visit(a)
        order.append(kt.node)
    for kt in outputs:
        visit(kt)
    return order


def _refs(args: Any, ref: dict) -> Any:
    if isinstance(args, KerasTensor):
        return list(ref[id(args)])
    return [list(ref[id(a)]) for a in args] if isinstance(args, list) else \
        {"tuple": [list(ref[id(a)]) for a in args]}


def _values(args: Any, values: dict) -> Any:
    if isinstance(args, dict):
        return tuple(values[tuple(r)] for r in args["tuple"])
    if args and isinstance(args[0], list):
        return [values[tuple(r)] for r in args]
    return values[tuple(args)]


# ---------------------------------------------------------------------------- merging layers
class _Merge(Module):
    """A layer combining a list of tensors of one shape elementwise."""

    _fn: Callable

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, inputs: Any) -> Tensor:
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError(f"{type(self).__name__} takes a list of at least 2 tensors")
        return type(self)._fn([convert_to_tensor(x) for x in inputs])


def _fold(fn: Callable) -> Callable:
    def folded(xs: list) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return staticmethod(folded)


class Add(_Merge):
    _fn = _fold(ops.add)


class Multiply(_Merge):
    _fn = _fold(ops.multiply)


class Maximum(_Merge):
    _fn = _fold(ops.maximum)


class Minimum(_Merge):
    _fn = _fold(ops.minimum)


class Average(_Merge):
    @staticmethod
    def _fn(xs: list) -> Tensor:
        total = xs[0]
        for x in xs[1:]:
            total = ops.add(total, x)
        return ops.multiply(total, 1.0 / len(xs))


class Subtract(_Merge):
    @staticmethod
    def _fn(xs: list) -> Tensor:
        if len(xs) != 2:
            raise ValueError(f"Subtract takes exactly 2 tensors, got {len(xs)}")
        return ops.subtract(xs[0], xs[1])


class Concatenate(Module):
    """Join a list of tensors along ``axis`` (default the last)."""

    def __init__(self, axis: int = -1, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.axis = int(axis)

    def call(self, inputs: Any) -> Tensor:
        return ops.concat([convert_to_tensor(x) for x in inputs], axis=self.axis)


class Lambda(Module):
    """A layer running ``function(inputs, **arguments)`` (Keras's ``Lambda``). The function is
    code, which tapeflow never writes to a file: a model holding a Lambda saves its weights
    (``save_weights``), not its architecture."""

    def __init__(self, function: Callable, output_shape: Any = None, mask: Any = None,
                 arguments: dict | None = None, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if not callable(function):
            raise TypeError(f"Lambda needs a callable, got {type(function).__name__}")
        self.function, self.arguments = function, dict(arguments or {})

    def call(self, inputs: Any) -> Any:
        return self.function(inputs, **self.arguments)


class _Op(Module):
    """``x + y``, ``2 * x``, ... between symbolic tensors, as a layer."""

    def __init__(self, op: str, constant: Any = None, reverse: bool = False,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}")
        self.op, self.constant, self.reverse = op, constant, bool(reverse)

    def call(self, inputs: Any) -> Tensor:
        fn = OPS[self.op]
        if isinstance(inputs, (list, tuple)):
            return fn(inputs[0], inputs[1])
        if self.reverse:
            return fn(convert_to_tensor(self.constant), inputs)
        return fn(inputs, self.constant)
