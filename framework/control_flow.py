"""``tp.cond`` (``tf.cond``): a branch chosen by a boolean tensor.

Eagerly, and inside ``tp.function`` when the predicate is not traced (a constant, a Python
bool), only the chosen branch runs, as in TensorFlow. When the predicate is a traced tensor
the plan must serve every value it may take, so both branches are traced (TensorFlow traces
both too: their Python side effects happen once each) and the result is selected with
``where``, leaf by leaf. Two things a static plan cannot do that TensorFlow's conditional can
are refused there with a :class:`trace.TraceError` rather than done wrongly: a branch that
changes state (``Variable.assign``, ``apply_gradients``, ``tp.print``), which would run on
every call whatever the predicate, and branches whose results differ in structure, dtype or
shape.
"""
from __future__ import annotations

from typing import Any, Callable

from . import nest, ops
from .tensor import _TRACE, Tensor, convert_to_tensor
from .trace import TraceError

__all__ = ["cond"]


def cond(pred, true_fn: Callable[[], Any] | None = None,
         false_fn: Callable[[], Any] | None = None, name: str | None = None) -> Any:
    """``true_fn()`` if ``pred`` else ``false_fn()`` (``tf.cond``).

    >>> import tapeflow as tp
    >>> tp.cond(tp.constant(2.0) > 1.0, lambda: tp.constant(1.0), lambda: tp.constant(-1.0))
    tp.Tensor(1.0, shape=(), dtype=float32)
    """
    del name
    if not callable(true_fn) or not callable(false_fn):
        raise TypeError("cond: true_fn and false_fn must both be callables of no arguments")
    p = convert_to_tensor(pred)
    if p.dtype.kind != "b" or p.ndim != 0:
        raise TypeError(f"cond: pred must be a scalar bool tensor, got shape {p.shape} and "
                        f"dtype {p.dtype}")
    tracer = _TRACE[-1] if _TRACE else None
    if tracer is None or not tracer.is_traced(p):
        return true_fn() if bool(p._value) else false_fn()
    outs = [_branch(tracer, fn, which) for fn, which in ((true_fn, "true_fn"),
                                                         (false_fn, "false_fn"))]
    leaves = [nest.flatten(o) for o in outs]
    if _layout(outs[0]) != _layout(outs[1]):
        raise TraceError(f"{tracer.name}: cond's branches return different structures: "
                         f"{_describe(outs[0])} and {_describe(outs[1])}")
    picked = []
    for a, b in zip(*leaves):
        if not (isinstance(a, Tensor) or isinstance(b, Tensor)):
            if a is not b and a != b:
                raise TraceError(f"{tracer.name}: cond's branches return different Python "
                                 f"values ({a!r} and {b!r}) for a traced predicate")
            picked.append(a)
            continue
        a, b = convert_to_tensor(a), convert_to_tensor(b)
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            raise TraceError(f"{tracer.name}: cond's branches return tensors of different "
                             f"dtypes or shapes: {a.dtype}{a.shape} and {b.dtype}{b.shape}")
        picked.append(ops.where(p, a, b))
    return nest.pack_as(outs[0], picked)


def _branch(tracer, fn: Callable, which: str) -> Any:
    start = len(tracer.nodes)
    out = fn()
    changes = [n for n in tracer.nodes[start:] if n[0] in ("assign", "call", "fn")]
    if changes:
        raise TraceError(
            f"{tracer.name}: cond's {which} changes state ({_what(changes[0])}) under a traced "
            "predicate: a tp.function plan would run it on every call, whichever branch is "
            "taken. Compute both values and assign tp.where(pred, a, b) outside the branches")
    return out


def _what(node: tuple) -> str:
    kind = node[0]
    if kind == "assign":
        return f"{node[2]} of {node[1].name!r}"
    if kind == "call":
        return getattr(node[1], "__qualname__", "a replayed call")
    return "an effect such as tp.print or a reduction"


def _layout(s: Any) -> Any:
    """The nest structure of ``s`` (its containers' types and keys, a dot per leaf)."""
    if isinstance(s, (list, tuple)):
        return (type(s).__name__, tuple(_layout(x) for x in s))
    if isinstance(s, dict):
        return ("dict", tuple((k, _layout(v)) for k, v in s.items()))
    return "."


def _describe(out: Any) -> str:
    return repr(type(out).__name__) if not isinstance(out, (list, tuple, dict)) else \
        f"{type(out).__name__} of {len(nest.flatten(out))}"
