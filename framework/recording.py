"""The recording machinery that the eager tape and the ``tp.function`` tracer both build on.

This is the bottom of the autodiff stack: it imports only :mod:`tensor`. It holds

* :class:`Primitive` and :func:`primitive` (the registry ``PRIMITIVES``): an operation on raw
  arrays plus its vector-Jacobian product;
* ``_ACTIVE``, the tapes recording now (innermost last), and ``_record`` / ``_record2``, which
  append one record to each tape that watches an input;
* ``_TRACE``, the tracer of a ``tp.function`` being traced (see :mod:`tapeflow.trace`);
  every primitive application and every :func:`derived` value is reported to it;
* :func:`derived` (a value computed from tensors on raw arrays, with no gradient) and
  :func:`stop_gradient`.

A tape record is a tuple
``(prim, input_ids, input_shapes, saved_inputs, output_id, saved_output, params)`` and keeps
only what the primitive's rule asked for (``save_args`` / ``save_ans``).
"""
from __future__ import annotations

from typing import Callable

from .tensor import _TRACE, Tensor, Variable, _next_id, _snapshot, convert_to_tensor

__all__ = ["Primitive", "PRIMITIVES", "primitive", "derived", "stop_gradient"]

# Tapes currently recording, innermost last. Mutated in place only (other modules alias it).
_ACTIVE: list = []

_NO_PARAMS: dict = {}

# ``_new(Tensor)`` then setting ``_value`` and ``_id`` is ``Tensor(value)`` without the Python
# frame of ``Tensor.__init__``: the hot paths below build their outputs this way.
_new = object.__new__

# name -> Primitive: the closed set of operations that carry a derivative rule.
PRIMITIVES: dict[str, "Primitive"] = {}


class Primitive:
    """An operation on raw arrays plus its vector-Jacobian product.

    ``fwd(*arrays, **params) -> array``. The rule has one signature::

        vjp(g, ans, xs, shapes, needs, **params) -> tuple of Tensor | None, one per input

    ``g`` is the output's cotangent (a Tensor), ``ans`` the output (if ``save_ans``), ``xs`` the
    inputs (if ``save_args``), ``shapes`` the input shapes, ``needs[i]`` whether input ``i``
    leads to a source (a rule may skip the work for the others). A rule may return gradients
    of a broadcast shape; the sweep reduces them to the input's shape.

    A rule that needs a raw-array value computed from its tensors (a mask, a sign) gets it
    from :func:`derived`, so a ``tp.function`` replay recomputes it rather than freezing it.
    """

    __slots__ = ("name", "fwd", "vjp", "save_args", "save_ans")

    def __init__(self, name: str, fwd: Callable | None, *, save_args: bool = False,
                 save_ans: bool = False):
        self.name = name
        self.fwd = fwd
        self.vjp: Callable | None = None
        self.save_args = save_args
        self.save_ans = save_ans

    def defvjp(self, rule: Callable) -> Callable:
        self.vjp = rule
        return rule

    def __call__(self, *args: Tensor, **params) -> Tensor:
        """Apply to Tensors (already converted); record on every tape watching an input."""
        if _TRACE and _TRACE[-1].dual is not None:
            return _TRACE[-1].apply(self, self.fwd, args, params)
        out = _new(Tensor)
        if params:
            out._value = value = self.fwd(*[a._value for a in args], **params)
        else:
            out._value = value = self.fwd(*[a._value for a in args])
        out._id = _next_id()
        if _ACTIVE and value.dtype.kind == "f":
            _record(self, args, out, params)
        if _TRACE:
            _TRACE[-1].node(self, self.fwd, args, params, out)
        return out

    def call2(self, x: Tensor, y: Tensor) -> Tensor:
        """``self(x, y)`` for parameterless binary primitives: the hot path of arithmetic."""
        if _TRACE and _TRACE[-1].dual is not None:
            return _TRACE[-1].apply(self, self.fwd, (x, y), _NO_PARAMS)
        xv, yv = x._value, y._value
        out = _new(Tensor)
        out._value = value = self.fwd(xv, yv)
        out._id = _next_id()
        if _ACTIVE and value.dtype.kind == "f":
            _record2(self, x, y, out, xv.shape, yv.shape)
        if _TRACE:
            _TRACE[-1].node(self, self.fwd, (x, y), _NO_PARAMS, out)
        return out

    def __repr__(self) -> str:
        return f"<Primitive {self.name}>"


def primitive(name: str, *, save_args: bool = False, save_ans: bool = False):
    """Register ``fwd`` as the primitive ``name``; follow it with ``@prim.defvjp``."""
    def register(fwd: Callable) -> Primitive:
        if name in PRIMITIVES:
            raise ValueError(f"primitive {name!r} is already registered")
        prim = Primitive(name, fwd, save_args=save_args, save_ans=save_ans)
        PRIMITIVES[name] = prim
        return prim
    return register


def derived(fn: Callable, *tensors: Tensor, **params) -> Tensor:
    """``Tensor(fn(*raw_values, **params))``: a value with no gradient, computed on raw arrays.

    Use it wherever an op or a rule computes a new array from a tensor's ``_value`` outside a
    primitive (comparison masks, ``argmax``, ``one_hot``): a ``tp.function`` trace then records
    the computation and its replay recomputes it from that step's inputs.
    """
    if _TRACE and _TRACE[-1].dual is not None:
        return _TRACE[-1].apply(None, fn, tensors, params)
    if params:
        out = Tensor(fn(*[t._value for t in tensors], **params))
    else:
        out = Tensor(fn(*[t._value for t in tensors]))
    if _TRACE:
        _TRACE[-1].node(None, fn, tensors, params, out)
    return out


def _identity(a):
    return a


def stop_gradient(x) -> Tensor:
    """The same value as a fresh, unrecorded tensor: no gradient flows back through it."""
    return derived(_identity, convert_to_tensor(x))


def _auto_watch(tape, a: Tensor) -> bool:
    """Watch ``a`` if it is a trainable Variable read on a tape that watches accessed ones."""
    if tape._watch_accessed and isinstance(a, Variable) and a.trainable:
        tape._watch_one(a)
        return a._id in tape._watched
    return False


def _saved(a: Tensor) -> Tensor:
    return a if type(a) is Tensor or not isinstance(a, Variable) else _snapshot(a)


def _record(prim: Primitive, args: tuple, out: Tensor, params: dict) -> None:
    entry = None
    for tape in _ACTIVE:
        watched = tape._watched
        hit = False
        for a in args:
            # (every argument is visited: a Variable read next to a watched tensor is watched)
            if a._id in watched or (type(a) is not Tensor and _auto_watch(tape, a)):
                hit = True
        if not hit:
            continue
        if entry is None:
            saved = tuple([_saved(a) for a in args]) if prim.save_args else None
            entry = (prim, tuple([a._id for a in args]), tuple([a._value.shape for a in args]),
                     saved, out._id, out if prim.save_ans else None, params)
        tape._ops.append(entry)
        watched.add(out._id)


def _record2(prim: Primitive, x: Tensor, y: Tensor, out: Tensor, xshape: tuple,
             yshape: tuple) -> None:
    """``_record`` unrolled for two arguments and no parameters (arithmetic's hot path); the
    caller passes the input shapes it already read."""
    xid, yid = x._id, y._id
    entry = None
    for tape in _ACTIVE:
        watched = tape._watched
        # (both sides are visited: a Variable read next to a watched tensor is watched)
        hx = xid in watched or (type(x) is not Tensor and _auto_watch(tape, x))
        hy = yid in watched or (type(y) is not Tensor and _auto_watch(tape, y))
        if not (hx or hy):
            continue
        if entry is None:
            saved = ((x if type(x) is Tensor else _saved(x), y if type(y) is Tensor else _saved(y))
                     if prim.save_args else None)
            entry = (prim, (xid, yid), (xshape, yshape), saved, out._id,
                     out if prim.save_ans else None, _NO_PARAMS)
        tape._ops.append(entry)
        watched.add(entry[4])
