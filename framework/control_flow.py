"""``tp.cond`` (``tf.cond``): a branch chosen by a boolean tensor; ``tp.py_function``
(``tf.py_function``, ``tf.numpy_function``): Python run on every call of a traced function.

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

import numpy as np

from . import nest, ops
from .symdim import has_dim
from .tensor import _TRACE, Tensor, as_dtype, convert_to_tensor, to_numpy
from .trace import TraceError

__all__ = ["cond", "py_function", "numpy_function"]


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


def py_function(func: Callable, inp: list, Tout, name: str | None = None) -> Any:
    """``func(*inp)`` as an op (``tf.py_function``): eagerly a call; inside ``tp.function``
    run on every call with that call's tensors (the body of ``func`` is plain Python, not
    traced). ``Tout``: the output dtype, or a list of them (the result is then a list). A
    traced call also runs ``func`` once while tracing, on the trace's inputs, to learn its
    outputs' shapes, which must stay the same on every call. Not differentiable."""
    return _host_function(func, inp, Tout, name, tensors=True)


def numpy_function(func: Callable, inp: list, Tout, stateful: bool = True,
                   name: str | None = None) -> Any:
    """``tf.numpy_function``: :func:`py_function` with NumPy arrays in and out of ``func``."""
    del stateful
    return _host_function(func, inp, Tout, name, tensors=False)


def _host_function(func: Callable, inp: list, Tout, name, tensors: bool) -> Any:
    del name
    single = not isinstance(Tout, (list, tuple))
    dtypes = [as_dtype(t) for t in ([Tout] if single else Tout)]
    args = [convert_to_tensor(a) for a in inp]

    def run(*arrays):
        got = func(*[Tensor(a) if tensors else to_numpy(a) for a in arrays])
        got = [got] if single or not isinstance(got, (list, tuple)) else list(got)
        if len(got) != len(dtypes):
            raise ValueError(f"py_function: {getattr(func, '__name__', 'func')} returned "
                             f"{len(got)} values for Tout of {len(dtypes)}")
        return tuple(np.asarray(g._value if isinstance(g, Tensor) else g, dtype=d)
                     for g, d in zip(got, dtypes))

    tracer = _TRACE[-1] if _TRACE else None
    if tracer is None:
        outs = [Tensor(a) for a in run(*[a._value for a in args])]
        return outs[0] if single else outs
    shapes = [a.shape for a in args]
    if has_dim(shapes):
        tracer.symbolic_failed = True  # (its outputs' shapes are not known symbolically)
        raise TraceError(f"{tracer.name}: py_function of a None dimension is traced per size")
    _TRACE.pop()  # (func's body is Python, run eagerly: not recorded in the trace)
    try:
        first = run(*[a._value for a in args])
    finally:
        _TRACE.append(tracer)
    outs = [Tensor(a) for a in first]
    expected = [(a.shape, a.dtype) for a in first]

    def kernel(*arrays):
        got = run(*arrays)
        for g, (shape, dtype) in zip(got, expected):
            if g.shape != shape:
                raise ValueError(f"py_function: {getattr(func, '__name__', 'func')} returned "
                                 f"shape {g.shape} where its traced call returned {shape}")
        return got
    tracer.effect(kernel, tuple(args), tuple(outs))
    return outs[0] if single else outs
