"""``tp.custom_gradient``: a function that supplies its own vector-Jacobian product."""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import numpy as np

from . import nest
from . import primitives as P
from ._backend import array_module
from .recording import _ACTIVE, Primitive, _identity, _record, derived
from .tape import GradientTape
from .tensor import Tensor, Variable, convert_to_tensor

__all__ = ["custom_gradient"]


def custom_gradient(f: Callable | None = None):
    """Decorate ``f(*x) -> (y, grad_fn)`` so tapes use ``grad_fn`` instead of ``f``'s internals.

    ``grad_fn(upstream)`` returns one gradient per input (a list if several). If ``f`` reads
    trainable Variables, ``grad_fn(upstream, variables=None)`` must return
    ``(input_grads, variable_grads)``, as in TensorFlow. ``grad_fn`` is written with tapeflow
    ops, so nested tapes can differentiate it again.

    ``f`` may return several outputs (a tuple or list of float Tensors of one dtype); then
    ``grad_fn(*upstreams)`` gets one upstream gradient per output (zeros for an output the
    target does not use), as in TensorFlow.

    >>> import tapeflow as tp
    >>> @tp.custom_gradient
    ... def clip_grad(x):
    ...     return tp.identity(x), lambda g: tp.clip_by_value(g, -1.0, 1.0)
    """
    if f is None:
        return custom_gradient

    @functools.wraps(f)
    def wrapped(*args, **kwargs):
        xs = [convert_to_tensor(a) for a in args]
        # Run f with a probe tape that lists the trainable variables f reads (they become
        # extra inputs of the recorded op). Outer tapes keep recording f's internals, as in
        # TensorFlow's eager mode: values f computes and grad_fn closes over (log1pexp's
        # exp(x)) must stay connected to x, or a second derivative through grad_fn is lost.
        outer = list(_ACTIVE)
        probe = GradientTape(watch_accessed_variables=True)
        try:
            with probe:
                y, grad_fn = f(*xs, **kwargs)
        finally:
            _ACTIVE[:] = outer
        # Variables passed as inputs get input gradients, not `variables=` ones (TensorFlow).
        variables = [v for v in probe.watched_variables()
                     if v.trainable and all(v is not a for a in xs)]
        if variables and "variables" not in inspect.signature(grad_fn).parameters:
            raise TypeError(f"custom_gradient: {f.__name__} reads trainable variables "
                            f"{[v.name for v in variables]} but its grad_fn has no `variables` "
                            "keyword argument to return their gradients")
        ys = nest.flatten(y)
        if not ys or not all(isinstance(t, Tensor) for t in ys):
            raise TypeError(f"custom_gradient: {f.__name__} must return a Tensor (or a tuple "
                            f"of Tensors) and a grad_fn, got {type(y).__name__}")
        if len(ys) == 1:
            out = derived(_identity, ys[0])  # (derived: a tp.function trace follows it)
            if _ACTIVE and out._value.dtype.kind == "f":
                prim = Primitive(f"custom_gradient({f.__name__})", None)
                prim.defvjp(_make_rule(f.__name__, grad_fn, len(xs), variables))
                _record(prim, tuple(xs) + tuple(variables), out, {})
            return out if not isinstance(y, (list, tuple)) else nest.pack_as(y, [out])
        return nest.pack_as(y, _several_outputs(f.__name__, ys, grad_fn, xs, variables))

    return wrapped


def _several_outputs(name: str, ys: list, grad_fn: Callable, xs: list, variables: list) -> list:
    """Record one op whose output packs every output flat; each output is a slice of it.

    The slices are ordinary recorded ops, so the packed cotangent holds each output's upstream
    gradient (zeros where an output is unused) and the rule hands them to ``grad_fn``.
    """
    dtypes = {t.dtype for t in ys}
    if len(dtypes) != 1 or next(iter(dtypes)).kind != "f":
        raise TypeError(f"custom_gradient: {name} returns several outputs; they must be float "
                        f"Tensors of one dtype, got {sorted(str(d) for d in dtypes)}")
    if not _ACTIVE:
        return [derived(_identity, t) for t in ys]
    xp = array_module(ys[0]._value)
    shapes = [t.shape for t in ys]
    packed = derived(lambda *vs: xp.concatenate([v.reshape(-1) for v in vs]), *ys)
    bounds = np.cumsum([0] + [int(np.prod(s, dtype=np.int64)) for s in shapes]).tolist()
    prim = Primitive(f"custom_gradient({name})", None)

    def split_upstream(g: Tensor, **_) -> tuple:
        return tuple(P.reshape_p(P.getitem_p(g, index=(slice(lo, hi),)), shape=s)
                     for lo, hi, s in zip(bounds[:-1], bounds[1:], shapes))

    prim.defvjp(_make_rule(name, grad_fn, len(xs), variables, split_upstream))
    _record(prim, tuple(xs) + tuple(variables), packed, {})
    return [P.reshape_p(P.getitem_p(packed, index=(slice(lo, hi),)), shape=s)
            for lo, hi, s in zip(bounds[:-1], bounds[1:], shapes)]


def _make_rule(name: str, grad_fn: Callable, n_inputs: int, variables: list,
               split_upstream: Callable | None = None):
    def rule(g, ans, saved, shapes, needs):
        upstream = (g,) if split_upstream is None else split_upstream(g)
        if variables:
            in_grads, var_grads = grad_fn(*upstream, variables=variables)
            var_grads = list(var_grads)
        else:
            in_grads, var_grads = grad_fn(*upstream), []
        in_grads = list(in_grads) if isinstance(in_grads, (list, tuple)) else [in_grads]
        if len(in_grads) != n_inputs or len(var_grads) != len(variables):
            raise ValueError(f"custom_gradient({name}): grad_fn returned {len(in_grads)} input "
                             f"gradients and {len(var_grads)} variable gradients; expected "
                             f"{n_inputs} and {len(variables)}")
        return tuple(None if gi is None else convert_to_tensor(gi)
                     for gi in in_grads + var_grads)
    return rule
