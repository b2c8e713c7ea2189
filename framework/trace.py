"""The tracer behind ``tp.function``: run a Python function once, record a flat list of nodes.

While a :class:`Tracer` sits on ``tensor._TRACE`` every primitive application and every
:func:`recording.derived` value is reported to it (:meth:`Tracer.node`); Variable reads,
``Variable.assign*`` and calls marked :func:`replayed` (``Optimizer.apply_gradients``) become
nodes too. A tensor is *traced* when it depends on an input or a Variable; everything else
is a constant captured by value (as TensorFlow captures eager tensors).

The trace is dry: values are computed (the tracer needs their shapes, and rules read them),
but state changes -- assignments, optimizer steps -- are only recorded. The first call then
runs the compiled plan, so the Python function's side effects happen at trace time and the
state changes exactly once per call, as in TensorFlow.

Node kinds (tuples, first field the kind):

* ``("op", prim, fn, in_slots, params, out_slot)`` -- ``prim`` is None for derived values;
* ``("read", var, out_slot)`` -- the Variable's current array;
* ``("assign", var, method_name, in_slot)`` -- ``assign`` / ``assign_add`` / ``assign_sub``;
* ``("call", fn, args, kwargs, slot_leaves)`` -- re-run ``fn`` with the traced Tensor leaves of
  ``args`` rebuilt from ``slot_leaves`` (a list of ``(leaf_index, slot)``);
* ``("fn", kernel, in_slots, out_slots, guard)`` -- a host effect recorded by
  :meth:`Tracer.effect` (a ``DistributedGradientTape``'s reduction: start, pack, finish):
  ``kernel(*in_arrays)`` returns the arrays of ``out_slots``; a ``guard`` (a one-item list)
  set true by the kernel skips the state changes after it in that replay.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from . import nest
from .symdim import Dim, SymbolicDimError, at, dims_of, has_dim, plain, sym
from .tensor import _TRACE, Tensor, Variable

__all__ = ["Tracer", "TraceError", "replayed", "replayed_value"]


class TraceError(TypeError):
    """Something a traced function does that a static plan cannot replay."""


class Tracer:
    """Records one trace; see the module docstring."""

    def __init__(self, allow_variables: bool, name: str, dual: tuple | None = None):
        self.allow_variables = allow_variables
        # (n1, n2): trace a None dimension symbolically (:mod:`symdim`), every traced value
        # computed at the real size n1 and at a shadow size n2 (``values2``, ``meta2``).
        self.dual = dual
        self.values2: list = []
        self.meta2: list[tuple] = []
        self.symbolic_failed = False
        self.shape_slots: set[int] = set()  # slots computed from shapes only (tp.shape(x))
        self._anchor: Tensor | None = None
        self.name = name
        self.nodes: list[tuple] = []
        self.meta: list[tuple] = []         # slot -> (shape, dtype)
        self.values: list = []              # slot -> its array at trace time
        self.kind: list[str] = []           # slot -> "input" | "const" | "op" | "read"
        self.const: dict[int, Any] = {}     # slot -> captured array
        self.slot_of: dict[int, int] = {}   # tensor id -> slot
        self.var_ids: set[int] = set()
        self.created: list[Variable] = []
        self.inputs: list[int] = []
        self.arrays: dict[int, Any] = {}    # id -> traced array (to spot them in params)
        self.snapshots: dict[int, tuple] = {}  # id(snapshot) -> (snapshot, slot)
        self.host: bool | None = None       # set by plan.analyse
        self.alias_of: dict | None = None

    def release_values(self) -> None:
        """Drop the trace-time arrays (after compiling): a trace kept to be generalized
        (:mod:`generalize`) needs its nodes, shapes and constants only."""
        self.values = self.arrays = self.snapshots = self.slot_of = None

    # -- slots ------------------------------------------------------------------------------
    def _new(self, value, kind: str, value2=None) -> int:
        slot = len(self.meta)
        if self.dual is not None:
            if kind != "const":
                self.arrays[id(value)] = value  # (the SymArray Python code holds)
            value = plain(value)
            value2 = value if value2 is None else value2
            self.values2.append(value2)
            self.meta2.append((value2.shape, value2.dtype))
        self.meta.append((value.shape, value.dtype))
        self.values.append(value)
        self.kind.append(kind)
        if kind != "const":
            self.arrays[id(value)] = value  # kept alive: ids of traced arrays stay unique
        return slot

    def add_input(self, t: Tensor, shadow=None, dims: tuple | None = None) -> None:
        """A traced input; tracing symbolically (``dual``), ``shadow`` is its value at the
        shadow size and ``dims`` its symbolic shape."""
        if self.dual is not None:
            t._value = sym(t._value, dims)
            if self._anchor is None and any(isinstance(d, Dim) for d in dims):
                self._anchor = t
        slot = self._new(t._value, "input", shadow)
        self.slot_of[t._id] = slot
        self.inputs.append(slot)

    # -- symbolic tracing (dual) -------------------------------------------------------------
    def apply(self, prim, fn: Callable, args: tuple, params: dict) -> Tensor:
        """Run one primitive (``prim``) or derived value (``prim`` None) while tracing
        symbolically: at both sizes, each with its parameters' :class:`symdim.Dim` s made
        sizes; the output is seen from Python with its symbolic shape."""
        from .recording import _ACTIVE, _record
        n1, n2 = self.dual
        a1 = [plain(a._value) for a in args]
        p1 = at(params, n1)
        v1 = fn(*a1, **p1) if p1 else fn(*a1)
        out = Tensor(v1)
        if not (has_dim(params) or any(self.is_traced(a) for a in args)):
            if prim is not None and _ACTIVE and v1.dtype.kind == "f":
                _record(prim, args, out, params)
            return out  # a constant (folded)
        a2 = [self.values2[self.slot(a)] for a in args]
        p2 = at(params, n2)
        try:
            v2 = fn(*a2, **p2) if p2 else fn(*a2)
        except Exception as e:
            self.symbolic_failed = True
            raise SymbolicDimError(f"{self.name}: {getattr(prim, 'name', fn.__name__)} does "
                                   f"not run at a second batch size ({e})") from e
        dims = dims_of(v1.shape, v2.shape, n1, n2) if hasattr(v2, "shape") else None
        if dims is None:
            self.symbolic_failed = True
            raise SymbolicDimError(f"{self.name}: a shape of {getattr(prim, 'name', fn)} is not "
                                   "a multiple of the batch size")
        out._value = sym(v1, dims)
        if prim is not None and _ACTIVE and v1.dtype.kind == "f":
            _record(prim, args, out, params)
        self._node(prim, fn, args, params, out, v2)
        return out

    def anchor(self) -> Tensor:
        """An input with a symbolic dimension: what a value made from a shape alone
        (``tp.zeros((n, 10))``) is computed from, so that it is made on every call."""
        return self._anchor

    def symbolic_value(self, t: Tensor):
        """The value of ``t``, an integer tensor computed from shapes only (``tp.shape(x)``,
        its items, arithmetic on them), as Python ints and :class:`symdim.Dim` s (a list for
        a vector): how a shape given as a tensor enters a symbolic trace. Refused for a tensor
        computed from values: its shape-to-be would depend on the data."""
        slot = self.slot(t)
        if self.kind[slot] != "const" and slot not in self.shape_slots:
            raise TraceError(
                f"{self.name}: a shape given by a tp.Tensor computed from a traced tensor's "
                "values (not from shapes, as tp.shape(x) is): the result's shape would depend "
                "on the data, which a tp.function plan cannot replay")
        v1, v2 = self.values[slot], self.values2[slot]
        if v1.dtype.kind not in "iu" or v1.ndim > 1:
            raise TraceError(f"{self.name}: a shape must be an integer scalar or vector, got "
                             f"{v1.dtype} of rank {v1.ndim}")
        n1, n2 = self.dual
        out = []
        for a, b in zip(v1.reshape(-1).tolist(), v2.reshape(-1).tolist()):
            got = dims_of((a,), (b,), n1, n2)
            if got is None:
                self.symbolic_failed = True
                raise SymbolicDimError(f"{self.name}: a shape tensor's value is not a multiple "
                                       "of the batch size")
            out.append(got[0])
        return out if v1.ndim else out[0]

    def split(self):
        """After a symbolic trace: this tracer becomes the trace at size n1 (every parameter
        made a size) and the trace at n2 is returned, for :func:`generalize.fit`."""
        n1, n2 = self.dual
        nodes1, nodes2 = [], []
        for node in self.nodes:
            if has_dim(node):
                nodes1.append(at(node, n1))
                nodes2.append(at(node, n2))
            else:
                nodes1.append(node)
                nodes2.append(node)
        self.nodes = nodes1
        return _Shadow(nodes2, self.meta2, self.const, self.kind, self.inputs)

    def is_traced(self, t: Tensor) -> bool:
        """Whether ``t``'s value depends on an input or a Variable (not a plain constant)."""
        if isinstance(t, Variable) or id(t) in self.snapshots:
            return True
        slot = self.slot_of.get(t._id)
        return slot is not None and self.kind[slot] != "const"

    def on_snapshot(self, var: Variable, snap: Tensor) -> None:
        """``snap`` holds ``var``'s value now (``read_value()``, a tape's saved input): it
        keeps the slot of this read even if ``var`` is assigned later."""
        self.snapshots[id(snap)] = (snap, self.slot(var))

    def slot(self, t: Tensor) -> int:
        """The slot of ``t``: traced, a Variable read (recorded now), or a captured constant."""
        snap = self.snapshots.get(id(t))
        if snap is not None and snap[0] is t:
            return snap[1]
        slot = self.slot_of.get(t._id)
        if slot is not None:
            return slot
        if isinstance(t, Variable):
            var = t
            self.var_ids.add(var._id)
            slot = self._new(var._value, "read")
            self.nodes.append(("read", var, slot))
        else:
            slot = self._new(t._value, "const")
            self.const[slot] = t._value
        self.slot_of[t._id] = slot
        return slot

    # -- hooks called by recording, Tensor and Variable -------------------------------------
    def node(self, prim, fn: Callable, args, params: dict, out: Tensor) -> None:
        if not any(self.is_traced(a) for a in args):
            return  # constant folding: the output is captured by value if used later
        self._node(prim, fn, args, params, out)

    def _node(self, prim, fn: Callable, args, params: dict, out: Tensor, value2=None) -> None:
        for v in params.values():
            for leaf in (v if isinstance(v, tuple) else (v,)):
                if isinstance(leaf, np.ndarray) and self._traced_array(leaf):
                    raise TraceError(f"{self.name}: {getattr(prim, 'name', fn.__name__)} takes "
                                     "a traced tensor as a static parameter (an index array); "
                                     "tp.function cannot replay it")
        ins = tuple(self.slot(a) for a in args)
        slot = self._new(out._value, "op", value2)
        self.slot_of[out._id] = slot
        self.nodes.append(("op", prim, fn, ins, params, slot))
        if self.dual is not None and (getattr(fn, "_tp_shape_only", False) or all(
                s in self.shape_slots or self.kind[s] == "const" for s in ins)):
            self.shape_slots.add(slot)

    def _traced_array(self, a: np.ndarray) -> bool:
        """Whether ``a`` is a traced value's array or a view of one (its ``base`` chain)."""
        while a is not None:
            if id(a) in self.arrays:
                return True
            a = a.base if isinstance(a.base, np.ndarray) else None
        return False

    def concrete(self, t: Tensor, what: str) -> None:
        """Refuse to turn a traced tensor into a Python value (control flow on it)."""
        if self.is_traced(t):
            raise TraceError(
                f"{self.name}: {what} of a traced tp.Tensor (shape {t.shape}, dtype {t.dtype}) "
                "is not allowed inside tp.function: Python control flow or conversion on a "
                "tensor's value would be frozen into the trace. Use tp.where / tensor ops, or "
                "pass the value as a Python argument (each value then gets its own trace)")

    def value_shaped(self, what: str, *tensors: Tensor) -> None:
        """Refuse an op whose output shape depends on a traced tensor's values: a static plan
        has one shape per slot (its buffers and the ops after it are made for it), so a
        replay would give a wrong result, not a different shape."""
        if any(self.is_traced(t) for t in tensors):
            raise TraceError(
                f"{self.name}: {what} of a traced tp.Tensor has a shape that depends on its "
                "values, which a tp.function plan cannot replay; keep the shape fixed (tp.where"
                "(mask, x, 0), a product with tp.cast(mask, x.dtype)) or run this part "
                "eagerly, outside tp.function")

    def on_variable(self, var: Variable) -> None:
        if not self.allow_variables:
            raise ValueError(
                f"{self.name}: tp.function only supports creating tp.Variables on the first "
                f"trace; this retrace created {var.name!r}. Create variables outside the "
                "function or on its first call only")
        self.created.append(var)

    def on_assign(self, var: Variable, value, method: str) -> Variable:
        t = value if isinstance(value, Tensor) else Tensor(var._checked(value, method))
        if t.shape != var.shape:
            var._checked(t._value, method)  # raises the shape error
        slot = self.slot(t)
        self.nodes.append(("assign", var, method, slot))
        self.slot_of.pop(var._id, None)  # later reads see the new value
        return var

    def effect(self, kernel: Callable, ins: tuple = (), outs: tuple = (),
               guard: list | None = None) -> None:
        """Record ``kernel(*arrays of ins) -> arrays of outs``, run (only) on every replay, in
        this place among the nodes: ``outs`` are Tensors made for the trace (their values
        stand in for the kernel's results while tracing)."""
        in_slots = tuple(self.slot(t) for t in ins)
        out_slots = []
        for t in outs:
            slot = self._new(t._value, "op")
            self.slot_of[t._id] = slot
            out_slots.append(slot)
        self.nodes.append(("fn", kernel, in_slots, tuple(out_slots), guard))

    def call(self, fn: Callable, args: tuple, kwargs: dict):
        args = tuple(list(a) if _is_iterator(a) else a for a in args)
        leaves = nest.flatten([args, kwargs])
        slot_leaves = [(i, self.slot(leaf)) for i, leaf in enumerate(leaves)
                       if isinstance(leaf, Tensor) and not isinstance(leaf, Variable)]
        self.nodes.append(("call", fn, args, kwargs, slot_leaves))
        # The call may change any Variable: later reads record a fresh read.
        for vid in list(self.var_ids):
            self.slot_of.pop(vid, None)
        return None


class _Shadow:
    """The trace at the shadow size of a symbolic trace (what :func:`generalize.fit` reads)."""

    def __init__(self, nodes, meta, const, kind, inputs):
        self.nodes, self.meta, self.const, self.kind, self.inputs = (nodes, meta, const, kind,
                                                                     inputs)


def _is_iterator(a) -> bool:
    return hasattr(a, "__next__") and not isinstance(a, (Tensor, list, tuple, dict))


def replayed(fn: Callable) -> Callable:
    """Mark a stateful method (``Optimizer.apply_gradients``) for ``tp.function``: traced, the
    call is recorded, not run, and each replay runs it with that step's tensors."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _TRACE:
            return _TRACE[-1].call(fn, args, kwargs)
        return fn(*args, **kwargs)
    wrapper._tp_replayed = True
    return wrapper


def replayed_value(fn: Callable) -> Callable:
    """Mark a method that reads state into a Tensor (``Metric.result``) for ``tp.function``:
    traced, each replay calls it again, at this point among the state changes, and its value
    is a traced Tensor (not the value at trace time, frozen). Its arguments must not be
    traced Tensors."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        if not _TRACE:
            return out
        value = out if isinstance(out, Tensor) else Tensor(np.asarray(out))
        traced = Tensor(value._value.copy())

        def kernel():
            now = fn(*args, **kwargs)
            return (now._value if isinstance(now, Tensor) else np.asarray(now),)
        _TRACE[-1].effect(kernel, (), (traced,))
        return traced
    wrapper._tp_replayed = True
    return wrapper
