"""Two traces of one function at two batch sizes, generalized to every batch size.

A concrete tracer sees numbers, not symbols: a trace at batch size 32 holds ``32`` in its
shapes and reshape parameters, ``1/32`` in a mean's constant, ``(32, 1)`` in a constant's
shape. Given a second trace of the same Python function at another size, :func:`fit` lines
the two up node by node and explains every value that differs as a function of the size
``n``: ``k * n`` (shapes, element counts) or ``k / n`` (a mean's scale). The result, a
:class:`Template`, rebuilds the trace for any size (:meth:`Template.at`) without running the
Python function again, and :mod:`plan` compiles it like a fresh trace.

It refuses -- and the caller traces every new size, as without it -- whenever the two traces
are not the same computation at two sizes: a different number or order of nodes, another
primitive or function, a value that differs by neither rule (``1 / (n - 1)``), a differing
constant array that is not uniform, or an object (a reducer's state) that is not the same
object in both traces. A fit from two sizes reproduces both traces exactly, by construction;
the sizes 0 and 1 (where broadcasting and squeezing change a computation's shape) are never
fitted or generalized to.
"""
from __future__ import annotations

import functools
import types
from typing import Any, Callable

import numpy as np

from . import nest
from .tensor import Tensor, TensorShape

__all__ = ["Template", "fit"]


class _Mismatch(Exception):
    """The two traces are not one computation at two sizes."""


# -- fitted values: ``make(n, memo)`` rebuilds the value for size ``n`` -------------------
class _Const:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def make(self, n: int, memo: dict):
        return self.value


class _Scaled:
    """``k * n`` or ``k / n``, in the type of the traced value (int, float, a NumPy scalar)."""
    __slots__ = ("k", "inverse", "cast")

    def __init__(self, k, inverse: bool, cast: Callable):
        self.k, self.inverse, self.cast = k, inverse, cast

    def make(self, n: int, memo: dict):
        if not self.inverse:
            return self.cast(self.k * n)
        if self.k and 1.0 / self.k == round(1.0 / self.k):  # (1/q)/n as 1/(q*n): Python's
            return self.cast(1.0 / (round(1.0 / self.k) * n))  # 1.0 / count, bit for bit
        return self.cast(self.k / n)


class _Made:
    """A rebuilt object (a container, a function, an array): made once per size and shared
    by every place that held the same object in the trace (a list a kernel and the plan both
    hold stays one list)."""
    __slots__ = ("build", "parts")

    def __init__(self, build: Callable, *parts):
        self.build, self.parts = build, parts

    def make(self, n: int, memo: dict):
        got = memo.get(id(self))
        if got is None:
            got = memo[id(self)] = self.build(n, memo, *self.parts)
        return got


class _Affine:
    """``a * n + b`` (whole ``a``, ``b``), in the type of the traced value."""
    __slots__ = ("a", "b", "cast")

    def __init__(self, a: int, b: int, cast: Callable):
        self.a, self.b, self.cast = a, b, cast

    def make(self, n: int, memo: dict):
        return self.cast(self.a * n + self.b)


def _number(a, b, n1: int, n2: int, affine: bool = False):
    """Fit two numbers: equal, ``k * n`` or ``k / n`` (and, with ``affine``, a whole
    ``a * n + b``: the sizes of a symbolic trace, which are that by construction)."""
    if a == b:
        return _Const(a)
    fa, fb = float(a), float(b)
    if isinstance(a, (int, np.integer)):  # a size or an element count: k * n, k whole
        if fa * n2 == fb * n1 and int(a) % n1 == 0:
            return _Scaled(int(a) // n1, False, type(a))
        slope, rest = divmod(int(b) - int(a), n2 - n1)
        if affine and not rest:
            return _Affine(slope, int(a) - slope * n1, type(a))
        raise _Mismatch(f"{a} and {b} at sizes {n1} and {n2}")
    for inverse, ka, kb in ((False, fa / n1, fb / n2), (True, fa * n1, fb * n2)):
        if ka == kb or np.isclose(ka, kb, rtol=1e-6, atol=0.0):
            return _Scaled(_snap(ka), inverse, type(a))
    raise _Mismatch(f"{a!r} and {b!r} at sizes {n1} and {n2}")


def _snap(k: float) -> float:
    """``k`` read back from a float32 value: a whole number or one over a whole number where
    it is that to float32's precision (``1/n`` stored as float32 times ``n`` is not exactly 1)."""
    whole = round(k)
    if whole and abs(k - whole) <= 1e-6 * abs(k):
        return float(whole)
    if k:
        whole = round(1.0 / k)
        if whole and abs(1.0 / k - whole) <= 1e-6 / abs(k):
            return 1.0 / whole
    return k


class _Fitter:
    def __init__(self, n1: int, n2: int, affine: bool = False):
        self.n1, self.n2, self.affine = n1, n2, affine
        self.memo: dict[tuple[int, int], Any] = {}
        self.keep: list = []  # keeps the fitted objects alive while their ids are keys

    def __call__(self, a, b):
        if a is b:  # the same object in both traces (a module, a persistent list) stays it
            return _Const(a)
        key = (id(a), id(b))
        got = self.memo.get(key)
        if got is None:
            got = self.memo[key] = self._fit(a, b)
            self.keep.append((a, b))
        return got

    def _fit(self, a, b):
        ta = type(a)
        if ta is not type(b):
            raise _Mismatch(f"{ta.__name__} and {type(b).__name__}")
        if a is None or ta in (bool, str, bytes, type(Ellipsis), np.dtype, np.bool_) \
                or isinstance(a, type):
            if a == b:
                return _Const(a)
            raise _Mismatch(f"{a!r} and {b!r}")
        if isinstance(a, (int, float, np.integer, np.floating)):
            return _number(a, b, self.n1, self.n2, self.affine)
        if ta in (tuple, list, TensorShape):
            if len(a) != len(b):
                raise _Mismatch(f"lengths {len(a)} and {len(b)}")
            items = [self(x, y) for x, y in zip(a, b)]
            if all(isinstance(i, _Const) for i in items) and ta is tuple:
                return _Const(a)
            return _Made(lambda n, m, t, its: t(i.make(n, m) for i in its), ta, items)
        if ta is dict:
            if list(a) != list(b):
                raise _Mismatch(f"keys {list(a)} and {list(b)}")
            items = {k: self(a[k], b[k]) for k in a}
            return _Made(lambda n, m, its: {k: i.make(n, m) for k, i in its.items()}, items)
        if ta is slice:
            parts = self((a.start, a.stop, a.step), (b.start, b.stop, b.step))
            return _Made(lambda n, m, p: slice(*p.make(n, m)), parts)
        if ta is np.ndarray:
            return self._array(a, b)
        if ta is Tensor:
            arr = self._array(a._value, b._value)
            return _Made(lambda n, m, p: Tensor(p.make(n, m)), arr)
        if ta is types.FunctionType:
            return self._function(a, b)
        if ta is functools.partial:
            parts = self((a.func, a.args, a.keywords), (b.func, b.args, b.keywords))
            return _Made(lambda n, m, p: functools.partial(p.make(n, m)[0], *p.make(n, m)[1],
                                                           **p.make(n, m)[2]), parts)
        if ta is types.MethodType:
            if a.__self__ is not b.__self__:
                raise _Mismatch("methods of two objects")
            return self._bound(a, b)
        raise _Mismatch(f"two {ta.__name__} objects")  # not the same object in both traces

    def _bound(self, a, b):
        func = self(a.__func__, b.__func__)
        return _Made(lambda n, m, f, s: types.MethodType(f.make(n, m), s), func, a.__self__)

    def _array(self, a: np.ndarray, b: np.ndarray):
        if a.dtype != b.dtype or a.ndim != b.ndim:
            raise _Mismatch(f"arrays {a.dtype}{a.shape} and {b.dtype}{b.shape}")
        if a.shape == b.shape and np.array_equal(a, b, equal_nan=True):
            return _Const(a)
        shape = self(tuple(a.shape), tuple(b.shape))
        if not (a.size and b.size and (a == a.flat[0]).all() and (b == b.flat[0]).all()):
            raise _Mismatch("constant arrays that differ and are not uniform")
        value = self(a.flat[0], b.flat[0])
        return _Made(lambda n, m, s, v, dt: np.full(s.make(n, m), v.make(n, m), dt),
                     shape, value, a.dtype)

    def _function(self, a, b):
        if a.__code__ is not b.__code__ or a.__globals__ is not b.__globals__:
            raise _Mismatch(f"functions {a.__qualname__} and {b.__qualname__}")
        cells = self(tuple(c.cell_contents for c in a.__closure__ or ()),
                     tuple(c.cell_contents for c in b.__closure__ or ()))
        # (attributes as item tuples, and keyword defaults too: an unchanged function is Const)
        rest = self((a.__defaults__, tuple((a.__kwdefaults__ or {}).items()),
                     tuple(vars(a).items())),
                    (b.__defaults__, tuple((b.__kwdefaults__ or {}).items()),
                     tuple(vars(b).items())))
        if isinstance(cells, _Const) and isinstance(rest, _Const):
            return _Const(a)

        def build(n, m, cells, rest):
            defaults, kwdefaults, attrs = rest.make(n, m)
            kwdefaults = None if a.__kwdefaults__ is None else dict(kwdefaults)
            fn = types.FunctionType(a.__code__, a.__globals__, a.__name__, defaults,
                                    tuple(types.CellType(v) for v in cells.make(n, m))
                                    if a.__closure__ else None)
            fn.__kwdefaults__ = kwdefaults
            fn.__qualname__ = a.__qualname__
            fn.__dict__.update(dict(attrs))
            return fn
        return _Made(build, cells, rest)


_SLOT = object()  # a traced argument's place in a replayed call (filled on every replay)


class Template:
    """A trace as a function of the batch size; :meth:`at` gives the trace for one size."""

    def __init__(self, tr, n1: int, parts: list, meta, const, outputs: list, structure):
        self._tr = tr
        self.n1 = n1
        self._parts = parts        # per node: its fitted tuple
        self._meta = meta          # fitted [(shape, dtype), ...]
        self._const = const        # fitted {slot: array}
        self.outputs = outputs
        self.structure = structure  # fitted output nest (Tensor leaves as specs)

    def at(self, n: int) -> "_Trace":
        memo: dict = {}
        meta = self._meta.make(n, memo)
        nodes = []
        for node, part in zip(self._tr.nodes, self._parts):
            made = part.make(n, memo)
            if node[0] == "call":  # traced arguments: placeholders of this size's shapes
                leaves = list(made[2])
                for i, s in node[4]:
                    shape, dtype = meta[s]
                    leaves[i] = Tensor(np.zeros(shape, dtype))
                args, kwargs = nest.pack_as([node[2], node[3]], leaves)
                made = ("call", node[1], args, kwargs, node[4])
            nodes.append(made)
        return _Trace(self._tr, nodes, meta, self._const.make(n, memo),
                      self.structure.make(n, memo))


class _Trace:
    """What :func:`plan.compile_plan` reads of a tracer, for one size of a template."""

    def __init__(self, tr, nodes: list, meta: list, const: dict, structure):
        self.nodes, self.meta, self.const = nodes, meta, const
        self.kind, self.inputs = tr.kind, tr.inputs
        self.alias_of, self.host = tr.alias_of, tr.host
        self.structure = structure


def fit(tr1, n1: int, out1, tr2, n2: int, out2, outputs: list,
        affine: bool = False) -> Template | None:
    """The template of traces ``tr1`` (size ``n1``, output nest ``out1``) and ``tr2``, or
    None where they are not one computation at two sizes (see the module docstring).
    ``affine``: the two traces are one symbolic trace's (:mod:`symdim`), whose sizes may be
    ``a * n + b`` (a padded batch)."""
    if min(n1, n2) < 2 or n1 == n2:
        return None
    f = _Fitter(n1, n2, affine)
    try:
        if (len(tr1.nodes) != len(tr2.nodes) or tr1.kind != tr2.kind
                or tr1.inputs != tr2.inputs or list(tr1.const) != list(tr2.const)):
            raise _Mismatch("node lists differ")
        parts = [_node(f, a, b) for a, b in zip(tr1.nodes, tr2.nodes)]
        meta = f([(tuple(s), d) for s, d in tr1.meta], [(tuple(s), d) for s, d in tr2.meta])
        const = f(dict(tr1.const), dict(tr2.const))
        structure = f(out1, out2)
    except _Mismatch:
        return None
    return Template(tr1, n1, parts, meta, const, outputs, structure)


def _node(f: _Fitter, a: tuple, b: tuple):
    """The fitted node: ``make`` gives the node for a size (a call's traced arguments are
    left as ``_SLOT``: :meth:`Template.at` fills them)."""
    kind = a[0]
    if kind != b[0] or len(a) != len(b):
        raise _Mismatch("node kinds differ")
    if kind == "op":
        if a[1] is not b[1] or a[3] != b[3] or a[5] != b[5]:
            raise _Mismatch("ops differ")
        fn_params = f((a[2], a[4]), (b[2], b[4]))
        if isinstance(fn_params, _Const):
            return _Const(a)
        return _Made(lambda n, m, p: ("op", a[1], *p.make(n, m)[:1], a[3], p.make(n, m)[1],
                                      a[5]), fn_params)
    if kind in ("read", "assign"):
        if a[1] is not b[1] or a[2:] != b[2:]:
            raise _Mismatch(f"{kind} nodes differ")
        return _Const(a)
    if kind == "call":
        if a[1] is not b[1] or a[4] != b[4]:
            raise _Mismatch("replayed calls differ")
        la, lb = nest.flatten([a[2], a[3]]), nest.flatten([b[2], b[3]])
        if len(la) != len(lb):
            raise _Mismatch("replayed calls differ")
        for i, _ in a[4]:
            la[i] = lb[i] = _SLOT
        return _Made(lambda n, m, lv: ("call", a[1], lv.make(n, m)), f(la, lb))
    if kind == "fn":
        if a[2] != b[2] or a[3] != b[3]:
            raise _Mismatch("effects differ")
        parts = f((a[1], a[4]), (b[1], b[4]))
        return _Made(lambda n, m, p: ("fn", p.make(n, m)[0], a[2], a[3], p.make(n, m)[1]),
                     parts)
    raise _Mismatch(f"node kind {kind!r}")
